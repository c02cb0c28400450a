"""Local sweeps of W&B sweep files on Optuna: samplers."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Optional

import numpy as np
import optuna
from optuna.trial import TrialState

from jaxcollective.config import ConfigError

from .space import HYPERBAND_KEYS
from .retry import RETRY


class GridSampler(optuna.samplers.RandomSampler):
    """A W&B grid as a set of points, claimed one by one (`claim`): each point runs once,
    across workers, reruns, extensions and interruptions, in the file's order (the first
    key varies slowest), whatever a process's seed. A point is held by any trial of it
    that is finished, pruned, running or queued (a stopped or dead trial's retry carries
    it on), or that ended for good (diverged, or a config that fails); the next claim
    takes the first point no trial holds. (Optuna's GridSampler picks
    points at random per process and does not count running trials or retries as
    holding theirs: two workers could run one point and skip another.)"""

    def __init__(self, space: dict[str, list]):
        super().__init__(seed=0)
        keys = list(space)
        self.points = [dict(zip(keys, combo)) for combo in itertools.product(*space.values())]

    @staticmethod
    def key(point: dict) -> str:
        return json.dumps(point, sort_keys=True)

    def held(self, trials) -> set[str]:
        return {
            t.system_attrs[GRID_POINT]
            for t in trials
            if GRID_POINT in t.system_attrs
            and (t.state != TrialState.FAIL or t.user_attrs.get("status") in ("failed", "diverged"))
        }

    def next_point(self, trials) -> Optional[dict]:
        held = self.held(trials)
        return next((p for p in self.points if self.key(p) not in held), None)

    def queue(self, study, point: dict) -> None:
        """The point as a waiting trial (study.enqueue_trial's, with its name)."""
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs={"fixed_params": point, GRID_POINT: self.key(point)},
            )
        )

    def sample_independent(self, study, trial, name, dist):
        raise RuntimeError(
            f"grid trial {trial.number} has no value for {name!r}: a grid's "
            "trials are claimed with their whole point (sweep.claim)"
        )


GRID_POINT = "jaxcollective_grid_point"


def sampler_of(sweep: dict, space: dict, seed: int):
    method = sweep.get("method", "random")
    if method == "bayes":
        # constant_liar: trials still running count as bad guesses, so parallel workers
        # (and population members) spread out instead of sampling the same region
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "grid":
        bad = [
            k
            for k, v in space.items()
            if not isinstance(v, optuna.distributions.CategoricalDistribution)
        ]
        if bad:
            raise ConfigError(
                f"method grid needs a values list for every varied key; "
                f"{bad[0]!r} has a distribution"
            )
        return GridSampler({k: list(v.choices) for k, v in space.items()})
    raise ConfigError(f"sweep method {method!r} cannot be run locally; use bayes, random or grid")


def pruner_of(sweep: dict, epochs: int):
    et = sweep.get("early_terminate")
    if not et:
        return optuna.pruners.NopPruner()
    if not isinstance(et, dict) or et.get("type") != "hyperband":
        raise ConfigError(f"early_terminate {et!r} cannot be run locally; only type: hyperband")
    unknown = sorted(set(et) - HYPERBAND_KEYS)
    if unknown:
        raise ConfigError(
            f"early_terminate key {unknown[0]!r} cannot be mapped to Optuna's "
            "Hyperband pruner (min_iter, max_iter, eta, s)"
        )
    eta = int(et.get("eta", 3))
    if "min_iter" in et:
        min_iter = int(et["min_iter"])
    elif "max_iter" in et:  # W&B: min_iter = max_iter / eta^s
        min_iter = max(1, int(et["max_iter"] / eta ** int(et.get("s", 0))))
    else:
        raise ConfigError("early_terminate: hyperband needs min_iter or max_iter")
    max_iter = int(et.get("max_iter", epochs))
    return Hyperband(
        min_resource=min_iter, max_resource=max(max_iter, min_iter), reduction_factor=eta
    )


class Hyperband(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband, with a retried trial in its original's place. Optuna picks a
    trial's bracket from its number, and a retry has a new number: here it takes the
    bracket of the trial it retries. The retry carries the original's reported values and
    completed rungs (`Retry`), so the stopped or dead original, which no longer trains,
    no longer competes at the rungs either. A retried trial is pruned or kept exactly as
    the original would have been."""

    def _get_bracket_id(self, study, trial) -> int:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("status") in (None, "stopped"):
            return -1  # in no bracket: stopped or dead, its retry competes in its place
        first = RETRY.retried_trial_number(trial)
        if first is not None:
            trial = copy.copy(trial)
            trial.number = first
        return super()._get_bracket_id(study, trial)


def sampler_seed(seed: int, trial_number: int) -> int:
    """The sampler's stream for one trial: every trial number its own, so no two trials of
    a study draw alike, whichever worker, host or rerun draws them (extending a study draws
    new trials), and a study run again from scratch with the same --seed draws the same.
    (The sampler still sees the whole study: TPE models every trial so far.)"""
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])
