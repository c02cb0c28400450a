"""A W&B sweep file run locally with Optuna: `python -m jaxcollective.sweep SWEEP.yaml`.

The same sweep files as `wandb sweep` (ours, and those written for the original) run
without a W&B server: `method` maps to Optuna's samplers (bayes: TPE, random, grid),
`parameters` to its distributions, `metric` to the study's objective and direction
(read from each trial's per-epoch rows), `early_terminate: hyperband` to Optuna's
Hyperband pruner, reported once per epoch. Trials run in this process: JAX is imported
once, each dataset loaded once, and a compiled epoch is reused by every trial whose
program is the same (see `train.Trainer`). Every trial appends its results line, so
`python -m jaxcollective.report` reads a local sweep as it reads agent runs. The study
lives in an Optuna storage (SQLite beside the results by default; any RDB URL), which
several processes or machines share; `--study=NAME` resumes one.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import optuna
import yaml
from optuna import distributions as d
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled  # as optimize()
from optuna.trial import TrialState

from . import schedule
from .checkpoint import open_checkpoints
from .cli import UsageError, console_script, guarded, help_text, int_option, parse_argv
from .config import Config, ConfigError
from .data import load
from .experiment import (
    check_appendable,
    check_results_file,
    enable_compilation_cache,
    preflight,
    train_and_evaluate,
)
from .metrics import TEST_ACCURACY, closest_names, history_row, logged_names
from .signals import StopFlag
from .store import has_lock, is_server, masked, open_storage, study_lock
from .util import alive
from .writers import MultiWriter, ResultsWriter, WandbWriter, Writer

OPTIONS = {
    "trials": "trials in the study in all (default 10): finished or pruned, across all "
    "workers and all reruns of the command",
    "set": "KEY=VALUE fixes a key for every trial (repeatable: --set dataset=digits "
    "--set epochs=3)",
    "study": "the study's name (default: the sweep file's name); an existing study of that "
    "name is resumed",
    "storage": "an Optuna storage URL (default: sqlite:///<results folder>/sweeps.db); "
    "postgresql://... or mysql://... to share a study between machines",
    "results": "results file, one line per trial (default runs/results.jsonl)",
    "parallel": "K worker processes on this machine sharing the study (one GPU each when "
    "there are several)",
    "seed": "the sampler's base seed (default 0); each trial draws from its own stream, "
    "derived from it and the trial's number",
    "population": "K trials whose compiled program is the same train together as the K "
    "members of one vmapped program (default 1: one trial at a time); a "
    "finished or pruned member's slot takes the next trial at once; auto: "
    "1 on a CPU, else the largest power of 2 up to 256 whose members fit "
    "the device's memory",
    "worker": "this process's index among --parallel workers (set by --parallel)",
    "heartbeat": "seconds between a running trial's heartbeats (default 30); a trial whose "
    "process died is failed and retried after 2x this",
    "help": "show this message",
}
PROG = "python -m jaxcollective.sweep"
SUMMARY = "Run a W&B sweep file locally with Optuna (no W&B server needed)."

HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "eta", "s"}


# ------------------------------------------------------------- the sweep file
def read_sweep(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"sweep file {path} not found; pass a W&B sweep YAML such as sweeps/phase1.yaml"
        )
    try:
        sweep = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        raise ConfigError(f"{path} has no `parameters:` mapping; is it a W&B sweep file?")
    return sweep


def search_space(parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed values, Optuna distributions) of a sweep's `parameters`; anything that
    cannot be mapped is a one-line error naming the key."""
    fixed, space = {}, {}
    for key, spec in parameters.items():
        if not isinstance(spec, dict):
            raise ConfigError(
                f"sweep parameter {key!r} must be a mapping (value, values or "
                f"distribution), not {spec!r}"
            )
        dist = spec.get("distribution")
        if "value" in spec:
            fixed[key] = spec["value"]
        elif "values" in spec and dist in (None, "categorical"):
            vals = spec["values"]
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"sweep parameter {key!r}: `values` must be a non-empty list")
            # Optuna's choices are scalars: lists (widths) travel as their str(), which
            # Config parses as the agent's command line does
            space[key] = d.CategoricalDistribution(
                [v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for v in vals]
            )
        elif dist in (
            "uniform",
            "log_uniform_values",
            "int_uniform",
            "q_uniform",
            "q_log_uniform_values",
        ):
            if "min" not in spec or "max" not in spec:
                raise ConfigError(f"sweep parameter {key!r}: {dist} needs min and max")
            lo, hi = spec["min"], spec["max"]
            if dist == "uniform":
                space[key] = d.FloatDistribution(float(lo), float(hi))
            elif dist == "log_uniform_values":
                space[key] = d.FloatDistribution(float(lo), float(hi), log=True)
            elif dist == "int_uniform":
                space[key] = d.IntDistribution(int(lo), int(hi))
            elif dist == "q_uniform":
                space[key] = d.FloatDistribution(
                    float(lo), float(hi), step=float(spec.get("q", 1.0))
                )
            else:
                raise ConfigError(
                    f"sweep parameter {key!r}: distribution q_log_uniform_values "
                    "has no Optuna equivalent (a log scale with a step); use "
                    "log_uniform_values or a values list"
                )
        else:
            raise ConfigError(
                f"sweep parameter {key!r}: distribution {dist!r} cannot be run "
                "locally; use value, values, uniform, log_uniform_values, "
                "int_uniform, q_uniform or categorical"
            )
    return fixed, space


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


