"""Sweeps you can trust: a study never repeats itself, an interrupted trial is resumed
(not lost, not repeated), one live run per checkpoint folder, resume never contradicts
the record, every check before the first trial, exact trial counts, duplicates folded
in the report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from child import Child
from shared import committed_steps

optuna = pytest.importorskip("optuna")
# noqa: E402
from jaxcollective.report.load import load_results  # noqa: E402

# noqa: E402
from jaxcollective.report.command import make_report  # noqa: E402
from jaxcollective.sweep.runner import main as sweep_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sweep_file(tmp, epochs=1, **params):
    spec = {
        "program": "run.py",
        "method": "random",
        "metric": {"name": "final/test_accuracy", "goal": "maximize"},
        "parameters": {
            "model_type": {"value": "shallow"},
            "dataset": {"value": "digits"},
            "target_params": {"value": 30000},
            "batch_size": {"value": 64},
            "epochs": {"value": epochs},
            "progress": {"value": False},
            "checkpoint_dir": {"value": str(tmp / "ck")},
            "checkpoint_every": {"value": 1},
            "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            "seed": {"distribution": "int_uniform", "min": 0, "max": 10**6},
            **params,
        },
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def common(tmp, study="s"):
    return [
        f"--results={tmp / 'r.jsonl'}",
        f"--storage=sqlite:///{tmp / 's.db'}",
        f"--study={study}",
    ]


def launch(path, *extra):
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.Popen(
        [sys.executable, "-m", "jaxcollective.sweep", str(path), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_extending_a_study_draws_new_trials(tmp_path, capsys):
    path = sweep_file(tmp_path)
    assert sweep_main([str(path), "--trials=2", *common(tmp_path)]) == 0
    assert sweep_main([str(path), "--trials=4", *common(tmp_path)]) == 0
    assert sweep_main([str(path), "--trials=4", *common(tmp_path)]) == 0  # done: runs nothing
    recs = lines(tmp_path / "r.jsonl")
    assert len(recs) == 4
    drawn = {(r["config"]["learning_rate"], r["config"]["seed"]) for r in recs}
    assert len(drawn) == 4
    assert "4/4 done" in capsys.readouterr().err


def test_a_bad_metric_or_value_is_one_line_before_any_trial(tmp_path, capsys):
    path = sweep_file(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["metric"]["name"] = "final/test_acc"
    path.write_text(yaml.safe_dump(spec))
    assert sweep_main([str(path), *common(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "final/test_acc" in err[0] and "final/test_accuracy" in err[0]
    spec["metric"]["name"] = "final/test_accuracy"
    spec["parameters"]["model_type"] = {"values": ["shallow", "deeep"]}
    path.write_text(yaml.safe_dump(spec))
    assert sweep_main([str(path), *common(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'deeep'" in err[0], err
    spec["parameters"]["model_type"] = {"value": "shallow"}
    spec["parameters"]["learning_rate"] = {"distribution": "uniform", "min": -1, "max": 0.1}
    path.write_text(yaml.safe_dump(spec))
    assert sweep_main([str(path), *common(tmp_path)]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "r.jsonl").exists()


def test_ctrl_c_keeps_the_trial_and_the_rerun_resumes_it(tmp_path):
    path = sweep_file(tmp_path, epochs=12)
    args = ["--trials=3", *common(tmp_path)]
    p = launch(path, *args)
    while "1/3 done" not in p.stderr.readline():
        assert p.poll() is None, p.stderr.read()[-2000:]
    ck = tmp_path / "ck"
    deadline = time.time() + 120
    while not any(d.is_dir() and any(d.iterdir()) for d in ck.iterdir()):  # trial 1 saved
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert "run the same command again" in err
    first = lines(tmp_path / "r.jsonl")
    assert [r["status"] for r in first] == ["finished", "stopped"]
    stopped = first[1]
    assert 1 <= stopped["epochs_completed"] < 12
    p = launch(path, *args)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    recs = lines(tmp_path / "r.jsonl")[2:]
    assert [r["status"] for r in recs] == ["finished", "finished"]
    retry = recs[0]
    assert retry["sweep_retry_of"] == stopped["sweep_trial"]
    assert retry["resumed_from_epoch"] == stopped["epochs_completed"]
    assert retry["config"] == stopped["config"]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states and "WAITING" not in states
    assert "pruned" not in {r["status"] for r in lines(tmp_path / "r.jsonl")}


def test_parallel_workers_run_exactly_the_trials_asked_for(tmp_path):
    path = sweep_file(tmp_path)
    p = launch(path, "--parallel", "2", "--trials=4", *common(tmp_path))
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    assert "unexpected argument" not in err
    recs = lines(tmp_path / "r.jsonl")
    assert len(recs) == 4 and len({r["sweep_trial"] for r in recs}) == 4
    assert len({r["sweep_worker"] for r in recs}) == 2
    assert len({(r["config"]["learning_rate"], r["config"]["seed"]) for r in recs}) == 4


RUN = [
    "--dataset=digits",
    "--model_type=shallow",
    "--target_params=150000",
    "--batch_size=64",
    "--checkpoint_every=1",
]


def run_py(tmp, name, *extra, wait=False):
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp / name),
    }
    (tmp / name).mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *RUN,
        f"--results={tmp / 'r.jsonl'}",
        f"--checkpoint_dir={tmp / 'ck'}",
        *extra,
    ]
    if wait:
        return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(
        cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


EPOCH = "/100000 "  # an epoch line of a run asked for 100000 epochs (stopped long before)


def saved_from(folder: Path, epoch: int):
    """Whether orbax has committed the step of `epoch` or a later one (a folder named by it)."""
    return max(committed_steps(folder), default=0) >= epoch


def wandb_ids(folder: Path) -> set[str]:
    return {d.name.rsplit("-", 1)[1] for d in (folder / "wandb").glob("offline-run-*")}


@pytest.mark.longest
def test_two_identical_runs_never_share_a_checkpoint_folder(tmp_path):
    a = Child(proc=run_py(tmp_path, "a", "--epochs=100000"))  # runs until stopped
    a.wait_line(EPOCH, n=3, stream="out")  # a holds the folder before b starts
    # a stays alive and holds its folder's lock, paused (SIGSTOP) so that it does not
    # take the CPU from b for the minute this test runs; SIGCONT before it is stopped
    a.proc.send_signal(signal.SIGSTOP)
    b = Child(proc=run_py(tmp_path, "b", "--epochs=100000"))
    b.wait_line(EPOCH, n=4, stream="out")
    folders = sorted(d.name for d in (tmp_path / "ck").iterdir() if d.is_dir())
    assert len(folders) == 2 and folders[1] == folders[0] + "-2"
    b.wait_for(lambda: saved_from(tmp_path / "ck" / folders[1], 2), "b's save of epoch 2")
    b.proc.send_signal(signal.SIGKILL)
    b.finish()
    # a checkpoint past --epochs: one line, exit 2, nothing trained
    short = run_py(tmp_path, "b", "--epochs=1", wait=True)  # epochs: not in the fingerprint
    assert short.returncode == 2, short.stderr[-2000:]
    assert "--resume=never" in short.stderr and "Traceback" not in short.stderr
    # the restarted b resumes its own folder and its own W&B run while a runs on
    reached = max(committed_steps(tmp_path / "ck" / folders[1]))
    b2 = Child(proc=run_py(tmp_path, "b", f"--epochs={reached + 2}"))
    out_b, err_b = b2.finish()
    a.proc.send_signal(signal.SIGCONT)
    a.wait_line(EPOCH, n=a.count(EPOCH, "out") + 1, stream="out")  # a trains on
    a.proc.send_signal(signal.SIGTERM)
    out_a, err_a = a.finish(timeout=120)
    a, b2 = a.proc, b2.proc
    assert a.returncode == 0 and b2.returncode == 0, err_b[-2000:]
    # no warning of ours (orbax may say that a save in flight when a was paused waited)
    warned = [
        line
        for line in err_a.splitlines()
        if "warning" in line.lower() and "Waiting for previous save to complete" not in line
    ]
    assert not warned and "Traceback" not in err_a, err_a[-2000:]
    assert f"{folders[1]})" in err_b and "resuming from epoch" in err_b
    ids_a, ids_b = wandb_ids(tmp_path / "a"), wandb_ids(tmp_path / "b")
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b
    # a's checkpoint (saved at its SIGTERM) resumes
    stopped_at = lines(tmp_path / "r.jsonl")[-1]["epochs_completed"]
    again = run_py(tmp_path, "a", f"--epochs={stopped_at + 3}", wait=True)
    assert again.returncode == 0 and f"{folders[0]})" in again.stderr, again.stderr[-2000:]
    assert wandb_ids(tmp_path / "a") == ids_a  # the same W&B run, continued
    recs = lines(tmp_path / "r.jsonl")
    assert [r["status"] for r in recs] == ["finished", "stopped", "finished"]
    assert recs[0]["resumed_from_epoch"] >= 1  # b2
    assert recs[2]["resumed_from_epoch"] == recs[1]["epochs_completed"] == stopped_at
    assert not any((tmp_path / "ck").iterdir())  # both finished: no folder, no lock file left


def test_the_report_folds_a_duplicated_trial(tmp_path, capsys):
    rec = {
        "model_type": "shallow",
        "model_params": 1000,
        "status": "finished",
        "final/test_accuracy": 90.0,
        "final/best_val_accuracy": 91.0,
        "final/param_efficiency": 9.0,
        "final/accuracy_per_log10_params": 30.0,
        "config": {"dataset": "digits", "model_type": "shallow", "seed": 1, "learning_rate": 0.01},
    }
    other = json.loads(json.dumps(rec))
    other["config"]["seed"] = 2
    other["final/test_accuracy"] = 92.0
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (rec, rec, other)) + "\n")
    rep = make_report(load_results(path), tmp_path / "out", str(path))
    assert "1 duplicate run folded" in rep["summary"]
    (group,) = rep["datasets"]["digits"]["groups"]
    assert len(group.runs) == 2 and group.mean() == pytest.approx(91.0)


def test_the_report_keeps_the_longest_of_one_experiment_trained_twice(tmp_path):
    """A run that reached a cap, trained again to a higher one (epochs is a length, not
    part of the experiment): one run, the longer."""

    def rec(epochs, test):
        return {
            "model_type": "shallow",
            "model_params": 1000,
            "status": "finished",
            "final/test_accuracy": test,
            "final/best_val_accuracy": test,
            "val_accuracy_curves": [[50.0] * epochs],
            "config": {
                "dataset": "digits",
                "model_type": "shallow",
                "seed": 1,
                "learning_rate": 0.01,
                "epochs": epochs,
            },
        }

    other = rec(10, 80.0)
    other["config"]["seed"] = 2
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (rec(10, 85.0), other, rec(25, 88.0))) + "\n")
    rep = make_report(load_results(path), tmp_path / "out", str(path))
    assert "1 duplicate run folded" in rep["summary"]
    (group,) = rep["datasets"]["digits"]["groups"]
    assert [(r.config["seed"], r.test_accuracy) for r in group.runs] == [(1, 88.0), (2, 80.0)]


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder: a read-only bind mount as root (root writes through chmod),
    else a folder without write permission."""
    src, ro = tmp_path / "ro_src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True)
    if (
        mounted.returncode
        or subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True
        ).returncode
    ):
        subprocess.run(["umount", str(ro)], capture_output=True)
        pytest.skip("no read-only bind mount here (mount refused)")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


