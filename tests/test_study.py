"""The study of README's Results (docs/study.py): a grid per size through the local sweep
runner, the learning rate chosen on validation, more seeds of the choice, the report with
--select=validation; and that choice itself (report.select_on_validation)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaxcollective.report import Group, Run, select_on_validation

ROOT = Path(__file__).resolve().parent.parent


def run_(model_type, lr, seed, val, test):
    return Run(f"{model_type}-{lr}-{seed}", model_type, 1000, test, "finished",
               {"model_type": model_type, "learning_rate": lr, "seed": seed},
               {"final/best_val_accuracy": val, "final/test_accuracy": test})


def test_the_choice_is_made_on_validation_over_the_seeds_every_candidate_has():
    runs = [run_("shallow", 1e-3, 0, val=90.0, test=80.0),
            run_("shallow", 3e-3, 0, val=89.0, test=95.0)]  # better on test: never looked at
    s = select_on_validation(Group("shallow", 1000, runs))
    assert s.varied == {"learning_rate": 1e-3} and s.candidates == 2 and s.seeds == [0]
    assert [r.config["seed"] for r in s.group.runs] == [0]
    # more seeds of the chosen rate, worse on validation: the choice stays (compared on
    # seed 0 only, which both have) and the chosen group holds all its seeds
    runs += [run_("shallow", 1e-3, 1, val=80.0, test=79.0), run_("shallow", 1e-3, 2, val=81.0, test=78.0)]
    s = select_on_validation(Group("shallow", 1000, runs))
    assert s.varied == {"learning_rate": 1e-3}
    assert sorted(r.config["seed"] for r in s.group.runs) == [0, 1, 2]
    assert s.scores == {"learning_rate=0.001": 90.0, "learning_rate=0.003": 89.0}


@pytest.mark.slow
@pytest.mark.longest
def test_study_command_grid_choice_seeds_report_and_rerun(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, "docs/study.py", "--dataset=digits", "--epochs=1", "--sizes=0.57M",
           "--model_types=collective,shallow", "--learning_rates=0.001,0.01", "--seeds=2",
           f"--work={work}", f"--out={out}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + (work / "log.txt").read_text()
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    grid = [(r["model_type"], r["config"]["learning_rate"]) for r in recs if r["config"]["seed"] == 0]
    # every grid point once, seed 0
    assert sorted(grid) == sorted((t, lr) for t in ("collective", "shallow") for lr in (0.001, 0.01))
    for t in ("collective", "shallow"):
        seed0 = {r["config"]["learning_rate"]: r["final/best_val_accuracy"] for r in recs
                 if r["model_type"] == t and r["config"]["seed"] == 0}
        more = [r for r in recs if r["model_type"] == t and r["config"]["seed"] == 1]
        # one more seed, of the rate with the best validation accuracy
        assert len(more) == 1 and more[0]["config"]["learning_rate"] == max(seed0, key=seed0.get)
    text = (out / "summary.md").read_text()
    assert "Selected on validation" in text and "| ~" in text
    assert (out / "digits" / "accuracy_vs_params.png").exists()
    assert json.loads((out / "study.json").read_text())["wall_s"] > 0

    # the same command again: nothing is trained twice
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert len((out / "results.jsonl").read_text().splitlines()) == len(recs)
    assert len(json.loads((out / "study.json").read_text())["invocations_s"]) == 2
    # and the grid's sweep asked for more trials than it has points: none is run again
    p = subprocess.run([sys.executable, "-m", "jaxcollective.sweep", str(work / "sweep.yaml"),
                        "--trials=9", "--study=fashion_0.57M", f"--results={work / 'results.jsonl'}",
                        f"--storage=sqlite:///{work / 'sweeps.db'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert len((work / "results.jsonl").read_text().splitlines()) == len(recs)


def test_study_refuses_a_bad_size_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, "docs/study.py", "--sizes=9M", f"--work={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--sizes=9M" in p.stderr and len(p.stderr.strip().splitlines()) == 1
