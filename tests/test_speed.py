"""Seeds in parallel, the fast dropout masks, the benchmark, the compilation cache."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from presets import debug_config
from jaxcollective.train.loop import train_and_evaluate
from jaxcollective.model.layers import dropout, mask_bits
from jaxcollective.train.writers import Writer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_replica_i_equals_a_single_run_with_its_seed():
    # The vmapped program of 3 replicas and the single run's program (one replica: not
    # vmapped, train.over_replicas) differ at float level; training amplifies that (Adam
    # divides by sqrt(v) where gradients are ~0; a ReLU or mask boundary can flip), so
    # compare after one epoch of SGD: 5 updates of 256 with augmentation, dropout and
    # model-level dropout. Measured: the epoch's training loss <= 2e-7 relative, the
    # accuracies equal; the test loss up to 7e-5 relative (seed 5), as evaluation's
    # BatchNorm divides by sqrt(running var + 1e-5) and a near-constant feature's running
    # var is ~0 (x316). A replica with another's keys or data is off by > 10% (the three
    # seeds' losses are 2.44, 3.14 and 2.76).
    base = {
        "model_type": "collective",
        "dataset": "digits",
        "epochs": 1,
        "batch_size": 256,
        "use_augmentation": True,
        "use_drop_models": True,
        "optimizer": "sgd",
        "learning_rate": 0.05,
    }
    multi = train_and_evaluate(debug_config({**base, "seed": 5, "num_seeds": 3}), Writer())
    assert [r["seed"] for r in multi["replicas"]] == [5, 6, 7]
    for rep in multi["replicas"]:
        single = train_and_evaluate(debug_config({**base, "seed": rep["seed"]}), Writer())
        assert rep["test_loss"] == pytest.approx(single["final/test_loss"], rel=1e-3)
        assert rep["test_accuracy"] == pytest.approx(single["final/test_accuracy"], abs=1e-4)
        assert rep["best_val_accuracy"] == pytest.approx(
            single["final/best_val_accuracy"], abs=1e-4
        )
    accs = [r["test_accuracy"] for r in multi["replicas"]]
    assert len(set(accs)) > 1 or len({r["test_loss"] for r in multi["replicas"]}) > 1
    assert multi["final/test_accuracy"] == pytest.approx(np.mean(accs))
    assert multi["final/test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1))


def test_dropout_masks_are_uniform_and_keep_the_rate():
    u = np.asarray(mask_bits(jax.random.key(0), (500, 1000)), np.float64) / 2**32
    assert abs(u.mean() - 0.5) < 2e-3 and abs(u.std() - 12**-0.5) < 2e-3
    assert abs(np.corrcoef(u.ravel()[:-1], u.ravel()[1:])[0, 1]) < 5e-3
    other = np.asarray(mask_bits(jax.random.key(1), (500, 1000)), np.float64) / 2**32
    assert abs(np.corrcoef(u.ravel(), other.ravel())[0, 1]) < 5e-3
    x = np.ones((1000, 1000), np.float32)
    for rate in (0.1, 0.2, 0.5):
        y = np.asarray(dropout(x, rate, jax.random.key(2), True))
        assert abs((y > 0).mean() - (1 - rate)) < 3e-3
        assert abs(y.mean() - 1.0) < 5e-3  # inverted dropout keeps the expectation
    np.testing.assert_array_equal(dropout(x, 0.2, None, False), x)
    # a pure function of the key: the same under vmap
    keys = jax.random.split(jax.random.key(3), 4)
    batched = jax.vmap(lambda k: mask_bits(k, (7, 5)))(keys)
    for i in range(4):
        np.testing.assert_array_equal(batched[i], mask_bits(keys[i], (7, 5)))


# What the GPU machine lacks: a `sitecustomize` that makes these imports fail.
BLOCK_HEAVY = """
import sys
import time
for name in ("wandb", "tensorflow", "tensorflow_datasets", "sklearn", "tqdm", "torch"):
    sys.modules[name] = None
