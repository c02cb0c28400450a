"""The same random sweep two ways: locally (`python -m jaxcollective.sweep`, trials in one
process) and as one `python run.py` process per trial, as `wandb agent` starts them.

    python docs/sweep_bench.py [--trials=20] [--sweep=sweeps/local_digits.yaml]
    python docs/sweep_bench.py --population=1,4,8 [--trials=24] [--sweep=sweeps/population_digits.yaml]

Both sides start with an empty XLA compilation cache of their own (each fills it as it
goes, as agents do) and W&B disabled; the processes run exactly the trials the local
study sampled. Prints one JSON line with both wall times.

With --population=K1,K2,...: the sweep once per K through the local runner with
--population=K (1: trials one after another, in the same process), each with a fresh
study (same sampler seed) and an empty XLA cache; one JSON line per K with the wall
time, trials per hour, epochs trained and how many trials were pruned.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def populations(opts):
    trials = int(opts.get("trials", 24))
    sweep = opts.get("sweep", str(ROOT / "sweeps" / "population_digits.yaml"))
    for k in (int(x) for x in opts["population"].split(",")):
        tmp = Path(tempfile.mkdtemp(prefix=f"pop-bench-{k}-"))
        env = dict(os.environ, WANDB_MODE="disabled", JAXCOLLECTIVE_CACHE_DIR=str(tmp / "xla"))
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "jaxcollective.sweep",
                sweep,
                f"--trials={trials}",
                f"--population={k}",
                f"--storage=sqlite:///{tmp / 'bench.db'}",
                f"--results={tmp / 'r.jsonl'}",
                "--set",
                f"checkpoint_dir={tmp / 'ck'}",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - t
        recs = [json.loads(line) for line in (tmp / "r.jsonl").read_text().splitlines()]
        print(
            json.dumps(
                {
                    "sweep": Path(sweep).name,
                    "population": k,
                    "trials": len(recs),
                    "pruned": sum(r["status"] == "pruned" for r in recs),
                    "epochs": sum(r["epochs_completed"] for r in recs),
                    "wall_s": round(wall, 1),
                    "trials_per_hour": round(3600 * len(recs) / wall),
                }
            ),
            flush=True,
        )


def main(argv):
    opts = dict(a.lstrip("-").split("=", 1) for a in argv)
    if "population" in opts:
        return populations(opts)
    trials = int(opts.get("trials", 20))
    sweep = opts.get("sweep", str(ROOT / "sweeps" / "local_digits.yaml"))
    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    base_env = dict(os.environ, WANDB_MODE="disabled")

    env = dict(base_env, JAXCOLLECTIVE_CACHE_DIR=str(tmp / "xla-local"))
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxcollective.sweep",
            sweep,
            f"--trials={trials}",
            "--study=bench",
            f"--storage=sqlite:///{tmp / 'bench.db'}",
            f"--results={tmp / 'local.jsonl'}",
            "--set",
            f"checkpoint_dir={tmp / 'ck'}",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        stderr=subprocess.DEVNULL,
    )
    local_s = time.perf_counter() - t

    import optuna

    from jaxcollective.sweep.trials import Sweep

    fixed = Sweep(sweep, {}, None).fixed
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{tmp / 'bench.db'}")
    env = dict(base_env, JAXCOLLECTIVE_CACHE_DIR=str(tmp / "xla-procs"))
    t = time.perf_counter()
    for trial in study.trials:
        args = [f"--{k}={v}" for k, v in {**fixed, **trial.params}.items()]
        subprocess.run(
            [
                sys.executable,
                "run.py",
                *args,
                f"--results={tmp / 'procs.jsonl'}",
                f"--checkpoint_dir={tmp / 'ck'}",
            ],
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    procs_s = time.perf_counter() - t
    print(
        json.dumps(
            {
                "sweep": sweep,
                "trials": len(study.trials),
                "local_s": round(local_s, 1),
                "processes_s": round(procs_s, 1),
                "speedup": round(procs_s / local_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
