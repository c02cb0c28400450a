"""Benchmark: `python -m jaxcollective.bench --model_type=collective --config=phase1`.

Synthetic data shaped like a real dataset (Fashion-MNIST by default: 54,000 training,
6,000 validation, 10,000 test examples), so it runs where only jax, flax and optax
are installed. Progress goes to stderr; the last stdout line is one JSON object:

  compile_s            first call of the training step (tracing + XLA compilation)
  train_samples_per_s  steady state: batch (x seeds) / median time of one update, timed
                       as training runs it (a compiled scan of 10 updates per call)
  epoch_s              one full epoch through the real engine: 54,000 training
                       examples, then evaluation of 6,000 + 10,000 (after compiling)
  flops_per_step       XLA's cost analysis of one update; tflops = achieved rate
  peak_fraction        tflops / the GPU's dense peak for the matmul precision in use
                       (GPU only; float32 matmuls run as TF32 unless
                       JAX_DEFAULT_MATMUL_PRECISION=highest, see matmul_precision)
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from .cli import bool_option, guarded, help_text, int_option, parse_argv
from .config import Config, ConfigError

EXTRA = {
    "config": "preset applied first: debug or phase1",
    "steps": "timed updates, in calls of 10, for the steady-state median (default 100)",
    "epochs": "full epochs to time after the first (default 1); 0 skips epoch_s",
    "torch": "also time the PyTorch reference (needs torch): true/false (default false)",
    "help": "show this message",
}

UPDATES_PER_CALL = 10
# Dense peak TFLOP/s by device kind (SXM parts): bf16, TF32 and true-fp32 tensor rates.
GPU_PEAKS = {"H200": {"bfloat16": 989.0, "tensorfloat32": 494.7, "float32": 67.0},
             "H100": {"bfloat16": 989.0, "tensorfloat32": 494.7, "float32": 67.0},
             "A100": {"bfloat16": 312.0, "tensorfloat32": 156.0, "float32": 19.5},
             "L4": {"bfloat16": 121.0, "tensorfloat32": 60.0, "float32": 30.3}}
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
    import jax
    import jax.numpy as jnp

    from .data import make_synthetic
    from .sizing import resolve
    from .train import Engine

    like = cfg.synthetic_like if cfg.dataset == "synthetic" else cfg.dataset
    cfg = cfg.replace(dataset="synthetic", synthetic_like=like)
    resolved = resolve(cfg)
    seeds = [cfg.seed + i for i in range(cfg.num_seeds)]
    log(f"[synthetic] {cfg.model_type}: {resolved.model_params:,} params, batch {cfg.batch_size}"
        f" x{cfg.num_seeds} seeds, {cfg.dtype}, augmentation {cfg.use_augmentation}, "
        f"{jax.devices()[0].device_kind} x{len(jax.devices())}")
    ds = make_synthetic(like, seed=cfg.seed)
    engine = Engine(resolved, ds.info)
    data, rep = engine.put_data(ds, seeds)
    state = engine.init(seeds)

    # What an epoch runs: a compiled scan of updates over shuffled batches (no Python per
    # update), vmapped over replicas. Timed per call of UPDATES_PER_CALL updates.
    b, k = cfg.batch_size, cfg.gradient_accumulation_steps

    def updates(state, idx_SxKxB, keys):
        return engine.scan_updates(state, idx_SxKxB, keys, data)

    run_updates = jax.jit(jax.vmap(updates, in_axes=(0, None, 0)), donate_argnums=(0,))
    n_train = len(ds.y_train)
    need = UPDATES_PER_CALL * k * b
    perm = jax.random.permutation(jax.random.key(0), n_train)
    perm = jnp.tile(perm, -(-need // n_train))[:need]  # a small dataset repeats its examples
    idx = perm.reshape(UPDATES_PER_CALL, k, b).astype(jnp.int32)
    keys = {n: v for n, v in engine.epoch_keys(seeds, 0).items() if n != "shuffle"}
    t = time.perf_counter()
    compiled = run_updates.lower(state, idx, keys).compile()
    state, m = compiled(state, idx, keys)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))  # XLA counts a loop body once
    log(f"compiled in {compile_s:.2f}s; {flops / 1e9:.2f} GFLOP per update")

    times = []
    for _ in range(max(1, steps // UPDATES_PER_CALL)):
        t = time.perf_counter()
        state, m = compiled(state, idx, keys)
        jax.block_until_ready(m)
        times.append((time.perf_counter() - t) / UPDATES_PER_CALL)
    step_s = statistics.median(times)
    samples = b * k * cfg.num_seeds / step_s
    log(f"steady state: {samples:,.0f} samples/s ({step_s * 1e3:.2f} ms per update)")

    out = {"model_type": cfg.model_type, "model_params": resolved.model_params,
           "batch_size": b, "num_seeds": cfg.num_seeds, "dtype": cfg.dtype,
           "use_augmentation": cfg.use_augmentation, "synthetic": True, "dataset_shape": like,
           "device": jax.devices()[0].device_kind, "n_devices": len(jax.devices()),
           "compile_s": round(compile_s, 3), "train_samples_per_s": round(samples, 1),
           "step_ms": round(step_s * 1e3, 3), "flops_per_step": flops,
           "tflops": round(flops / step_s / 1e12, 4)}
    if jax.default_backend() == "gpu":
        mode = matmul_precision(cfg.dtype, jax.config.jax_default_matmul_precision)
        out["matmul_precision"] = mode
        peak = peak_tflops(jax.devices()[0], mode)
        if peak:
            out["peak_fraction"] = round(out["tflops"] / peak, 4)

    if epochs > 0:
        t = time.perf_counter()
        state = engine.init(seeds)
        state, mm = engine.epoch(state, data, rep, engine.epoch_keys(seeds, 1))
        jax.block_until_ready(mm)
        out["epoch_compile_s"] = round(time.perf_counter() - t, 3)
        ep = []
        for e in range(epochs):
            t = time.perf_counter()
            state, mm = engine.epoch(state, data, rep, engine.epoch_keys(seeds, e + 2))
            jax.device_get(mm)
            ep.append(time.perf_counter() - t)
        out["epoch_s"] = round(statistics.median(ep), 3)
        log(f"epoch ({len(rep.train_idx_KxN[0]):,} train + {len(ds.y_train) - len(rep.train_idx_KxN[0]):,}"
            f" val + {len(ds.y_test):,} test): {out['epoch_s']:.3f}s")
    if torch_ref:
        from .torch_reference import time_torch
        out["torch_samples_per_s"] = round(time_torch(cfg, steps), 1)
        out["speedup_vs_torch"] = round(out["train_samples_per_s"] / out["torch_samples_per_s"], 2)
        log(f"PyTorch reference: {out['torch_samples_per_s']:,.0f} samples/s; "
            f"speed-up {out['speedup_vs_torch']}x")
    return out


def main(argv: list[str]) -> int:
    def _main():
        values, opts = parse_argv(argv, EXTRA, flags=("help",))
        if "help" in opts:
            print(help_text("python -m jaxcollective.bench", __doc__.strip().splitlines()[0], EXTRA))
            return 0
        values.setdefault("batch_size", "256")
        values.setdefault("dataset", "fashion_mnist")
        cfg = Config.from_dict(values, opts.get("config"))
        steps = int_option(opts, "steps", 100, minimum=1)
        epochs = int_option(opts, "epochs", 1, minimum=0)
        torch_ref = bool_option(opts, "torch")
        if torch_ref:
            import importlib.util
            if importlib.util.find_spec("torch") is None:
                raise ConfigError("--torch=true times the PyTorch reference and needs PyTorch: "
                                  "`pip install torch --index-url https://download.pytorch.org/whl/cpu`"
                                  " (or leave --torch out)")
        print(json.dumps(run(cfg, steps, epochs, torch_ref)), flush=True)
        return 0
    return guarded(_main)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
