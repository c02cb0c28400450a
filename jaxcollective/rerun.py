"""`run.py --from_record=FILE:LINE`: the config of the run that a results line describes,
to train it again exactly (docs/training.md, "Rerun a record").

A record keeps its resolved config (`config`). What decides the run comes from it: the
keys whose role is what the program computes, the values it takes and the run's length
(`Role.PROGRAM`, `VALUE`, `LENGTH`, declared on each key); where the data are read from,
what is written where and which device runs it are this machine's: by default a rerun
writes to runs/reruns/ (RERUN_OUTPUTS), and it never appends to the file it reads. Flags given beside it
override the record's values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxcollective.config import FIELDS, ConfigError, Role, role
from jaxcollective.train.metrics import TEST_ACCURACY

FROM_RECORD = (Role.PROGRAM, Role.VALUE, Role.LENGTH)
EXPECTED = "FILE:LINE (a results file and a line number from 1, e.g. runs/results.jsonl:3)"


def read_record(spec: str) -> tuple[dict[str, Any], str]:
    """The record at FILE:LINE, and where it is (as given)."""
    path, sep, line = spec.rpartition(":")
    if not sep or not path or not line.strip().isdigit() or int(line) < 1:
        raise ConfigError(f"--from_record={spec}: expected {EXPECTED}")
    n = int(line)
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"--from_record={spec}: no file {path}") from None
    except OSError as err:
        raise ConfigError(f"--from_record={spec}: cannot read {path} ({err.strerror})") from None
    if n > len(lines):
        raise ConfigError(f"--from_record={spec}: {path} has {len(lines)} lines")
    try:
        rec = json.loads(lines[n - 1])
    except json.JSONDecodeError:
        rec = None
    if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict):
        raise ConfigError(
            f"--from_record={spec}: line {n} of {path} is not a run record (no config); "
            "pass a line of a results file that run.py or a sweep wrote"
        )
    return rec, f"{path}:{n}"


# Where a rerun writes unless told: beside, never into, the files of the runs it repeats
# (a record of runs/results.jsonl would otherwise be appended to its own file, and resume
# the original's kept checkpoint instead of training).
RERUN_OUTPUTS = {
    "results": "runs/reruns/results.jsonl",
    "checkpoint_dir": "runs/reruns/checkpoints",
}


def rerun_values(spec: str, given: dict[str, Any]) -> tuple[dict[str, Any], dict, str]:
    """The values a rerun of the record at `spec` runs with (the record's, then this
    machine's rerun outputs, then `given`), the record, and where it is."""
    rec, where = read_record(spec)
    values = record_values(rec, where)
    if "use_mixed_precision" in given or "dtype" in given:
        values.pop("dtype", None)  # the flag given decides the dtype
    values = {**values, **RERUN_OUTPUTS, **given}
    if Path(str(values["results"])).resolve() == Path(where.rpartition(":")[0]).resolve():
        raise ConfigError(
            f"--results={values['results']} is the file --from_record reads; a rerun writes "
            "elsewhere: pass another --results"
        )
    return values, rec, where


def record_values(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """The config values of a record that decide its run (FROM_RECORD roles)."""
    cfg = rec["config"]
    unknown = sorted(k for k in cfg if k not in FIELDS)
    if unknown:
        raise ConfigError(
            f"--from_record={where}: its config has key {unknown[0]!r}, which this version "
            "does not know; it cannot be rerun exactly here"
        )
    # dtype carries use_mixed_precision (a flag --dtype may then override it)
    return {k: v for k, v in cfg.items() if role(k) in FROM_RECORD and k != "use_mixed_precision"}


def rerun_line(rec: dict[str, Any], where: str) -> str:
    """What the rerun says first: which run, and what it measured."""
    cfg = rec["config"]
    acc = rec.get(TEST_ACCURACY)
    measured = (
        f"; recorded: test accuracy {acc:.2f}% after {rec.get('epochs_completed')} epochs"
        if isinstance(acc, (int, float))
        else ""
    )
    params = rec.get("model_params")
    size = f"{params:,}" if isinstance(params, int) else "?"
    return (
        f"rerunning {where}: {cfg.get('model_type')} on {cfg.get('dataset')}, "
        f"seed {cfg.get('seed')}, {size} params{measured}"
    )


def rerun_command(where: str) -> str:
    """The command that reruns the record at `where` (FILE:LINE)."""
    return f"python run.py --from_record={where}"
