"""Sweeps at their edges: a population logging to W&B (one run per member, open at
once), a grid as a set claimed point by point (across workers, reruns, extensions,
Ctrl-C and kill -9), a retried trial keeping its place in Hyperband, and the small
promises of the progress line and the checks before a study."""

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
# noqa: E402
from jaxcollective.sweep.samplers import GridSampler  # noqa: E402

# noqa: E402
from jaxcollective.sweep.runner import main as sweep_main  # noqa: E402
from shared import saved_steps  # noqa: E402
from wandb_offline import read_offline_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LRS, SEEDS = [0.001, 0.003, 0.01], [0, 1]
POINTS = [(lr, s) for lr in LRS for s in SEEDS]  # the file's order: the first key slowest


def write(tmp, spec, name="sweep.yaml"):
    path = tmp / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def grid_file(tmp, epochs=1, **params):
    return write(
        tmp,
        {
            "program": "run.py",
            "method": "grid",
            "metric": {"name": "val/accuracy", "goal": "maximize"},
            "parameters": {
                "learning_rate": {"values": LRS},
                "seed": {"values": SEEDS},
                "model_type": {"value": "shallow"},
                "dataset": {"value": "digits"},
                "target_params": {"value": 20000},
                "batch_size": {"value": 64},
                "epochs": {"value": epochs},
                "progress": {"value": False},
                "checkpoint_dir": {"value": str(tmp / "ck")},
                "checkpoint_every": {"value": 1},
                **params,
            },
        },
    )


def lines(path):
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def args(tmp, study="g"):
    return [
        f"--results={tmp / 'r.jsonl'}",
        f"--storage=sqlite:///{tmp / 's.db'}",
        f"--study={study}",
    ]


def launch(path, *extra, env=None):
    env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "jaxcollective.sweep", str(path), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def point(rec):
    return rec["config"]["learning_rate"], rec["config"]["seed"]


def finished_points(path):
    return sorted(point(r) for r in lines(path) if r["status"] == "finished")


def study_of(tmp, study="g"):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{tmp / 's.db'}")


def wait_for(cond, proc, what, timeout=300):
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"exited before {what}: " + proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------------ grids
def test_the_grid_order_is_the_files_and_does_not_depend_on_the_seed():
    g = GridSampler({"learning_rate": LRS, "seed": SEEDS})
    assert [(p["learning_rate"], p["seed"]) for p in g.points] == POINTS
    assert GridSampler({"learning_rate": LRS, "seed": SEEDS}).points == g.points


