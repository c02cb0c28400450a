"""The parameter-efficiency study of docs/results.md, on real Fashion-MNIST.

    python docs/study.py                  # 2 collective sizes (~77 min on 2 CPU cores)
    python docs/study.py --sizes=full     # the original's range, 1.8M to 7.1M (a GPU)
    python docs/study.py --schedule=long  # augmentation, 36 epochs, tuned (hours)
    python docs/study.py --schedule=converged  # as long, each run to early stopping (hours)

The short schedule (the 6-epoch study of docs/results.md):

1. For each collective size: `sweeps/study_fashion.yaml` through the local sweep runner,
   a grid of the 7 model types x 3 learning rates, seed 0 (the baselines take the
   collective's parameter count, so every size is matched).
2. Per model type and size, the learning rate with the best validation accuracy
   (report.select_on_validation: the test set plays no part) trains two more seeds.
3. `python -m jaxcollective.report --select=validation` over all of it; the results file,
   summary.md, the figures and study.json (wall and CPU time, machine) are copied to --out.

The long schedule (`Halving`), as the original trains (augmentation on) and to convergence:
per collective size and model type, six candidates (learning rate 3e-4, 1e-3, 3e-3 x weight
decay 0, 1e-4; seed 0) by successive halving on validation: all to epoch 4, the best two
extended to 12, the best of those to 36; the choice then trains seeds 1 and 2. Then the
convergence check: at the first size, each type's choice (seed 0) trained twice as long,
72 epochs, from scratch. The report adds the validation curves, the epoch of the best
validation accuracy per type, the candidates' table and the check's table (what the
longer training changed).

The converged schedule: as the long one, with the learning rate multiplied by 0.1 after
8 epochs in a row without a new best validation accuracy (lr_plateau_patience) and each
run ended by early stopping, after 16 such epochs (early_stopping_patience), at most
--epochs (default 300). (A patience of 4 cut the rate before the constant-rate curves had
flattened: at 567K its runs stopped near epoch 42, 0.6 to 1.2 points of validation
accuracy below the long study's 72-epoch check of the same configurations.) The halving's rungs are at 4 and 12 epochs, and the last trains
the finalists to their stop; the choice then trains seeds 1 and 2, each a run of its own
(early stopping reads its own curve). A run that reaches --epochs without stopping has
not converged by this rule, and the summary's table of stops says so; the same command
with more --epochs trains again only such runs (a run that stopped early answers any cap
at or above its stop: it would have stopped at the same epoch), so a study that began
with a lower cap (150, at first) keeps every run that stopped.

Stoppable at any moment: Ctrl-C or SIGTERM stops the step in flight cleanly (a sweep
trial is recorded as stopped and keeps its checkpoint, as does a run), says so in one
line and exits 130 (143 for SIGTERM); the same command continues the study (the sweep's
Optuna storage and the runs' checkpoints live in --work) to exactly the study an
uninterrupted run gives. Finished runs are never trained again (but for one that reached a
lower --epochs without stopping, above). A second copy running
at the same time is refused. The console shows a line per finished run, with the
study's count and the time left; each step's own output goes to <work>/log.txt.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxcollective.cli import console_script, guarded, help_text, int_option, parse_argv
from jaxcollective.config import MODEL_TYPES, ConfigError
from jaxcollective.signals import StopFlag

SWEEP = ROOT / "sweeps" / "study_fashion.yaml"
# The collective's widths at each size (n_total 8, expert_ratio 0.2: 2 experts, 6
# analysts); the parameter counts are on Fashion-MNIST.
SIZES = {
    "0.57M": dict(
        expert_hidden="[128, 64]",
        expert_output=32,  # the debug preset's
        analyst_hidden="[64, 32]",
        analyst_output=16,
    ),  # 567,044
    "1.8M": dict(
        expert_hidden="[352, 176]", expert_output=88, analyst_hidden="[176, 88]", analyst_output=44
    ),  # 1,837,987
    "2.97M": dict(
        expert_hidden="[512, 256]",
        expert_output=128,  # phase1's
        analyst_hidden="[256, 128]",
        analyst_output=64,
    ),  # 2,969,887
    "4.0M": dict(
        expert_hidden="[640, 320]",
        expert_output=160,
        analyst_hidden="[320, 160]",
        analyst_output=80,
    ),  # 4,007,928
    "4.9M": dict(
        expert_hidden="[768, 384]",
        expert_output=160,
        analyst_hidden="[384, 192]",
        analyst_output=80,
    ),  # 4,894,520
    "6.1M": dict(
        expert_hidden="[896, 448]",
        expert_output=192,
        analyst_hidden="[448, 224]",
        analyst_output=96,
    ),  # 6,123,513
    "7.1M": dict(
        expert_hidden="[1024, 512]",
        expert_output=192,
        analyst_hidden="[512, 256]",
        analyst_output=96,
    ),  # 7,138,105
}
SIZE_SETS = {"cpu": ["0.57M", "2.97M"], "full": ["1.8M", "2.97M", "4.0M", "4.9M", "6.1M", "7.1M"]}
# the 6-epoch study, and the converged one (issue: trained as the original trains)
SCHEDULES = {
    "short": dict(work="runs/study_fashion", out="docs/study"),
    # the long study spans sessions: its work folder's records are committed as they grow
    "long": dict(work="docs/study_long/work", out="docs/study_long"),
    # the long one, each run trained to early stopping with plateau reductions of its rate
    "converged": dict(work="docs/study_converged/work", out="docs/study_converged"),
}
CONVERGED = {"plateau": 8, "patience": 16, "epochs": 300}  # the converged schedule's defaults
OPTIONS = {
    "schedule": "short (default: the grid of 3 learning rates, 6 epochs, no augmentation) "
    "or long (augmentation on, 36 epochs, learning rate x weight decay chosen by "
    "successive halving on validation at epochs 4, 12 and 36) or converged (as "
    "long, every run trained to early stopping, its rate cut on plateaus; "
    "halving at epochs 4, 12 and the stop)",
    "weight_decays": "long and converged: comma list (default 0,0.0001)",
    "plateau": "converged only: epochs without a new best validation accuracy before the "
    "learning rate is multiplied by 0.1 (default 8)",
    "patience": "converged only: epochs without a new best validation accuracy that end a "
    "run (default 16)",
    "check_epochs": "long only: the convergence check trains each type's choice at the first "
    "size (seed 0) this many epochs (default twice --epochs, 72; 0: no check)",
    "sizes": "cpu (default: 0.57M and phase1's 2.97M) or full (1.8M to 7.1M, six sizes) or a "
    "comma list of " + ", ".join(SIZES),
    "seeds": "seeds of each chosen configuration (default 3: seed 0 of the grid, then 1, 2)",
    "epochs": "epochs of every run (default: the sweep file's, 6; long: 36; converged: at "
    "most 300)",
    "model_types": "comma list (default: the sweep file's seven)",
    "learning_rates": "comma list (default: the sweep file's 0.0003,0.001,0.003)",
    "dataset": "default: the sweep file's fashion_mnist (digits for a quick check)",
    "work": "folder of the running study: Optuna storage, results, checkpoints "
    "(default runs/study_fashion; long: docs/study_long/work, converged: "
    "docs/study_converged/work, whose records are committed)",
    "out": "where the finished study is copied (default docs/study; long: docs/study_long; "
    "converged: docs/study_converged)",
    "help": "show this message",
}
SUMMARY = "Runs the Fashion-MNIST parameter-efficiency study (grid, selection, seeds, report)."


def sizes_of(spec: str) -> list[str]:
    names = SIZE_SETS.get(spec) or [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in SIZES]
    if bad or not names:
        raise ConfigError(
            f"--sizes={spec}: expected cpu, full or a comma list of {', '.join(SIZES)}"
        )
    return names


class Stopped(Exception):
    """The study was asked to stop (Ctrl-C, SIGTERM) and its step in flight has stopped."""


def run(cmd: list[str], log, stop: StopFlag, progress: "Progress") -> None:
    """One step of the study in a process of its own session, its output to the log: a
    signal reaches this process only, which passes it on once (a second one at once, and
    leaves), so the step stops as it would on its own (a sweep trial recorded as stopped,
    its checkpoint kept). Meanwhile its finished runs are shown as they come."""
    if stop.requested:  # between two steps
        raise Stopped
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    stop.on_force = lambda: _force(proc, stop.signal)
    try:
        passed = False
        while proc.poll() is None:
            if stop.requested and not passed:
                proc.send_signal(stop.signal)
                passed = True
            progress.show()
            time.sleep(0.2)
    finally:
        stop.on_force = None
    progress.show()
    if stop.requested:
        raise Stopped
    if proc.returncode != 0:
        raise SystemExit(
            f"study: `{' '.join(cmd[1:])}` failed with exit code {proc.returncode}; "
            f"its output is in {log.name}; fix it and run the same command again "
            "to continue"
        )


def _force(proc, signum) -> None:
    """A second signal: the step in flight writes what it measured and ends at once too."""
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


EPOCH_LINE = re.compile(r"\bepoch\s+\d+/\d+")  # run.py's and a sweep trial's epoch lines
COPY = "study_copy_of"  # a record copied from the halving file (the chosen candidate's)


class Progress:
    """A console line per run ended (read from the study's results files as they grow),
    with the study's count of runs and the time left at this invocation's pace of work
    done. Work is counted in parameter-epochs (an epoch of a model of P parameters, per
    seed, is P), as an epoch's time grows with the model: the study's sizes differ 5x."""

    def __init__(
        self,
        files: list[Path],
        runs: int,
        work: float,
        to_stop: float = 0.0,
        rungs: tuple[int, ...] = (),
    ):
        self.files, self.total, self.total_work, self.start = files, runs, work, time.time()
        self.log: Optional[Path] = None  # the steps' log, whose epoch lines show_epochs shows
        self.log_at = 0
        # of `work`, what runs to early stopping train, counted at the cap (the last of the
        # halving's `rungs`): the time left is then an upper bound until the first runs
        # have stopped, then estimated from where they stopped
        self.to_stop, self.rungs = to_stop, tuple(rungs)
        self.cap = self.rungs[-1] if self.rungs else 0
        self.seen = {f: self.lines(f) for f in files}
        self.sizes: dict[Path, int] = {}
        self.done_before, self.work_before = self.count()
        self.done, self.work_done = self.done_before, self.work_before

    @staticmethod
    def lines(path: Path) -> list[dict]:
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                break
        return out

    def count(self) -> tuple[int, float]:
        """(runs ended: a record of K seeds is K runs, a stopped one is continued later;
        parameter-epochs trained, K per epoch of K seeds, a stopped record's too)."""
        recs = [
            r for rs in self.seen.values() for r in rs if COPY not in r and not self.superseded(r)
        ]
        runs = sum(len(r.get("replicas") or [0]) for r in recs if r.get("status") != "stopped")
        work = sum(
            (r.get("epochs_completed", 0) - r.get("resumed_from_epoch", 0))
            * r.get("num_seeds", 1)
            * r.get("model_params", 0)
            for r in recs
        )
        return runs, work

    def final_rung(self, rec: dict) -> bool:
        """A finished run to early stopping past the halving's earlier rungs: a survivor's
        or a seed's run to its stop (at most `cap`, or an earlier, lower cap)."""
        cfg = rec.get("config", {})
        return (
            bool(self.to_stop)
            and rec.get("status") == "finished"
            and bool(cfg.get("early_stopping_patience"))
            and cfg.get("epochs") not in self.rungs[:-1]
        )

    def superseded(self, rec: dict) -> bool:
        """A run to early stopping that reached an earlier, lower cap without stopping:
        the study trains it again to this cap, and counts that run instead."""
        return self.final_rung(rec) and not answers(rec, self.cap)

    def show(self) -> None:
        self.show_epochs()
        for f in self.files:
            try:  # polled 5 times a second: a file is read again only once it has grown
                size = f.stat().st_size
            except FileNotFoundError:
                continue
            if self.sizes.get(f) == size:
                continue
            self.sizes[f] = size
            recs = self.lines(f)
            for rec in recs[len(self.seen[f]) :]:
                self.seen[f].append(rec)
                self.done, self.work_done = self.count()
                if rec.get("status") != "stopped" and COPY not in rec:
                    self.say(rec)

    def show_epochs(self) -> None:
        """The run in flight's epoch lines (its step writes them to the log), as they come,
        so that the console is never silent for a whole run."""
        if self.log is None:
            return
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_at)
                new = f.read()
        except FileNotFoundError:
            return
        done = new.rfind(b"\n") + 1  # whole lines only: the last one may be in writing
        self.log_at += done
        for line in new[:done].decode(errors="replace").splitlines():
            if EPOCH_LINE.search(line):
                print(f"[run] {line.strip()}", file=sys.stderr, flush=True)

    def expected_work(self) -> tuple[float, bool]:
        """(the study's parameter-epochs, whether that is an upper bound): runs to early
        stopping are expected to train the mean fraction of `cap` that the ones already
        ended trained."""
        if not self.to_stop:
            return self.total_work, False
        stops = [
            r["epochs_completed"] / self.cap
            for rs in self.seen.values()
            for r in rs
            if COPY not in r and self.final_rung(r) and answers(r, self.cap)
        ]
        if not stops:
            return self.total_work, True
        return self.total_work - self.to_stop * (1 - sum(stops) / len(stops)), False

    def say(self, rec: dict) -> None:
        left = ""
        trained = self.work_done - self.work_before
        total, bound = self.expected_work()
        if trained and self.work_done < total:
            s = (time.time() - self.start) / trained * (total - self.work_done)
            left = f"{s / 60:.0f} min left" if s >= 60 else f"{s:.0f} s left"
            left = f", at most ~{left}" if bound else f", about {left}"
        cfg = rec.get("config", {})
        first, last = cfg.get("seed", 0), cfg.get("seed", 0) + cfg.get("num_seeds", 1) - 1
        seeds = f"seed {first}" if first == last else f"seeds {first}-{last}"
        acc = rec.get("final/test_accuracy")
        wd = f" wd={cfg['weight_decay']}" if cfg.get("weight_decay") else ""
        print(
            f"[study] {self.done}/{self.total} runs: {rec.get('model_type')} "
            f"{rec.get('model_params', 0):,} params lr={cfg.get('learning_rate')}{wd} {seeds}, "
            f"{rec.get('epochs_completed')} epochs {rec.get('status')}: val "
            f"{rec.get('final/best_val_accuracy', float('nan')):.2f}% test "
            f"{float('nan') if acc is None else acc:.2f}%{left}",
            file=sys.stderr,
            flush=True,
        )


def study_sweep(opts: dict, work: Path) -> tuple[Path, dict[str, str], dict, int]:
    """The sweep file this study runs (the repository's, or a copy in `work` with the
    options' model types, learning rates, dataset and epochs), its fixed keys (what every
    run of the study shares), the keys its grid varies, and its grid size."""
    import yaml

    from jaxcollective.sweep import read_sweep, search_space

    sweep = read_sweep(str(SWEEP))
    params = sweep["parameters"]
    for opt, key in (("model_types", "model_type"), ("learning_rates", "learning_rate")):
        if opt in opts:
            params[key] = {"values": [yaml.safe_load(v) for v in opts[opt].split(",") if v.strip()]}
    for key in ("epochs", "dataset"):
        if key in opts:
            params[key] = {"value": yaml.safe_load(opts[key])}
    path = SWEEP
    if any(k in opts for k in ("model_types", "learning_rates", "epochs", "dataset")):
        path = work / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    fixed, space = search_space(params)
    grid = 1
    for dist in space.values():
        grid *= len(dist.choices)
    return path, {k: str(v) for k, v in fixed.items()}, space, grid


def selections(results: Path):
    from jaxcollective.report import (
        fold_duplicates,
        group_runs,
        load_results,
        select_on_validation,
        split_runs,
    )

    good, _ = split_runs(load_results(results)) if results.exists() else ([], [])
    good, _ = fold_duplicates(good)
    return [select_on_validation(g) for g in group_runs(good)]


def main(argv: list[str]) -> int:
    # installed first: a signal at any moment stops the study between or inside its steps
    with StopFlag(
        waiting_for="the epoch in flight of the study's step (its run is kept as "
        "stopped, with its checkpoint)"
    ) as stop:
        return guarded(lambda: study(argv, stop))


def study(argv: list[str], stop: StopFlag) -> int:
    _, opts = parse_argv(argv, OPTIONS, flags=("help",), config_keys=False)
    if "help" in opts:
        print(help_text("python docs/study.py", SUMMARY, OPTIONS, config_keys=False))
        return 0
    schedule = opts.get("schedule", "short")
    if schedule not in SCHEDULES:
        raise ConfigError(f"--schedule={schedule}: expected short, long or converged")
    sched = SCHEDULES[schedule]
    for opt in ("weight_decays", "check_epochs", "plateau", "patience"):
        owners = {"weight_decays": ("long", "converged"), "check_epochs": ("long",)}.get(
            opt, ("converged",)
        )
        if schedule not in owners and opt in opts:
            raise ConfigError(
                f"--{opt} belongs to --schedule={' or '.join(owners)}, not {schedule}"
            )
    names = sizes_of(opts.get("sizes", "cpu"))
    seeds = int_option(opts, "seeds", 3, minimum=1)
    work, out = Path(opts.get("work", sched["work"])), Path(opts.get("out", sched["out"]))
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / "study.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"another `docs/study.py` is running in {work}; wait for it, or pass another --work"
        ) from None
    sweep, fixed, varied, grid = study_sweep(opts, work)
    os.environ.setdefault("WANDB_MODE", "disabled")  # the local study needs no W&B
    results, start = work / "results.jsonl", time.time()
    cpu0 = _children_cpu()
    types = list(varied["model_type"].choices) if "model_type" in varied else [fixed["model_type"]]
    epochs = (
        int(fixed["epochs"])
        if schedule == "short"
        else int_option(
            opts, "epochs", CONVERGED["epochs"] if schedule == "converged" else 36, minimum=1
        )
    )
    params = {n: collective_params(n, fixed) for n in names}  # the baselines' within 0.4%
    if schedule == "short":
        progress = Progress(
            [results],
            len(names) * (grid + len(types) * (seeds - 1)),
            sum(params.values()) * epochs * (grid + len(types) * (seeds - 1)),
        )

        def steps(log):
            return short_study(
                params,
                seeds,
                sweep,
                fixed,
                varied,
                grid,
                work,
                log,
                stop,
                progress,
            )
    else:
        plan = Halving.plan(opts, epochs, converged=schedule == "converged")
        checks = int(plan.check > 0)
        progress = Progress(
            [work / "halving.jsonl", results, work / "check.jsonl"],
            len(types) * (len(names) * (plan.runs + seeds - 1) + checks),
            len(types)
            * (
                sum(params.values()) * (plan.epochs + (seeds - 1) * plan.rungs[-1])
                + params[names[0]] * plan.check
            ),
            to_stop=len(types) * sum(params.values()) * plan.to_stop(seeds),
            rungs=plan.rungs if plan.stopping else (),
        )

        def steps(log):
            return long_study(
                names,
                types,
                seeds,
                fixed,
                plan,
                work,
                log,
                stop,
                progress,
            )

    progress.log = work / "log.txt"
    progress.log_at = progress.log.stat().st_size if progress.log.exists() else 0
    try:
        with open(work / "log.txt", "a") as log:
            steps(log)
    except Stopped:
        pass
    finally:  # the time of the invocations that trained (a rerun of a done study adds none)
        if progress.work_done > progress.work_before or stop.requested:
            _record_time(work, time.time() - start, _children_cpu() - cpu0, names, seeds, schedule)
    try:
        if not stop.requested:
            run_report(results, work, out, stop)
    except Stopped:
        pass
    if stop.requested:
        print(
            f"study stopped ({progress.done}/{progress.total} runs done); run the same "
            "command again to continue",
            file=sys.stderr,
        )
        return 128 + stop.signal
    print(f"study done: {out}/summary.md, its figures in {out}/<dataset>/", file=sys.stderr)
    return 0


