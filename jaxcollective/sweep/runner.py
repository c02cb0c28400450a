"""Local sweeps of W&B sweep files on Optuna: runner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread  # as optimize()
from optuna.trial import TrialState

from jaxcollective.cli import UsageError, console_script, guarded, help_text, int_option, parse_argv
from jaxcollective.config import ConfigError
from jaxcollective.train.loop import (
    check_appendable,
    check_results_file,
    enable_compilation_cache,
    preflight,
)
from jaxcollective.train.signals import StopFlag
from .store import is_server, masked, study_lock

from .space import parse_sets
from .samplers import pruner_of, sampler_of, sampler_seed
from .claims import (
    MAX_DIVERGED_IN_A_ROW,
    MAX_FAILURES_IN_A_ROW,
    check_choices,
    claim_or_wait,
    conclude,
    progress_line,
    storage_of,
)
from .trials import Sweep
from .populations import auto_population, check_population, epoch_timer, run_populations


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
    failures = diverged = 0  # in a row: a space that only fails must not loop for ever
    if population == 0:  # auto
        population = auto_population(preflight(sw.base_cfg), measure=epoch_timer(sw, sw.base_cfg))
        print(f"[sweep {name}] --population=auto: {population}", file=sys.stderr)
    if population > 1:
        with StopFlag() as stop:
            diverged = run_populations(sw, study, trials, storage, population, stop, heartbeat)
        if diverged:
            print(diverged_line(name, diverged), file=sys.stderr)
            return 1
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
            if diverged >= MAX_DIVERGED_IN_A_ROW:
                print(diverged_line(name, diverged), file=sys.stderr)
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
            diverged = diverged + 1 if status == "diverged" else 0
            say()
    if stop.requested:
        print(
            f"[sweep {name}] stopped; run the same command again to resume the study",
            file=sys.stderr,
        )
    return 0


def diverged_line(name: str, n: int) -> str:
    return (
        f"[sweep {name}] {n} trials in a row diverged (a loss became NaN or infinite); "
        "stopping: lower the learning rate range of the sweep file"
    )


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
