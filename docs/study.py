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

Resumable: the same command continues a stopped study (the sweep's Optuna storage and
the runs' checkpoints live in --work); finished runs are never trained again. A second
copy running at the same time is refused.
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


def run(cmd: list[str], log) -> None:
    print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"study: `{' '.join(cmd[1:])}` failed with exit code {rc}; its output "
                         f"is in {log.name}; fix it and run the same command again to continue")


def study_sweep(opts: dict, work: Path) -> tuple[Path, dict[str, str], int]:
    """The sweep file this study runs (the repository's, or a copy in `work` with the
    options' model types, learning rates, dataset and epochs), its fixed keys (what every
    run of the study shares) and its grid size."""
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
    return path, {k: str(v) for k, v in fixed.items()}, grid


def selections(results: Path):
    from jaxcollective.report import fold_duplicates, group_runs, load_results, select_on_validation, split_runs

    good, _ = split_runs(load_results(results)) if results.exists() else ([], [])
    good, _ = fold_duplicates(good)
    return [select_on_validation(g) for g in group_runs(good)]


def main(argv: list[str]) -> int:
    def _main():
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
        sweep, fixed, grid = study_sweep(opts, work)
        os.environ.setdefault("WANDB_MODE", "disabled")  # the local study needs no W&B
        results, start = work / "results.jsonl", time.time()
        checkpoints = f"checkpoint_dir={work / 'checkpoints'}"
        try:
            with open(work / "log.txt", "a") as log:
                for name in names:  # 1. the grid, per collective size
                    run([sys.executable, "-m", "jaxcollective.sweep", str(sweep), f"--trials={grid}",
                         f"--study=fashion_{name}", f"--results={results}",
                         f"--storage=sqlite:///{(work / 'sweeps.db').resolve()}",
                         f"--set={checkpoints}", *(f"--set={k}={v}" for k, v in SIZES[name].items())],
                        log)
                counts = {n: collective_params(n, fixed) for n in names}
                for s in selections(results):  # 2. more seeds of each chosen configuration
                    have = {r.config.get("seed") for r in s.group.runs}
                    if all(k in have for k in range(seeds)):
                        continue
                    size = min(names, key=lambda n: abs(s.group.params - counts[n]))
                    keys = {**fixed, **SIZES[size], "model_type": s.group.model_type,
                            **{k: str(v) for k, v in s.varied.items()},
                            "seed": "1", "num_seeds": str(seeds - 1)}
                    run([sys.executable, "run.py", *(f"--{k}={v}" for k, v in keys.items()),
                         f"--results={results}", f"--{checkpoints}"], log)
        finally:
            _record_time(work, time.time() - start, names, seeds)
        run_report(results, work, out)
        return 0
    return guarded(_main)


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


def run_report(results: Path, work: Path, out: Path) -> None:
    with open(work / "log.txt", "a") as log:
        run([sys.executable, "-m", "jaxcollective.report", f"--results={results}",
             f"--out={work / 'report'}", "--select=validation"], log)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(results, out / "results.jsonl")
    shutil.copy(work / "study.json", out / "study.json")
    shutil.copytree(work / "report", out, dirs_exist_ok=True)
    print(f"study done: {out}/summary.md, its figures in {out}/<dataset>/", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(console_script(main)())
