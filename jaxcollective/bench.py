"""Benchmark: `python -m jaxcollective.bench --model_type=collective --config=phase1`.

Synthetic data shaped like a real dataset (Fashion-MNIST by default: 54,000 training,
6,000 validation, 10,000 test examples), so it runs where only jax, flax and optax
are installed. Progress goes to stderr; the last stdout line is one JSON object (with
`--lines=FILE`, one per line of FILE, each line's options added to the command line's,
all in this one process: later lines compile in a warm process):

  compile_s            first call of the training step (tracing + XLA compilation)
  train_samples_per_s  steady state: batch (x seeds) / median time of one update, timed
                       as training runs it (a compiled scan of 10 updates per call)
  epoch_s              one full epoch through the real engine: 54,000 training
                       examples, then evaluation of 6,000 + 10,000 (after compiling)
  flops_per_step       XLA's cost analysis of one update; tflops = achieved rate
  peak_fraction        tflops / the GPU's dense peak for the matmul precision in use
                       (GPU only; float32 matmuls run as TF32 unless
                       --matmul_precision=highest, see matmul_precision)
"""

from __future__ import annotations

import gc
import importlib.util
import json
import shlex
import statistics
import sys
import time

from jaxcollective.cli import (
    bool_option,
    console_script,
    guarded,
    help_text,
    int_option,
    parse_argv,
)
from jaxcollective.config import Config, ConfigError

EXTRA = {
    "config": "preset applied first: debug or phase1",
    "steps": "timed updates, in calls of 10, for the steady-state median (default 100; 0: "
    "time epochs only)",
    "epochs": "full epochs to time after the first (default 1); 0 skips epoch_s",
    "torch": "also time the PyTorch reference (needs torch): true/false (default false)",
    "matmul_precision": "jax_default_matmul_precision for this line, e.g. highest (true "
    "float32 matmuls on a GPU; default: JAX's, TF32 there)",
    "lines": "a file (- for stdin) of bench lines, run one after another in this process: "
    "each line holds more options (the same forms), added to the command line's; "
    "one JSON object per line; a line out of device memory is skipped (stderr)",
    "help": "show this message",
}

UPDATES_PER_CALL = 10
# Dense peak TFLOP/s by device kind (SXM parts): bf16, TF32 and true-fp32 tensor rates.
GPU_PEAKS = {
    "H200": {"bfloat16": 989.0, "tensorfloat32": 494.7, "float32": 67.0},
    "H100": {"bfloat16": 989.0, "tensorfloat32": 494.7, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "tensorfloat32": 156.0, "float32": 19.5},
    "L4": {"bfloat16": 121.0, "tensorfloat32": 60.0, "float32": 30.3},
}
# `jax_default_matmul_precision` values that keep float32 matmuls in true float32; any
# other value (the default None included) lets XLA use TF32 tensor cores on Ampere+.
FULL_FP32 = ("highest", "float32", "F32_F32_F32")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def matmul_precision(dtype: str, precision) -> str:
    """What a GPU's tensor cores compute a matmul of `dtype` inputs in, given the
    `jax_default_matmul_precision` setting: float32 inputs run as TF32 by default."""
    if dtype == "bfloat16":
        return "bfloat16"
    return "float32" if str(precision) in FULL_FP32 else "tensorfloat32"


def peak_tflops(device, mode: str):
    kind = getattr(device, "device_kind", "")
    for name, peaks in GPU_PEAKS.items():
        if name in kind:
            return peaks[mode]
    return None


