"""`python -m jaxcollective.study`: a study's steps in order, resumable at any moment,
then its report."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from pathlib import Path

from jaxcollective.cli import console_script, guarded, help_text, int_option, parse_argv
from jaxcollective.config import ConfigError
from jaxcollective.train.signals import StopFlag

from .halving import Halving, long_study
from .progress import Progress, Stopped, of_cells, run
from .records import children_cpu, read_records, record_time
from .schedules import SCHEDULES, SIZE_SETS, SIZES, SWEEP

OPTIONS = {
    "schedule": "short (default: the grid of 3 learning rates, 6 epochs, no augmentation) "
    "or long (augmentation on, 36 epochs, learning rate x weight decay chosen by "
    "successive halving on validation at epochs 4, 12 and 36) or converged (as "
    "long, every run trained to early stopping, its rate cut on plateaus; "
    "halving at epochs 4, 12 and the stop) or best_shot (as converged, for the collective "
    "alone: 24 drawn architectures and training knobs at each size's budget) or baseline_shot "
    "(as best_shot, for deep_resnet and very_deep_resnet: 24 draws of learning rate, weight "
    "decay and dropout)",
    "weight_decays": "long and converged: comma list (default 0,0.0001)",
    "candidates": "best_shot and baseline_shot: configurations drawn from the search space "
    "per size (default 24), a collective sized to the size's parameter count",
    "plateau": "converged, best_shot and baseline_shot: epochs without a new best validation accuracy before the "
    "learning rate is multiplied by 0.1 (default 8)",
    "patience": "converged, best_shot and baseline_shot: epochs without a new best validation accuracy that end a "
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
    "folder": "the study's folder: its records (results.jsonl, halving.jsonl, study.json), "
    "committed, and its report; its running state (the sweep's store, checkpoints, the log) "
    "in FOLDER/.work (default docs/study; long: docs/study_long; converged: "
    "docs/study_converged)",
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


def study_sweep(opts: dict, work: Path) -> tuple[Path, dict[str, str], dict, int]:
    """The sweep file this study runs (the repository's, or a copy in `work` with the
    options' model types, learning rates, dataset and epochs), its fixed keys (what every
    run of the study shares), the keys its grid varies, and its grid size."""
    import yaml

    from jaxcollective.sweep.space import read_sweep, search_space

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
    from jaxcollective.report.select import (
        fold_duplicates,
        group_runs,
        select_on_validation,
        split_runs,
    )
    from jaxcollective.report.load import load_results

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
        print(help_text("python -m jaxcollective.study", SUMMARY, OPTIONS, config_keys=False))
        return 0
    schedule = opts.get("schedule", "short")
    if schedule not in SCHEDULES:
        raise ConfigError(f"--schedule={schedule}: expected {', '.join(SCHEDULES)}")
    sched = SCHEDULES[schedule]
    for opt in {o for s in SCHEDULES.values() for o in s.options} - set(sched.options):
        if opt in opts:
            owners = [s.name for s in SCHEDULES.values() if opt in s.options]
            raise ConfigError(
                f"--{opt} belongs to --schedule={' or '.join(owners)}, not {schedule}"
            )
    names = sizes_of(opts.get("sizes", "cpu"))
    seeds = int_option(opts, "seeds", 3, minimum=1)
    out = Path(opts.get("folder", sched.folder))
    work = out / ".work"  # the running state, out of git (.gitignore)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"--folder={out} cannot be written ({err.strerror}); pass another"
        ) from None
    lock = open(work / "study.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(
            f"another study is running in {out}; wait for it, or pass another --folder"
        ) from None
    sweep, fixed, varied, grid = study_sweep(opts, work)
    os.environ.setdefault("WANDB_MODE", "disabled")  # the local study needs no W&B
    results, start = out / "results.jsonl", time.time()
    cpu0 = children_cpu()
    types = list(varied["model_type"].choices) if "model_type" in varied else [fixed["model_type"]]
    if sched.model_types:
        types = [t for t in types if t in sched.model_types]
        if not types:
            raise ConfigError(
                f"--model_types: --schedule={schedule} trains {', '.join(sched.model_types)} only"
            )
    epochs = (
        int(fixed["epochs"])
        if schedule == "short"
        else int_option(opts, "epochs", sched.epochs, minimum=1)
    )
    params = {n: collective_params(n, fixed) for n in names}  # the baselines' within 0.4%
    mine = of_cells(types, params.values())
    if schedule == "short":
        progress = Progress(
            [results],
            len(names) * (grid + len(types) * (seeds - 1)),
            sum(params.values()) * epochs * (grid + len(types) * (seeds - 1)),
            mine=mine,
        )

        def steps(log):
            return short_study(
                params,
                seeds,
                sweep,
                fixed,
                varied,
                grid,
                out,
                log,
                stop,
                progress,
            )
    else:
        plan = Halving.plan(opts, epochs, sched)
        checks = int(plan.check > 0)
        progress = Progress(
            [out / "halving.jsonl", results, out / "check.jsonl"],
            len(types) * (len(names) * (plan.runs + seeds - 1) + checks),
            len(types)
            * (
                sum(params.values()) * (plan.epochs + (seeds - 1) * plan.rungs[-1])
                + params[names[0]] * plan.check
            ),
            to_stop=len(types) * sum(params.values()) * plan.to_stop(seeds),
            rungs=plan.rungs if plan.stopping else (),
            mine=mine,
        )

        def steps(log):
            return long_study(
                names,
                types,
                seeds,
                fixed,
                plan,
                out,
                log,
                stop,
                progress,
                budgets=params if sched.candidates else None,
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
            record_time(out, time.time() - start, children_cpu() - cpu0, names, seeds, schedule)
    try:
        if not stop.requested:
            also = str(Path(sched.compare_with) / "results.jsonl") if sched.compare_with else ""
            run_report(str(results), out, stop, join=also)
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


def short_study(counts, seeds, sweep, fixed, varied, grid, out, log, stop, progress) -> None:
    """The 6-epoch study: the grid per size through the sweep runner, then more seeds
    of the configuration validation chose. `counts`: each size's collective parameters."""
    names = list(counts)
    work, results = out / ".work", out / "results.jsonl"
    checkpoints = f"checkpoint_dir={work / 'checkpoints'}"
    prefix = {"fashion_mnist": "fashion"}.get(fixed["dataset"], fixed["dataset"])
    for name in names:  # 1. the grid, per collective size
        study = f"{prefix}_{name}"
        done = sum(
            r.get("sweep_study") == study and r.get("status") == "finished"
            for r in read_records(results)
        )
        if done >= grid:  # its records say so (the sweep's store is not committed)
            continue
        run(
            [
                sys.executable,
                "-m",
                "jaxcollective.sweep",
                str(sweep),
                f"--trials={grid}",
                f"--study={study}",
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
                "-m",
                "jaxcollective.main",
                *(f"--{k}={v}" for k, v in keys.items()),
                f"--results={results}",
                f"--{checkpoints}",
            ],
            log,
            stop,
            progress,
        )


def collective_params(size: str, fixed: dict[str, str]) -> int:
    from jaxcollective.api import describe

    return describe({**fixed, "model_type": "collective", **SIZES[size]})["model_params"]


def run_report(results: str, out: Path, stop: StopFlag, join: str = "") -> None:
    """The report of the study's records, into its folder (summary.md, the figures);
    `join`: another study's records, whose model types these lack join them."""
    work = out / ".work"
    with open(work / "log.txt", "a") as log:
        run(
            [
                sys.executable,
                "-m",
                "jaxcollective.report",
                f"--results={results}",
                f"--out={work / 'report'}",
                "--select=validation",
                *([f"--join={join}"] if join else []),
            ],
            log,
            stop,
            Progress([], 0, 0),
        )
    check = out / "check.jsonl"
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
    shutil.copytree(work / "report", out, dirs_exist_ok=True)


console = console_script(main)
