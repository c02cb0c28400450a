"""A study's records: its results files, read as they grow, and the runs they answer."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from jaxcollective.train.metrics import BEST_VAL_ACCURACY

COPY = "study_copy_of"  # a record copied from the halving file (the chosen candidate's)


def read_records(path: Path) -> list[dict]:
    """The complete lines of a results file (a line in writing is left out)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


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
    for i, rec in enumerate(read_records(path), 1):
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
    return float(rec[BEST_VAL_ACCURACY])


def append(path: Path, rec: dict) -> None:
    from jaxcollective.train.writers import ResultsWriter

    ResultsWriter(str(path)).finish(rec)


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def record_time(
    out: Path, seconds: float, cpu: float, names: list[str], seeds: int, schedule: str
) -> None:
    """Wall and CPU time of each invocation that trained (a resumed study has several)
    and the machine."""
    path = out / "study.json"
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
