"""Local sweeps on Optuna: a sweep file run in-process, pruning, results lines, shared
SQLite studies, unmappable keys, a killed study resumed."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from child import Child

optuna = pytest.importorskip("optuna")
# noqa: E402
from jaxcollective.report.load import load_results  # noqa: E402

# noqa: E402
from jaxcollective.report.command import make_report  # noqa: E402
from jaxcollective.sweep.runner import main as sweep_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end, in subprocesses


def sweep_file(tmp, **over):
    spec = {
        "program": "run.py",
        "method": "random",
        "metric": {"name": "final/test_accuracy", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 4, "eta": 3},
        "parameters": {
            "model_type": {"value": "shallow"},
            "dataset": {"value": "digits"},
            "target_params": {"value": 60000},
            "batch_size": {"value": 64},
            "epochs": {"value": 4},
            "progress": {"value": False},
            "checkpoint_dir": {"value": str(tmp / "ck")},
            # one good and one hopeless learning rate: the pruner has work to do
            "learning_rate": {"values": [0.002, 1e-7]},
            "seed": {"distribution": "int_uniform", "min": 0, "max": 3},
        },
    }
    spec.update(over)
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_local_sweep_runs_prunes_and_reports(tmp_path, capsys):
    path = sweep_file(tmp_path)
    results = tmp_path / "runs" / "results.jsonl"
    assert (
        sweep_main(
            [
                str(path),
                "--trials=8",
                f"--results={results}",
                "--seed=0",
                f"--storage=sqlite:///{tmp_path / 's.db'}",
                "--study=s1",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "[sweep s1] 8/8 done" in err and "best" in err  # the progress display
    recs = lines(results)
    assert len(recs) == 8 and {r["sweep_trial"] for r in recs} == set(range(8))
    statuses = [r["status"] for r in recs]
    assert "pruned" in statuses and "finished" in statuses, statuses
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{tmp_path / 's.db'}")
    best_line = max(
        (r for r in recs if r["status"] == "finished"), key=lambda r: r["final/test_accuracy"]
    )
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
    return subprocess.Popen(
        [sys.executable, "-m", "jaxcollective.sweep", str(path), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_share_one_sqlite_study_with_disjoint_trials(tmp_path):
    """Two processes on one SQLite study take turns: exactly N trials, none twice, and
    the one that runs out first waits for the other's trial instead of leaving. Process
    A is frozen (SIGSTOP) in its first trial while B claims and runs all the others, so
    both take trials whatever the machine's speed."""
    path = sweep_file(tmp_path, early_terminate=None)
    common = [
        "--trials=6",
        f"--storage=sqlite:///{tmp_path / 's.db'}",
        "--study=shared",
        f"--results={tmp_path / 'r.jsonl'}",
    ]
    a = launch(tmp_path, path, *common, "--seed=0")
    a_err = Child(proc=a)
    a_err.wait_line("trial 0: epoch 1/")  # training, not claiming: it holds no lock
    a.send_signal(signal.SIGSTOP)
    try:
        b = launch(tmp_path, path, *common, "--seed=1")
        b_err = Child(proc=b)
        b_err.wait_line("5/6 done")
        b_err.wait_line("waiting for 1 trial running elsewhere")
        assert b.poll() is None  # it does not leave the study one short
    finally:
        a.send_signal(signal.SIGCONT)
    for p, err in ((a, a_err.finish()[1]), (b, b_err.finish()[1])):
        assert p.returncode == 0, err[-2000:]
    recs = lines(tmp_path / "r.jsonl")
    numbers = [r["sweep_trial"] for r in recs]
    assert sorted(numbers) == list(range(6))  # exactly 6, none twice
    assert [r["sweep_trial"] for r in recs if r["sweep_worker"] == a.pid] == [0]
    assert len([r for r in recs if r["sweep_worker"] == b.pid]) == 5
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6


def test_a_killed_study_resumes(tmp_path):
    """kill -9 in a trial's first epoch: the same command retries that trial at once (its
    process is gone from this host), and the study ends with exactly N."""
    path = sweep_file(tmp_path, early_terminate=None)
    common = [
        "--trials=5",
        f"--storage=sqlite:///{tmp_path / 's.db'}",
        "--study=k",
        f"--results={tmp_path / 'r.jsonl'}",
    ]
    p = launch(tmp_path, path, *common)
    err = Child(proc=p)
    err.wait_line("trial 2: epoch 1/")
    p.send_signal(signal.SIGKILL)
    err.finish()
    p = launch(tmp_path, path, *common)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path / 's.db'}")
    states = [t.state.name for t in study.trials]
    assert sorted(states) == ["COMPLETE"] * 5 + ["FAIL"], states  # nothing left RUNNING
    assert "[sweep k] 5/5 done" in err
    recs = lines(tmp_path / "r.jsonl")
    assert len(recs) == 5 and {r["status"] for r in recs} == {"finished"}
    (retry,) = [r for r in recs if "sweep_retry_of" in r]
    assert retry["sweep_retry_of"] == 2 and retry["sweep_trial"] == 3  # the rerun's first


