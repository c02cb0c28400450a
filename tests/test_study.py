"""The study of docs/results.md (python -m jaxcollective.study): a grid per size through the local sweep
runner, the learning rate chosen on validation, more seeds of the choice, the report with
--select=validation; and that choice itself (report.select_on_validation)."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxcollective.cli import UsageError
from jaxcollective.config import ConfigError
from jaxcollective.report.select import Group, select_on_validation
from jaxcollective.report.load import Run
from shared import made_once
from jaxcollective.study.schedules import CONVERGED, LONG

ROOT = Path(__file__).resolve().parent.parent


def run_(model_type, lr, seed, val, test):
    return Run(
        f"{model_type}-{lr}-{seed}",
        model_type,
        1000,
        test,
        "finished",
        {"model_type": model_type, "learning_rate": lr, "seed": seed},
        {"final/best_val_accuracy": val, "final/test_accuracy": test},
    )


def test_the_choice_is_made_on_validation_over_the_seeds_every_candidate_has():
    runs = [
        run_("shallow", 1e-3, 0, val=90.0, test=80.0),
        run_("shallow", 3e-3, 0, val=89.0, test=95.0),
    ]  # better on test: never looked at
    s = select_on_validation(Group("shallow", 1000, runs))
    assert s.varied == {"learning_rate": 1e-3} and s.candidates == 2 and s.seeds == [0]
    assert [r.config["seed"] for r in s.group.runs] == [0]
    # more seeds of the chosen rate, worse on validation: the choice stays (compared on
    # seed 0 only, which both have) and the chosen group holds all its seeds
    runs += [
        run_("shallow", 1e-3, 1, val=80.0, test=79.0),
        run_("shallow", 1e-3, 2, val=81.0, test=78.0),
    ]
    s = select_on_validation(Group("shallow", 1000, runs))
    assert s.varied == {"learning_rate": 1e-3}
    assert sorted(r.config["seed"] for r in s.group.runs) == [0, 1, 2]
    assert s.scores == {"learning_rate=0.001": 90.0, "learning_rate=0.003": 89.0}


def study_cmd(work, out, *extra):
    return [
        sys.executable,
        "-m",
        "jaxcollective.study",
        "--dataset=digits",
        "--epochs=2",
        "--sizes=0.57M",
        "--model_types=collective,shallow",
        "--learning_rates=0.001,0.01",
        "--seeds=3",
        f"--folder={out}",
        *extra,
    ]


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The study run once without a stop: (its running state, its folder, its stderr)."""

    def make(folder):
        p = subprocess.run(
            study_cmd(folder / "work", folder / "out"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr + (folder / "out" / ".work" / "log.txt").read_text()
        (folder / "stderr.txt").write_text(p.stderr)

    folder = made_once(tmp_path_factory, "study_whole", make)
    return folder / "out" / ".work", folder / "out", (folder / "stderr.txt").read_text()


@pytest.mark.slow
@pytest.mark.longest
def test_study_command_grid_choice_seeds_report_and_rerun(whole, tmp_path):
    work, out, err = whole
    recs = records(out)
    grid = [
        (r["model_type"], r["config"]["learning_rate"]) for r in recs if r["config"]["seed"] == 0
    ]
    # every grid point once, seed 0
    assert sorted(grid) == sorted(
        (t, lr) for t in ("collective", "shallow") for lr in (0.001, 0.01)
    )
    for t in ("collective", "shallow"):
        seed0 = {
            r["config"]["learning_rate"]: r["final/best_val_accuracy"]
            for r in recs
            if r["model_type"] == t and r["config"]["seed"] == 0
        }
        (more,) = [r for r in recs if r["model_type"] == t and r["config"]["seed"] == 1]
        # two more seeds (one run of 2 replicas), of the rate with the best validation accuracy
        assert more["config"]["learning_rate"] == max(seed0, key=seed0.get)
        assert [x["seed"] for x in more["replicas"]] == [1, 2]
    assert {r["sweep_study"] for r in recs if "sweep_study" in r} == {"digits_0.57M"}
    # the console: a line per finished run with the study's count, then where it went
    progress = [line for line in err.splitlines() if line.startswith("[study]")]
    assert len(progress) == 6 and progress[0].startswith("[study] 1/8 runs: ")
    assert progress[-1].startswith("[study] 8/8 runs: ") and "left" in progress[0]
    assert err.strip().splitlines()[-1].startswith("study done:")
    # and the run in flight is never silent: its epochs as they come
    epochs = [line for line in err.splitlines() if line.startswith("[run] ")]
    assert any("trial 0: epoch 1/2" in line for line in epochs), err  # the grid's sweep
    assert any(re.search(r"epoch +2/2 ", line) for line in epochs), err  # run.py's seeds
    text = (out / "summary.md").read_text()
    assert "Selected on validation" in text and "| ~" in text
    assert (out / "digits" / "accuracy_vs_params.png").exists()
    assert json.loads((out / "study.json").read_text())["wall_s"] > 0

    # the same command again (on a copy): nothing is trained, no time is added
    import shutil

    shutil.copytree(out, tmp_path / "out")
    p = subprocess.run(
        study_cmd(tmp_path / "out" / ".work", tmp_path / "out"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert len(records(tmp_path / "out")) == len(recs)
    assert len(json.loads((tmp_path / "out" / "study.json").read_text())["invocations_s"]) == 1
    # and the grid's sweep asked for more trials than it has points: none is run again
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxcollective.sweep",
            str(work / "sweep.yaml"),
            "--trials=9",
            "--study=digits_0.57M",
            f"--results={tmp_path / 'out' / 'results.jsonl'}",
            f"--storage=sqlite:///{tmp_path / 'out' / '.work' / 'sweeps.db'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert "the grid has 4 points" in p.stderr
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == len(recs)


@pytest.mark.slow
@pytest.mark.longest
def test_a_study_stopped_at_any_moment_resumes_to_the_same_study(whole, tmp_path):
    """Ctrl-C in the grid stops the step in flight cleanly, one line, exit 130; the same
    command ends as the uninterrupted study. (SIGTERM takes the same path: 143.)"""
    import optuna

    _, whole_out, _ = whole
    out = tmp_path / "out"
    work = out / ".work"  # the running state
    cmd = study_cmd(work, out)
    results = out / "results.jsonl"

    def count():
        return len(results.read_text().splitlines()) if results.exists() else 0

    for sig, after in ((signal.SIGINT, 1),):
        p = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 300
        while count() < after:
            assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.05)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 128 + sig, err[-3000:]
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
            "study stopped ("
        ), err
        # said on the console when the signal came: what it waits for, and the way out
        assert (
            "Ctrl-C: stopping after the epoch in flight of the study's step" in err
            and "(again to stop at once)" in err
        ), err
        study = optuna.load_study(
            study_name="digits_0.57M", storage=f"sqlite:///{work / 'sweeps.db'}"
        )
        assert not [t for t in study.trials if t.state.name == "RUNNING"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + (work / "log.txt").read_text()

    def ended(folder):
        return sorted(
            (
                r["model_type"],
                r["config"]["learning_rate"],
                r["config"]["seed"],
                r["config"]["num_seeds"],
                round(r["final/best_val_accuracy"], 3),
            )
            for r in records(folder)
            if r["status"] != "stopped"
        )

    assert ended(out) == ended(whole_out)

    # the report: the same runs counted, the same choices, the same tables (a run is
    # named by its line in the results file, where the stopped records stand too)
    def section(folder):
        text = (folder / "summary.md").read_text().replace(str(folder), "FOLDER")
        return re.sub(r"results\.jsonl:\d+", "LINE", text.split("## Dataset")[1])

    assert section(out) == section(whole_out)


def test_study_refuses_a_bad_size_in_one_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "jaxcollective.study", "--sizes=9M", f"--folder={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        p.returncode == 2 and "--sizes=9M" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    )


def test_the_long_schedule_halves_six_candidates_at_4_12_and_36_epochs():
    from jaxcollective.study.halving import Halving

    plan = Halving.plan({}, 36, LONG)
    assert plan.rungs == [4, 12, 36] and plan.alive_counts() == [6, 2, 1]
    assert plan.runs == 9 and plan.epochs == 6 * 4 + 2 * 8 + 1 * 24
    assert {c["weight_decay"] for c in plan.candidates} == {0.0, 1e-4}
    assert Halving.plan(
        {"learning_rates": "0.01", "weight_decays": "0"}, 3, LONG
    ).alive_counts() == [
        1,
        1,
    ]
    # the convergence check: twice the epochs by default, never fewer than the study's
    assert plan.check == 72 and Halving.plan({"check_epochs": "0"}, 36, LONG).check == 0
    with pytest.raises(ConfigError, match="--check_epochs=30"):
        Halving.plan({"check_epochs": "30"}, 36, LONG)


def test_the_converged_schedule_halves_at_4_and_12_then_trains_to_the_stop():
    from jaxcollective.study.halving import Halving

    plan = Halving.plan({}, 150, CONVERGED)
    assert plan.rungs == [4, 12, 150] and plan.alive_counts() == [6, 2, 1] and plan.check == 0
    assert plan.stopping == {"lr_plateau_patience": 8, "early_stopping_patience": 16}
    assert (
        plan.to_stop(3) == 1 * (150 - 12) + 2 * 150 and Halving.plan({}, 36, LONG).to_stop(3) == 0
    )
    plan = Halving.plan({"plateau": "2", "patience": "5"}, 8, CONVERGED)
    assert plan.rungs == [4, 8] and plan.stopping == {
        "lr_plateau_patience": 2,
        "early_stopping_patience": 5,
    }
    with pytest.raises(UsageError, match="--patience must be an integer >= 1"):
        Halving.plan({"patience": "0"}, 100, CONVERGED)


def test_the_time_left_counts_runs_to_the_stop_as_the_stopped_ones_trained(tmp_path):
    from jaxcollective.study.progress import Progress

    results = tmp_path / "results.jsonl"
    stop = {"early_stopping_patience": 5}
    results.write_text(
        json.dumps(
            {
                "status": "finished",
                "epochs_completed": 4,
                "model_params": 1,
                "config": {"epochs": 4, **stop},
            }
        )
        + "\n"
    )
    # 1000 parameter-epochs, 600 of them runs to the stop counted at 100 epochs
    progress = Progress([results], 10, 1000.0, to_stop=600.0, rungs=(4, 12, 100))
    assert progress.expected_work() == (1000.0, True)  # no run has stopped: an upper bound
    with open(results, "a") as f:
        for n, cap, stopped in (
            (40, 100, True),
            (60, 100, True),
            # under an earlier cap of 50: one stopped (counts as a stop
            # at 20 of 100), one reached it (trained again: not counted)
            (20, 50, True),
            (50, 50, False),
        ):
            f.write(
                json.dumps(
                    {
                        "status": "finished",
                        "epochs_completed": n,
                        "model_params": 1,
                        "stopped_early": stopped,
                        "config": {"epochs": cap, **stop},
                    }
                )
                + "\n"
            )
    progress.show()
    assert progress.expected_work() == (pytest.approx(1000 - 600 * (1 - 0.4)), False)
    assert progress.count() == (4, 4 + 40 + 60 + 20)
    assert Progress([results], 10, 1000.0).expected_work() == (1000.0, False)
    assert Progress([results], 10, 1000.0).count() == (5, 4 + 40 + 60 + 20 + 50)


def test_the_count_of_runs_leaves_out_other_invocations_types_and_sizes(tmp_path):
    """Two invocations share a study's files (baseline_shot with --model_types=deep_resnet
    and with very_deep_resnet): each counts its own runs only, not 106 of 72."""
    from jaxcollective.study.progress import Progress, of_cells

    def rec(model_type, params):
        return {
            "model_type": model_type,
            "status": "finished",
            "epochs_completed": 2,
            "model_params": params,
        }

    results = tmp_path / "results.jsonl"
    results.write_text(
        "".join(
            json.dumps(rec(t, n)) + "\n"
            for t, n in (
                ("deep_resnet", 565_834),  # 567,044's baseline
                ("deep_resnet", 2_971_314),
                ("very_deep_resnet", 566_500),
                ("deep_resnet", 1_800_000),  # another size
            )
        )
    )
    mine = of_cells(["deep_resnet"], [567_044, 2_969_887])
    assert Progress([results], 4, 1.0, mine=mine).count() == (2, 2 * (565_834 + 2_971_314))
    assert Progress([results], 4, 1.0).count()[0] == 4
    assert of_cells(["collective"], [567_044])(
        {"model_type": "collective", "model_params": 566_997}
    )


def test_a_run_that_stopped_early_answers_any_cap_at_or_above_its_stop(tmp_path):
    from jaxcollective.study.records import answers, find

    keys = {"model_type": "shallow", "dataset": "digits", "early_stopping_patience": 3}
    path = tmp_path / "results.jsonl"
    recs = [
        {
            "status": "finished",
            "epochs_completed": 30,
            "stopped_early": True,
            "config": {**keys, "seed": 0, "epochs": 50},
        },
        {
            "status": "finished",
            "epochs_completed": 50,
            "stopped_early": False,
            "config": {**keys, "seed": 1, "epochs": 50},
        },
        {"status": "diverged", "epochs_completed": 7, "config": {**keys, "seed": 2, "epochs": 50}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert [answers(recs[0], e) for e in (29, 30, 50, 300)] == [False, True, True, True]
    assert [answers(recs[1], e) for e in (40, 50, 51)] == [False, True, False]
    assert [answers(recs[2], e) for e in (6, 7, 300)] == [False, True, True]
    assert find(path, {**keys, "seed": 0, "epochs": 300}) == recs[0]
    assert find(path, {**keys, "seed": 1, "epochs": 300}) is None  # reached 50: train again
    assert find(path, {**keys, "seed": 1, "epochs": 50}) == recs[1]
    assert find(path, {**keys, "seed": 2, "epochs": 300}) == recs[2]
    assert find(path, {**keys, "seed": 0, "epochs": 20}) is None  # it trained past 20


def test_the_halving_table_puts_a_run_to_the_stop_under_a_lower_cap_in_the_last_rung(tmp_path):
    from jaxcollective.study.halving import Halving
    from jaxcollective.study.records import COPY
    from jaxcollective.study.tables import write_halving_table

    plan = Halving.plan({"learning_rates": "0.01,0.001", "weight_decays": "0"}, 100, CONVERGED)
    assert plan.rungs == [4, 12, 100]

    def rec(lr, cap, done, val, stopped=False):
        return {
            "model_type": "shallow",
            "model_params": 1000,
            "status": "finished",
            "epochs_completed": done,
            "stopped_early": stopped,
            "final/best_val_accuracy": val,
            "config": {
                "learning_rate": lr,
                "weight_decay": 0.0,
                "epochs": cap,
                "early_stopping_patience": 5,
            },
        }

    halving = [
        rec(0.01, 4, 4, 70.0),
        rec(0.001, 4, 4, 60.0),
        rec(0.01, 12, 12, 80.0),
        rec(0.001, 12, 12, 75.0),
        rec(0.01, 50, 30, 85.0, stopped=True),  # stopped under the first cap of 50
        rec(0.001, 50, 50, 81.0),
        rec(0.001, 100, 77, 83.0, stopped=True),
    ]  # again
    (tmp_path / "halving.jsonl").write_text("".join(json.dumps(r) + "\n" for r in halving))
    (tmp_path / "results.jsonl").write_text(json.dumps({**halving[4], COPY: 5}) + "\n")
    write_halving_table(
        tmp_path / "halving.jsonl", tmp_path / "results.jsonl", tmp_path / "table.md", plan
    )
    text = (tmp_path / "table.md").read_text()
    assert "| epoch 4 | epoch 12 | to the stop (at most 100) |" in text
    assert "| shallow | 1,000 | 0.01 | 0.0 | 70.00 | 80.00 | 85.00 | **yes** |" in text
    assert "| shallow | 1,000 | 0.001 | 0.0 | 60.00 | 75.00 | 83.00 |  |" in text


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["--schedule=converged", "--check_epochs=50"],
            "--check_epochs belongs to --schedule=long",
        ),
        (["--schedule=long", "--patience=5"], "--patience belongs to --schedule=converged"),
        (["--plateau=5"], "--plateau belongs to --schedule=converged"),
        (["--schedule=slow"], "expected short, long, converged"),
        (["--schedule=best_shot", "--model_types=deep"], "trains collective only"),
        (["--schedule=best_shot", "--learning_rates=0.1"], "pass --candidates=N instead"),
        (
            ["--schedule=baseline_shot", "--model_types=collective"],
            "trains deep_resnet, very_deep_resnet only",
        ),
    ],
)
def test_an_option_of_another_schedule_is_refused_in_one_line(argv, says, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "jaxcollective.study", *argv, f"--folder={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.longest
@pytest.mark.slow
def test_the_converged_study_trains_every_run_to_its_stop_and_each_seed_alone(tmp_path):
    out = tmp_path / "out"
    work = out / ".work"  # the running state
    cmd = [
        sys.executable,
        "-m",
        "jaxcollective.study",
        "--schedule=converged",
        "--dataset=digits",
        "--plateau=1",
        "--patience=12",
        "--sizes=0.57M",
        "--model_types=shallow",
        "--learning_rates=0.01",
        "--weight_decays=0",
        "--seeds=2",  # (halving: the long test)
        f"--folder={out}",
    ]
    # a cap of 13 epochs: no run can go 12 epochs without a new best before it
    p = subprocess.run([*cmd, "--epochs=13"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + (work / "log.txt").read_text()
    # the time left: an upper bound until a run has stopped
    assert "at most ~" in next(line for line in p.stderr.splitlines() if "[study]" in line)
    halving = records_of(out / "halving.jsonl")
    assert {r["config"]["epochs"] for r in halving} == {4, 12, 13}
    assert all(
        r["config"]["lr_plateau_patience"] == 1 and r["config"]["early_stopping_patience"] == 12
        for r in halving
    )
    recs = records_of(out / "results.jsonl")
    # the choice at seed 0 (copied) and seed 1, a run of its own; both reached the cap
    assert [(r["config"]["seed"], r["config"]["num_seeds"]) for r in recs] == [(0, 1), (1, 1)]
    assert [(r["stopped_early"], r["epochs_completed"]) for r in recs] == [(False, 13)] * 2
    row = next(
        line
        for line in (out / "summary.md")
        .read_text()
        .split("Early stopping: where each run of the choice ended")[1]
        .splitlines()
        if line.startswith("| shallow |")
    )
    assert "| 13, 13 |" in row and "**no** (reached the cap)" in row
    # a higher cap trains again the runs that reached the lower one, and only those
    p = subprocess.run([*cmd, "--epochs=40"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + (work / "log.txt").read_text()
    lines = [line for line in p.stderr.splitlines() if line.startswith("[study]")]
    assert len(lines) == 2 and lines[-1].startswith("[study] 4/4 runs")
    again = records_of(out / "halving.jsonl")[len(halving) :]
    assert [(r["config"]["epochs"], r["resumed_from_epoch"]) for r in again] == [(40, 0)]
    recs = records_of(out / "results.jsonl")
    assert [(r["config"]["seed"], r["config"]["epochs"]) for r in recs] == [
        (0, 13),
        (1, 13),
        (0, 40),
        (1, 40),
    ]
    for r in recs[2:]:
        assert r["stopped_early"] or r["epochs_completed"] == 40
        assert len(r["val_accuracy_curves"][0]) == r["epochs_completed"] > 13
        # the same trajectory: its first 13 epochs are the capped run's
        assert r["val_accuracy_curves"][0][:13] == pytest.approx(
            recs[r["config"]["seed"]]["val_accuracy_curves"][0], abs=1e-6
        )
    text = (out / "summary.md").read_text()
    table = text.split("Early stopping: where each run of the choice ended")[1]
    row = next(line for line in table.splitlines() if line.startswith("| shallow |"))
    stops = ", ".join(str(r["epochs_completed"]) for r in recs[2:])
    assert f"| {stops} |" in row
    assert ("| yes |" in row) == all(r["stopped_early"] for r in recs[2:])
    assert "to the stop (at most 40)" in text and "2 duplicate runs folded" in text
    # the same command again trains nothing
    p = subprocess.run([*cmd, "--epochs=40"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert len(records_of(out / "halving.jsonl")) == len(halving) + 1
    assert len(records_of(out / "results.jsonl")) == 4 and "[study]" not in p.stderr


@pytest.mark.slow
def test_the_long_study_halves_on_validation_then_trains_the_choice_at_more_seeds(tmp_path):
    out = tmp_path / "out"
    work = out / ".work"  # the running state
    cmd = [
        sys.executable,
        "-m",
        "jaxcollective.study",
        "--schedule=long",
        "--dataset=digits",
        "--epochs=3",
        "--sizes=0.57M",
        "--model_types=shallow",
        "--learning_rates=0.0001,0.01",
        "--weight_decays=0",
        "--seeds=2",
        "--check_epochs=5",
        f"--folder={out}",
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + (work / "log.txt").read_text()
    halving = records_of(out / "halving.jsonl")
    # both candidates to epoch 1; the better one on validation extended to epoch 3
    first = {r["config"]["learning_rate"]: r for r in halving if r["config"]["epochs"] == 1}
    assert sorted(first) == [0.0001, 0.01]
    best = max(first, key=lambda lr: first[lr]["final/best_val_accuracy"])
    (last,) = [r for r in halving if r["config"]["epochs"] == 3]
    assert last["config"]["learning_rate"] == best and last["resumed_from_epoch"] == 1
    assert all(r["config"]["use_augmentation"] for r in halving)
    # the choice at seed 0 (its record copied), then seed 1; curves recorded
    recs = records_of(out / "results.jsonl")
    assert [(r["config"]["seed"], r["config"]["learning_rate"]) for r in recs] == [
        (0, best),
        (1, best),
    ]
    assert all(len(r["val_accuracy_curves"][0]) == 3 for r in recs)
    text = (out / "summary.md").read_text()
    assert "Convergence: the epoch of the best validation accuracy" in text
    assert "Successive halving" in text and "**yes**" in text
    assert (out / "digits" / "val_curves.png").exists()
    # the convergence check: the choice at seed 0 trained 5 epochs, beside its 3-epoch run
    (check,) = records_of(out / "check.jsonl")
    assert (
        check["config"]["epochs"],
        check["config"]["seed"],
        check["config"]["learning_rate"],
    ) == (5, 0, best) and len(check["val_accuracy_curves"][0]) == 5
    row = next(line for line in text.splitlines() if line.startswith(f"| shallow | {best} |"))
    assert (
        f"{recs[0]['final/best_val_accuracy']:.2f}" in row
        and f"{check['final/test_accuracy']:.2f}" in row
    )
    assert "Convergence check: the choices trained 5 epochs" in text
    assert (out / "check" / "digits" / "val_curves.png").exists()
    info = json.loads((out / "study.json").read_text())
    assert info["schedule"] == "long" and info["cpu_s"] > 0
    # the same command again trains nothing
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert len(records_of(out / "halving.jsonl")) == len(halving)
    assert len(records_of(out / "results.jsonl")) == 2 and len(records_of(out / "check.jsonl")) == 1
    assert "[study]" not in p.stderr


def records_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_committed_converged_study_is_finished_the_command_trains_nothing(tmp_path):
    """The committed records are the study: its command, on a copy of its folder, finds
    every run done, trains nothing, and writes the same report."""
    import shutil

    folder = tmp_path / "study_converged"
    shutil.copytree(ROOT / "docs" / "study_converged", folder)
    before = {f: (folder / f).read_text() for f in ("results.jsonl", "halving.jsonl", "study.json")}
    p = subprocess.run(
        [sys.executable, "-m", "jaxcollective.study", "--schedule=converged", f"--folder={folder}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "[study]" not in p.stderr and "[run]" not in p.stderr, p.stderr[-3000:]
    assert {f: (folder / f).read_text() for f in before} == before
    committed = (ROOT / "docs" / "study_converged" / "summary.md").read_text()
    # the same report, its rerun commands naming the copy's records
    made = (folder / "summary.md").read_text().replace(str(folder), "docs/study_converged")
    assert made.split("\n", 3)[3] == committed.split("\n", 3)[3]
    # its records name no machine: every path in them is the repository's
    assert "/work/" not in "".join(before.values()) and '"/' not in before["results.jsonl"]


@pytest.mark.longest
@pytest.mark.slow
def test_the_best_shot_halves_drawn_collectives_sized_to_the_budget_then_seeds(tmp_path):
    """--schedule=best_shot: drawn collectives, each sized to the size's collective count,
    halved on validation; the choice at more seeds; the report beside the converged
    study's baselines."""
    from jaxcollective.study.halving import draw_candidates

    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "jaxcollective.study",
        "--schedule=best_shot",
        "--dataset=digits",
        "--candidates=3",
        "--epochs=5",
        "--patience=3",
        "--sizes=0.57M",
        "--seeds=2",
        f"--folder={out}",
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr + (out / ".work" / "log.txt").read_text()
    halving = records_of(out / "halving.jsonl")
    drawn = draw_candidates(3)
    budget = halving[0]["collective_budget"]
    assert {r["model_type"] for r in halving} == {"collective"}
    # every candidate sized to one budget: the size's collective on this dataset
    assert all(r["config"]["collective_budget"] == budget for r in halving)
    assert all(abs(r["model_params"] - budget) <= 0.01 * budget for r in halving)
    assert [r["config"]["n_total"] for r in halving[:3]] == [c["n_total"] for c in drawn]
    assert len({json.dumps(r["sized_widths"]) for r in halving[:3]}) == 3
    # 3 candidates to epoch 4, the best to its stop (at most 5), then seed 1
    assert [r["config"]["epochs"] for r in halving] == [4, 4, 4, 5]
    best = max(range(3), key=lambda i: halving[i]["final/best_val_accuracy"])
    assert halving[3]["config"]["learning_rate"] == drawn[best]["learning_rate"]
    recs = records_of(out / "results.jsonl")
    assert [r["config"]["seed"] for r in recs] == [0, 1]
    assert all(r["config"]["learning_rate"] == drawn[best]["learning_rate"] for r in recs)
    text = (out / "summary.md").read_text()
    assert "3 configurations drawn at random" in text and "| expert width factor |" in text
    # the converged study's runs joined the report in the cells (dataset, model type,
    # size) the study lacks: all of them here, its own dataset's section
    assert "from docs/study_converged/results.jsonl: balanced, collective," in text.split("\n")[2]
    assert "--from_record=docs/study_converged/results.jsonl:1`" in text  # a collective
    assert "--from_record=docs/study_converged/results.jsonl:4`" in text  # shallow
    assert "## Dataset: fashion_mnist" in text and "## Dataset: digits" in text
    assert f"--from_record={out}/results.jsonl:1" in text


@pytest.mark.slow
def test_the_committed_answer_is_the_report_of_the_committed_records(tmp_path, monkeypatch):
    """docs/answer (README's tables and forest plot) is what its command in results.md
    makes from the three studies' committed records: a new record, or a change to the
    report, without regenerating it fails here."""
    from jaxcollective.report.command import main

    monkeypatch.chdir(ROOT)  # the command's paths, as results.md gives them
    command = (ROOT / "docs" / "results.md").read_text()
    args = [
        "--results=docs/study_best_shot/results.jsonl,docs/study_baseline_shot/results.jsonl",
        "--join=docs/study_converged/results.jsonl",
        "--select=validation",
    ]
    assert all(a in command for a in args)
    assert main([*args, f"--out={tmp_path}"]) == 0
    made = (tmp_path / "summary.md").read_text()
    assert made == (ROOT / "docs" / "answer" / "summary.md").read_text()
