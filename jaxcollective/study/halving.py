"""The long and converged schedules: successive halving of each (model type, size)'s
candidates on validation, then the choice at more seeds, then the convergence check."""

from __future__ import annotations

import shutil
from typing import Optional

from jaxcollective.cli import int_option
from jaxcollective.config import ConfigError

from .progress import run_py
from .records import COPY, append, find, score
from .schedules import SEARCH, SEARCH_SEED, SIZES, Schedule
from .tables import write_check_table, write_halving_table, write_stop_table


class Halving:
    """Successive halving of one (model type, size)'s candidates (learning rate x weight
    decay) on validation: every candidate trains to the first rung, the best third (by
    best validation accuracy so far; at least one) is extended to the next rung from its
    checkpoint, and so on to the last rung, whose survivor is the choice. Synchronous, so
    the choice depends on no order of arrival (Optuna's pruners are asynchronous: the
    first trial at a rung always passes); and each step is a run.py run whose checkpoint
    the next rung extends, so a stop at any moment loses nothing."""

    def __init__(
        self,
        rungs: list[int],
        eta: int,
        candidates: list[dict],
        check: int = 0,
        stopping: Optional[dict] = None,
    ):
        self.rungs, self.eta, self.candidates = rungs, eta, candidates
        self.check = check  # the convergence check's epochs (0: none)
        # the converged schedule's config keys (plateau reductions, early stopping); the
        # last rung then is the most a run trains, and the seeds train one run each
        self.stopping = stopping or {}

    @classmethod
    def plan(cls, opts: dict, epochs: int, sched: Schedule) -> "Halving":
        if sched.candidates:
            if "learning_rates" in opts:
                raise ConfigError(
                    f"--learning_rates: --schedule={sched.name} draws the learning rate with "
                    "the other knobs; pass --candidates=N instead"
                )
            n = int_option(opts, "candidates", sched.candidates, 1)
            candidates = draw_candidates(n, search=sched.search or SEARCH)
        else:
            lrs = [float(v) for v in opts.get("learning_rates", "0.0003,0.001,0.003").split(",")]
            default = ",".join(str(w) for w in sched.weight_decays)
            wds = [float(v) for v in opts.get("weight_decays", default).split(",")]
            candidates = [{"learning_rate": lr, "weight_decay": wd} for lr in lrs for wd in wds]
        eta = 3
        if sched.patience:  # rungs at 4 and 12 epochs, then to the stop (at most `epochs`)
            stopping = {
                "lr_plateau_patience": int_option(opts, "plateau", sched.plateau, 1),
                "early_stopping_patience": int_option(opts, "patience", sched.patience, 1),
            }
            return cls(
                sorted({min(4, epochs), min(12, epochs), epochs}),
                eta,
                candidates,
                stopping=stopping,
            )
        # rungs at epochs/9, epochs/3 and epochs (4, 12, 36 by default)
        rungs = sorted({max(1, epochs // eta**k) for k in (2, 1, 0)})
        check = int_option(opts, "check_epochs", 2 * epochs if sched.check_epochs else 0, minimum=0)
        if 0 < check <= epochs:
            raise ConfigError(
                f"--check_epochs={check}: the check trains longer than the study's "
                f"{epochs} epochs; pass more, or 0 for no check"
            )
        return cls(rungs, eta, candidates, check)

    def tag(self, c: dict) -> str:
        """A candidate's checkpoint folder name."""
        if set(c) == {"learning_rate", "weight_decay"}:
            return f"lr{c['learning_rate']}-wd{c['weight_decay']}"
        return f"c{self.candidates.index(c)}"

    def alive_counts(self) -> list[int]:
        n, out = len(self.candidates), []
        for _ in self.rungs:
            out.append(n)
            n = max(1, n // self.eta)
        return out

    @property
    def runs(self) -> int:
        return sum(self.alive_counts())

    @property
    def epochs(self) -> int:
        starts = [0] + self.rungs[:-1]
        return sum(n * (r - s) for n, r, s in zip(self.alive_counts(), self.rungs, starts))

    def to_stop(self, seeds: int) -> int:
        """Epochs per (model type, size) of the runs that may stop early, counted at the
        last rung (0 without early stopping): the survivor's last rung and the seeds."""
        if not self.stopping:
            return 0
        start = self.rungs[-2] if len(self.rungs) > 1 else 0
        return self.alive_counts()[-1] * (self.rungs[-1] - start) + (seeds - 1) * self.rungs[-1]


def draw_candidates(n: int, seed: int = SEARCH_SEED, search: Optional[dict] = None) -> list[dict]:
    """`n` configurations drawn from `search` (default SEARCH, schedules.py): the same `n` and seed draw the
    same, and a larger `n` draws the same first ones. Values are rounded to 4 significant
    digits, so that a record's config and the command that reruns it read alike."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c: dict = {}
        for key, spec in (search or SEARCH).items():
            kind = spec[0]
            u = rng.random()  # one draw per key and candidate, used or not: a stable stream
            if kind == "flag":
                on = u < 0.5
                c[key] = on
                c.update({k: on for k in spec[1]})
                continue
            if len(spec) > 3 and not c.get(spec[3]):
                continue  # its switch is off: the key keeps its default
            lo, hi = spec[1], spec[2]
            if kind == "int":
                c[key] = lo + min(int(u * (hi - lo + 1)), hi - lo)
            elif kind == "uniform":
                c[key] = float(f"{lo + u * (hi - lo):.4g}")
            elif kind == "log":
                c[key] = float(f"{lo * (hi / lo) ** u:.4g}")
            else:  # log0
                c[key] = 0.0 if u < 0.5 else float(f"{lo * (hi / lo) ** (2 * u - 1):.4g}")
        out.append(c)
    return out


def long_study(
    names, types, seeds, fixed, plan: Halving, out, log, stop, progress, budgets=None
) -> None:
    """The converged study: per size and model type, successive halving over learning
    rate and weight decay (seed 0), then the chosen candidate at seeds 1.. seeds-1; then
    the convergence check (plan.check epochs, the first size's choices, seed 0). With
    `budgets` (size: parameters), each collective is sized to its size's budget
    (the best shot: its candidates are drawn configurations)."""
    halving, results, check = out / "halving.jsonl", out / "results.jsonl", out / "check.jsonl"
    work = out / ".work"  # checkpoints and the tables the report adds
    base = {**fixed, "use_augmentation": "true", **plan.stopping}
    choices = {}
    for name in names:
        for model_type in types:
            keys = {**base, **SIZES[name], "model_type": model_type}
            if budgets and model_type == "collective":
                keys["collective_budget"] = budgets[name]
            folder = work / "checkpoints" / name / model_type
            alive = list(plan.candidates)
            for i, rung in enumerate(plan.rungs):
                for c in alive:
                    if find(halving, {**keys, **c, "epochs": rung, "seed": 0}) is None:
                        tag = plan.tag(c)
                        run_py(
                            {
                                **keys,
                                **c,
                                "epochs": rung,
                                "seed": 0,
                                "keep_checkpoint": "true",
                                "checkpoint_dir": folder / tag,
                            },
                            halving,
                            log,
                            stop,
                            progress,
                        )
                scores = [
                    score(find(halving, {**keys, **c, "epochs": rung, "seed": 0})) for c in alive
                ]
                order = sorted(
                    range(len(alive)), key=lambda j: -scores[j]
                )  # stable: ties keep order
                alive = (
                    [alive[j] for j in order[: plan.alive_counts()[i + 1]]]
                    if i + 1 < len(plan.rungs)
                    else [alive[order[0]]]
                )
            chosen, last = alive[0], plan.rungs[-1]
            choices[name, model_type] = {**keys, **chosen}
            if find(results, {**keys, **chosen, "epochs": last, "seed": 0}) is None:
                line, rec = find(halving, {**keys, **chosen, "epochs": last, "seed": 0}, line=True)
                append(results, {**rec, COPY: f"halving.jsonl:{line}"})
            shutil.rmtree(folder, ignore_errors=True)  # every candidate's run is recorded
            # more seeds: one run of seeds-1 replicas; to early stopping, a run per seed
            # (a run of several stops on their mean curve)
            runs = (
                [(s, 1) for s in range(1, seeds)]
                if plan.stopping
                else [(1, seeds - 1)]
                if seeds > 1
                else []
            )
            for seed, n in runs:
                if (
                    find(results, {**keys, **chosen, "epochs": last, "seed": seed, "num_seeds": n})
                    is None
                ):
                    run_py(
                        {
                            **keys,
                            **chosen,
                            "epochs": last,
                            "seed": seed,
                            "num_seeds": n,
                            "checkpoint_dir": work / "checkpoints" / "seeds",
                        },
                        results,
                        log,
                        stop,
                        progress,
                    )
    for model_type in types if plan.check else []:
        keys = {**choices[names[0], model_type], "epochs": plan.check, "seed": 0}
        if find(check, keys) is None:
            run_py(
                {**keys, "checkpoint_dir": work / "checkpoints" / "check"},
                check,
                log,
                stop,
                progress,
            )
    write_halving_table(halving, results, work / "report_halving.md", plan)
    if plan.stopping:
        write_stop_table(results, work / "report_stops.md", plan)
    if plan.check:
        write_check_table(results, check, work / "report_check.md", plan.rungs[-1], plan.check)