def run(cfg: Config, steps: int = 100, epochs: int = 1, torch_ref: bool = False) -> dict:
    """Every figure of one benchmark line (see the module docstring)."""
    import jax

    from jaxcollective.data.datasets import make_synthetic
    from jaxcollective.model.sizing import resolve
    from jaxcollective.train.trainer import Trainer

    cfg = cfg.replace(dataset="synthetic", synthetic_like=cfg.data_like)
    resolved = resolve(cfg)
    log(
        f"[synthetic] {cfg.model_type}: {resolved.model_params:,} params, batch {cfg.batch_size}"
        f" x{cfg.num_seeds} seeds, {cfg.dtype}, augmentation {cfg.use_augmentation}, "
        f"{jax.devices()[0].device_kind} x{len(jax.devices())}"
    )
    trainer = Trainer(resolved, make_synthetic(cfg.data_like, seed=cfg.seed))
    out = {
        "model_type": cfg.model_type,
        "model_params": resolved.model_params,
        "batch_size": cfg.batch_size,
        "num_seeds": cfg.num_seeds,
        "dtype": cfg.dtype,
        "use_augmentation": cfg.use_augmentation,
        "synthetic": True,
        "dataset_shape": cfg.data_like,
        "device": jax.devices()[0].device_kind,
        "n_devices": len(jax.devices()),
    }
    if steps > 0:
        out.update(time_steps(trainer, steps))
    if steps > 0 and jax.default_backend() == "gpu":
        mode = matmul_precision(cfg.dtype, jax.config.jax_default_matmul_precision)
        out["matmul_precision"] = mode
        peak = peak_tflops(jax.devices()[0], mode)
        if peak:
            out["peak_fraction"] = round(out["tflops"] / peak, 4)
    if epochs > 0:
        out.update(time_epochs(trainer, epochs))
    if torch_ref:
        from jaxcollective.model.torch_reference import time_torch

        out["torch_samples_per_s"] = round(time_torch(cfg, steps), 1)
        out["speedup_vs_torch"] = round(out["train_samples_per_s"] / out["torch_samples_per_s"], 2)
        log(
            f"PyTorch reference: {out['torch_samples_per_s']:,.0f} samples/s; "
            f"speed-up {out['speedup_vs_torch']}x"
        )
    return out