@pytest.mark.parametrize("option", ["results", "storage"])
@pytest.mark.parametrize(
    "where", ["read-only folder", "folder that cannot be made", "file where a folder should be"]
)
def test_what_a_sweep_writes_is_checked_before_the_study_is_touched(
    tmp_path, read_only, option, where
):
    path = sweep_file(tmp_path)
    (tmp_path / "file").write_text("x")
    bad = {
        "read-only folder": read_only,
        "folder that cannot be made": read_only / "sub",
        "file where a folder should be": tmp_path / "file",
    }[where]
    results, db = tmp_path / "r.jsonl", tmp_path / "s.db"
    if option == "results":
        results = bad / "r.jsonl"
    else:
        db = bad / "s.db"
    p = launch(path, "--trials=1", f"--results={results}", f"--storage=sqlite:///{db}")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and len(err.strip().splitlines()) == 1, err[-2000:]
    assert f"--{option}=" in err and "cannot be appended to" in err, err
    assert not db.exists() and not results.exists()  # the study untouched, nothing trained
    assert not (tmp_path / "ck").exists()


def test_a_sweep_says_which_study_it_runs(tmp_path, capsys):
    path = sweep_file(tmp_path)
    for trials, says in ((1, "new study s in sqlite:///"), (2, "resuming study s (1/2 done)")):
        assert sweep_main([str(path), f"--trials={trials}", *common(tmp_path)]) == 0
        first = capsys.readouterr().err.splitlines()[0]
        assert first.startswith(f"[sweep s] {says}"), first
    # the default store (beside the results): a mistyped path shows as a new study
    assert (
        sweep_main(
            [str(path), "--trials=1", "--study=s", f"--results={tmp_path / 'typo' / 'r.jsonl'}"]
        )
        == 0
    )
    assert (
        capsys.readouterr().err.splitlines()[0]
        == f"[sweep s] new study s in sqlite:///{tmp_path / 'typo' / 'sweeps.db'}"
    )


