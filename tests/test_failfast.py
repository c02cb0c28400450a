"""Fail before work, never lose a result: bad input, unreachable W&B, signals (each as the
process behaves: exit code, one line on stderr, no traceback, what the results file holds)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from child import Child
from jaxcollective.cli import help_text, parse_argv
from jaxcollective.main import EXTRA

ROOT = Path(__file__).resolve().parents[1]


def run_py(tmp, *args, env=None, timeout=300):
    e = dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp),
        WANDB_SILENT="true",
        JAXCOLLECTIVE_OFFLINE="1",
        **(env or {}),
    )
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=tmp,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p, time.perf_counter() - t


def wandb_runs(tmp):
    return list((Path(tmp) / "wandb").glob("*run-*"))


def run_py_child(*args, cwd, env) -> Child:
    return Child([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env)


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has installed a handler for `sig` (Linux: the SigCgt mask
    of /proc/<pid>/status). Python itself catches only SIGINT; run.py's StopFlag adds
    SIGTERM first thing."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (sig - 1) & 1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--results=/proc/x.jsonl"], "--results=/proc/x.jsonl cannot be appended to"),
        (["--results={tmp}/file/x.jsonl"], "is a file, not a folder"),
        (["--results={tmp}"], "is a folder"),
        (["--seed=-1"], "invalid seed=-1: expected a non-negative integer"),
        (["--batch_size=1"], "BatchNorm needs at least 2 examples per device"),
        (["--batch_size=2048"], "fewer than one update"),
        (["--model_type=balanced", "--target_params=1000"], "invalid target_params"),
        (["--data_dir={tmp}/nope", "--dataset=mnist"], "does not exist"),
        (["--dataset=mnist"], "was not found"),
    ],
)
def test_bad_input_fails_before_any_work_and_leaves_no_wandb_run(args, fragment, tmp_path):
    (tmp_path / "file").write_text("x")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--dataset=mnist" not in args:
        args.append("--dataset=digits")
    p, elapsed = run_py(tmp_path, "--epochs=1", *args, env={"HOME": str(tmp_path)})
    assert p.returncode == 2, p.stderr
    err = [line for line in p.stderr.strip().splitlines() if not line.startswith("warning")]
    assert len(err) == 1 and fragment in err[0], p.stderr
    assert "Traceback" not in p.stderr and "finished" not in p.stdout
    assert wandb_runs(tmp_path) == []  # nothing that `wandb sync` would upload
    assert elapsed < 30, elapsed


@pytest.mark.slow
def test_unreachable_wandb_server_falls_back_to_offline_at_once(tmp_path):
    env = dict(
        os.environ,
        WANDB_MODE="online",
        WANDB_API_KEY="x" * 40,
        WANDB_DIR=str(tmp_path),
        WANDB_BASE_URL="http://127.0.0.1:9",
        WANDB_SILENT="true",
    )
    t = time.perf_counter()
    with run_py_child(
        "--dataset=digits",
        "--model_type=shallow",
        "--epochs=1",
        "--progress=false",
        f"--results={tmp_path / 'r.jsonl'}",
        cwd=tmp_path,
        env=env,
    ) as run:
        # wandb's own retries take ~100 s; the probe (3 s) and init timeout (9 s) come after
        # the interpreter's start, which a loaded 2-core machine (tests run 4 at a time) can
        # stretch past 15 s: the bound tells the fallback from the retries, not a speed
        run.wait_line("logging offline", timeout=60)
        fell_back = time.perf_counter() - t
        _, err = run.finish()
    assert run.proc.returncode == 0, err
    assert fell_back < 60, fell_back
    assert json.loads((tmp_path / "r.jsonl").read_text())["status"] == "finished"
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # for `wandb sync` later


@pytest.mark.slow
def test_sigterm_in_the_first_second_ends_stopped_with_zero_epochs(tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to see run.py install its handler")
    env = dict(os.environ, WANDB_MODE="disabled")
    with run_py_child(
        "--dataset=digits", "--epochs=5", f"--results={tmp_path / 'r.jsonl'}", cwd=tmp_path, env=env
    ) as run:
        # SIGTERM at the first moment run.py promises to handle it (its handler comes
        # first, before JAX is imported): the event, not a sleep guessing when that is;
        # the first epoch is seconds of imports, data and compilation away
        run.wait_for(
            lambda: catches(run.proc.pid, signal.SIGTERM),
            "a SIGTERM handler in run.py",
            timeout=60,
            poll=0.005,
        )
        run.proc.send_signal(signal.SIGTERM)
        _, err = run.finish()
    assert run.proc.returncode == 0, err
    rec = json.loads((tmp_path / "r.jsonl").read_text())
    assert rec["status"] == "stopped" and rec["epochs_completed"] == 0
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_second_interrupt_ends_the_run_at_once_and_keeps_what_was_measured(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    # epochs of about a second, so that the second Ctrl-C lands inside one
    with run_py_child(
        "--dataset=digits",
        "--model_type=shallow",
        "--target_params=5000000",
        "--batch_size=16",
        "--epochs=100000",
        "--progress=false",
        f"--results={tmp_path / 'r.jsonl'}",
        cwd=tmp_path,
        env=env,
    ) as run:
        run.wait_for(
            lambda: any(line.startswith("epoch") for line in run.out), "the first epoch's line"
        )
        run.proc.send_signal(signal.SIGINT)
        run.wait_line("stopping after the epoch in flight", timeout=60)
        run.proc.send_signal(signal.SIGINT)
        t = time.perf_counter()
        _, err = run.finish(timeout=60)
        assert time.perf_counter() - t < 10
    # 0: the run stopped after its epoch in flight before the second Ctrl-C came
    assert run.proc.returncode == 130, run.output()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    rec = json.loads((tmp_path / "r.jsonl").read_text())
    assert rec["status"] == "stopped" and rec["epochs_completed"] >= 1
    assert rec["final/test_accuracy"] > 0


def test_help_lists_each_default_once_and_accepts_dash_h(tmp_path):
    text = help_text("run.py", "x", EXTRA)
    for line in text.splitlines():
        assert line.count("(default") <= 1, line
    p, _ = run_py(tmp_path, "-h")
    assert p.returncode == 0 and "--model_type" in p.stdout


def test_a_key_given_twice_warns(capsys):
    values, _ = parse_argv(["--epochs=3", "--epochs=5"], EXTRA)
    assert values["epochs"] == "5"
    assert "--epochs is given twice ('3', then '5'); using '5'" in capsys.readouterr().err


def test_bench_refuses_torch_it_does_not_have_and_benches_the_shape_asked(capsys):
    from jaxcollective.bench import main as bench

    try:
        import torch  # noqa: F401
    except ImportError:
        t = time.perf_counter()
        assert bench(["--model_type=shallow", "--torch=true", "--dataset=digits"]) == 2
        assert "needs PyTorch" in capsys.readouterr().err and time.perf_counter() - t < 5
    assert (
        bench(
            [
                "--model_type=shallow",
                "--dataset=digits",
                "--target_params=100000",
                "--steps=10",
                "--epochs=0",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dataset_shape"] == "digits"


def test_bench_lines_run_in_one_process_and_skip_only_a_line_out_of_memory(
    tmp_path, capsys, monkeypatch
):
    from jaxcollective import bench

    def fake_run(cfg, steps, epochs, torch_ref):  # the lines' configs, no training
        import jax

        if cfg.num_seeds == 4:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        if cfg.num_seeds == 5:
            raise RuntimeError("INTERNAL: something else")
        return {
            "num_seeds": cfg.num_seeds,
            "model_type": cfg.model_type,
            "steps": steps,
            "precision": jax.config.jax_default_matmul_precision,
        }

    monkeypatch.setattr(bench, "run", fake_run)
    lines = tmp_path / "lines.txt"
    lines.write_text(
        "--num_seeds=2  # two replicas\n\n--num_seeds=4\n"
        "--num_seeds 3 --model_type=shallow --steps=7 --matmul_precision=highest\n"
    )
    assert (
        bench.main(["--model_type=collective", "--dataset=digits", "--steps=5", f"--lines={lines}"])
        == 0
    )
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows == [
        {"num_seeds": 2, "model_type": "collective", "steps": 5, "precision": None},
        {"num_seeds": 3, "model_type": "shallow", "steps": 7, "precision": "highest"},
    ]
    assert "line 2 (--num_seeds=4) did not run: out of device memory; skipped" in err
    # any other error ends the run; a bad line is refused before any line runs
    lines.write_text("--num_seeds=5\n")
    with pytest.raises(RuntimeError, match="something else"):
        bench.main(["--dataset=digits", f"--lines={lines}"])
    for bad, says in (
        ("--lines=x", "line 2: --lines: a line names --lines itself"),
        ("--num_seeds=0", "line 2: invalid num_seeds=0"),
        ("--optimiser=adam", "line 2: unknown config key 'optimiser'"),
        ("--steps", "line 2: option --steps needs a value"),
    ):
        lines.write_text(f"--num_seeds=2\n{bad}\n")
        assert bench.main(["--dataset=digits", f"--lines={lines}"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and says in err and len(err.strip().splitlines()) == 1, err
    assert bench.main(["--dataset=digits", f"--lines={tmp_path / 'none.txt'}"]) == 2
    assert "cannot read it" in capsys.readouterr().err
