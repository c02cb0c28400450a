"""`train_and_evaluate(cfg, writer)`: one run, from config to results.

Metrics are fetched from the device once per epoch. Every epoch row also carries the
`final/*` metrics as they would be if the run ended there, so a run stopped at any
point (SIGTERM from Hyperband, Ctrl-C) reports its last completed epoch as final,
and a sweep's early-termination sees its metric in every history row.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any, Optional

import numpy as np

from .config import Config
from .writers import Writer

EPOCH_METRICS = ("train/loss", "train/loss_prediction", "train/loss_diversity_expert",
                 "train/loss_diversity_analyst", "train/accuracy", "val/loss", "val/accuracy",
                 "test/loss", "test/accuracy")


class StopFlag:
    """Set by SIGTERM / SIGINT; the loop stops after the epoch in flight."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._old = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now
        self.signal = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


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
    plus std and per-replica values when there are several)."""
    last = history[-1]
    acc_K = np.asarray(last["test/accuracy"], np.float64)
    per = {
        "final/test_accuracy": acc_K,
        "final/test_loss": np.asarray(last["test/loss"], np.float64),
        "final/best_val_accuracy": best_val_accuracy(history),
        **efficiency_metrics(acc_K, params),
    }
    out: dict[str, Any] = {k: float(v.mean()) for k, v in per.items()}
    out["final/model_params"] = params
    if len(acc_K) > 1:
        for k, v in per.items():
            out[f"{k}_std"] = float(v.std(ddof=1))
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
    row["lr"] = cfg.learning_rate
    row["model_params"] = params
    log_p = math.log10(params + 1)
    row["param_efficiency/accuracy_per_log10_params"] = row["val/accuracy"] / log_p
    row["param_efficiency/test_accuracy_per_log10_params"] = row["test/accuracy"] / log_p
    if len(m["test/accuracy"]) > 1:
        row["test/accuracy_std"] = float(np.std(m["test/accuracy"], ddof=1))
        row["val/accuracy_std"] = float(np.std(m["val/accuracy"], ddof=1))
    return row


def run_info(resolved, ds, seeds: list[int], unused: list[str]) -> dict[str, Any]:
    from .api import describe_resolved
    info = describe_resolved(resolved)
    info.update(dataset=ds.name, synthetic=ds.synthetic, num_seeds=len(seeds), seeds=seeds,
                unused_keys=unused, config=resolved.cfg.to_dict())
    return info


def train_and_evaluate(cfg: Config, writer: Writer, *, unused: Optional[list[str]] = None,
                       stop: Optional[StopFlag] = None) -> dict[str, Any]:
    """Train `cfg` (cfg.num_seeds replicas at once) and report through `writer`.
    Returns the results record (also given to `writer.finish`)."""
    import jax

    from .data import load
    from .sizing import resolve
    from .train import Engine

    t0 = time.perf_counter()
    resolved = resolve(cfg)
    ds = load(cfg)
    seeds = [cfg.seed + i for i in range(cfg.num_seeds)]
    engine = Engine(resolved, ds.info)
    data, rep = engine.put_data(ds, seeds)
    state = engine.init(seeds)
    info = run_info(resolved, ds, seeds, unused or [])
    writer.start(info)

    history: list[dict[str, np.ndarray]] = []
    status, row = "finished", None
    params = resolved.model_params
    try:
        for epoch in range(1, cfg.epochs + 1):
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
            if stop is not None and stop.requested:
                status = "stopped"
                break
    except KeyboardInterrupt:
        status = "stopped"

    record: dict[str, Any] = {k: v for k, v in info.items()}
    record.update(status=status, diverged=status == "diverged", epochs_completed=len(history),
                  wall_s=time.perf_counter() - t0)
    if history:
        record.update(final_metrics(history, params))
        record["replicas"] = replica_finals(history, seeds)
    writer.finish(record)
    return record