def test_one_ctrl_c_stops_every_parallel_worker_and_queues_their_trials(tmp_path):
    path = sweep_file(tmp_path, epochs=40)
    args = ["--parallel=2", "--trials=3", *common(tmp_path)]
    p = launch(path, *args)
    err = Child(proc=p)
    err.wait_line(": epoch 2/40", n=2)  # both workers are training a trial
    p.send_signal(signal.SIGINT)
    text = err.finish(timeout=120)[1]
    assert p.returncode == 0 and "Traceback" not in text, text[-3000:]
    assert text.count("run the same command again") == 2, text[-3000:]
    recs = lines(tmp_path / "r.jsonl")
    assert sorted(r["status"] for r in recs) == ["stopped", "stopped"]
    assert len({r["sweep_worker"] for r in recs}) == 2
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["FAIL", "FAIL", "WAITING", "WAITING"], states  # both queued for retry


def test_a_bayes_sweep_maps_q_uniform_and_int_uniform(tmp_path, capsys):
    """`method: bayes` runs on TPE; q_uniform values lie on their grid of q, int_uniform
    values are integers within their bounds."""
    path = sweep_file(
        tmp_path,
        learning_rate={"distribution": "q_uniform", "min": 0.001, "max": 0.009, "q": 0.002},
        seed={"distribution": "int_uniform", "min": 3, "max": 5},
    )
    spec = yaml.safe_load(path.read_text())
    spec["method"] = "bayes"
    path.write_text(yaml.safe_dump(spec))
    assert sweep_main([str(path), "--trials=4", *common(tmp_path)]) == 0
    recs = lines(tmp_path / "r.jsonl")
    assert len(recs) == 4
    for r in recs:
        lr, seed = r["config"]["learning_rate"], r["config"]["seed"]
        assert any(lr == pytest.approx(q) for q in (0.001, 0.003, 0.005, 0.007, 0.009)), lr
        assert isinstance(seed, int) and 3 <= seed <= 5
    from jaxcollective.sweep.trials import Sweep
    from jaxcollective.sweep.samplers import sampler_of

    sw = Sweep(str(path), {}, str(tmp_path / "r.jsonl"))
    sampler = sampler_of(sw.sweep, sw.space, 0)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._constant_liar
    assert sw.space["learning_rate"] == optuna.distributions.FloatDistribution(
        0.001, 0.009, step=0.002
    )
    assert sw.space["seed"] == optuna.distributions.IntDistribution(3, 5)


