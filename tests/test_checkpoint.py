"""Checkpoints and resume (orbax): a killed, stopped or retried run continues where it
stopped and ends with the same final metrics as an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxcollective.train import checkpoint

from jaxcollective.train import schedule
from jaxcollective.train.checkpoint import Checkpointer, fingerprint, open_checkpoints, run_dir
from jaxcollective.config import Config
from jaxcollective.train.loop import train_and_evaluate
from jaxcollective.train.writers import Writer
from child import Child
from shared import committed_steps, made_once, saved_steps
from wandb_offline import read_offline_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end, in subprocesses
FINALS = (
    "final/test_accuracy",
    "final/test_loss",
    "final/best_val_accuracy",
    "best_epoch",
    "final_train_loss",
    "final_val_loss",
)
BASE = [
    "--dataset=digits",
    "--model_type=shallow",
    "--target_params=150000",
    "--epochs=12",
    "--batch_size=64",
    "--checkpoint_every=2",
    "--progress=false",
]


def launch(tmp, *extra, env=None, wait=True):
    e = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *BASE,
        f"--results={tmp / 'r.jsonl'}",
        f"--checkpoint_dir={tmp / 'ck'}",
        *extra,
    ]
    if not wait:
        return Child(cmd, cwd=tmp, env=e)
    return subprocess.run(cmd, cwd=tmp, env=e, capture_output=True, text=True, timeout=300)


def records(tmp):
    return [json.loads(line) for line in (tmp / "r.jsonl").read_text().splitlines()]


def kill_once_saved(tmp, epoch: int, *extra, env=None) -> int:
    """Start a 12-epoch run (a checkpoint every 2 epochs) and SIGKILL it as soon as the
    checkpoint of `epoch` or a later one is committed: the event itself, not a sleep
    tuned to how fast a machine trains. Returns the epoch of the checkpoint left."""
    with launch(tmp, *extra, env=env, wait=False) as run:
        run.wait_for(
            lambda: max(saved_steps(tmp / "ck"), default=0) >= epoch,
            f"a committed checkpoint of epoch {epoch} or later",
        )
        run.proc.kill()
        run.finish()
    # the kill follows the commit within a poll (10 ms), the run having 12 - epoch
    # epochs to go; should a machine ever train those faster, say so rather than go on
    # with a run that was never interrupted
    assert run.proc.returncode == -signal.SIGKILL, (
        f"the run ended (exit {run.proc.returncode}) before the kill that followed its "
        f"checkpoint of epoch {epoch}; raise --epochs in BASE" + run.output()
    )
    left = max(saved_steps(tmp / "ck"))
    assert epoch <= left < 12 and left % 2 == 0, left
    return left


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    def make(folder):
        for seeds in (1, 2):
            tmp = folder / f"whole{seeds}"
            tmp.mkdir()
            p = launch(tmp, f"--num_seeds={seeds}")
            assert p.returncode == 0, p.stderr[-2000:]
            assert not any((tmp / "ck").iterdir())  # a finished run leaves no checkpoint

    folder = made_once(tmp_path_factory, "checkpoint_uninterrupted", make)
    return {seeds: records(folder / f"whole{seeds}")[-1] for seeds in (1, 2)}


def kill_mid_run(tmp, *extra):
    """Killed once its checkpoint of epoch 6 (or a later one) is on disk: mid-run."""
    kill_once_saved(tmp, 6, *extra)
    assert not (tmp / "r.jsonl").exists()  # killed: no record yet


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """The checkpoint folder of one run (1 seed) killed with SIGKILL once its checkpoint
    of epoch 6 (or 8 or 10) was committed; a test copies it and goes on from there."""
    return made_once(tmp_path_factory, "checkpoint_killed", kill_mid_run) / "ck"


@pytest.mark.parametrize("seeds", [1, 2])
def test_killed_run_resumes_and_ends_as_an_uninterrupted_one(
    seeds, uninterrupted, killed, tmp_path
):
    if seeds == 1:
        shutil.copytree(killed, tmp_path / "ck")
    else:
        kill_mid_run(tmp_path, f"--num_seeds={seeds}")
    p = launch(tmp_path, f"--num_seeds={seeds}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming from epoch" in p.stderr
    rec = records(tmp_path)[-1]
    assert rec["status"] == "finished" and rec["epochs_completed"] == 12
    assert 2 <= rec["resumed_from_epoch"] < 12 and rec["resumed_from_epoch"] % 2 == 0
    for k in FINALS:
        assert rec[k] == pytest.approx(uninterrupted[seeds][k], rel=1e-6, abs=1e-6), k
    if seeds == 2:
        for got, want in zip(rec["replicas"], uninterrupted[2]["replicas"]):
            assert got == pytest.approx(want, rel=1e-6)
    assert not any((tmp_path / "ck").iterdir())


def test_sigterm_saves_and_the_restart_resumes(uninterrupted, tmp_path):
    # the 60 s policy: no save before the stop
    with launch(tmp_path, "--checkpoint_every=0", wait=False) as run:
        run.wait_for(
            lambda: sum(line.startswith("epoch") for line in run.out) >= 3,
            "the third epoch's line",
            poll=0.05,
        )
        run.proc.send_signal(signal.SIGTERM)
        run.finish()
    assert run.proc.returncode == 0, run.output()
    first = records(tmp_path)[-1]
    # SIGTERM is sent as the third epoch's line arrives, with 9 epochs to go
    assert first["status"] == "stopped", (
        "the run finished before SIGTERM reached it; raise --epochs in BASE" + run.output()
    )
    assert first["epochs_completed"] >= 3
    p = launch(tmp_path, "--checkpoint_every=0")
    assert p.returncode == 0, p.stderr[-2000:]
    rec = records(tmp_path)[-1]
    assert rec["resumed_from_epoch"] == first["epochs_completed"] and rec["epochs_completed"] == 12
    assert rec["final/test_loss"] == pytest.approx(uninterrupted[1]["final/test_loss"], rel=1e-6)


def test_a_retried_sweep_trial_with_a_new_run_id_resumes(tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_SWEEP_ID": "sw1", "WANDB_SILENT": "true"}
    for d in ("w1", "w2"):
        (tmp_path / d).mkdir()
    left = kill_once_saved(
        tmp_path, 4, env=dict(env, WANDB_RUN_ID="try1", WANDB_DIR=str(tmp_path / "w1"))
    )
    p = launch(tmp_path, env=dict(env, WANDB_RUN_ID="try2", WANDB_DIR=str(tmp_path / "w2")))
    assert p.returncode == 0, p.stderr[-2000:]
    run = read_offline_run(tmp_path / "w2")
    assert run.run_id == "try2"
    resumed = run.config["resumed_from_epoch"]
    assert resumed == left
    rows = [h for h in run.history if "epoch" in h]
    assert rows[0]["epoch"] == resumed + 1 and rows[-1]["epoch"] == 12


def test_damaged_checkpoint_warns_and_starts_fresh_never_starts_over(killed, tmp_path):
    shutil.copytree(killed, tmp_path / "ck")
    (ck,) = [d for d in (tmp_path / "ck").iterdir() if d.is_dir()]  # beside it: its lock file
    for f in ck.rglob("*"):
        if f.is_file() and f.parent.name != "meta":
            f.write_bytes(b"\0garbage")
    # a different `epochs` (the same fingerprint), not below the checkpoint's epoch
    reached = max(committed_steps(ck))
    p = launch(tmp_path, f"--epochs={reached + 1}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "warning: checkpoint in" in p.stderr and "starting fresh" in p.stderr
    assert records(tmp_path)[-1]["resumed_from_epoch"] == 0
    proc = launch(tmp_path, "--keep_checkpoint=true", "--epochs=4")
    assert proc.returncode == 0 and any((tmp_path / "ck").iterdir())  # kept on request
    p = launch(tmp_path, "--resume=never", "--epochs=2")
    assert p.returncode == 0 and "resuming" not in p.stderr
    assert records(tmp_path)[-1]["resumed_from_epoch"] == 0


def test_an_interrupted_save_is_never_loaded(killed, tmp_path):
    shutil.copytree(killed, tmp_path / "ck")
    (ck,) = [d for d in (tmp_path / "ck").iterdir() if d.is_dir()]  # beside it: its lock file
    reached = max(saved_steps(tmp_path / "ck"))
    # what a save cut off mid-write leaves: orbax's temporary folder of a later epoch,
    # never committed
    junk = ck / f"{reached + 2}.orbax-checkpoint-tmp-1234567"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "half").write_bytes(b"\0" * 100)
    p = launch(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert records(tmp_path)[-1]["resumed_from_epoch"] == reached


def test_unwritable_checkpoint_dir_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    p = launch(tmp_path, f"--checkpoint_dir={tmp_path / 'file' / 'ck'}")
    assert p.returncode == 2 and "--checkpoint_dir" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_fingerprint_ignores_what_does_not_change_the_trajectory():
    a = Config.from_dict({"dataset": "digits", "epochs": 5})
    assert fingerprint(a) == fingerprint(
        a.replace(epochs=50, eval_batch_size=7, results="x", checkpoint_every=3)
    )
    assert fingerprint(a) != fingerprint(a.replace(learning_rate=0.01))
    assert run_dir(a).name.startswith("collective-")


def test_a_failing_save_is_a_warning_and_training_goes_on(tmp_path, capsys):
    cfg = Config.from_dict(
        {
            "dataset": "digits",
            "model_type": "shallow",
            "epochs": 2,
            "target_params": 100_000,
            "checkpoint_every": 1,
            "checkpoint_dir": str(tmp_path),
        }
    )
    ck = Checkpointer(cfg)

    class Full:
        def save(self, *a, **k):
            raise OSError(28, "No space left on device")

        def wait_until_finished(self):
            pass

        def close(self):
            pass

    ck._manager = Full()
    rec = train_and_evaluate(cfg, Writer(), checkpointer=ck)
    assert rec["status"] == "finished" and rec["epochs_completed"] == 2
    assert "could not save a checkpoint" in capsys.readouterr().err


class FakeClock:
    """Stands for the `time` module in jaxcollective.train.checkpoint: every clock it could
    read gives the test's time, advanced by hand."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self.perf_counter = self.monotonic = self.time = lambda: self.now


