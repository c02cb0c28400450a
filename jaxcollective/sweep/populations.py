"""Local sweeps of W&B sweep files on Optuna: populations."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from typing import Optional

from optuna.storages._heartbeat import get_heartbeat_thread  # as optimize()
from optuna.trial import TrialState

from jaxcollective.train import schedule
from jaxcollective.train.checkpoint import open_checkpoints
from jaxcollective.config import Config, ConfigError
from jaxcollective.train.loop import preflight
from jaxcollective.train.metrics import history_row
from jaxcollective.train.signals import StopFlag
from jaxcollective.train.writers import MultiWriter, ResultsWriter, WandbWriter, Writer

from .samplers import GridSampler
from .claims import (
    ACTIVE,
    MAX_DIVERGED_IN_A_ROW,
    claim,
    claim_or_wait,
    conclude,
    progress_line,
    started,
)
from .trials import Sweep, trial_info, trial_outcome


def auto_population(resolved, largest: int = 256, measure=None) -> int:
    """1 on a CPU (compute-bound already: K members take K times as long); on an
    accelerator the largest power of 2 up to `largest` whose members' parameters,
    optimizer states and activations fit 80% of its free memory, then, given
    `measure(k)` (seconds per epoch of a population of k), grown from 1 only while
    trials per hour still rise (`grow_population`)."""
    import jax

    from jaxcollective.train.loop import device_memory, memory_parts

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
    the one the sweep then runs (trainer._PROGRAMS), so its compile is not lost."""

    def measure(k: int) -> float:
        from jaxcollective.train.population import Population

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
    from jaxcollective.train.population import holding

    if len(times) < 2:
        return False
    small = holding(live)
    compile_s = max(0.0, times[0] - min(times[1:]))
    return epochs_left * times[-1] * (1 - small / k) > compile_s


class Member:
    """A trial in a population slot: its writers and its RunLog."""

    def __init__(self, sw: Sweep, trial, cfg: Config, values: dict, resolved, pop, slot: int):
        import jax

        from jaxcollective.api import unused_keys
        from jaxcollective.train.loop import RunLog

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
        from jaxcollective.train.loop import close_checkpoints

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
) -> int:
    """The study's trials as populations of K (docs/design.md, "Population trials").
    A population's first trial fixes its program; the other K-1 slots start with trials
    whose program-shaping parameters Optuna is asked to keep (enqueue_trial with them
    fixed; the sampler picks the config's MEMBER_KEYS). Every epoch each member reports
    to Optuna and ends when finished, pruned or diverged; its slot then takes the next
    trial the sampler proposes if that trial shares the program, else that trial waits
    (at most K of them) and starts the next population once this one has drained. So
    the sampler, not the population, decides how often each program is tried. Returns
    the number of trials that diverged in a row when that reached MAX_DIVERGED_IN_A_ROW
    (the sweep then stops, as the sequential one), else 0."""
    from jaxcollective.config import MEMBER_KEYS
    from jaxcollective.train.population import Population

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

    diverged = [0]  # trials in a row, across populations
    try:
        while not stop.requested and diverged[0] < MAX_DIVERGED_IN_A_ROW:
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
                if status in ("finished", "pruned", "diverged"):
                    diverged[0] = diverged[0] + 1 if status == "diverged" else 0
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
            while any(members) and not stop.requested and diverged[0] < MAX_DIVERGED_IN_A_ROW:
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
                if stop.requested or diverged[0] >= MAX_DIVERGED_IN_A_ROW or fill(initial=False):
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
        return diverged[0] if diverged[0] >= MAX_DIVERGED_IN_A_ROW else 0
    finally:
        for t in list(pending):  # claimed but never started: queued again
            done(t, "stopped")
        for beat in beats.values():  # an error: these trials are failed as stale, then retried
            beat.close()