def short_study(counts, seeds, sweep, fixed, varied, grid, work, log, stop, progress) -> None:
    """The 6-epoch study: the grid per size through the sweep runner, then more seeds
    of the configuration validation chose. `counts`: each size's collective parameters."""
    names = list(counts)
    results = work / "results.jsonl"
    checkpoints = f"checkpoint_dir={work / 'checkpoints'}"
    prefix = {"fashion_mnist": "fashion"}.get(fixed["dataset"], fixed["dataset"])
    for name in names:  # 1. the grid, per collective size
        run(
            [
                sys.executable,
                "-m",
                "jaxcollective.sweep",
                str(sweep),
                f"--trials={grid}",
                f"--study={prefix}_{name}",
                f"--results={results}",
                f"--storage=sqlite:///{(work / 'sweeps.db').resolve()}",
                f"--set={checkpoints}",
                *(f"--set={k}={v}" for k, v in SIZES[name].items()),
            ],
            log,
            stop,
            progress,
        )
    for s in selections(results):  # 2. more seeds of each chosen configuration
        have = {r.config.get("seed") for r in s.group.runs}
        if all(k in have for k in range(seeds)):
            continue
        size = min(counts, key=lambda n: abs(s.group.params - counts[n]))
        # the chosen configuration: its value of every key the grid varies (also where the
        # grid has one value of a key, which `s.varied` then leaves out)
        chosen = s.group.runs[0].config
        keys = {
            **fixed,
            **SIZES[size],
            **{k: str(chosen[k]) for k in varied if k in chosen},
            "seed": "1",
            "num_seeds": str(seeds - 1),
        }
        run(
            [
                sys.executable,
                "run.py",
                *(f"--{k}={v}" for k, v in keys.items()),
                f"--results={results}",
                f"--{checkpoints}",
            ],
            log,
            stop,
            progress,
        )


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
    def plan(cls, opts: dict, epochs: int, converged: bool = False) -> "Halving":
        lrs = [float(v) for v in opts.get("learning_rates", "0.0003,0.001,0.003").split(",")]
        wds = [float(v) for v in opts.get("weight_decays", "0,0.0001").split(",")]
        candidates = [{"learning_rate": lr, "weight_decay": wd} for lr in lrs for wd in wds]
        eta = 3
        if converged:  # rungs at 4 and 12 epochs, then to the stop (at most `epochs`)
            stopping = {
                "lr_plateau_patience": int_option(opts, "plateau", CONVERGED["plateau"], 1),
                "early_stopping_patience": int_option(opts, "patience", CONVERGED["patience"], 1),
            }
            return cls(
                sorted({min(4, epochs), min(12, epochs), epochs}),
                eta,
                candidates,
                stopping=stopping,
            )
        # rungs at epochs/9, epochs/3 and epochs (4, 12, 36 by default)
        rungs = sorted({max(1, epochs // eta**k) for k in (2, 1, 0)})
        check = int_option(opts, "check_epochs", 2 * epochs, minimum=0)
        if 0 < check <= epochs:
            raise ConfigError(
                f"--check_epochs={check}: the check trains longer than the study's "
                f"{epochs} epochs; pass more, or 0 for no check"
            )
        return cls(rungs, eta, candidates, check)

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


def long_study(names, types, seeds, fixed, plan: Halving, work, log, stop, progress) -> None:
    """The converged study: per size and model type, successive halving over learning
    rate and weight decay (seed 0), then the chosen candidate at seeds 1.. seeds-1; then
    the convergence check (plan.check epochs, the first size's choices, seed 0)."""
    halving, results, check = work / "halving.jsonl", work / "results.jsonl", work / "check.jsonl"
    base = {**fixed, "use_augmentation": "true", **plan.stopping}
    choices = {}
    for name in names:
        for model_type in types:
            keys = {**base, **SIZES[name], "model_type": model_type}
            folder = work / "checkpoints" / name / model_type
            alive = list(plan.candidates)
            for i, rung in enumerate(plan.rungs):
                for c in alive:
                    if find(halving, {**keys, **c, "epochs": rung, "seed": 0}) is None:
                        tag = f"lr{c['learning_rate']}-wd{c['weight_decay']}"
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


def run_py(keys: dict, results: Path, log, stop, progress) -> None:
    run(
        [
            sys.executable,
            "run.py",
            *(f"--{k}={v}" for k, v in keys.items()),
            f"--results={results}",
        ],
        log,
        stop,
        progress,
    )


def answers(rec: dict, epochs: int) -> bool:
    """Whether a finished record is the run a request for `epochs` epochs trains: it was
    asked for exactly that, or it stopped early at or before it (early stopping reads
    only the run's own validation history, so a run asked for more would have stopped at
    the same epoch). A run that reached a lower cap without stopping does not answer."""
    if rec.get("config", {}).get("epochs") == epochs:
        return True
    ended = rec.get("stopped_early") or rec.get("status") == "diverged"
    return bool(ended) and rec.get("epochs_completed", epochs + 1) <= epochs


def find(path: Path, keys: dict, line: bool = False):
    """The last ended record (finished or diverged) of `path` whose config has these keys'
    values (parsed as run.py parses them; `epochs` as `answers` reads it), or None; with
    `line`, (its line, it)."""
    from jaxcollective.config import Config

    want = json.loads(
        json.dumps(
            Config.from_values(
                {
                    k: str(v)
                    for k, v in keys.items()
                    if k not in ("checkpoint_dir", "keep_checkpoint")
                }
            ).to_dict(),
            default=list,
        )
    )
    names = [k for k in keys if k not in ("checkpoint_dir", "keep_checkpoint", "epochs")]
    hit = None
    for i, rec in enumerate(Progress.lines(path), 1):
        cfg = rec.get("config", {})
        if (
            rec.get("status") in ("finished", "diverged")
            and all(cfg.get(k) == want[k] for k in names)
            and ("epochs" not in keys or answers(rec, want["epochs"]))
        ):
            hit = (i, rec)
    return hit if line or hit is None else hit[1]


def score(rec: dict) -> float:
    """A candidate's validation score: its best validation accuracy (a diverged run: -inf)."""
    if rec.get("status") != "finished":
        return float("-inf")
    return float(rec["final/best_val_accuracy"])


def append(path: Path, rec: dict) -> None:
    from jaxcollective.writers import ResultsWriter

    ResultsWriter(str(path)).finish(rec)


def write_halving_table(halving: Path, results: Path, out: Path, plan: Halving) -> None:
    """The candidates of every (model type, size), their best validation accuracy at each
    rung they reached, and the choice."""
    recs = [r for r in Progress.lines(halving) if r.get("status") in ("finished", "diverged")]
    chosen = {
        (
            r["model_type"],
            r["model_params"],
            r["config"]["learning_rate"],
            r["config"]["weight_decay"],
        )
        for r in Progress.lines(results)
        if COPY in r
    }
    rows: dict[tuple, dict] = {}
    for r in recs:
        c = r["config"]
        key = (r["model_type"], r["model_params"], c["learning_rate"], c["weight_decay"])
        # a run to the stop under an earlier, lower cap is the last rung's (it stopped before
        # that cap, or was trained again to this one: the longer run counts, as the report's)
        rung = (
            c["epochs"] if not plan.stopping or c["epochs"] in plan.rungs[:-1] else plan.rungs[-1]
        )
        cells = rows.setdefault(key, {})
        if cells.get(rung, (-1, ""))[0] < r.get("epochs_completed", 0):
            cells[rung] = (
                r.get("epochs_completed", 0),
                "diverged" if r["status"] == "diverged" else f"{r['final/best_val_accuracy']:.2f}",
            )
    head = " | ".join(
        f"to the stop (at most {e})" if plan.stopping and e == plan.rungs[-1] else f"epoch {e}"
        for e in plan.rungs
    )
    lines = [
        "## Successive halving: the candidates and the choice",
        "",
        f"Per model type and size, every candidate (learning rate x weight decay, seed 0) "
        f"trains to epoch {plan.rungs[0]}; the best third by best validation accuracy is "
        f"extended to the next rung ({', '.join(map(str, plan.rungs))}); the last rung's "
        "best is chosen and trained with more seeds. Best validation accuracy (%) at each "
        "rung a candidate reached:",
        "",
        f"| model type | params | learning rate | weight decay | {head} | chosen |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in plan.rungs) + " | --- |",
    ]
    order = {t: i for i, t in enumerate(MODEL_TYPES)}
    for key in sorted(rows, key=lambda k: (k[1] > 1e6, order.get(k[0], 9), k[2], k[3])):
        t, params, lr, wd = key
        cells = " | ".join(rows[key].get(e, (0, "–"))[1] for e in plan.rungs)
        lines.append(
            f"| {t} | {params:,} | {lr} | {wd} | {cells} | {'**yes**' if key in chosen else ''} |"
        )
    out.write_text("\n".join(lines) + "\n")


def write_stop_table(results: Path, out: Path, plan: Halving) -> None:
    """The converged schedule's stops: per (model type, size), each seed's run of the
    chosen configuration, the epoch early stopping ended it (or the cap, not converged),
    its best validation epoch and its last learning rate."""
    from jaxcollective.report import best_epoch, fmt_params, fold_duplicates, load_results

    runs, _ = fold_duplicates([r for r in load_results(results) if r.status == "finished"])
    cap, p = plan.rungs[-1], plan.stopping
    lines = [
        "## Early stopping: where each run of the choice ended",
        "",
        f"Each run's learning rate is multiplied by 0.1 after {p['lr_plateau_patience']} "
        "epochs in a row without a new best validation accuracy, and the run ends after "
        f"{p['early_stopping_patience']} such epochs (at most {cap}). Per seed: the epoch "
        "it stopped at, the epoch of its best validation accuracy, and the learning rate "
        "of its last epoch. A run that reached the cap without stopping is marked: "
        "not converged by this rule.",
        "",
        "| model type | params | learning rate | weight decay | stopped at (per seed) | "
        "best epoch (per seed) | last learning rate | converged |",
        "| --- | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    groups: dict[tuple, list] = {}
    for r in runs:  # a seed trained again to a higher cap: its longer run, as the report
        c = r.config
        groups.setdefault(
            (r.model_type, r.params, c["learning_rate"], c["weight_decay"]), []
        ).append(r)
    order = {t: i for i, t in enumerate(MODEL_TYPES)}
    for key in sorted(groups, key=lambda k: (k[1] > 1e6, order.get(k[0], 9))):
        seeds = sorted(groups[key], key=lambda r: r.config["seed"])
        stopped = [len(r.val_curve) for r in seeds]
        best = [best_epoch(r.val_curve) for r in seeds]
        last = sorted(
            {f"{r.last_lr if r.last_lr is not None else float('nan'):.1e}" for r in seeds}
        )
        done = all(r.stopped_early for r in seeds)
        t, params, lr, wd = key
        lines.append(
            f"| {t} | {fmt_params(params)} | {lr} | {wd} | "
            f"{', '.join(map(str, stopped))} | {', '.join(map(str, best))} | "
            f"{', '.join(last)} | {'yes' if done else '**no** (reached the cap)'} |"
        )
    out.write_text("\n".join(lines) + "\n")


def write_check_table(results: Path, check: Path, out: Path, epochs: int, longer: int) -> None:
    """The convergence check: per model type, its choice's seed-0 run of the study (`epochs`)
    beside the same configuration trained `longer` epochs: best validation accuracy and its
    epoch, test accuracy, and the order of the types by test accuracy in each."""
    from jaxcollective.report import best_epoch, fmt_params

    def curve(r):
        return r["val_accuracy_curves"][0]

    long_runs = [r for r in Progress.lines(check) if r.get("status") == "finished"]
    short = {(r["model_type"], r["model_params"]): r for r in Progress.lines(results) if COPY in r}
    pairs = [
        (short[r["model_type"], r["model_params"]], r)
        for r in long_runs
        if (r["model_type"], r["model_params"]) in short
    ]
    if not pairs:
        return

    def rank(recs):
        return {
            r["model_type"]: i + 1
            for i, r in enumerate(sorted(recs, key=lambda r: -r["final/test_accuracy"]))
        }

    r_short, r_long = rank([a for a, _ in pairs]), rank([b for _, b in pairs])
    lines = [
        f"## Convergence check: the choices trained {longer} epochs",
        "",
        f"At {fmt_params(pairs[0][1]['model_params'])} parameters (the baselines matched to "
        f"the collective), each model type's chosen configuration, seed 0, trained {longer} epochs "
        f"from scratch beside its {epochs}-epoch run of the study. Best validation accuracy "
        "(%) and its epoch, test accuracy (%) at the run's end, and the rank by test "
        f"accuracy; curves in `check/<dataset>/val_curves.png`.",
        "",
        f"| model type | learning rate | weight decay | best val. {epochs} ep. (epoch) | "
        f"best val. {longer} ep. (epoch) | gain | test {epochs} ep. (rank) | "
        f"test {longer} ep. (rank) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a, b in pairs:
        t, c = b["model_type"], b["config"]
        va, vb = a["final/best_val_accuracy"], b["final/best_val_accuracy"]
        lines.append(
            f"| {t} | {c['learning_rate']} | {c['weight_decay']} | {va:.2f} "
            f"({best_epoch(curve(a))}) | {vb:.2f} ({best_epoch(curve(b))}) | "
            f"{vb - va:+.2f} | {a['final/test_accuracy']:.2f} ({r_short[t]}) | "
            f"{b['final/test_accuracy']:.2f} ({r_long[t]}) |"
        )
    out.write_text("\n".join(lines) + "\n")


def collective_params(size: str, fixed: dict[str, str]) -> int:
    from jaxcollective.api import describe

    return describe({**fixed, "model_type": "collective", **SIZES[size]})["model_params"]


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _record_time(
    work: Path, seconds: float, cpu: float, names: list[str], seeds: int, schedule: str
) -> None:
    """Wall and CPU time of each invocation that trained (a resumed study has several)
    and the machine."""
    path = work / "study.json"
    info = json.loads(path.read_text()) if path.exists() else {"invocations_s": []}
    info["invocations_s"].append(round(seconds, 1))
    info.setdefault("invocations_cpu_s", []).append(round(cpu, 1))
    info["cpu_s"] = round(sum(info["invocations_cpu_s"]), 1)
    info["schedule"] = schedule
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in open("/proc/cpuinfo")
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    info.update(
        wall_s=round(sum(info["invocations_s"]), 1),
        sizes=names,
        seeds=seeds,
        machine=f"{cpu}, {os.cpu_count()} cores",
        python=platform.python_version(),
    )
    try:
        import jax

        info.update(jax=jax.__version__, backend=jax.default_backend())
    except ImportError:
        pass
    path.write_text(json.dumps(info, indent=1) + "\n")


def run_report(results: Path, work: Path, out: Path, stop: StopFlag) -> None:
    with open(work / "log.txt", "a") as log:
        run(
            [
                sys.executable,
                "-m",
                "jaxcollective.report",
                f"--results={results}",
                f"--out={work / 'report'}",
                "--select=validation",
            ],
            log,
            stop,
            Progress([], 0, 0),
        )
    check = work / "check.jsonl"
    if check.exists():  # the convergence check's own report: its curves
        with open(work / "log.txt", "a") as log:
            run(
                [
                    sys.executable,
                    "-m",
                    "jaxcollective.report",
                    f"--results={check}",
                    f"--out={work / 'report' / 'check'}",
                ],
                log,
                stop,
                Progress([], 0, 0),
            )
    summary = work / "report" / "summary.md"
    for part in (
        "report_halving.md",
        "report_stops.md",
        "report_check.md",
    ):  # the long study's, after the report's
        if (work / part).exists():
            summary.write_text(summary.read_text() + "\n" + (work / part).read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name in ("results.jsonl", "halving.jsonl", "check.jsonl", "study.json"):
        if (work / name).exists():
            shutil.copy(work / name, out / name)
    shutil.copytree(work / "report", out, dirs_exist_ok=True)


if __name__ == "__main__":
    sys.exit(console_script(main)())