def saves_of(every: int, epoch_s: list[float], monkeypatch, tmp_path) -> list[int]:
    """The epochs a run saves after under the policy, epoch i ending `epoch_s[i-1]` s of
    the fake clock after the previous one (the training loop's `due`, then `save`)."""
    clock = FakeClock()
    monkeypatch.setattr(checkpoint, "time", clock)
    cfg = Config.from_dict(
        {
            "dataset": "digits",
            "model_type": "shallow",
            "checkpoint_every": every,
            "checkpoint_dir": str(tmp_path),
        }
    )
    ck = Checkpointer(cfg)  # the run starts: the interval counts from here
    saved = []

    class Manager:  # orbax's, recording what it is asked to save (instantly)
        def save(self, epoch, **kw):
            saved.append(epoch)

        def wait_until_finished(self):
            pass

    ck._manager = Manager()
    for epoch, dt in enumerate(epoch_s, 1):
        clock.now += dt
        if ck.due(epoch):
            ck.save(epoch, {}, [], None)
    return saved


def test_the_default_policy_saves_after_an_epoch_60_s_past_the_last_save(monkeypatch, tmp_path):
    """README: with checkpoint_every=0, a save after any epoch that ends 60 s or more
    after the last save (the run's start counting as one); every K epochs with K > 0,
    whatever the time. A fake clock: no test waits a minute."""
    assert saves_of(0, [59.5], monkeypatch, tmp_path) == []  # not before 60 s
    assert saves_of(0, [59.5, 0.5], monkeypatch, tmp_path) == [2]  # at 60 s exactly
    assert saves_of(0, [30, 30.25], monkeypatch, tmp_path) == [2]  # past 60 s
    # the interval restarts at each save: 25 s epochs save after epochs 3 (75 s), 6, 9
    assert saves_of(0, [25] * 10, monkeypatch, tmp_path) == [3, 6, 9]
    # an epoch longer than the interval saves after itself, every time
    assert saves_of(0, [61, 61, 1, 61], monkeypatch, tmp_path) == [1, 2, 4]
    # 59.5 s after a save (at 60.5 s) is not due, though 60 s have passed since the start
    assert saves_of(0, [60.5, 59.5, 0.5], monkeypatch, tmp_path) == [1, 3]
    # every K epochs: exactly those, for instant epochs and for 100 s ones
    for epoch_s in (0.0, 100.0):
        assert saves_of(3, [epoch_s] * 10, monkeypatch, tmp_path) == [3, 6, 9]
        assert saves_of(1, [epoch_s] * 4, monkeypatch, tmp_path) == [1, 2, 3, 4]


