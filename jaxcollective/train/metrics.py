"""Every metric name a run logs, and its formula: the one owner of both.

Per epoch (`epoch_row`): the names of docs/design.md ("Metrics"), the original's extra
names, top-k accuracies; the `final/*` metrics as they stand after each epoch
(`final_metrics`, also the end-of-run record) are added to every epoch row by the run
loop, which is what makes a sweep's Hyperband see its metric in every history row.
Other modules import the names from here. No JAX here: the report imports this module.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Optional

import numpy as np

from jaxcollective.config import Config

SPLITS = ("train", "val", "test")
# The loss and its parts, as the train step returns them (before the split's prefix).
LOSS_PARTS = ("loss", "loss_prediction", "loss_diversity_expert", "loss_diversity_analyst")
CORRECT = "correct"  # the step's per-batch count of correct predictions; a rate: accuracy


def name(split: str, metric: str) -> str:
    """`train/loss`, `val/accuracy_top5`, ...: a split's metric."""
    return f"{split}/{metric}"


def rate_name(count: str) -> str:
    """The logged name of a count of correct predictions: correct_top5 -> accuracy_top5."""
    return count.replace(CORRECT, "accuracy")


def count_names(topk: tuple[int, ...]) -> tuple[str, ...]:
    return (CORRECT, *(f"{CORRECT}_top{k}" for k in topk))


EPOCH_METRICS = tuple(name("train", m) for m in (*LOSS_PARTS, "accuracy")) + tuple(
    name(s, m) for s in ("val", "test") for m in ("loss", "accuracy")
)
LOSSES = tuple(name(s, "loss") for s in SPLITS)  # a non-finite one means: diverged
EPOCH_TIME = "time/epoch_s"
FINAL_PREFIX = "final/"
TEST_ACCURACY = "final/test_accuracy"
TEST_LOSS = "final/test_loss"
BEST_VAL_ACCURACY = "final/best_val_accuracy"
# per replica, the test accuracy after the epoch of its best validation accuracy (the
# first such epoch): what an early-stopped run would report had it kept its best epoch
TEST_AT_BEST_VAL = "final/test_accuracy_at_best_val"
MODEL_PARAMS = "final/model_params"
PARAM_EFFICIENCY = "final/param_efficiency"
ACCURACY_PER_LOG10 = "final/accuracy_per_log10_params"
# What a run's W&B summary holds besides the final/* metrics.
SUMMARY_KEYS = (
    "status",
    "diverged",
    "epochs_completed",
    "model_params",
    "stopped_early",
    "last_lr",
)
SUMMARY_PREFIXES = (FINAL_PREFIX, "final_", "best_")


def efficiency_metrics(acc, params: int) -> dict[str, Any]:
    """The final efficiency metrics of a test accuracy (a float or an array)."""
    return {
        PARAM_EFFICIENCY: acc / (params / 1e5),
        "final/accuracy_per_million_params": acc / (params / 1e6),
        ACCURACY_PER_LOG10: acc / math.log10(params + 1),
    }


