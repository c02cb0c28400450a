"""Local sweeps of W&B sweep files on Optuna: retry."""

from __future__ import annotations

import copy

from optuna.storages import RetryHeartbeatStaleTrialCallback


TRAINING = "jaxcollective_training"  # set when a claimed trial starts training
WORKER = "jaxcollective_worker"  # (host, pid) of the process that claimed a trial


class Retry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stopped or dead trial (same parameters, `failed_trial` naming the
    first of the chain), carrying its reported values and system attributes (completed
    Hyperband rungs, grid point) so that the retry takes its place (see `Hyperband`), but
    not what belonged to the process that ran it or to how it ended."""

    def __init__(self):
        super().__init__(max_retry=None, inherit_intermediate_values=True)

    def __call__(self, study, trial) -> None:
        trial = copy.copy(trial)
        trial.system_attrs = {
            k: v for k, v in trial.system_attrs.items() if k not in (TRAINING, WORKER)
        }
        trial.user_attrs = {
            k: v
            for k, v in trial.user_attrs.items()
            if k not in ("status", "results", "test_accuracy")
        }
        super().__call__(study, trial)


RETRY = Retry()
