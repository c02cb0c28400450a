"""run.py: --dry_run for every model type, --help, bad input, the main job."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from child import Child
from jaxcollective.config import FIELDS
from jaxcollective.main import main

ROOT = Path(__file__).resolve().parents[1]
TYPES = [
    "collective",
    "shallow",
    "balanced",
    "deep",
    "very_deep",
    "deep_resnet",
    "very_deep_resnet",
]


def run_py(*args, env=None, timeout=300):
    e = dict(os.environ, WANDB_MODE="disabled", **(env or {}))
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("model_type", TYPES)
def test_dry_run_prints_one_json_line(model_type, capsys):
    assert main([f"--model_type={model_type}", "--target_params", "6100000", "--dry_run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    d = json.loads(out[0])
    assert d["model_type"] == model_type and d["model_params"] > 0
    if model_type == "collective":
        assert d["unused_keys"] == {"target_params": "baseline-only"}
        assert d["model_params"] == 2_969_887
    else:
        assert abs(d["model_params"] - 6_100_000) / 6_100_000 < 0.01


def test_help_lists_every_key_with_its_default(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for key in FIELDS:
        assert f"--{key}" in out
    assert "(default: [512, 256])" in out and "phase1" in out


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--model_type=mlp"], "model_type"),
        (["--n_total=1"], "n_total"),
        (["--learning_rate=fast"], "learning_rate"),
        (["--no_such_key=1"], "unknown config key 'no_such_key'"),
        (["--config=huge"], "config"),
        (["positional"], "unexpected argument"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys):
    assert main([*args, "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_a_misspelt_dry_run_value_is_an_error_not_a_training_run(capsys):
    assert main(["--model_type=shallow", "--dry_run=maybe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --dry_run must be true or false, got 'maybe'"]


@pytest.mark.slow
def test_main_job_on_digits_writes_results(tmp_path):
    results = tmp_path / "results.jsonl"
    p = run_py(
        "--model_type=collective",
        "--config=phase1",
        "--dataset=digits",
        "--epochs=2",
        f"--results={results}",
        "--device=cuda",
        "--progress=false",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "warning: --device=cuda but no GPU" in p.stderr
    lines = p.stdout.strip().splitlines()
    assert sum(line.startswith("epoch") for line in lines) == 2
    rec = json.loads(results.read_text().strip())
    assert rec["status"] == "finished" and rec["model_type"] == "collective"
    assert rec["config"]["dataset"] == "digits" and rec["config"]["expert_hidden"] == [512, 256]
    assert (
        0 <= rec["final/test_accuracy"] <= 100 and rec["final/model_params"] == rec["model_params"]
    )


@pytest.mark.slow
def test_divergence_exits_nonzero_and_is_recorded(tmp_path):
    results = tmp_path / "r.jsonl"
    p = run_py(
        "--model_type=shallow",
        "--dataset=digits",
        "--epochs=3",
        "--optimizer=sgd",
        "--learning_rate=1e30",
        "--target_params=200000",
        f"--results={results}",
    )
    assert p.returncode == 3 and "diverged" in p.stderr
    rec = json.loads(results.read_text().strip())
    assert rec["diverged"] is True and rec["status"] == "diverged"


def test_entry_points_import_no_jax():
    """The report runs where JAX is not installed, and run.py installs its signal
    handlers and checks its flags before JAX (a second or more) is imported."""
    code = (
        "import sys, jaxcollective, jaxcollective.report.command, "
        "jaxcollective.main, jaxcollective.train.metrics; assert 'jax' not in sys.modules, 'jax imported'"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    # before its signal handlers, run.py imports nothing heavier than its config
    code = (
        "import sys, jaxcollective.main; heavy = {'numpy', 'jax', 'optuna', 'orbax'} & "
        "set(sys.modules); assert not heavy, heavy"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_help_piped_into_head_ends_quietly():
    p = subprocess.run(
        f"'{sys.executable}' run.py --help | head -n 2",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.stdout.startswith("usage: run.py") and len(p.stdout.splitlines()) == 2
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_a_run_that_cannot_fit_its_device_is_refused_before_any_work():
    from jaxcollective.config import Config, ConfigError
    from jaxcollective.train.loop import check_memory, preflight
    from jaxcollective.model.sizing import resolve

    cfg = Config.from_dict({"model_type": "shallow", "dataset": "digits", "target_params": 1e10})
    with pytest.raises(ConfigError, match=r"needs about .* GB .* free; use a smaller"):
        preflight(cfg)

    class SmallGPU:  # what a GPU's allocator reports
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 64 * 2**20, "bytes_in_use": 0}

    phase1 = resolve(Config.from_dict({}, preset="phase1"))
    with pytest.raises(ConfigError, match="2,969,887 parameters"):
        check_memory(phase1, [SmallGPU()])
    SmallGPU.memory_stats = lambda self: {"bytes_limit": 8 * 2**30, "bytes_in_use": 0}
    check_memory(phase1, [SmallGPU()])  # fits


@pytest.mark.slow
def test_a_run_writes_to_the_default_results_file_and_checkpoint_folder(tmp_path):
    """docs/training.md: each run appends one JSON line to `--results` (default
    `runs/results.jsonl`); checkpoints go to `--checkpoint_dir` (default
    `runs/checkpoints/`), and a finished run removes its folder there."""
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--model_type=shallow",
            "--dataset=digits",
            "--epochs=1",
            "--target_params=20000",
        ],
        cwd=tmp_path,
        env=dict(os.environ, WANDB_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    (line,) = (tmp_path / "runs" / "results.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["status"] == "finished" and rec["epochs_completed"] == 1
    assert rec["model_type"] == "shallow" and rec["config"]["dataset"] == "digits"
    assert (tmp_path / "runs" / "checkpoints").is_dir()
    # a finished run removes its folder (its `<folder>.lock` may stay)
    assert not [f for f in (tmp_path / "runs" / "checkpoints").glob("shallow-*") if f.is_dir()]


@pytest.mark.slow
def test_one_ctrl_c_ends_the_run_stopped_with_its_epochs_kept_and_exit_0(tmp_path):
    """README: Ctrl-C stops after the epoch in flight and keeps what was measured;
    docs/sweeps.md: the run closes with its last completed epoch as its final metrics, in
    the results file, and exits 0; docs/training.md: a stopped run checkpoints (in the
    default `runs/checkpoints/<model_type>-<fingerprint>`)."""
    with Child(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--model_type=shallow",
            "--dataset=digits",
            "--target_params=20000",
            "--batch_size=64",
            "--epochs=100000",
            "--progress=false",
        ],
        cwd=tmp_path,
        env=dict(os.environ, WANDB_MODE="disabled"),
    ) as run:
        run.wait_for(
            lambda: any(line.startswith("epoch") for line in run.out),
            "the first epoch's line",
            timeout=120,
        )
        run.proc.send_signal(signal.SIGINT)  # once
        _, err = run.finish(timeout=60)
    assert run.proc.returncode == 0, run.output()
    assert "Ctrl-C: stopping after the epoch in flight" in err and "Traceback" not in err
    (line,) = (tmp_path / "runs" / "results.jsonl").read_text().splitlines()
    rec = json.loads(line)
    assert rec["status"] == "stopped" and rec["epochs_completed"] >= 1
    assert rec["final_test_accuracy"] == rec["final/test_accuracy"] > 0
    (folder,) = [f for f in (tmp_path / "runs" / "checkpoints").glob("shallow-*") if f.is_dir()]
    assert (folder / str(rec["epochs_completed"])).is_dir()  # saved at its last epoch