def best_val_accuracy(history: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Per replica, the best validation accuracy over the epochs so far."""
    return np.max(np.stack([h["val/accuracy"] for h in history]), axis=0)


def final_metrics(history: list[dict[str, np.ndarray]], params: int) -> dict[str, Any]:
    """The final/* metrics from the per-replica history (mean over replicas, plus std
    when there are several), and the original's names for the same quantities, for every
    model type alike (docs/design.md, "Metrics")."""
    last = history[-1]
    log_p = math.log10(params + 1)
    acc_R = np.asarray(last["test/accuracy"], np.float64)
    loss_R = np.asarray(last["test/loss"], np.float64)
    val_by_epoch = np.stack([h["val/accuracy"] for h in history])  # epochs x replicas
    test_by_epoch = np.stack([h["test/accuracy"] for h in history])
    best_R = val_by_epoch.argmax(axis=0)  # per replica, its first best epoch (0-based)
    per = {
        TEST_ACCURACY: acc_R,
        TEST_LOSS: loss_R,
        BEST_VAL_ACCURACY: val_by_epoch.max(axis=0),
        TEST_AT_BEST_VAL: np.asarray(
            test_by_epoch[best_R, np.arange(test_by_epoch.shape[1])], np.float64
        ),
        **efficiency_metrics(acc_R, params),
        **{
            f"final/test_{k.split('/')[1]}": np.asarray(last[k], np.float64)
            for k in last
            if k.startswith("test/accuracy_top")
        },
        # the original's names
        "final/param_efficiency/test_accuracy_per_log10_params": acc_R / log_p,
        "final/loss_efficiency_per_log10_params": loss_R / log_p,
    }
    out: dict[str, Any] = {k: float(v.mean()) for k, v in per.items()}
    out[MODEL_PARAMS] = params
    if len(acc_R) > 1:
        for k, v in per.items():
            out[f"{k}_std"] = float(v.std(ddof=1))
    # the original's run summary: best epoch (1-based) of the mean validation accuracy
    original = {
        "best_val_accuracy": per[BEST_VAL_ACCURACY],
        **{
            f"final_{split}_{m}": np.asarray(last[f"{split}/{m}"], np.float64)
            for split in ("train", "val", "test")
            for m in ("accuracy", "loss")
        },
    }
    out.update({k: float(v.mean()) for k, v in original.items()})
    out.update(best_epoch=int(np.argmax(val_by_epoch.mean(axis=1))) + 1, model_params=params)
    if len(acc_R) > 1:  # every mean, under either name, with its spread beside it
        out.update({f"{k}_std": float(v.std(ddof=1)) for k, v in original.items()})
    return out


VAL_CURVES = "val_accuracy_curves"  # in a results record: per replica, val/accuracy per epoch
TEST_CURVES = "test_accuracy_curves"  # and test/accuracy per epoch


def val_curves(history: list[dict[str, np.ndarray]], split: str = "val") -> list[list[float]]:
    """Per replica, the validation (or test) accuracy after each epoch (the report's curves,
    the epoch of the best validation accuracy and the test accuracy there)."""
    return np.round(
        np.stack([h[f"{split}/accuracy"] for h in history]).T.astype(np.float64), 4
    ).tolist()


def replica_finals(
    history: list[dict[str, np.ndarray]], seeds: list[int]
) -> list[dict[str, float]]:
    last = history[-1]
    val = np.stack([h["val/accuracy"] for h in history])
    test = np.stack([h["test/accuracy"] for h in history])
    best = val.argmax(axis=0)
    return [
        {
            "seed": s,
            "test_accuracy": float(last["test/accuracy"][i]),
            "test_loss": float(last["test/loss"][i]),
            "best_val_accuracy": float(val[best[i], i]),
            "best_epoch": int(best[i]) + 1,
            "test_accuracy_at_best_val": float(test[best[i], i]),
        }
        for i, s in enumerate(seeds)
    ]


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


def history_row(
    epoch: int,
    history: list[dict[str, np.ndarray]],
    cfg: Config,
    params: int,
    lr: Optional[float] = None,
) -> dict[str, Any]:
    """The row logged after each epoch: that epoch's metrics, plus the final metrics as
    they stand (a run stopped here reports them; a sweep's Hyperband, which counts the
    history rows holding its metric, sees `final/*` in every row). `lr`: the rate this
    epoch trained at, where plateau reductions set it (schedule.learning_rates)."""
    row = epoch_row(epoch, history[-1], cfg, params)
    if lr is not None:
        row["lr"] = lr
    row.update(final_metrics(history, params))
    return row


def is_summary(key: str) -> bool:
    """A record key that belongs in a run's W&B summary."""
    return key.startswith(SUMMARY_PREFIXES) or key in SUMMARY_KEYS


def logged_names(cfg: Config) -> set[str]:
    """Every name a run of `cfg` logs in its per-epoch rows (a sweep's metric must be
    one of them), from a row built on a one-epoch history of zeros."""
    m = {k: np.zeros(cfg.num_seeds) for k in EPOCH_METRICS}
    m.update(
        {
            name(s, f"accuracy_top{k}"): np.zeros(cfg.num_seeds)
            for s in SPLITS
            for k in cfg.extra_topk
        }
    )
    return set(history_row(1, [m], cfg, 1)) | {EPOCH_TIME}


def closest_names(wanted: str, names: set[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(wanted, sorted(names), n=n, cutoff=0.4)