"""


def test_benchmark_times_whole_epochs():
    from jaxcollective.bench import run
    from jaxcollective.config import Config

    cfg = Config.from_dict(
        {"model_type": "shallow", "dataset": "digits", "target_params": 20000, "batch_size": 64}
    )
    # what the benchmark times is the real engine's whole epochs: the first compiles,
    # the next ones are timed, each to its metrics on the host
    from jaxcollective.train import trainer as train

    epochs, real = [], train.Trainer.epoch

    def timed(self, state, epoch):
        t = time.perf_counter()
        out = real(self, state, epoch)
        jax.device_get(out[1])
        epochs.append((epoch, time.perf_counter() - t))
        return out

    train.Trainer.epoch = timed
    try:
        out = run(cfg, steps=10, epochs=2)
    finally:
        train.Trainer.epoch = real
    assert [e for e, _ in epochs] == [1, 2, 3]
    assert out["epoch_compile_s"] >= epochs[0][1]
    assert out["epoch_s"] <= max(s for _, s in epochs[1:]) + 5e-3  # the median of the two
    assert out["epoch_s"] >= min(s for _, s in epochs[1:]) * 0.9
    # the steady state: a batch per median update
    assert out["train_samples_per_s"] == pytest.approx(64 / (out["step_ms"] / 1e3), rel=1e-3)
    assert out["compile_s"] > 0 and out["model_params"] == pytest.approx(20000, rel=0.02)


@pytest.mark.slow
def test_second_run_reads_the_compilation_cache(tmp_path):
    env = dict(os.environ, JAXCOLLECTIVE_CACHE_DIR=str(tmp_path / "xla"), WANDB_MODE="disabled")
    cmd = [
        sys.executable,
        "run.py",
        "--model_type=shallow",
        "--dataset=digits",
        "--epochs=1",
        "--target_params=200000",
        f"--results={tmp_path / 'r.jsonl'}",
    ]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "xla").iterdir()}
    assert first  # the compiled programs were written
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "xla").iterdir()}
    # the first run's programs were read back, not compiled and written again (a program
    # that compiled faster than the cache's threshold the first time may be added)
    assert {k: after.get(k) for k in first} == first
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert rows[0]["final/test_accuracy"] == rows[1]["final/test_accuracy"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--steps=abc"], "--steps must be an integer >= 0"),
        (["--epochs=-1"], "--epochs must be an integer >= 0"),
        (["--torch=maybe"], "--torch must be true or false"),
        (["--model_type=transformer"], "model_type"),
    ],
)
def test_benchmark_bad_input_is_one_line_and_exit_2(args, fragment, capsys):
    from jaxcollective.bench import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_peak_fraction_uses_the_precision_the_gpu_computes_in():
    from jaxcollective.bench import matmul_precision, peak_tflops

    class H200:
        device_kind = "NVIDIA H200"

    # JAX's default lets float32 matmuls run as TF32 on Ampere and later GPUs.
    assert matmul_precision("float32", None) == "tensorfloat32"
    assert matmul_precision("float32", "highest") == "float32"
    assert matmul_precision("bfloat16", "highest") == "bfloat16"
    assert peak_tflops(H200(), "tensorfloat32") > peak_tflops(H200(), "float32")
    assert peak_tflops(H200(), "bfloat16") > peak_tflops(H200(), "tensorfloat32")
    assert peak_tflops(jax.devices("cpu")[0], "float32") is None


@pytest.mark.slow
@pytest.mark.longest
def test_gpu_bench_script_writes_every_figure_of_the_table_with_only_jax_flax_optax(tmp_path):
    # The script a GPU session runs for README's table, here at debug size on the CPU,
    # where wandb, TensorFlow, TFDS, scikit-learn, tqdm and torch cannot be imported.
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_HEAVY)
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        CONFIG="debug",
        EPOCHS="1",
        STEPS="10",
        BENCH_EPOCHS="0",
        SEEDS="2",
        SHAPE="digits",
        EXTRA="--dtype=float32",
        POPULATIONS="3",
        PHASE1_EPOCHS="90",
        PYTHONPATH=os.pathsep.join([str(tmp_path / "block"), str(ROOT)]),
        # the script's `python` is the one running the tests, venv activated or not
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    )
    p = subprocess.run(
        ["bash", "docs/gpu_bench.sh", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "steady state" in p.stderr  # the benchmark's progress goes to stderr
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert [r.get("model_type") for r in rows] == ["collective"] * 4 + [
        "shallow",
        "deep_resnet",
        None,
    ] + ["collective"] + [None]
    # population scaling: K members as one program, timed over an epoch each
    scaling = rows[-1]["population_scaling"]
    assert [s["population"] for s in scaling] == [3] and rows[-1]["phase1_epochs"] == 90
    for s, r in zip(scaling, rows[7:8]):
        assert s["epoch_s"] == r["epoch_s"] > 0 and r["num_seeds"] == s["population"]
        assert "step_ms" not in r  # an epoch only
        assert s["phase1_sweep_min"] == pytest.approx(
            90 / s["population"] * r["epoch_s"] / 60, abs=0.06
        )
    rows = rows[:7]
    for key in (
        "model_params",
        "batch_size",
        "compile_s",
        "train_samples_per_s",
        "flops_per_step",
        "tflops",
    ):
        assert key in rows[0], key
    assert rows[1]["num_seeds"] == 2 and rows[1]["synthetic"] is True
    # two replicas, forward and backward: at least 2 x 6 x params x batch / 2 FLOPs
    assert rows[1]["flops_per_step"] > 2 * 6 * rows[1]["model_params"] * 256 * 0.5
    assert "peak_fraction" not in rows[0]  # a CPU has no peak
    assert [r["num_seeds"] for r in rows[:4]] == [1, 2, 1, 1]
    assert rows[2]["dtype"] == "bfloat16" and rows[0]["use_augmentation"] is True
    assert all(r["train_samples_per_s"] > 0 for r in rows[:6])
    assert rows[-1]["status"] == "finished" and rows[-1]["epochs"] == 1
    assert rows[-1]["trial_wall_s"] > 0 and "--use_augmentation=true" in rows[-1]["trial"]