def tiny_sweep(tmp, name="sweep", method="random", **params):
    """A sweep file of 1-epoch digits trials of a 20K-parameter shallow net."""
    spec = {
        "program": "run.py",
        "method": method,
        "metric": {"name": "final/test_accuracy", "goal": "maximize"},
        "parameters": {
            "model_type": {"value": "shallow"},
            "dataset": {"value": "digits"},
            "target_params": {"value": 20000},
            "batch_size": {"value": 64},
            "epochs": {"value": 1},
            "progress": {"value": False},
            "checkpoint_dir": {"value": str(tmp / "ck")},
            **params,
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_default_study_name_is_the_sweep_files_name(tmp_path, capsys):
    """docs/sweeps.md: `--study=NAME` (default: the file's name); the first line is `new
    study NAME in URL` on a fresh store (by default runs/sweeps.db beside the results)."""
    path = tiny_sweep(tmp_path, name="lr_probe", learning_rate={"values": [0.01]})
    assert sweep_main([str(path), "--trials=1", f"--results={tmp_path / 'r.jsonl'}"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert first == f"[sweep lr_probe] new study lr_probe in sqlite:///{tmp_path / 'sweeps.db'}"
    (rec,) = lines(tmp_path / "r.jsonl")
    assert rec["sweep_study"] == "lr_probe" and rec["status"] == "finished"
    names = optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'sweeps.db'}")
    assert names == ["lr_probe"]


def test_the_same_seed_on_fresh_stores_draws_the_same_trials(tmp_path):
    """docs/sweeps.md: a study run again from scratch with the same `--seed` draws the same
    trials; another seed draws others."""
    path = tiny_sweep(
        tmp_path,
        learning_rate={"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        seed={"distribution": "int_uniform", "min": 0, "max": 10**6},
    )

    def drawn(store, seed):
        results = tmp_path / f"{store}.jsonl"
        argv = [str(path), "--trials=3", f"--seed={seed}", f"--results={results}"]
        assert sweep_main([*argv, f"--storage=sqlite:///{tmp_path / store}.db"]) == 0
        recs = sorted(lines(results), key=lambda r: r["sweep_trial"])
        assert [r["sweep_trial"] for r in recs] == [0, 1, 2]
        return [(r["config"]["learning_rate"], r["config"]["seed"]) for r in recs]

    first, again, other = drawn("a", 7), drawn("b", 7), drawn("c", 8)
    assert first == again
    assert len(set(first)) == 3 and not set(first) & set(other), (first, other)


def test_a_grid_point_held_by_a_diverged_trial_is_not_run_again(tmp_path):
    """docs/design.md, "Grids are sets": a point is held by a trial of it that ended for
    good (diverged); docs/sweeps.md: every point runs exactly once across reruns. In
    subprocesses with a deadline: a diverged trial is not a failure the sweep counts, so
    a grid that handed its point out again would run it for ever."""
    path = tiny_sweep(
        tmp_path, method="grid", optimizer={"value": "sgd"}, learning_rate={"values": [1e30, 0.01]}
    )
    argv = [
        "--trials=2",
        f"--results={tmp_path / 'r.jsonl'}",
        f"--storage=sqlite:///{tmp_path / 's.db'}",
        "--study=g",
    ]

    def sweep():
        with Child(proc=launch(tmp_path, path, *argv)) as run:
            _, err = run.finish(timeout=60)
        assert run.proc.returncode == 0, run.output()
        return err

    sweep()
    recs = lines(tmp_path / "r.jsonl")
    assert sorted((r["config"]["learning_rate"], r["status"]) for r in recs) == [
        (0.01, "finished"),
        (1e30, "diverged"),
    ]
    err = sweep()  # the same command again: the grid has no point left
    assert err.splitlines()[0].startswith("[sweep g] resuming study g (1/2 done)"), err
    assert "trial 2" not in err and "waiting" not in err, err
    assert len(lines(tmp_path / "r.jsonl")) == 2  # nothing ran
    study = optuna.load_study(study_name="g", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.user_attrs["status"] == "diverged"
