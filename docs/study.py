"""The parameter-efficiency study of README's "Results", on real Fashion-MNIST.

    python docs/study.py                  # 2 collective sizes (~77 min on 2 CPU cores)
    python docs/study.py --sizes=full     # the original's range, 1.8M to 7.1M (a GPU)

1. For each collective size: `sweeps/study_fashion.yaml` through the local sweep runner,
   a grid of the 7 model types x 3 learning rates, seed 0 (the baselines take the
   collective's parameter count, so every size is matched).
2. Per model type and size, the learning rate with the best validation accuracy
   (report.select_on_validation: the test set plays no part) trains two more seeds.
3. `python -m jaxcollective.report --select=validation` over all of it; the results file,
   summary.md, the figures and study.json (wall time, machine) are copied to --out.

Stoppable at any moment: Ctrl-C or SIGTERM stops the step in flight cleanly (a sweep
trial is recorded as stopped and keeps its checkpoint, as does a run), says so in one
line and exits 130 (143 for SIGTERM); the same command continues the study (the sweep's
Optuna storage and the runs' checkpoints live in --work) to exactly the study an
uninterrupted run gives. Finished runs are never trained again. A second copy running
at the same time is refused. The console shows a line per finished run, with the
study's count and the time left; each step's own output goes to <work>/log.txt.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jaxcollective.cli import console_script, guarded, help_text, int_option, parse_argv
from jaxcollective.config import ConfigError
from jaxcollective.signals import StopFlag

SWEEP = ROOT / "sweeps" / "study_fashion.yaml"
# The collective's widths at each size (n_total 8, expert_ratio 0.2: 2 experts, 6
# analysts); the parameter counts are on Fashion-MNIST.
SIZES = {
    "0.57M": dict(expert_hidden="[128, 64]", expert_output=32,      # the debug preset's
                  analyst_hidden="[64, 32]", analyst_output=16),    # 567,044
    "1.8M": dict(expert_hidden="[352, 176]", expert_output=88,
                 analyst_hidden="[176, 88]", analyst_output=44),    # 1,837,987
    "2.97M": dict(expert_hidden="[512, 256]", expert_output=128,    # phase1's
                  analyst_hidden="[256, 128]", analyst_output=64),  # 2,969,887
    "4.0M": dict(expert_hidden="[640, 320]", expert_output=160,
                 analyst_hidden="[320, 160]", analyst_output=80),   # 4,007,928
    "4.9M": dict(expert_hidden="[768, 384]", expert_output=160,
                 analyst_hidden="[384, 192]", analyst_output=80),   # 4,894,520
    "6.1M": dict(expert_hidden="[896, 448]", expert_output=192,
                 analyst_hidden="[448, 224]", analyst_output=96),   # 6,123,513
    "7.1M": dict(expert_hidden="[1024, 512]", expert_output=192,
                 analyst_hidden="[512, 256]", analyst_output=96),   # 7,138,105
}
SIZE_SETS = {"cpu": ["0.57M", "2.97M"], "full": ["1.8M", "2.97M", "4.0M", "4.9M", "6.1M", "7.1M"]}
OPTIONS = {
    "sizes": "cpu (default: 0.57M and phase1's 2.97M) or full (1.8M to 7.1M, six sizes) or a "
             "comma list of " + ", ".join(SIZES),
    "seeds": "seeds of each chosen configuration (default 3: seed 0 of the grid, then 1, 2)",
    "epochs": "epochs of every run (default: the sweep file's, 6)",
    "model_types": "comma list (default: the sweep file's seven)",
    "learning_rates": "comma list (default: the sweep file's 0.0003,0.001,0.003)",
    "dataset": "default: the sweep file's fashion_mnist (digits for a quick check)",
    "work": "folder of the running study: Optuna storage, results, checkpoints "
            "(default runs/study_fashion)",
    "out": "where the finished study is copied (default docs/study)",
    "help": "show this message",
}
SUMMARY = "Runs the Fashion-MNIST parameter-efficiency study (grid, selection, seeds, report)."


def sizes_of(spec: str) -> list[str]:
    names = SIZE_SETS.get(spec) or [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in SIZES]
    if bad or not names:
        raise ConfigError(f"--sizes={spec}: expected cpu, full or a comma list of "
                          f"{', '.join(SIZES)}")
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
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
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
        raise SystemExit(f"study: `{' '.join(cmd[1:])}` failed with exit code {proc.returncode}; "
                         f"its output is in {log.name}; fix it and run the same command again "
                         "to continue")


def _force(proc, signum) -> None:
    """A second signal: the step in flight writes what it measured and ends at once too."""
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


class Progress:
    """A console line per finished run (read from the results file as it grows), with the
    study's count of runs and the time left at this invocation's pace."""

    def __init__(self, results: Path, total: int):
        self.results, self.total, self.start = results, total, time.time()
        self.seen = self.lines()
        self.done_before = self.count(self.seen)
        self.done = self.done_before

    def lines(self) -> list[dict]:
        if not self.results.exists():
            return []
        out = []
        for line in self.results.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                break
        return out

    @staticmethod
    def count(recs: list[dict]) -> int:
        """Runs ended (a record of K seeds is K runs; a stopped one is continued later)."""
        return sum(len(rec.get("replicas") or [0]) for rec in recs if rec.get("status") != "stopped")

    def show(self) -> None:
        recs = self.lines()
        for rec in recs[len(self.seen):]:
            self.seen.append(rec)
            if rec.get("status") == "stopped":
                continue
            self.done = self.count(self.seen)
            new = self.done - self.done_before
            left = ""
            if new and self.done < self.total:
                s = (time.time() - self.start) / new * (self.total - self.done)
                left = f", about {s / 60:.0f} min left" if s >= 60 else f", about {s:.0f} s left"
            cfg = rec.get("config", {})
            seeds = cfg.get("seed", 0), cfg.get("seed", 0) + cfg.get("num_seeds", 1) - 1
            acc = rec.get("final/test_accuracy")
            print(f"[study] {self.done}/{self.total} runs: {rec.get('model_type')} "
                  f"{rec.get('model_params', 0):,} params lr={cfg.get('learning_rate')} "
                  f"seed{'s' if seeds[1] > seeds[0] else ''} "
                  f"{seeds[0] if seeds[0] == seeds[1] else f'{seeds[0]}-{seeds[1]}'} "
                  f"{rec.get('status')}: val {rec.get('final/best_val_accuracy', float('nan')):.2f}% "
                  f"test {float('nan') if acc is None else acc:.2f}%{left}",
                  file=sys.stderr, flush=True)


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
    from jaxcollective.report import fold_duplicates, group_runs, load_results, select_on_validation, split_runs

    good, _ = split_runs(load_results(results)) if results.exists() else ([], [])
    good, _ = fold_duplicates(good)
    return [select_on_validation(g) for g in group_runs(good)]


def main(argv: list[str]) -> int:
    # installed first: a signal at any moment stops the study between or inside its steps
    with StopFlag(announce=False) as stop:
        return guarded(lambda: study(argv, stop))


def study(argv: list[str], stop: StopFlag) -> int:
    _, opts = parse_argv(argv, OPTIONS, flags=("help",), config_keys=False)
    if "help" in opts:
        print(help_text("python docs/study.py", SUMMARY, OPTIONS, config_keys=False))
        return 0
    names = sizes_of(opts.get("sizes", "cpu"))
    seeds = int_option(opts, "seeds", 3, minimum=1)
    work, out = Path(opts.get("work", "runs/study_fashion")), Path(opts.get("out", "docs/study"))
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / "study.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"another `docs/study.py` is running in {work}; wait for it, or "
                          "pass another --work") from None
    sweep, fixed, varied, grid = study_sweep(opts, work)
    os.environ.setdefault("WANDB_MODE", "disabled")  # the local study needs no W&B
    results, start = work / "results.jsonl", time.time()
    checkpoints = f"checkpoint_dir={work / 'checkpoints'}"
    types = len(varied["model_type"].choices) if "model_type" in varied else 1
    progress = Progress(results, len(names) * (grid + types * (seeds - 1)))
    prefix = {"fashion_mnist": "fashion"}.get(fixed["dataset"], fixed["dataset"])
    try:
        with open(work / "log.txt", "a") as log:
            for name in names:  # 1. the grid, per collective size
                run([sys.executable, "-m", "jaxcollective.sweep", str(sweep), f"--trials={grid}",
                     f"--study={prefix}_{name}", f"--results={results}",
                     f"--storage=sqlite:///{(work / 'sweeps.db').resolve()}",
                     f"--set={checkpoints}", *(f"--set={k}={v}" for k, v in SIZES[name].items())],
                    log, stop, progress)
            counts = {n: collective_params(n, fixed) for n in names}
            for s in selections(results):  # 2. more seeds of each chosen configuration
                have = {r.config.get("seed") for r in s.group.runs}
                if all(k in have for k in range(seeds)):
                    continue
                size = min(names, key=lambda n: abs(s.group.params - counts[n]))
                # the chosen configuration: its value of every key the grid varies (also
                # where the grid has one value of a key, which `s.varied` then leaves out)
                chosen = s.group.runs[0].config
                keys = {**fixed, **SIZES[size], **{k: str(chosen[k]) for k in varied if k in chosen},
                        "seed": "1", "num_seeds": str(seeds - 1)}
                run([sys.executable, "run.py", *(f"--{k}={v}" for k, v in keys.items()),
                     f"--results={results}", f"--{checkpoints}"], log, stop, progress)
    except Stopped:
        pass
    finally:  # the time of the invocations that trained (a rerun of a done study adds none)
        if progress.done > progress.done_before or stop.requested:
            _record_time(work, time.time() - start, names, seeds)
    try:
        if not stop.requested:
            run_report(results, work, out, stop)
    except Stopped:
        pass
    if stop.requested:
        print(f"study stopped ({progress.done}/{progress.total} runs done); run the same "
              "command again to continue", file=sys.stderr)
        return 128 + stop.signal
    print(f"study done: {out}/summary.md, its figures in {out}/<dataset>/", file=sys.stderr)
    return 0


def collective_params(size: str, fixed: dict[str, str]) -> int:
    from jaxcollective.api import describe

    return describe({**fixed, "model_type": "collective", **SIZES[size]})["model_params"]


def _record_time(work: Path, seconds: float, names: list[str], seeds: int) -> None:
    """Wall time of each invocation (a resumed study has several) and the machine."""
    path = work / "study.json"
    info = json.loads(path.read_text()) if path.exists() else {"invocations_s": []}
    info["invocations_s"].append(round(seconds, 1))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    info.update(wall_s=round(sum(info["invocations_s"]), 1), sizes=names, seeds=seeds,
                machine=f"{cpu}, {os.cpu_count()} cores", python=platform.python_version())
    try:
        import jax
        info.update(jax=jax.__version__, backend=jax.default_backend())
    except ImportError:
        pass
    path.write_text(json.dumps(info, indent=1) + "\n")


def run_report(results: Path, work: Path, out: Path, stop: StopFlag) -> None:
    with open(work / "log.txt", "a") as log:
        run([sys.executable, "-m", "jaxcollective.report", f"--results={results}",
             f"--out={work / 'report'}", "--select=validation"], log, stop, Progress(results, 0))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(results, out / "results.jsonl")
    shutil.copy(work / "study.json", out / "study.json")
    shutil.copytree(work / "report", out, dirs_exist_ok=True)


if __name__ == "__main__":
    sys.exit(console_script(main)())
