"""Local sweeps on Optuna: a sweep file run in-process, pruning, results lines, shared
SQLite studies, unmappable keys, a killed study resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from jaxcollective.report import load_results, make_report  # noqa: E402
from jaxcollective.sweep import main as sweep_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end, in subprocesses


def sweep_file(tmp, **over):
    spec = {"program": "run.py", "method": "random",
            "metric": {"name": "final/test_accuracy", "goal": "maximize"},
            "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 4, "eta": 3},
            "parameters": {
                "model_type": {"value": "shallow"}, "dataset": {"value": "digits"},
                "target_params": {"value": 60000}, "batch_size": {"value": 64},
                "epochs": {"value": 4}, "progress": {"value": False},
                "checkpoint_dir": {"value": str(tmp / "ck")},
                # one good and one hopeless learning rate: the pruner has work to do
                "learning_rate": {"values": [0.002, 1e-7]},
                "seed": {"distribution": "int_uniform", "min": 0, "max": 3}}}
    spec.update(over)
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_local_sweep_runs_prunes_and_reports(tmp_path, capsys):
    path = sweep_file(tmp_path)
    results = tmp_path / "runs" / "results.jsonl"
    assert sweep_main([str(path), "--trials=8", f"--results={results}", "--seed=0",
                       f"--storage=sqlite:///{tmp_path / 's.db'}", "--study=s1"]) == 0
    err = capsys.readouterr().err
    assert "[sweep s1] 8/8 done" in err and "best" in err  # the progress display
    recs = lines(results)
    assert len(recs) == 8 and {r["sweep_trial"] for r in recs} == set(range(8))
    statuses = [r["status"] for r in recs]
    assert "pruned" in statuses and "finished" in statuses, statuses
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{tmp_path / 's.db'}")
    best_line = max((r for r in recs if r["status"] == "finished"),
                    key=lambda r: r["final/test_accuracy"])
    assert study.best_value == pytest.approx(best_line["final/test_accuracy"])
    assert study.best_trial.number == best_line["sweep_trial"]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) == statuses.count("pruned")
    # the report reads a local sweep as it reads agent runs, pruned runs listed apart
    rep = make_report(load_results(results), tmp_path / "report", str(results))
    assert "pruned" in rep["summary"] and rep["datasets"]["digits"]["groups"]


def test_unmappable_key_is_a_one_line_error_before_any_trial(tmp_path, capsys):
    path = sweep_file(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["parameters"]["learning_rate"] = {"distribution": "normal", "mu": 0.001, "sigma": 1}
    path.write_text(yaml.safe_dump(spec))
    assert sweep_main([str(path), "--trials=2", f"--results={tmp_path / 'r.jsonl'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'learning_rate'" in err[0] and "normal" in err[0]
    assert not (tmp_path / "r.jsonl").exists()


def launch(tmp, path, *extra):
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.Popen([sys.executable, "-m", "jaxcollective.sweep", str(path), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_processes_share_one_sqlite_study_with_disjoint_trials(tmp_path):
    path = sweep_file(tmp_path, early_terminate=None)
    common = ["--trials=6", f"--storage=sqlite:///{tmp_path / 's.db'}", "--study=shared",
              f"--results={tmp_path / 'r.jsonl'}"]
    procs = [launch(tmp_path, path, *common, f"--seed={i}") for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    recs = lines(tmp_path / "r.jsonl")
    numbers = [r["sweep_trial"] for r in recs]
    assert len(numbers) == len(set(numbers)) >= 6  # no trial run twice
    assert len({r["sweep_worker"] for r in recs}) == 2  # both processes took trials
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert sorted(t.number for t in study.trials) == sorted(numbers)


def test_a_killed_study_resumes(tmp_path):
    path = sweep_file(tmp_path, early_terminate=None)
    common = ["--trials=5", f"--storage=sqlite:///{tmp_path / 's.db'}", "--study=k",
              f"--results={tmp_path / 'r.jsonl'}", "--heartbeat=1"]
    p = launch(tmp_path, path, *common)
    while "2/5 done" not in p.stderr.readline():
        assert p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait()
    time.sleep(3)  # past the grace period of the trial it left RUNNING
    p = launch(tmp_path, path, *common)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path / 's.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 5
    assert optuna.trial.TrialState.RUNNING not in states
    assert "[sweep k] 5/5 done" in err