def test_readmes_first_local_sweep_command_runs_on_digits(tmp_path):
    """README's command as it stands (a bayes sweep of every model type at 1.8M to 7.15M
    parameters), shortened to 1 trial of 1 epoch: --set dataset=digits drops the file's
    input_dim and num_classes (MNIST's) and says so, and the trial runs on digits."""
    readme = (ROOT / "README.md").read_text()
    cmd = next(
        line
        for line in readme.splitlines()
        if line.startswith("python -m jaxcollective.sweep sweeps/phase1.yaml")
    )
    argv = cmd.split()[3:]
    assert "--set" in argv and "dataset=digits" in argv, cmd
    argv = [
        "--trials=1" if a.startswith("--trials=") else "epochs=1" if a.startswith("epochs=") else a
        for a in argv
    ]
    p = launch(ROOT / argv[0], *argv[1:], *common(tmp_path), "--set", "batch_size=128")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    for key in ("input_dim", "num_classes"):
        assert f"note: --set dataset=digits drops the sweep's fixed {key}" in err
    (rec,) = lines(tmp_path / "r.jsonl")
    assert rec["status"] == "finished" and rec["dataset"] == "digits"
    assert 1_700_000 < rec["model_params"] < 7_300_000 and rec["epochs_completed"] == 1
