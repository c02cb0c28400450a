"""Work made once per test run and read by every pytest-xdist worker that needs it."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable


def made_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder `name`, filled by `make(folder)` once per test run, whichever worker asks
    first; a worker that asks meanwhile waits for it. A module fixture alone is made once
    per worker, and the end-to-end ones cost a minute each."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder all of this run's workers' folders are in
    folder = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


def committed_steps(run: Path) -> list[int]:
    """The epochs whose checkpoint orbax has committed in one run's folder: a step's
    folder gets its name, the epoch, only when its save is committed (a save in flight is
    `<epoch>.orbax-checkpoint-tmp-<n>`)."""
    return [int(d.name) for d in run.iterdir() if d.name.isdigit()] if run.is_dir() else []


def saved_steps(ck: Path) -> list[int]:
    """The committed steps of every run under the checkpoint root `ck` (one folder per
    run, one step kept)."""
    return [s for run in ck.iterdir() for s in committed_steps(run)] if ck.exists() else []