def test_a_diverged_run_keeps_its_last_finite_checkpoint(monkeypatch, tmp_path, capsys):
    """README: a diverged run keeps its last finite checkpoint and says where. Epochs 1
    and 2 train at a sane rate and are saved (checkpoint_every=1); from epoch 3 the
    learning rate is 1e30 (SGD: inf within the first update), so the loss of epoch 3 is
    not finite on any machine. (A constant rate that diverges "a few epochs in" does so
    chaotically: the epoch moves with the platform's rounding.) The rate comes through
    the schedule the training loop reads each epoch with lr_plateau_patience > 0 (the
    patience of 1000 never fires by itself)."""
    import jax

    from jaxcollective.data.datasets import load
    from jaxcollective.model.sizing import resolve
    from jaxcollective.train.trainer import Trainer

    def rates(cfg, history):  # a rate schedule that jumps after two epochs
        lr = cfg.learning_rate if len(history) < 2 else 1e30
        return np.full(cfg.num_seeds, lr, np.float32)

    monkeypatch.setattr(schedule, "learning_rates", rates)
    values = {
        "dataset": "digits",
        "model_type": "shallow",
        "target_params": 20_000,
        "batch_size": 64,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "lr_plateau_patience": 1000,
        "checkpoint_every": 1,
    }
    cfg = Config.from_dict({**values, "epochs": 6, "checkpoint_dir": str(tmp_path / "ck")})
    resolved, ds = resolve(cfg), load(cfg)
    checkpoint.check_writable(cfg)  # as run.py: the root made, then the run's folder held
    ck, meta = open_checkpoints(cfg)
    assert meta is None
    rec = train_and_evaluate(cfg, Writer(), dataset=ds, resolved=resolved, checkpointer=ck)
    assert rec["status"] == "diverged" and rec["epochs_completed"] == 2, rec["status"]
    assert ck.dir.is_dir(), "the diverged run removed its checkpoint folder"
    assert max(saved_steps(tmp_path / "ck")) == 2  # epoch 2's, committed; none of epoch 3
    assert f"the last finite state is kept in {ck.dir}" in capsys.readouterr().err

    kept = Checkpointer(cfg)  # what a later reader finds there
    meta = kept.peek()
    assert meta is not None and meta["epoch"] == 2 and len(meta["history"]) == 2
    assert all(np.isfinite(v).all() for h in meta["history"] for v in h.values())
    state, _ = kept.restore(Trainer(resolved, ds).init(), meta)
    kept.close()
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    assert leaves and all(np.isfinite(x).all() for x in leaves if x.dtype.kind == "f")

    # and it is epoch 2's state: that of the same run stopped there (same program, same
    # process: the same bits)
    two = Config.from_dict(
        {**values, "epochs": 2, "keep_checkpoint": True, "checkpoint_dir": str(tmp_path / "two")}
    )
    checkpoint.check_writable(two)
    ck2, _ = open_checkpoints(two)
    assert (
        train_and_evaluate(two, Writer(), dataset=ds, resolved=resolved, checkpointer=ck2)["status"]
        == "finished"
    )
    ref = Checkpointer(two)
    want, _ = ref.restore(Trainer(resolved, ds).init(), ref.peek())
    ref.close()
    for got, exp in zip(leaves, jax.tree.leaves(want)):
        np.testing.assert_array_equal(got, np.asarray(exp))