def parse_sets(items: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` items as a dict."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set dataset=digits")
        out[key.strip()] = value.strip()
    return out


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
        from .api import unused_keys

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
        from . import wandb_run

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


def _ends(dist) -> list:
    """The values a distribution can take at its edges: every choice, or both ends."""
    if hasattr(dist, "choices"):
        return list(dist.choices)
    return [dist.low, dist.high]


def suggest(trial, key: str, dist):
    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def progress_line(study, total: int) -> str:
    """Trials done (finished or pruned) of `total`, those training now, and those claimed
    or queued but not training yet (retries, a population's next program)."""
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    done = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
    training = sum(t.state == TrialState.RUNNING and TRAINING in t.system_attrs for t in trials)
    queued = count[TrialState.RUNNING] - training + count[TrialState.WAITING]
    best = ""
    try:
        bt = study.best_trial
        best = f", best {bt.value:.4g} (trial {bt.number})"
    except ValueError:
        pass
    return (
        f"[sweep {study.study_name}] {done}/{total} done ({count[TrialState.PRUNED]} pruned, "
        f"{count[TrialState.FAIL]} failed or stopped), {training} running"
        f"{f', {queued} queued' if queued else ''}{best}"
    )


def started(trial) -> None:
    """Mark a claimed trial as training (progress_line counts it as running)."""
    trial.study._storage.set_trial_system_attr(trial._trial_id, TRAINING, True)


warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# we run ask/tell with optimize()'s heartbeat thread (see run_study), as optimize() does
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
# a retry resumed from a checkpoint older than its original's last report reports those
# epochs again (the same values: the run is deterministic); Optuna keeps the first
warnings.filterwarnings("ignore", message="The reported value is ignored because this `step")
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


def storage_of(url: str, heartbeat: int):
    """The study's storage (store.open_storage); a trial whose process died is failed and
    retried with the same parameters (RETRY): its checkpoint, if any, lets it resume."""
    return open_storage(url, heartbeat, RETRY)


ACTIVE = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
ACTIVE_STATES = tuple(TrialState[name] for name in ACTIVE)
MAX_FAILURES_IN_A_ROW = 3


def reap_dead_workers(study) -> None:
    """Fail and retry the RUNNING trials of workers on this host that are gone (kill -9, a
    second Ctrl-C): their checkpoints let the retries resume at once, without waiting
    for the heartbeat's grace period."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(WORKER)
        if owner and owner[0] == host and not alive(owner[1]):
            study.tell(t.number, state=TrialState.FAIL)
            RETRY(study, study._storage.get_trial(t._trial_id))


def claim(study, total: int, url: Optional[str]):
    """The next trial (a waiting retry first; a grid's next point), or None when the study
    has its `total` trials finished, pruned, running or waiting (or a grid has no point
    left). Under the study's lock (SQLite's file lock, PostgreSQL's advisory lock) claims
    are exact; without one (another server), a trial claimed beyond `total`, or a grid
    point claimed twice, in a race between machines is failed at once as `surplus` and
    not run. The counts are count queries: a claim does not read every trial (but a
    grid's, which must see the points they hold)."""
    grid = study.sampler if isinstance(study.sampler, GridSampler) else None
    storage, sid = study._storage, study._study_id
    with study_lock(url):
        if is_heartbeat_enabled(storage):
            optuna.storages.fail_stale_trials(study)
        if url and url.startswith("sqlite:///"):
            reap_dead_workers(study)
        if not storage.get_n_trials(sid, state=(TrialState.WAITING,)):
            if storage.get_n_trials(sid, state=ACTIVE_STATES) >= total:
                return None
            if grid is not None:
                point = grid.next_point(study.get_trials(deepcopy=False))
                if point is None:
                    return None
                grid.queue(study, point)
        trial = study.ask()
        storage.set_trial_system_attr(trial._trial_id, WORKER, [socket.gethostname(), os.getpid()])
    if has_lock(url):
        return trial
    ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
    point = storage.get_trial(trial._trial_id).system_attrs.get(GRID_POINT)
    if sum(t.state.name in ACTIVE for t in ahead) >= total or (
        grid is not None and point in grid.held(ahead)
    ):
        trial.set_user_attr("status", "surplus")
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


WAIT_POLL_S = 2.0  # at most this long between a waiting worker's claims


def claim_or_wait(study, total: int, url: Optional[str], stop: StopFlag, heartbeat: float):
    """`claim`, and while it has nothing to give but trials are still RUNNING elsewhere
    (another process or host), claim again every heartbeat (at most WAIT_POLL_S): such a
    trial may yet end as stopped, or its process die (failed as stale after the grace
    period), and its retry is then this worker's to run. None only when no trial is
    running anywhere and none is left to claim (the study is complete), or on a signal.
    So the last worker standing never leaves a study short (docs/design.md, "Local
    sweeps: every trial once")."""
    waiting_for = 0
    while True:
        trial = claim(study, total, url)
        if trial is not None or stop.requested:
            return trial
        running = study._storage.get_n_trials(study._study_id, state=(TrialState.RUNNING,))
        if not running:
            return None
        if running != waiting_for:
            waiting_for = running
            print(
                f"{progress_line(study, total)}; waiting for {running} trial"
                f"{'s' if running > 1 else ''} running elsewhere",
                file=sys.stderr,
                flush=True,
            )
        if stop.sleep(min(heartbeat, WAIT_POLL_S)):
            return None


def check_choices(study, space: dict) -> None:
    """Optuna cannot change a parameter's choices within a study: a sweep file whose
    `values` differ from those the study was run with is one line before any trial."""
    for t in study.get_trials(deepcopy=False):
        for key, had in t.distributions.items():
            now = space.get(key)
            if (
                isinstance(had, d.CategoricalDistribution)
                and isinstance(now, d.CategoricalDistribution)
                and had != now
            ):
                raise ConfigError(
                    f"the study {study.study_name!r} was run with {key} values {list(had.choices)}, "
                    f"the sweep file has {list(now.choices)}; Optuna cannot change a study's "
                    "choices: pass a new --study"
                )


def sampler_seed(seed: int, trial_number: int) -> int:
    """The sampler's stream for one trial: every trial number its own, so no two trials of
    a study draw alike, whichever worker, host or rerun draws them (extending a study draws
    new trials), and a study run again from scratch with the same --seed draws the same.
    (The sampler still sees the whole study: TPE models every trial so far.)"""
    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


def check_sqlite(url: str) -> None:
    """An SQLite store's file and the lock beside it can be made or written (a read-only
    folder, a file where a folder should be): one line before the study is touched."""
    if url.startswith("sqlite:///"):
        db = url[len("sqlite:///") :]
        for path in (db, db + ".lock"):
            check_appendable(path, f"--storage={url}", "--storage=sqlite:///runs/sweeps.db")


def study_line(store, name: str, trials: int, url: str) -> str:
    """Which study a sweep runs: a new one (so a mistyped --storage or --study shows at
    once) or one it resumes, with its trials done so far."""
    try:
        sid = store.get_study_id_from_name(name)
    except KeyError:
        return f"[sweep {name}] new study {name} in {masked(url)}"
    done = store.get_n_trials(sid, state=(TrialState.COMPLETE, TrialState.PRUNED))
    return f"[sweep {name}] resuming study {name} ({done}/{trials} done) in {masked(url)}"


def run_study(
    path: str,
    trials: int,
    overrides: dict[str, str],
    *,
    study_name: Optional[str],
    storage: Optional[str],
    results: Optional[str],
    seed: int,
    heartbeat: int,
    population: int = 1,
    announce: bool = True,
) -> int:
    sw = Sweep(path, overrides, results)
    pruner = pruner_of(sw.sweep, sw.base_cfg.epochs)
    enable_compilation_cache()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or Path(path).stem
    # a server is opened (and refused in one line) before its lock is asked for; SQLite
    # creates its tables under the file lock (it has no concurrent schema creation)
    store = storage_of(storage, heartbeat) if is_server(storage) else None
    with study_lock(storage):
        store = store or storage_of(storage, heartbeat)
        line = study_line(store, name, trials, storage)
        study = optuna.create_study(
            study_name=name,
            storage=store,
            pruner=pruner,
            direction=sw.direction,
            load_if_exists=True,
        )
        study.sampler = sampler_of(sw.sweep, sw.space, sampler_seed(seed, len(study.trials)))
        if study.metric_names != [sw.metric]:  # the dashboard's name for the objective
            study.set_metric_names([sw.metric])
    sw.seed = seed
    check_choices(study, sw.space)
    if announce:
        print(line, file=sys.stderr, flush=True)
    say = lambda: print(progress_line(study, trials), file=sys.stderr, flush=True)  # noqa: E731
    say()
    failures = 0  # in a row: a space that only fails must not loop for ever
    if population == 0:  # auto
        population = auto_population(preflight(sw.base_cfg), measure=epoch_timer(sw, sw.base_cfg))
        print(f"[sweep {name}] --population=auto: {population}", file=sys.stderr)
    if population > 1:
        with StopFlag() as stop:
            run_populations(sw, study, trials, storage, population, stop, heartbeat)
        if stop.requested:
            print(
                f"[sweep {name}] stopped; run the same command again to resume the study",
                file=sys.stderr,
            )
        return 0
    with StopFlag() as stop:
        while not stop.requested:
            if failures >= MAX_FAILURES_IN_A_ROW:
                print(
                    f"[sweep {name}] {failures} trials in a row failed; stopping (see the "
                    "errors above)",
                    file=sys.stderr,
                )
                return 1
            trial = claim_or_wait(study, trials, storage, stop, heartbeat)
            if trial is None:
                break
            with get_heartbeat_thread(trial._trial_id, study._storage):
                try:
                    status, value = sw.run_trial(trial, stop)
                except ConfigError as err:
                    print(f"[sweep {name}] trial {trial.number} failed: {err}", file=sys.stderr)
                    trial.set_user_attr("status", "failed")
                    status, value = "failed", None
                except BaseException:
                    study.tell(trial, state=TrialState.FAIL)
                    raise
            conclude(study, trial, status, value)
            failures = failures + 1 if status == "failed" else 0
            say()
    if stop.requested:
        print(
            f"[sweep {name}] stopped; run the same command again to resume the study",
            file=sys.stderr,
        )
    return 0


def auto_population(resolved, largest: int = 256, measure=None) -> int:
    """1 on a CPU (compute-bound already: K members take K times as long); on an
    accelerator the largest power of 2 up to `largest` whose members' parameters,
    optimizer states and activations fit 80% of its free memory, then, given
    `measure(k)` (seconds per epoch of a population of k), grown from 1 only while
    trials per hour still rise (`grow_population`)."""
    import jax

    from .experiment import device_memory, memory_parts

    device = jax.devices()[0]
    have = device_memory(device)
    if device.platform == "cpu" or have is None:
        return 1
    cfg, k = resolved.cfg, largest
    while k > 1:
        r = replace(resolved, cfg=cfg.replace(num_seeds=k))
        if sum(memory_parts(r).values()) <= 0.8 * have:
            break
        k //= 2
    return grow_population(k, measure) if measure is not None else k


AUTO_MIN_GAIN = 1.1  # doubling K must raise member-epochs per second by 10% to be kept


def grow_population(cap: int, measure) -> int:
    """K = 1, 2, 4, ... up to `cap`, each timed by `measure(k)` (seconds per epoch of a
    population of k): the last K whose doubling still raised member-epochs per second
    by AUTO_MIN_GAIN. A GPU runs a few small members in the time of one, then saturates."""
    k, rate = 1, 1 / measure(1)
    while 2 * k <= cap:
        faster = 2 * k / measure(2 * k)
        if faster < AUTO_MIN_GAIN * rate:
            break
        k, rate = 2 * k, faster
    return k


def epoch_timer(sw, cfg):
    """`measure(k)` for auto_population: one timed epoch (after a compiling one) of a
    population of k members of `cfg` on its dataset. The program of the K chosen is
    the one the sweep then runs (train._PROGRAMS), so its compile is not lost."""

    def measure(k: int) -> float:
        from .population import Population

        pop = Population(preflight(cfg.replace(num_seeds=k), "--population"), sw.dataset(cfg), k)
        for slot in range(k):
            pop.assign(slot, cfg.replace(seed=cfg.seed + slot))
        pop.epoch()  # compiles; each epoch returns its metrics on the host, so it has ended
        t = time.perf_counter()
        pop.epoch()
        s = time.perf_counter() - t
        print(
            f"[sweep] population {k}: {s:.3f}s per epoch, {3600 * k / s:,.0f} member-epochs "
            "per hour",
            file=sys.stderr,
            flush=True,
        )
        return s

    return measure


def shrink_pays(k: int, live: int, times: list[float], epochs_left: int) -> bool:
    """Whether moving `live` members of a population of `k` into the smallest power of 2
    that holds them saves more time than its compile costs: the epochs left at the
    measured epoch time, less the share of the smaller program, against the compile
    time measured on this population's first epoch (on a CPU, where K members cost K
    times one, a small model's compile often costs more than its idle slots)."""
    from .population import holding

    if len(times) < 2:
        return False
    small = holding(live)
    compile_s = max(0.0, times[0] - min(times[1:]))
    return epochs_left * times[-1] * (1 - small / k) > compile_s


def conclude(study, trial, status: str, value: Optional[float]) -> None:
    """Tell Optuna how a trial ended; a stopped one is queued to be retried first."""
    if status == "finished" and value is not None:
        study.tell(trial, value)
    elif status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:  # stopped, diverged, failed
        study.tell(trial, state=TrialState.FAIL)
    if status == "stopped":  # the same command picks it up first and resumes it
        RETRY(study, study._storage.get_trial(trial._trial_id))


class Member:
    """A trial in a population slot: its writers and its RunLog."""

    def __init__(self, sw: Sweep, trial, cfg: Config, values: dict, resolved, pop, slot: int):
        import jax

        from .api import unused_keys
        from .experiment import RunLog

        self.trial, self.cfg, self.seen, self.pop, self.slot = trial, cfg, [], pop, slot
        # its own checkpoint, as a sequential run of its config keeps (either resumes it)
        self.checkpointer, meta = open_checkpoints(cfg)
        state, history = None, []
        if meta is not None:
            restored = self.checkpointer.restore(pop.member_state(slot, keep_axis=True), meta)
            if restored is not None:
                state, history = restored
                state = jax.tree.map(lambda a: a[0], state)  # once per resumed trial
                self.seen.append(
                    float(history_row(len(history), history, cfg, resolved.model_params)[sw.metric])
                )
        self.results = ResultsWriter(cfg.results)
        writers: list[Writer] = [self.results]
        self.run = sw.wandb_run(cfg, values, trial)
        if self.run is not None:
            writers.append(WandbWriter(self.run))
        started(trial)
        trial.set_user_attr("model_type", cfg.model_type)
        trial.set_user_attr("model_params", resolved.model_params)
        extra = {**trial_info(trial), "population_slot": slot}
        self.log = RunLog(
            resolved,
            pop.ds,
            MultiWriter(*writers),
            unused=unused_keys(cfg, set(values)),
            history=history,
            extra_info=extra,
        )
        pop.assign(slot, cfg, state=state, epoch=self.log.epoch)

    def saved(self) -> None:
        """After an epoch: a checkpoint when one is due."""
        if self.checkpointer.due(self.log.epoch):
            self.checkpointer.save(
                self.log.epoch,
                self.pop.member_state(self.slot, keep_axis=True),
                self.log.history,
                None,
            )

    def end(self, status: str) -> None:
        from .experiment import close_checkpoints

        close_checkpoints(
            self.checkpointer,
            status,
            self.pop.member_state(self.slot, keep_axis=True),
            self.log.history,
            None,
            self.cfg.keep_checkpoint,
        )
        record = self.log.finish(status)
        _, value = trial_outcome(
            self.trial, record, f"{self.cfg.results}:{self.results.line}", self.seen
        )
        conclude(self.trial.study, self.trial, status, value)


def check_population(sw: Sweep) -> None:
    """A population's members are single runs (one seed each): num_seeds > 1 is refused
    before the study is touched."""
    if "num_seeds" in sw.space or sw.base_cfg.num_seeds > 1:
        raise ConfigError(
            "--population trains each trial as one member of a vmapped program, so "
            "its trials cannot have num_seeds > 1 (set by --set or the sweep file); "
            "drop num_seeds, or use --population=1"
        )


def run_populations(
    sw: Sweep, study, trials: int, url: Optional[str], k: int, stop: StopFlag, heartbeat: float = 30
) -> None:
    """The study's trials as populations of K (docs/design.md, "Population trials").
    A population's first trial fixes its program; the other K-1 slots start with trials
    whose program-shaping parameters Optuna is asked to keep (enqueue_trial with them
    fixed; the sampler picks the config's MEMBER_KEYS). Every epoch each member reports
    to Optuna and ends when finished, pruned or diverged; its slot then takes the next
    trial the sampler proposes if that trial shares the program, else that trial waits
    (at most K of them) and starts the next population once this one has drained. So
    the sampler, not the population, decides how often each program is tried."""
    from .config import MEMBER_KEYS
    from .population import Population

    pending: list = []  # claimed trials of another program, for a later population
    beats: dict[int, contextlib.ExitStack] = {}  # every claimed trial's heartbeat

    def take(trial):
        if trial is not None:
            beats[trial._trial_id] = stack = contextlib.ExitStack()
            stack.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
        return trial

    def done(trial, status, value=None):
        conclude(study, trial, status, value)
        beats.pop(trial._trial_id).close()

    def next_trial(pop, first, initial: bool):
        """A trial for a free slot of `pop`, or None."""
        for i, t in enumerate(pending):
            if pop.fits(sw.config_of(t)[0]):
                return pending.pop(i)
        if len(pending) >= k:
            return None
        now = study.get_trials(deepcopy=False)
        # a queued trial (a retry) is taken as it is; a new one is asked for, with this
        # population's program, only while the study has room for it (a grid's points
        # are its own)
        if (
            initial
            and not isinstance(study.sampler, GridSampler)
            and not any(t.state == TrialState.WAITING for t in now)
            and sum(t.state.name in ACTIVE for t in now) < trials
        ):
            study.enqueue_trial({n: v for n, v in first.params.items() if n not in MEMBER_KEYS})
        t = take(claim(study, trials, url))
        if t is None or pop.fits(sw.config_of(t)[0]):
            return t
        pending.append(t)
        return next_trial(pop, first, initial) if initial else None

    try:
        while not stop.requested:
            first = (
                pending.pop(0)
                if pending
                else take(claim_or_wait(study, trials, url, stop, heartbeat))
            )
            if first is None:
                return
            cfg, _ = sw.config_of(first)
            # K members' parameters, optimizer states and activations must fit: one line before work
            pop = Population(
                preflight(cfg.replace(num_seeds=k), "--population"), sw.dataset(cfg), k
            )
            members: list[Optional[Member]] = [None] * k

            def start(slot, trial):
                c, values = sw.config_of(trial)
                members[slot] = mem = Member(sw, trial, c, values, preflight(c), pop, slot)
                if schedule.ends(c, mem.log.history):
                    end(slot, "finished")  # resumed from its last epoch's checkpoint
                elif c.lr_plateau_patience:
                    pop.set_learning_rate(slot, schedule.learning_rates(c, mem.log.history)[0])

            def end(slot, status):
                mem = members[slot]
                mem.end(status)
                beats.pop(mem.trial._trial_id).close()
                members[slot] = None
                pop.release(slot)

            def fill(initial) -> bool:
                """Whether every free slot took a trial."""
                for slot in pop.free:
                    t = next_trial(pop, first, initial)
                    if t is None:
                        return False
                    start(slot, t)
                return True

            start(0, first)
            fill(initial=True)
            times: list[float] = []  # this population's epochs (the first compiles)
            while any(members) and not stop.requested:
                te = time.perf_counter()
                metrics = pop.epoch()
                dt = time.perf_counter() - te
                times.append(dt)
                for slot, m in enumerate(metrics):
                    mem = members[slot]
                    if mem is None:
                        continue
                    if not mem.log.add(m, dt):
                        end(slot, "diverged")
                        continue
                    mem.seen.append(float(mem.log.last_row[sw.metric]))
                    mem.trial.report(mem.seen[-1], mem.log.epoch)
                    if schedule.ends(mem.cfg, mem.log.history):
                        end(slot, "finished")
                    elif mem.trial.should_prune():
                        end(slot, "pruned")
                    else:
                        mem.saved()
                        if mem.cfg.lr_plateau_patience:
                            pop.set_learning_rate(
                                slot, schedule.learning_rates(mem.cfg, mem.log.history)[0]
                            )
                print(progress_line(study, trials), file=sys.stderr, flush=True)
                if stop.requested or fill(initial=False):
                    continue
                live = [i for i, mem in enumerate(members) if mem is not None]
                if (
                    live
                    and len(live) <= pop.k // 2
                    and shrink_pays(
                        pop.k,
                        len(live),
                        times,
                        max(members[i].cfg.epochs - members[i].log.epoch for i in live),
                    )
                ):
                    pop, slots = pop.smaller(live)
                    times = []
                    members = [members[i] for i in live] + [None] * (pop.k - len(live))
                    for mem, slot in zip(members, slots):
                        mem.pop, mem.slot = pop, slot
            for slot, mem in enumerate(members):  # a signal: each is retried first next time
                if mem is not None:
                    end(slot, "stopped")
    finally:
        for t in list(pending):  # claimed but never started: queued again
            done(t, "stopped")
        for beat in beats.values():  # an error: these trials are failed as stale, then retried
            beat.close()


def main(argv: list[str]) -> int:
    def _main():
        _, opts = parse_argv(
            argv,
            OPTIONS,
            flags=("help",),
            repeated=("set",),
            positional="sweep_file",
            config_keys=False,
        )
        if "help" in opts or not argv:
            print(
                help_text(
                    PROG,
                    SUMMARY,
                    OPTIONS,
                    config_keys=False,
                    args="SWEEP.yaml [--option=value ...]",
                )
            )
            return 0
        if "sweep_file" not in opts:
            raise UsageError("no sweep file given: python -m jaxcollective.sweep SWEEP.yaml ...")
        path = opts["sweep_file"]
        trials = int_option(opts, "trials", 10, minimum=1)
        parallel = int_option(opts, "parallel", 1, minimum=1)
        seed = int_option(opts, "seed", 0, minimum=0)
        heartbeat = int_option(opts, "heartbeat", 30, minimum=1)
        int_option(opts, "worker", 0, minimum=0)  # checked; its GPU is chosen by run_workers' env
        population = (
            0 if opts.get("population") == "auto" else int_option(opts, "population", 1, minimum=1)
        )
        overrides = parse_sets(opts.get("set", []))
        sw = Sweep(path, overrides, opts.get("results"))  # every error before any trial
        if population != 1:
            check_population(sw)
        if population > 1:  # K members must fit the device (the sweep's first values)
            preflight(sw.base_cfg.replace(num_seeds=population), "--population")
        points = sw.grid_size()
        if points is not None and trials > points:
            print(
                f"note: the grid has {points} points; --trials={trials} runs each of them once",
                file=sys.stderr,
            )
            trials = opts["trials"] = points
        # what the sweep writes, checked before the study is touched: a trial's results
        # line must not be lost after its training
        check_results_file(sw.results)
        storage = (
            opts.get("storage")
            or f"sqlite:///{Path(sw.results).expanduser().resolve().parent / 'sweeps.db'}"
        )
        check_sqlite(storage)
        name = opts.get("study") or Path(path).stem
        if parallel > 1:
            # a storage that cannot be opened: one line, here; the study's line once
            print(
                study_line(storage_of(storage, heartbeat), name, trials, storage),
                file=sys.stderr,
                flush=True,
            )
            return run_workers(opts, parallel, storage)
        return run_study(
            path,
            trials,
            overrides,
            study_name=name,
            storage=storage,
            results=opts.get("results"),
            seed=seed,
            heartbeat=heartbeat,
            population=population,
            announce="worker" not in opts,
        )

    return guarded(_main)


def run_workers(opts: dict, k: int, storage: str) -> int:
    """K processes of this command sharing one study (each with its own sampler seed;
    one GPU each when there are several)."""
    gpus = _gpu_count()
    base = [
        opts["sweep_file"],
        *(f"--set={s}" for s in opts.get("set", [])),
        *(
            f"--{n}={opts[n]}"
            for n in ("trials", "study", "results", "heartbeat", "population")
            if n in opts
        ),
    ]
    procs = []
    with StopFlag() as stop:
        for i in range(k):
            env = dict(os.environ)
            if gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            # a session of its own: Ctrl-C reaches this process, which passes it on once
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "jaxcollective.sweep",
                        *base,
                        f"--storage={storage}",
                        f"--seed={opts.get('seed', 0)}",
                        f"--worker={i}",
                    ],
                    env=env,
                    start_new_session=True,
                )
            )
        forwarded = False
        while any(p.poll() is None for p in procs):
            if stop.requested and not forwarded:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(stop.signal)
                forwarded = True
            time.sleep(0.2)
    return max(p.returncode for p in procs)


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return len([line for line in out.stdout.splitlines() if line.startswith("GPU")])
    except (OSError, subprocess.SubprocessError):
        return 0


console = console_script(main)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
