"""The same random sweep two ways: locally (`python -m jaxcollective.sweep`, trials in one
process) and as one `python run.py` process per trial, as `wandb agent` starts them.

    python docs/sweep_bench.py [--trials=20] [--sweep=sweeps/local_digits.yaml]

Both sides start with an empty XLA compilation cache of their own (each fills it as it
goes, as agents do) and W&B disabled; the processes run exactly the trials the local
study sampled. Prints one JSON line with both wall times.
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


def main(argv):
    opts = dict(a.lstrip("-").split("=", 1) for a in argv)
    trials = int(opts.get("trials", 20))
    sweep = opts.get("sweep", str(ROOT / "sweeps" / "local_digits.yaml"))
    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    base_env = dict(os.environ, WANDB_MODE="disabled")

    env = dict(base_env, JAXCOLLECTIVE_CACHE_DIR=str(tmp / "xla-local"))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxcollective.sweep", sweep, f"--trials={trials}",
                    "--study=bench", f"--storage=sqlite:///{tmp / 'bench.db'}",
                    f"--results={tmp / 'local.jsonl'}", "--set", f"checkpoint_dir={tmp / 'ck'}"],
                   cwd=ROOT, env=env, check=True,
                   stderr=subprocess.DEVNULL)
    local_s = time.perf_counter() - t

    import optuna

    from jaxcollective.sweep import Sweep

    fixed = Sweep(sweep, {}, None).fixed
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{tmp / 'bench.db'}")
    env = dict(base_env, JAXCOLLECTIVE_CACHE_DIR=str(tmp / "xla-procs"))
    t = time.perf_counter()
    for trial in study.trials:
        args = [f"--{k}={v}" for k, v in {**fixed, **trial.params}.items()]
        subprocess.run([sys.executable, "run.py", *args, f"--results={tmp / 'procs.jsonl'}",
                        f"--checkpoint_dir={tmp / 'ck'}"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs_s = time.perf_counter() - t
    print(json.dumps({"sweep": sweep, "trials": len(study.trials), "local_s": round(local_s, 1),
                      "processes_s": round(procs_s, 1), "speedup": round(procs_s / local_s, 2)}))


if __name__ == "__main__":
    main(sys.argv[1:])
