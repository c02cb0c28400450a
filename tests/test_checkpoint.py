"""Checkpoints and resume (orbax): a killed, stopped or retried run continues where it
stopped and ends with the same final metrics as an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxcollective.checkpoint import Checkpointer, fingerprint, run_dir
from jaxcollective.config import Config
from jaxcollective.experiment import train_and_evaluate
from jaxcollective.writers import Writer
from shared import made_once
from wandb_offline import read_offline_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end, in subprocesses
FINALS = ("final/test_accuracy", "final/test_loss", "final/best_val_accuracy", "best_epoch",
          "final_train_loss", "final_val_loss")
BASE = ["--dataset=digits", "--model_type=shallow", "--target_params=150000", "--epochs=12",
        "--batch_size=64", "--checkpoint_every=2", "--progress=false"]


def launch(tmp, *extra, env=None, wait=True):
    e = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    cmd = [sys.executable, str(ROOT / "run.py"), *BASE, f"--results={tmp / 'r.jsonl'}",
           f"--checkpoint_dir={tmp / 'ck'}", *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=tmp, env=e, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=tmp, env=e, capture_output=True, text=True, timeout=300)


def records(tmp):
    return [json.loads(line) for line in (tmp / "r.jsonl").read_text().splitlines()]


def interrupt_after(proc, epochs: int, sig):
    seen = 0
    while seen < epochs:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-2000:]
        seen += line.startswith("epoch")
    time.sleep(0.3)  # let the checkpoint of an even epoch be written
    proc.send_signal(sig)
    proc.communicate(timeout=120)


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


def kill_after_7_epochs(tmp, *extra):
    proc = launch(tmp, *extra, wait=False)
    interrupt_after(proc, 7, signal.SIGKILL)
    assert not (tmp / "r.jsonl").exists()  # killed: no record yet


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """The checkpoint folder of one run (1 seed) killed with SIGKILL after its 7th epoch;
    a test copies it and goes on from there."""
    return made_once(tmp_path_factory, "checkpoint_killed", kill_after_7_epochs) / "ck"


@pytest.mark.parametrize("seeds", [1, 2])
def test_killed_run_resumes_and_ends_as_an_uninterrupted_one(seeds, uninterrupted, killed,
                                                             tmp_path):
    if seeds == 1:
        shutil.copytree(killed, tmp_path / "ck")
    else:
        kill_after_7_epochs(tmp_path, f"--num_seeds={seeds}")
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
    proc = launch(tmp_path, "--checkpoint_every=0", wait=False)  # the 60 s policy: no save yet
    interrupt_after(proc, 3, signal.SIGTERM)
    first = records(tmp_path)[-1]
    assert first["status"] == "stopped" and first["epochs_completed"] >= 3
    p = launch(tmp_path, "--checkpoint_every=0")
    assert p.returncode == 0, p.stderr[-2000:]
    rec = records(tmp_path)[-1]
    assert rec["resumed_from_epoch"] == first["epochs_completed"] and rec["epochs_completed"] == 12
    assert rec["final/test_loss"] == pytest.approx(uninterrupted[1]["final/test_loss"], rel=1e-6)


def test_a_retried_sweep_trial_with_a_new_run_id_resumes(tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_SWEEP_ID": "sw1", "WANDB_SILENT": "true"}
    for d in ("w1", "w2"):
        (tmp_path / d).mkdir()
    proc = launch(tmp_path, env=dict(env, WANDB_RUN_ID="try1", WANDB_DIR=str(tmp_path / "w1")),
                  wait=False)
    interrupt_after(proc, 5, signal.SIGKILL)
    p = launch(tmp_path, env=dict(env, WANDB_RUN_ID="try2", WANDB_DIR=str(tmp_path / "w2")))
    assert p.returncode == 0, p.stderr[-2000:]
    run = read_offline_run(tmp_path / "w2")
    assert run.run_id == "try2"
    resumed = run.config["resumed_from_epoch"]
    assert resumed >= 2
    rows = [h for h in run.history if "epoch" in h]
    assert rows[0]["epoch"] == resumed + 1 and rows[-1]["epoch"] == 12


def test_damaged_checkpoint_warns_and_starts_fresh_never_starts_over(killed, tmp_path):
    shutil.copytree(killed, tmp_path / "ck")
    (ck,) = [d for d in (tmp_path / "ck").iterdir() if d.is_dir()]  # beside it: its lock file
    for f in ck.rglob("*"):
        if f.is_file() and f.parent.name != "meta":
            f.write_bytes(b"\0garbage")
    # a different `epochs` (the same fingerprint), not below the checkpoint's epoch
    reached = max(int(d.name) for d in ck.iterdir() if d.name.isdigit())
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
    # what a save cut off mid-write leaves: orbax's temporary folder, never committed
    junk = ck / "10.orbax-checkpoint-tmp-1234567"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "half").write_bytes(b"\0" * 100)
    p = launch(tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 2 <= records(tmp_path)[-1]["resumed_from_epoch"] < 10


def test_unwritable_checkpoint_dir_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    p = launch(tmp_path, f"--checkpoint_dir={tmp_path / 'file' / 'ck'}")
    assert p.returncode == 2 and "--checkpoint_dir" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r.jsonl").exists()


def test_fingerprint_ignores_what_does_not_change_the_trajectory():
    a = Config.from_dict({"dataset": "digits", "epochs": 5})
    assert fingerprint(a) == fingerprint(a.replace(epochs=50, eval_batch_size=7, results="x",
                                                   checkpoint_every=3))
    assert fingerprint(a) != fingerprint(a.replace(learning_rate=0.01))
    assert run_dir(a).name.startswith("collective-")


def test_a_failing_save_is_a_warning_and_training_goes_on(tmp_path, capsys):
    cfg = Config.from_dict({"dataset": "digits", "model_type": "shallow", "epochs": 2,
                            "target_params": 100_000, "checkpoint_every": 1,
                            "checkpoint_dir": str(tmp_path)})
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
