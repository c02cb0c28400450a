"""The learning rate's plateau reductions and early stopping (docs/design.md, "Training").

Both are functions of the run's validation history, which every checkpoint holds: a
resumed run, a population member and a sequential run of one config compute the same
learning rate for each epoch and stop at the same epoch, with no schedule state of
their own to save. (optax.contrib.reduce_on_plateau keeps that state in the optimizer
and sees a value per update; here the value is one validation accuracy per epoch,
known on the host after the epoch, so the rule is written out below.) No JAX here.

The rules, as Keras' ReduceLROnPlateau and EarlyStopping with mode max, min_delta 0 and
no cooldown:
- plateau: after `lr_plateau_patience` epochs in a row without a new best validation
  accuracy, the learning rate is multiplied by `lr_plateau_factor` and the count starts
  again; each replica (seed) by its own curve.
- early stopping: the run ends once `early_stopping_patience` epochs in a row brought no
  new best of the validation accuracy's mean over the replicas.
"""

from __future__ import annotations

import numpy as np

from jaxcollective.config import Config
from jaxcollective.train.metrics import name

VAL = name("val", "accuracy")


def _val_by_epoch(history) -> np.ndarray:
    """Epochs x replicas validation accuracies of a history (a list of epoch metrics)."""
    return np.stack([np.asarray(h[VAL], np.float64).reshape(-1) for h in history])


def plateau_reductions(val_ExR: np.ndarray, patience: int) -> np.ndarray:
    """Per replica, how many plateau reductions its curve has triggered so far."""
    e, r = val_ExR.shape
    out = np.zeros(r, np.int64)
    if patience < 1:
        return out
    for j in range(r):
        best, wait = -np.inf, 0
        for v in val_ExR[:, j]:
            if v > best:
                best, wait = v, 0
            else:
                wait += 1
                if wait >= patience:
                    out[j] += 1
                    wait = 0
    return out


def learning_rates(cfg: Config, history) -> np.ndarray:
    """Per replica, the learning rate of the epoch after `history` (float32, as the
    optimizer state holds it)."""
    r = cfg.num_seeds if not history else np.asarray(history[0][VAL]).size
    if cfg.lr_plateau_patience < 1 or not history:
        return np.full(r, cfg.learning_rate, np.float32)
    n = plateau_reductions(_val_by_epoch(history), cfg.lr_plateau_patience)
    return (cfg.learning_rate * cfg.lr_plateau_factor**n).astype(np.float32)


def epochs_since_best(history) -> int:
    """Epochs since the best mean validation accuracy (the first of equal ones)."""
    mean_E = _val_by_epoch(history).mean(axis=1)
    return len(mean_E) - 1 - int(np.argmax(mean_E))


def stops(cfg: Config, history) -> bool:
    """Whether early stopping ends the run after `history`."""
    p = cfg.early_stopping_patience
    return p > 0 and bool(history) and epochs_since_best(history) >= p


def ends(cfg: Config, history) -> bool:
    """Whether the run is over after `history`: all its epochs trained, or stopped early."""
    return len(history) >= cfg.epochs or stops(cfg, history)
