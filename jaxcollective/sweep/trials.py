"""Local sweeps of W&B sweep files on Optuna: trials."""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Optional


from jaxcollective.train.checkpoint import open_checkpoints
from jaxcollective.config import Config, ConfigError
from jaxcollective.data.datasets import load
from jaxcollective.train.loop import preflight, train_and_evaluate
from jaxcollective.train.metrics import TEST_ACCURACY, closest_names, logged_names
from jaxcollective.train.signals import StopFlag
from jaxcollective.train.writers import MultiWriter, ResultsWriter, WandbWriter, Writer

from .space import _ends, read_sweep, search_space, suggest
from .retry import RETRY
from .samplers import GridSampler, sampler_of, sampler_seed
from .claims import started


# ------------------------------------------------------------------ the study
class Sweep:
    """One sweep file, its fixed keys and overrides, and how one trial runs."""

    def __init__(self, path: str, overrides: dict[str, str], results: Optional[str]):
        self.sweep = read_sweep(path)
        self.fixed, self.space = search_space(self.sweep["parameters"])
        for k in overrides:  # an override fixes a varied key too
            self.space.pop(k, None)
        if "dataset" in overrides:  # the sweep's input_dim / num_classes were its dataset's
            for k in ("input_dim", "num_classes"):
                if k not in overrides and self.fixed.pop(k, None) is not None:
                    print(
                        f"note: --set dataset={overrides['dataset']} drops the sweep's fixed {k}",
                        file=sys.stderr,
                    )
        self.fixed.update(overrides)
        if results:
            self.fixed["results"] = results
        metric = self.sweep.get("metric") or {}
        if not metric.get("name"):
            raise ConfigError(f"{path} has no metric.name: the study needs an objective")
        goal = metric.get("goal", "maximize")
        if goal not in ("maximize", "minimize"):
            raise ConfigError(f"metric.goal {goal!r}: expected maximize or minimize")
        self.metric, self.direction = metric["name"], goal
        self.base_cfg = self.check_space()
        logged = logged_names(self.base_cfg)
        if self.metric not in logged:
            near = closest_names(self.metric, logged)
            raise ConfigError(
                f"the sweep's metric.name {self.metric!r} is not a metric the runs "
                f"log; closest: {', '.join(near) or TEST_ACCURACY}"
            )
        self.results = self.base_cfg.results
        self._data: dict[tuple, Any] = {}

    def check_space(self) -> Config:
        """Every value of every `values` list and both ends of every range make a valid
        config (with each model type the file can send), before any trial. Returns the
        config of the first values."""
        first = {k: _ends(d)[0] for k, d in self.space.items()}
        base = Config.from_values({**self.fixed, **first})
        types = _ends(self.space["model_type"]) if "model_type" in self.space else [base.model_type]
        for key, dist in self.space.items():
            for value in _ends(dist):
                for model_type in types:
                    values = {**self.fixed, **first, "model_type": model_type, key: value}
                    try:
                        cfg = Config.from_values(values)
                        if cfg.model_type == "collective":
                            cfg.dims  # noqa: B018 - widths of 0 are an error
                    except ConfigError as err:
                        with_type = (
                            "" if key == "model_type" else f" (with model_type {model_type})"
                        )
                        raise ConfigError(
                            f"sweep parameter {key!r}: the value {value!r}"
                            f"{with_type} is invalid: {err}"
                        ) from None
        return base

    def grid_size(self) -> Optional[int]:
        """The number of points of a `method: grid` sweep, else None."""
        if self.sweep.get("method") != "grid":
            return None
        return math.prod(len(dist.choices) for dist in self.space.values())

    def dataset(self, cfg):
        key = (
            cfg.dataset,
            cfg.synthetic_like,
            cfg.data_dir,
            cfg.manual_dir,
            cfg.seed if cfg.dataset == "synthetic" else None,
        )
        if key not in self._data:
            self._data[key] = load(cfg)
        return self._data[key]

    seed = 0  # the sampler's base seed (--seed)

    def config_of(self, trial) -> tuple[Config, dict]:
        if not trial.params and not isinstance(trial.study.sampler, GridSampler):
            # before its first draw: a stream of the trial's own (sampler_seed)
            trial.study.sampler = sampler_of(
                self.sweep, self.space, sampler_seed(self.seed, trial.number)
            )
        values = dict(self.fixed)
        values.update({k: suggest(trial, k, dist) for k, dist in self.space.items()})
        return Config.from_values(values), values

    def run_trial(self, trial, stop: StopFlag) -> tuple[str, Optional[float]]:
        """Train one trial, reporting each epoch's metric to Optuna (which may prune it at
        an epoch boundary). Returns (status, objective): finished, pruned, stopped (a
        signal: its checkpoint is kept for the retry) or diverged."""
        from jaxcollective.api import unused_keys

        cfg, values = self.config_of(trial)
        resolved = preflight(cfg)
        ds = self.dataset(cfg)
        prune = StopFlag()  # set at an epoch boundary, by the pruner or by `stop`
        metric, seen = self.metric, []

        class Report(Writer):
            def start(self, info):
                started(trial)
                trial.set_user_attr("model_type", info["model_type"])
                trial.set_user_attr("model_params", info["model_params"])

            def log(self, row):
                seen.append(float(row[metric]))
                trial.report(seen[-1], row["epoch"])
                # the trial in flight is never silent (a population prints progress_line)
                print(
                    f"[sweep {trial.study.study_name}] trial {trial.number}: epoch "
                    f"{row['epoch']}/{cfg.epochs}, {metric} {seen[-1]:.4g}",
                    file=sys.stderr,
                    flush=True,
                )
                if stop.requested:
                    prune.signal, prune.status = stop.signal, "stopped"
                elif trial.should_prune():
                    prune.signal, prune.status = -1, "pruned"

        checkpointer, meta = open_checkpoints(cfg)  # says "resuming from epoch N" when it does
        retry_of = RETRY.retried_trial_number(trial.study._storage.get_trial(trial._trial_id))
        if retry_of is not None and meta is None:
            print(
                f"[sweep {trial.study.study_name}] trial {trial.number} retries trial {retry_of}: "
                f"no checkpoint of it in {cfg.checkpoint_dir}, so it starts from epoch 0",
                file=sys.stderr,
                flush=True,
            )
        results = ResultsWriter(cfg.results)
        writers = [Report(), results]
        run = self.wandb_run(cfg, values, trial)
        if run is not None:
            writers.append(WandbWriter(run))
        extra = trial_info(trial)
        # a second Ctrl-C writes what this trial measured (train_and_evaluate sets it)
        stop.on_force = lambda: prune.on_force() if prune.on_force else None
        try:
            record = train_and_evaluate(
                cfg,
                MultiWriter(*writers),
                unused=unused_keys(cfg, set(values)),
                stop=prune,
                dataset=ds,
                resolved=resolved,
                checkpointer=checkpointer,
                resume_meta=meta,
                extra_info=extra,
            )
        except BaseException:
            if run is not None:
                run.finish(exit_code=1)
            raise
        finally:
            stop.on_force = None
        return trial_outcome(trial, record, f"{cfg.results}:{results.line}", seen)

    def wandb_run(self, cfg, values, trial):
        """Each trial its own W&B run, grouped by study, when W&B is there and not disabled."""
        from jaxcollective import wandb_run

        mode = wandb_run.wandb_mode()
        if not mode:
            return None
        # create_new: a population's members are W&B runs open at once, each finished
        # when its member ends
        run, _ = wandb_run.start(
            values,
            mode,
            cfg,
            group=trial.study.study_name,
            name=f"{trial.study.study_name}-trial{trial.number}",
            reinit="create_new",
            quiet=True,
        )
        return run


def trial_info(trial) -> dict[str, Any]:
    """What a trial's results line records of the study (and of the trial it retries)."""
    extra = {
        "sweep_study": trial.study.study_name,
        "sweep_trial": trial.number,
        "sweep_worker": os.getpid(),
    }
    retry_of = RETRY.retried_trial_number(trial.study._storage.get_trial(trial._trial_id))
    if retry_of is not None:
        extra["sweep_retry_of"] = retry_of
    return extra


def trial_outcome(trial, record: dict, line: str, seen: list[float]) -> tuple[str, Optional[float]]:
    """What the dashboard (optuna-dashboard) shows of an ended trial, as user attributes;
    returns its status and objective (its metric's last finite value, else None)."""
    trial.set_user_attr("status", record["status"])
    trial.set_user_attr("results", line)
    if record.get(TEST_ACCURACY) is not None:
        trial.set_user_attr("test_accuracy", record[TEST_ACCURACY])
    return record["status"], (seen[-1] if seen and math.isfinite(seen[-1]) else None)
