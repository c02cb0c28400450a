"""A W&B sweep file run locally with Optuna: `python -m jaxcollective.sweep SWEEP.yaml`.

Local sweeps of W&B sweep files on Optuna: the sweep file and its search space, samplers and Hyperband, retries, claims on the study's store, trials, populations, the command.
"""

import warnings

import optuna

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# we run ask/tell with optimize()'s heartbeat thread (see run_study), as optimize() does
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
# a retry resumed from a checkpoint older than its original's last report reports those
# epochs again (the same values: the run is deterministic); Optuna keeps the first
warnings.filterwarnings("ignore", message="The reported value is ignored because this `step")