def time_steps(trainer, steps: int) -> dict:
    """Compile time, then the steady state: the median time of one update, timed per
    call of UPDATES_PER_CALL updates run as an epoch runs them (a compiled scan, vmapped
    over replicas), and XLA's count of its FLOPs."""
    import jax
    import jax.numpy as jnp

    cfg = trainer.cfg
    b, a = cfg.batch_size, cfg.gradient_accumulation_steps
    n_train = trainer.rep.train_idx_RxN.shape[1]
    need = UPDATES_PER_CALL * a * b
    perm = jax.random.permutation(jax.random.key(0), n_train)
    perm = jnp.tile(perm, -(-need // n_train))[:need]  # a small dataset repeats its examples
    idx_UxAxB = perm.reshape(UPDATES_PER_CALL, a, b).astype(jnp.int32)
    keys = {n: v for n, v in trainer.epoch_keys(0).items() if n != "shuffle"}
    state = trainer.init()
    t = time.perf_counter()
    values = trainer.rep.values
    compiled = trainer.steps_fn().lower(state, idx_UxAxB, keys, values).compile()
    state, m = compiled(state, idx_UxAxB, keys, values)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))  # XLA counts a loop body once
    log(f"compiled in {compile_s:.2f}s; {flops / 1e9:.2f} GFLOP per update")
    times = []
    for _ in range(max(1, steps // UPDATES_PER_CALL)):
        t = time.perf_counter()
        state, m = compiled(state, idx_UxAxB, keys, values)
        jax.block_until_ready(m)
        times.append((time.perf_counter() - t) / UPDATES_PER_CALL)
    step_s = statistics.median(times)
    samples = b * a * cfg.num_seeds / step_s
    log(f"steady state: {samples:,.0f} samples/s ({step_s * 1e3:.2f} ms per update)")
    return {
        "compile_s": round(compile_s, 3),
        "train_samples_per_s": round(samples, 1),
        "step_ms": round(step_s * 1e3, 3),
        "flops_per_step": flops,
        "tflops": round(flops / step_s / 1e12, 4),
    }


def time_epochs(trainer, epochs: int) -> dict:
    """The first epoch (compiling it), then the median of `epochs` full epochs: the
    training split, then validation and test, as a run does them."""
    import jax

    t = time.perf_counter()
    state, m = trainer.epoch(trainer.init(), 1)
    jax.block_until_ready(m)
    out = {"epoch_compile_s": round(time.perf_counter() - t, 3)}
    times = []
    for e in range(epochs):
        t = time.perf_counter()
        state, m = trainer.epoch(state, e + 2)
        jax.device_get(m)
        times.append(time.perf_counter() - t)
    out["epoch_s"] = round(statistics.median(times), 3)
    n_train, n_test = trainer.rep.train_idx_RxN.shape[1], len(trainer.data.y_test)
    n_val = len(trainer.data.y_train) - n_train
    log(f"epoch ({n_train:,} train + {n_val:,} val + {n_test:,} test): {out['epoch_s']:.3f}s")
    return out


def read_lines(path: str) -> list[list[str]]:
    """The bench lines of a --lines file: each non-empty line's options, as shell words
    (a comment after # is left out)."""
    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
    except OSError as e:
        raise ConfigError(
            f"--lines={path}: cannot read it ({e.strerror}); give a file of "
            "bench lines, one line of options each, or - for stdin"
        ) from None
    lines = [shlex.split(line, comments=True) for line in text.splitlines()]
    return [line for line in lines if line]


def out_of_memory(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def line_job(values: dict, opts: dict) -> tuple:
    """One bench line's checked arguments, from its parsed options: (cfg, steps, epochs,
    torch_ref, matmul_precision); a bad one raises before any line runs."""
    values = dict(values)
    values.setdefault("batch_size", "256")
    values.setdefault("dataset", "fashion_mnist")
    cfg = Config.from_dict(values, opts.get("config"))
    steps = int_option(opts, "steps", 100, minimum=0)
    epochs = int_option(opts, "epochs", 1, minimum=0)
    torch_ref = bool_option(opts, "torch")
    if torch_ref and importlib.util.find_spec("torch") is None:
        raise ConfigError(
            "--torch=true times the PyTorch reference and needs PyTorch: "
            "`pip install torch --index-url https://download.pytorch.org/whl/cpu`"
            " (or leave --torch out)"
        )
    if "lines" in opts:
        raise ConfigError(
            "--lines: a line names --lines itself; a line holds the options of one bench"
        )
    return cfg, steps, epochs, torch_ref, opts.get("matmul_precision")


def run_job(cfg, steps, epochs, torch_ref, precision) -> dict:
    """One bench line's JSON object (`run`), under its matmul precision if it names one."""
    if precision is None:
        return run(cfg, steps, epochs, torch_ref)
    import jax

    with jax.default_matmul_precision(precision):
        return run(cfg, steps, epochs, torch_ref)


def main(argv: list[str]) -> int:
    def _main():
        values, opts = parse_argv(argv, EXTRA, flags=("help",))
        if "help" in opts:
            print(
                help_text("python -m jaxcollective.bench", __doc__.strip().splitlines()[0], EXTRA)
            )
            return 0
        if "lines" not in opts:
            print(json.dumps(run_job(*line_job(values, opts))), flush=True)
            return 0
        jobs = []
        for i, words in enumerate(read_lines(opts.pop("lines")), 1):
            try:
                line_values, line_opts = parse_argv(words, EXTRA)
                jobs.append(
                    (" ".join(words), line_job({**values, **line_values}, {**opts, **line_opts}))
                )
            except ConfigError as e:
                raise ConfigError(f"--lines, line {i}: {e}") from None
        for i, (words, job) in enumerate(jobs, 1):
            try:
                row = run_job(*job)
            except Exception as e:  # noqa: BLE001 (only running out of memory is skipped)
                if not out_of_memory(e):
                    raise
                log(f"line {i} ({words}) did not run: out of device memory; skipped")
                continue
            finally:
                gc.collect()  # the line's data and state leave the device before the next
            print(json.dumps(row), flush=True)
        return 0

    return guarded(_main)


console = console_script(main)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
