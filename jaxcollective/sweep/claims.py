"""Local sweeps of W&B sweep files on Optuna: claims."""

from __future__ import annotations

import os
import socket
import sys
from typing import Optional

import optuna
from optuna import distributions as d
from optuna.storages._heartbeat import is_heartbeat_enabled  # as optimize()
from optuna.trial import TrialState

from jaxcollective.config import ConfigError
from jaxcollective.train.signals import StopFlag
from .store import has_lock, open_storage, study_lock
from jaxcollective.util import alive

from .retry import RETRY, TRAINING, WORKER
from .samplers import GRID_POINT, GridSampler


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


def storage_of(url: str, heartbeat: int):
    """The study's storage (store.open_storage); a trial whose process died is failed and
    retried with the same parameters (RETRY): its checkpoint, if any, lets it resume."""
    return open_storage(url, heartbeat, RETRY)


ACTIVE = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
ACTIVE_STATES = tuple(TrialState[name] for name in ACTIVE)
MAX_FAILURES_IN_A_ROW = 3
# diverged trials do not count toward --trials; a space where every trial diverges (a
# learning rate range far too high) would draw new ones for ever: the sweep stops after
# this many in a row (a space where half diverge reaches it once in 1,000 draws of 10)
MAX_DIVERGED_IN_A_ROW = 10


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