@pytest.mark.slow
def test_a_grid_is_every_point_once_across_extensions_and_workers(tmp_path, capsys):
    path = grid_file(tmp_path)
    # a seed of its own: the order of the points is the file's all the same
    assert sweep_main([str(path), "--trials=3", "--seed=7", *args(tmp_path)]) == 0
    assert [point(r) for r in lines(tmp_path / "r.jsonl")] == POINTS[:3]
    capsys.readouterr()
    # extended past its size: the grid says so, and runs each point left once
    assert sweep_main([str(path), "--trials=10", *args(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "the grid has 6 points" in err and "6/6 done" in err and "/10" not in err
    assert [point(r) for r in lines(tmp_path / "r.jsonl")] == POINTS
    assert sweep_main([str(path), "--trials=6", *args(tmp_path)]) == 0  # done: runs nothing
    assert len(lines(tmp_path / "r.jsonl")) == 6
    assert {t.state.name for t in study_of(tmp_path).trials} == {"COMPLETE"}
    # another grid under the same study name: one line (Optuna cannot change choices)
    spec = yaml.safe_load(path.read_text())
    spec["parameters"]["learning_rate"]["values"] = [*LRS, 0.03]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    capsys.readouterr()
    assert sweep_main([str(path), "--trials=8", *args(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning_rate" in err[0] and "--study" in err[0], err
    assert len(lines(tmp_path / "r.jsonl")) == 6

    # two workers on a fresh study: six distinct points, both workers busy
    other = tmp_path / "two"
    other.mkdir()
    p = launch(grid_file(other), "--parallel=2", "--trials=6", *args(other))
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    recs = lines(other / "r.jsonl")
    assert sorted(point(r) for r in recs) == sorted(POINTS)
    assert len({r["sweep_worker"] for r in recs}) == 2
    assert {t.state.name for t in study_of(other).trials} == {"COMPLETE"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_stopped_grid_point_is_resumed_never_run_twice_never_skipped(tmp_path, sig):
    path = grid_file(tmp_path, epochs=6)
    ck = tmp_path / "ck"
    p = launch(path, "--trials=6", "--heartbeat=2", *args(tmp_path))
    # stopped in the second point, once it has saved an epoch
    wait_for(
        lambda: len(lines(tmp_path / "r.jsonl")) == 1 and saved_steps(ck),
        p,
        "the second point's first checkpoint",
    )
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == (0 if sig == signal.SIGINT else -signal.SIGKILL), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    p = launch(path, "--trials=6", "--heartbeat=2", *args(tmp_path))  # the same command
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    recs = lines(tmp_path / "r.jsonl")
    assert finished_points(tmp_path / "r.jsonl") == sorted(POINTS)
    (retry,) = [r for r in recs if "sweep_retry_of" in r]
    assert point(retry) == POINTS[1] and retry["resumed_from_epoch"] >= 1
    states = [t.state.name for t in study_of(tmp_path).trials]
    # the stopped (or killed) trial and its retry; no surplus, nothing left running
    assert states.count("COMPLETE") == 6 and states.count("FAIL") == 1 and len(states) == 7
    assert not any(t.user_attrs.get("status") == "surplus" for t in study_of(tmp_path).trials)


# ------------------------------------------------------------------ populations
POP = {
    "program": "run.py",
    "method": "random",
    "metric": {"name": "val/accuracy", "goal": "maximize"},
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
    "parameters": {
        "dataset": {"value": "digits"},
        "model_type": {"value": "shallow"},
        "target_params": {"value": 20000},
        "batch_size": {"value": 64},
        "optimizer": {"value": "sgd"},
        "progress": {"value": False},
        "epochs": {"value": 3},
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
        "seed": {"distribution": "int_uniform", "min": 0, "max": 999},
    },
}


@pytest.mark.slow
def test_a_population_logs_each_member_to_its_own_wandb_run(tmp_path):
    """W&B on (offline, as the default install without a key logs): a run per member,
    open at once, each with its own history and summary, and none of wandb's ~40 lines
    a run on the sweep's console."""
    path = write(tmp_path, POP)
    p = launch(
        path,
        "--trials=4",
        "--population=2",
        *args(tmp_path, "b8"),
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)},
    )
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "[sweep b8] 4/4 done" in err and "wandb:" not in err + out, err[-3000:]
    recs = {r["sweep_trial"]: r for r in lines(tmp_path / "r.jsonl")}
    assert sorted(recs) == [0, 1, 2, 3] and {r["population_slot"] for r in recs.values()} == {0, 1}
    runs = read_offline_runs(tmp_path)
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    for run in runs:
        rec = recs[run.config["sweep_trial"]]
        assert [row["epoch"] for row in run.history] == list(range(1, rec["epochs_completed"] + 1))
        assert run.summary["final/test_accuracy"] == pytest.approx(rec["final/test_accuracy"])
        assert run.history[-1]["val/accuracy"] == pytest.approx(rec["final_val_accuracy"])
        assert run.exit_code == 0
    study = study_of(tmp_path, "b8")
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}


@pytest.mark.slow
def test_a_retried_trial_is_pruned_or_kept_as_the_uninterrupted_one(tmp_path):
    """SIGTERM a Hyperband population mid-study, rerun: every trial ends as it does in the
    same study run without a stop (its bracket is its original's, and the stopped
    original no longer competes beside its retry); the rerun takes the retries and
    nothing else (no surplus trial), and its progress counts them as queued."""
    spec = json.loads(json.dumps(POP))
    spec["parameters"]["epochs"] = {"value": 9}  # rungs at 1, 3, 9 (bracket 0)
    spec["parameters"]["learning_rate"] = {
        "distribution": "log_uniform_values",
        "min": 1e-3,
        "max": 0.1,
    }
    # one study name in two stores: Optuna hashes the name and trial number to brackets
    outcomes = {}
    for name in ("whole", "stopped"):
        tmp = tmp_path / name
        tmp.mkdir()
        spec["parameters"]["checkpoint_dir"] = {"value": str(tmp / "ck")}
        spec["parameters"]["checkpoint_every"] = {"value": 1}
        path = write(tmp, spec)
        cmd = ["--trials=6", "--population=6", *args(tmp, "h")]
        if name == "stopped":
            p = launch(path, *cmd)
            wait_for(lambda: max(saved_steps(tmp / "ck"), default=0) >= 4, p, "epoch 4")
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
            stopped = [r for r in lines(tmp / "r.jsonl") if r["status"] == "stopped"]
            assert stopped
        p = launch(path, *cmd)
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        recs = [r for r in lines(tmp / "r.jsonl") if r["status"] != "stopped"]
        assert len(recs) == 6
        outcomes[name] = {point(r): (r["status"], r["epochs_completed"]) for r in recs}
    assert outcomes["stopped"] == outcomes["whole"]
    statuses = [s for s, _ in outcomes["whole"].values()]
    assert "pruned" in statuses and "finished" in statuses, outcomes  # Hyperband had work
    # the rerun: the stopped trials queued, then training, never more than the population
    first, *progress = [line for line in err.splitlines() if line.startswith("[sweep h]")]
    assert first.startswith(f"[sweep h] resuming study h ({6 - len(stopped)}/6 done)"), first
    assert progress[0].endswith(
        f"{len(stopped)} failed or stopped), 0 running, {len(stopped)} queued"
    ), progress[0]
    assert all(int(line.split(" running")[0].rsplit(" ", 1)[1]) <= 6 for line in progress)
    assert "6/6 done" in progress[-1]
    trials = optuna.load_study(study_name="h", storage=f"sqlite:///{tmp / 's.db'}").trials
    assert [t.state.name for t in trials].count("FAIL") == len(stopped) and len(trials) == 6 + len(
        stopped
    )
    assert not any(t.user_attrs.get("status") == "surplus" for t in trials)


def test_a_population_of_multi_seed_trials_is_refused_before_the_study(tmp_path, capsys):
    path = write(tmp_path, POP)
    rc = sweep_main([str(path), "--population=2", "--set", "num_seeds=2", *args(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "num_seeds" in err[0] and "--population" in err[0]
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "r.jsonl").exists()
    rc = sweep_main([str(path), "--population=100000", *args(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--population" in err[0] and "--num_seeds" not in err[0]


def test_every_call_a_study_makes_on_its_database_waits_out_a_restart():
    """A study puts Optuna's _CachedStorage in front of the RDB storage, which calls some of
    its private methods: each must be wrapped (store.PatientStorage), or a progress line
    during a server restart ends the worker."""
    import re

    from optuna.storages import RDBStorage, _cached_storage

    from jaxcollective.sweep.store import PatientStorage

    called = set(
        re.findall(r"self\._backend\.([a-z_]+)", Path(_cached_storage.__file__).read_text())
    )
    trivial = {"get_heartbeat_stale_trial_callback"}  # returns an attribute: no query
    assert "_get_trials" in called
    bare = sorted(
        n for n in called - trivial if getattr(PatientStorage, n) is getattr(RDBStorage, n)
    )
    assert not bare, f"not retried during an outage: {bare}"


RETRY_REPORTS_AGAIN = """
import optuna
from optuna.trial import TrialState
from jaxcollective.sweep.retry import RETRY
study = optuna.create_study(direction="maximize")
trial = study.ask()
for epoch in (1, 2):
    trial.report(0.5, epoch)
study.tell(trial, state=TrialState.FAIL)
RETRY(study, study._storage.get_trial(trial._trial_id))
retry = study.ask()  # resumed from the checkpoint of epoch 1: reports epoch 2 again
assert retry.number == 1 and 2 in study._storage.get_trial(retry._trial_id).intermediate_values
retry.report(0.5, 2)
print("reported")
"""


def test_a_resumed_retry_reports_an_epoch_again_without_a_warning():
    p = subprocess.run(
        [sys.executable, "-c", RETRY_REPORTS_AGAIN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and p.stdout.strip() == "reported", p.stderr[-2000:]
    assert "Warning" not in p.stderr, p.stderr


def test_a_stopped_trials_retry_keeps_its_hyperband_bracket_and_values(tmp_path):
    """The sequential loop's stop (sweep.conclude) queues a retry that sits in its
    original's bracket with its original's reported values; the stopped original is in
    no bracket. (The population path is tested end to end above.)"""
    from jaxcollective.sweep.samplers import Hyperband
    from jaxcollective.sweep.retry import RETRY
    from jaxcollective.sweep.claims import conclude

    pruner = Hyperband(min_resource=1, max_resource=27, reduction_factor=3)  # 4 brackets
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}",
        pruner=pruner,
        direction="maximize",
        study_name="hb",
    )
    pruner._try_initialization(study)  # its brackets (prune() makes them at the first report)
    originals, running = [], [study.ask() for _ in range(8)]
    for t in running:
        t.report(50.0 + t.number, 1)
        originals.append(
            (t.number, pruner._get_bracket_id(study, study._storage.get_trial(t._trial_id)))
        )
    for t in running:
        t.set_user_attr("status", "stopped")  # as trial_outcome records a signal's stop
        conclude(study, t, "stopped", None)
    own = []
    for number, bracket in originals:
        retry = study.ask()
        frozen = study._storage.get_trial(retry._trial_id)
        assert RETRY.retried_trial_number(frozen) == number
        assert pruner._get_bracket_id(study, frozen) == bracket
        assert frozen.intermediate_values == {1: 50.0 + number}
        own.append(optuna.pruners.HyperbandPruner._get_bracket_id(pruner, study, frozen))
        study.tell(retry, 60.0)
    assert own != [b for _, b in originals]  # by its own number, some would move
    for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,)):
        assert pruner._get_bracket_id(study, t) == -1


def test_a_draining_population_shrinks_only_when_it_pays():
    from jaxcollective.sweep.populations import shrink_pays

    compile_then = [10.0, 1.0, 1.0]  # the first epoch compiled for 9 s, then 1 s an epoch
    assert shrink_pays(8, 2, compile_then, epochs_left=20)  # 20 x 1 x (1 - 2/8) = 15 > 9
    assert not shrink_pays(8, 2, compile_then, epochs_left=10)  # 7.5 < 9
    assert not shrink_pays(8, 3, compile_then, epochs_left=16)  # into 4: 8 < 9
    assert shrink_pays(8, 3, compile_then, epochs_left=20)  # 10 > 9
    assert not shrink_pays(8, 2, [10.0], epochs_left=1000)  # no compile time measured yet


@pytest.mark.slow
def test_a_population_sweep_shrinks_and_its_members_train_on(tmp_path, monkeypatch):
    """A grid of 4 points in one population of 4: the two 1-epoch members end after
    epoch 1, the population shrinks to 2 (shrink_pays made to say yes), and the 4-epoch
    members carry on there to the same results as in a population that never shrinks."""
    from jaxcollective.train import population
    from jaxcollective.sweep import populations as sweep

    spec = {
        "program": "run.py",
        "method": "grid",
        "metric": {"name": "val/accuracy", "goal": "maximize"},
        "parameters": {
            **POP["parameters"],
            "epochs": {"values": [1, 4]},
            "seed": {"values": [0, 1]},
            "learning_rate": {"value": 0.05},
        },
    }
    shrinks = []
    smaller = population.Population.smaller

    def spy(self, slots):
        shrinks.append((self.k, list(slots)))
        return smaller(self, slots)

    monkeypatch.setattr(population.Population, "smaller", spy)
    ended = {}
    for name, pays in (("shrinks", True), ("keeps", False)):
        tmp = tmp_path / name
        tmp.mkdir()
        monkeypatch.setattr(sweep, "shrink_pays", lambda *a, pays=pays: pays)
        assert sweep_main([str(write(tmp, spec)), "--trials=4", "--population=4", *args(tmp)]) == 0
        recs = lines(tmp / "r.jsonl")
        assert sorted((r["config"]["epochs"], r["config"]["seed"]) for r in recs) == [
            (1, 0),
            (1, 1),
            (4, 0),
            (4, 1),
        ] and {r["status"] for r in recs} == {"finished"}
        ended[name] = {r["config"]["seed"]: r for r in recs if r["config"]["epochs"] == 4}
        if pays:
            assert shrinks == [(4, [2, 3])]  # once, the two live members, into a population of 2
    assert len(shrinks) == 1
    for seed, r in ended["shrinks"].items():
        kept = ended["keeps"][seed]
        assert r["epochs_completed"] == kept["epochs_completed"] == 4
        assert r["population_slot"] == kept["population_slot"]
        # the same run to float noise: the programs of 4 and of 2 members round alike
        # here (measured: equal to 1e-6); a lost state or epoch counter moves it by points
        assert r["final/best_val_accuracy"] == pytest.approx(
            kept["final/best_val_accuracy"], abs=0.5
        )
        assert r["final_train_loss"] == pytest.approx(kept["final_train_loss"], rel=1e-3)


@pytest.mark.parametrize("population", [1, 3])
def test_a_sweep_whose_every_trial_diverges_stops_after_10_in_a_row(tmp_path, capsys, population):
    """Diverged trials do not count toward --trials: a space that only diverges would draw
    trials for ever; the sweep stops after MAX_DIVERGED_IN_A_ROW, exit 1, saying why."""
    from jaxcollective.sweep.claims import MAX_DIVERGED_IN_A_ROW

    spec = yaml.safe_load(grid_file(tmp_path).read_text())
    spec["method"] = "random"
    spec["parameters"].update(
        learning_rate={"distribution": "log_uniform_values", "min": 1e29, "max": 1e30},
        optimizer={"value": "sgd"},
        seed={"distribution": "int_uniform", "min": 0, "max": 10**6},
    )
    path = write(tmp_path, spec, "diverge.yaml")
    argv = [str(path), "--trials=2", f"--population={population}", *args(tmp_path, "d")]
    assert sweep_main(argv) == 1
    assert f"{MAX_DIVERGED_IN_A_ROW} trials in a row diverged" in capsys.readouterr().err
    recs = lines(tmp_path / "r.jsonl")
    # a population's members in flight when the limit is reached end stopped (retried
    # first by the next run of the command)
    ended = [r["status"] for r in recs if r["status"] != "stopped"]
    assert set(ended) == {"diverged"}
    # a population's members end together: the limit is passed by at most K - 1
    assert MAX_DIVERGED_IN_A_ROW <= len(ended) < MAX_DIVERGED_IN_A_ROW + population
