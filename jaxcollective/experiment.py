"""`train_and_evaluate(cfg, writer)`: one run, from config to results.

Metrics are fetched from the device once per epoch. Every epoch row also carries the
`final/*` metrics as they would be if the run ended there, so a run stopped at any
point (SIGTERM from Hyperband, Ctrl-C) reports its last completed epoch as final,
and a sweep's early-termination sees its metric in every history row.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np

from .config import Config
from .signals import StopFlag
from .writers import Writer

EPOCH_METRICS = ("train/loss", "train/loss_prediction", "train/loss_diversity_expert",
                 "train/loss_diversity_analyst", "train/accuracy", "val/loss", "val/accuracy",
                 "test/loss", "test/accuracy")


def efficiency_metrics(acc, params: int) -> dict[str, Any]:
    """SPEC section 6's final efficiency metrics of a test accuracy (a float or an array)."""
    return {"final/param_efficiency": acc / (params / 1e5),
            "final/accuracy_per_million_params": acc / (params / 1e6),
            "final/accuracy_per_log10_params": acc / math.log10(params + 1)}


def best_val_accuracy(history: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Per replica, the best validation accuracy over the epochs so far."""
    return np.max(np.stack([h["val/accuracy"] for h in history]), axis=0)


def final_metrics(history: list[dict[str, np.ndarray]], params: int) -> dict[str, Any]:
    """SPEC section 6's final/* metrics from the per-replica history (mean over replicas,
    plus std and per-replica values when there are several), and the original's names
    for the same quantities (SPEC section 8), for every model type alike."""
    last = history[-1]
    log_p = math.log10(params + 1)
    acc_K = np.asarray(last["test/accuracy"], np.float64)
    loss_K = np.asarray(last["test/loss"], np.float64)
    val_R = np.stack([h["val/accuracy"] for h in history])  # epochs x replicas
    per = {
        "final/test_accuracy": acc_K,
        "final/test_loss": loss_K,
        "final/best_val_accuracy": val_R.max(axis=0),
        **efficiency_metrics(acc_K, params),
        **{f"final/test_{k.split('/')[1]}": np.asarray(last[k], np.float64)
           for k in last if k.startswith("test/accuracy_top")},
        # the original's names
        "final/param_efficiency/test_accuracy_per_log10_params": acc_K / log_p,
        "final/loss_efficiency_per_log10_params": loss_K / log_p,
    }
    out: dict[str, Any] = {k: float(v.mean()) for k, v in per.items()}
    out["final/model_params"] = params
    if len(acc_K) > 1:
        for k, v in per.items():
            out[f"{k}_std"] = float(v.std(ddof=1))
    # the original's run summary: best epoch (1-based) of the mean validation accuracy
    out.update(best_val_accuracy=out["final/best_val_accuracy"],
               best_epoch=int(np.argmax(val_R.mean(axis=1))) + 1,
               **{f"final_{split}_{m}": float(np.mean(last[f"{split}/{m}"]))
                  for split in ("train", "val", "test") for m in ("accuracy", "loss")},
               model_params=params)
    return out


def replica_finals(history: list[dict[str, np.ndarray]], seeds: list[int]) -> list[dict[str, float]]:
    last = history[-1]
    best_val = best_val_accuracy(history)
    return [{"seed": s, "test_accuracy": float(last["test/accuracy"][i]),
             "test_loss": float(last["test/loss"][i]), "best_val_accuracy": float(best_val[i])}
            for i, s in enumerate(seeds)]


def epoch_row(epoch: int, m: dict[str, np.ndarray], cfg: Config, params: int) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch}
    row.update({k: float(np.mean(m[k])) for k in EPOCH_METRICS})
    row.update({k: float(np.mean(v)) for k, v in m.items() if "/accuracy_top" in k})
    row["lr"] = cfg.learning_rate
    row["model_params"] = params
    log_p = math.log10(params + 1)
    row["param_efficiency/accuracy_per_log10_params"] = row["val/accuracy"] / log_p
    row["param_efficiency/test_accuracy_per_log10_params"] = row["test/accuracy"] / log_p
    row["param_efficiency/loss_per_log10_params"] = row["val/loss"] / log_p
    row["param_efficiency/test_loss_per_log10_params"] = row["test/loss"] / log_p
    if len(m["test/accuracy"]) > 1:
        row["test/accuracy_std"] = float(np.std(m["test/accuracy"], ddof=1))
        row["val/accuracy_std"] = float(np.std(m["val/accuracy"], ddof=1))
    return row


def run_info(resolved, ds, seeds: list[int], unused: dict[str, str]) -> dict[str, Any]:
    from .api import describe_resolved
    info = describe_resolved(resolved)
    info.update(dataset=ds.name, synthetic=ds.synthetic, num_seeds=len(seeds), seeds=seeds,
                unused_keys=unused, config=resolved.cfg.to_dict())
    return info


def train_and_evaluate(cfg: Config, writer: Writer, *, unused: Optional[dict[str, str]] = None,
                       stop: Optional[StopFlag] = None, dataset=None,
                       resolved=None) -> dict[str, Any]:
    """Train `cfg` (cfg.num_seeds replicas at once) and report through `writer`.
    `dataset` and `resolved` are the already loaded data and sized architecture (else
    made from cfg). Returns the results record (also given to `writer.finish`)."""
    import jax

    from .data import load
    from .sizing import resolve
    from .train import Engine

    t0 = time.perf_counter()
    resolved = resolved if resolved is not None else resolve(cfg)
    ds = dataset if dataset is not None else load(cfg)
    seeds = [cfg.seed + i for i in range(cfg.num_seeds)]
    engine = Engine(resolved, ds.info)
    data, rep = engine.put_data(ds, seeds)
    state = engine.init(seeds)
    info = run_info(resolved, ds, seeds, unused or {})
    writer.start(info)

    history: list[dict[str, np.ndarray]] = []
    status = "finished"
    params = resolved.model_params

    def record_of(status: str) -> dict[str, Any]:
        record: dict[str, Any] = dict(info)
        record.update(status=status, diverged=status == "diverged",
                      epochs_completed=len(history), wall_s=time.perf_counter() - t0)
        if history:
            record.update(final_metrics(history, params))
            record["replicas"] = replica_finals(history, seeds)
        return record

    if stop is not None:  # a second signal writes what was measured, then exits at once
        stop.on_force = lambda: writer.finish(record_of("stopped"))
    try:
        for epoch in range(1, cfg.epochs + 1):
            if stop is not None and stop.requested:
                status = "stopped"
                break
            te = time.perf_counter()
            state, m = engine.epoch(state, data, rep, engine.epoch_keys(seeds, epoch))
            m = jax.device_get(m)  # the one host round-trip per epoch
            if not all(np.all(np.isfinite(m[k])) for k in ("train/loss", "val/loss", "test/loss")):
                status = "diverged"
                break
            history.append(m)
            row = epoch_row(epoch, m, cfg, params)
            row.update(final_metrics(history, params))
            row["time/epoch_s"] = time.perf_counter() - te
            writer.log(row)
    except KeyboardInterrupt:
        status = "stopped"
    finally:
        if stop is not None:
            stop.on_force = None

    record = record_of(status)
    writer.finish(record)
    return record
