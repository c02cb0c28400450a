"""Every metric name a run logs, and its formula: the one owner of both.

Per epoch (`epoch_row`): SPEC section 6's names, the original's extra names (SPEC
section 8), top-k accuracies; the `final/*` metrics as they stand after each epoch
(`final_metrics`, also the end-of-run record) are added to every epoch row by the run
loop, which is what makes a sweep's Hyperband see its metric in every history row.
No JAX here: the report imports this module.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import Config

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
    acc_R = np.asarray(last["test/accuracy"], np.float64)
    loss_R = np.asarray(last["test/loss"], np.float64)
    val_by_epoch = np.stack([h["val/accuracy"] for h in history])  # epochs x replicas
    per = {
        "final/test_accuracy": acc_R,
        "final/test_loss": loss_R,
        "final/best_val_accuracy": val_by_epoch.max(axis=0),
        **efficiency_metrics(acc_R, params),
        **{f"final/test_{k.split('/')[1]}": np.asarray(last[k], np.float64)
           for k in last if k.startswith("test/accuracy_top")},
        # the original's names
        "final/param_efficiency/test_accuracy_per_log10_params": acc_R / log_p,
        "final/loss_efficiency_per_log10_params": loss_R / log_p,
    }
    out: dict[str, Any] = {k: float(v.mean()) for k, v in per.items()}
    out["final/model_params"] = params
    if len(acc_R) > 1:
        for k, v in per.items():
            out[f"{k}_std"] = float(v.std(ddof=1))
    # the original's run summary: best epoch (1-based) of the mean validation accuracy
    out.update(best_val_accuracy=out["final/best_val_accuracy"],
               best_epoch=int(np.argmax(val_by_epoch.mean(axis=1))) + 1,
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


def history_row(epoch: int, history: list[dict[str, np.ndarray]], cfg: Config,
                params: int) -> dict[str, Any]:
    """The row logged after each epoch: that epoch's metrics, plus the final metrics as
    they stand (a run stopped here reports them; a sweep's Hyperband, which counts the
    history rows holding its metric, sees `final/*` in every row)."""
    row = epoch_row(epoch, history[-1], cfg, params)
    row.update(final_metrics(history, params))
    return row
