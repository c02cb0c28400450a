"""Checkpoints and resume, with orbax-checkpoint (atomic commits, async saves).

A run's folder is `<checkpoint_dir>/<model_type>-<fingerprint>`: the fingerprint is a
digest of the resolved config without the keys that do not change the trajectory
(`epochs`, output, logging and checkpoint options, `eval_batch_size`), so a retried
sweep trial (same config, new W&B run id) finds its checkpoint and raising `epochs`
extends a run. One checkpoint is kept: the whole training state of every replica
(parameters, BatchNorm statistics, optimizer state) and, as JSON, the epoch reached
(every RNG key derives from the seed and the epoch, so this is the RNG position), the
metric history the final metrics and the W&B run need, and the W&B run id.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jaxcollective.config import Config, ConfigError
from jaxcollective.util import alive, describe_error, warn

SAVE_INTERVAL_S = 60.0  # the default policy: save after an epoch 60 s past the last save


def fingerprint(cfg: Config) -> str:
    """A digest of what the run computes epoch by epoch (`Config.trajectory`: the keys
    declared PROGRAM or VALUE that this model type reads, less eval_batch_size)."""
    return hashlib.sha256(json.dumps(cfg.trajectory(), sort_keys=True).encode()).hexdigest()[:16]


def run_dir(cfg: Config, copy: int = 1) -> Path:
    """The checkpoint folder of `cfg`; copy k > 1 is the folder of the k-th identical run
    alive at the same time (each live run owns its folder)."""
    name = f"{cfg.model_type}-{fingerprint(cfg)}" + (f"-{copy}" if copy > 1 else "")
    return Path(cfg.checkpoint_dir).expanduser() / name


class FolderLock:
    """One live owner per checkpoint folder: an exclusive flock on `<folder>.lock`, which
    the kernel releases when the process ends however it ends (kill -9 included). The
    owner's host and pid are written into the file too, for file systems whose locks
    are unreliable: a record of a live process on this host counts as held."""

    def __init__(self, folder: Path):
        self.path = folder.with_name(folder.name + ".lock")
        self.fd: Optional[int] = None

    def acquire(self) -> bool:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            try:  # the file we locked is still the one at the path (not removed meanwhile)
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if _live_owner(os.pread(fd, 256, 0).decode(errors="replace")):
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        self.fd = fd
        return True

    def release(self, remove: bool = False) -> None:
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        else:
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing releases the flock
        self.fd = None


def _live_owner(record: str) -> bool:
    """`host pid` of a process that is alive on this host (and is not this process)."""
    try:
        host, pid = record.split()
        pid = int(pid)
    except ValueError:
        return False
    return host == socket.gethostname() and pid != os.getpid() and alive(pid)


def check_writable(cfg: Config) -> None:
    """The checkpoint folder can be created and written (checked before any work)."""
    root = Path(cfg.checkpoint_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"--checkpoint_dir={cfg.checkpoint_dir} is not writable "
            f"({err.strerror or err}); pass a writable folder"
        ) from None


def _to_json(history: list[dict[str, np.ndarray]]) -> list[dict[str, list]]:
    return [{k: np.asarray(v).tolist() for k, v in h.items()} for h in history]


def _from_json(history: list[dict[str, list]]) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v, np.float32) for k, v in h.items()} for h in history]


class Checkpointer:
    """Saves (async) and restores one run's state; every failure to write is a warning
    and training goes on."""

    def __init__(
        self, cfg: Config, folder: Optional[Path] = None, lock: Optional[FolderLock] = None
    ):
        import orbax.checkpoint as ocp

        self.ocp, self.cfg = ocp, cfg
        self.dir = (folder or run_dir(cfg)).resolve()
        self.lock = lock
        self.every = cfg.checkpoint_every
        self.last_save = time.perf_counter()
        self.saved_epoch: Optional[int] = None  # the epoch of the checkpoint on disk
        self._manager = None

    @property
    def manager(self):
        if self._manager is None:
            ocp = self.ocp
            self._manager = ocp.CheckpointManager(
                self.dir,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, enable_async_checkpointing=True, create=True
                ),
            )
        return self._manager

    def peek(self) -> Optional[dict[str, Any]]:
        """The latest checkpoint's JSON part (epoch, history, W&B id), or None when there
        is none; an unreadable one is a warning and None."""
        if not self.dir.exists():
            return None
        try:
            step = self.manager.latest_step()
            if step is None:
                return None
            meta = self.manager.restore(
                step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore())
            )["meta"]
            meta["step"] = step
            return meta
        except Exception as err:  # noqa: BLE001 - any damage means: start fresh
            warn(f"checkpoint in {self.dir} cannot be read ({type(err).__name__}); starting fresh")
            return None

    def restore(self, target, meta: dict) -> Optional[tuple[Any, list]]:
        """(state, history) of the checkpoint `meta` came from, shaped like `target`;
        None (with a warning) when the shapes do not match or it cannot be read."""
        try:
            got = self.manager.restore(
                meta["step"],
                args=self.ocp.args.Composite(state=self.ocp.args.StandardRestore(target)),
            )["state"]
            import jax  # here, not at the top: run.py checks its config before JAX starts

            if jax.tree.structure(got) != jax.tree.structure(target) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(target))
            ):
                raise ValueError("shapes differ")
            self.saved_epoch = meta["step"]
            return got, _from_json(meta["history"])
        except Exception as err:  # noqa: BLE001
            warn(
                f"checkpoint in {self.dir} does not fit this run ({describe_error(err)}); starting fresh"
            )
            return None

    def due(self, epoch: int) -> bool:
        if self.every > 0:
            return epoch % self.every == 0
        return time.perf_counter() - self.last_save >= SAVE_INTERVAL_S

    def save(
        self, epoch: int, state, history: list, wandb_id: Optional[str], *, wait: bool = False
    ) -> None:
        """Save asynchronously (the arrays are copied off first, so training goes on);
        `wait` blocks until it is committed (when the run stops)."""
        if epoch == self.saved_epoch:  # already on disk (a stop right after a save)
            if wait:
                self.close(release=False)
            return
        meta = {
            "epoch": epoch,
            "history": _to_json(history),
            "wandb_id": wandb_id,
            "fingerprint": fingerprint(self.cfg),
            "config": self.cfg.to_dict(),
        }
        try:
            self.manager.save(
                epoch,
                args=self.ocp.args.Composite(
                    state=self.ocp.args.StandardSave(state), meta=self.ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            if wait:
                self.manager.wait_until_finished()
            self.last_save = time.perf_counter()
            self.saved_epoch = epoch
        except Exception as err:  # noqa: BLE001 - a full disk must not end the run
            warn(
                f"could not save a checkpoint to {self.dir} ({describe_error(err)}); training goes on"
            )

    def finish(self, keep: bool) -> None:
        """Wait for saves in flight; remove the folder unless asked to keep it."""
        self.close(release=False)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self.lock is not None:
            self.lock.release(remove=not keep)

    def close(self, release: bool = True) -> None:
        """Wait for saves in flight, then release the manager (and the folder)."""
        try:
            if self._manager is not None:
                self._manager.wait_until_finished()
                self._manager.close()
                self._manager = None
        except Exception as err:  # noqa: BLE001
            warn(f"checkpoint save did not complete ({type(err).__name__})")
        if release and self.lock is not None:
            self.lock.release()


MAX_COPIES = 64  # identical runs alive at once, each in its own folder


def open_checkpoints(cfg: Config):
    """The run's checkpointer, holding its folder, and with --resume=auto what its latest
    checkpoint says (None when there is none); --resume=never removes an existing one.
    A folder another live run holds is never read or written: this run takes the next
    free copy (`<folder>-2`, ...) and says so. A checkpoint past cfg.epochs is a
    ConfigError: resuming it would contradict the record."""
    for copy in range(1, MAX_COPIES + 1):
        folder = run_dir(cfg, copy)
        lock = FolderLock(folder)
        if lock.acquire():
            break
    else:
        raise ConfigError(
            f"{MAX_COPIES} live runs of this configuration already hold "
            f"{run_dir(cfg)} and its copies; wait for one to end"
        )
    if copy > 1:
        print(
            f"note: another live run of this configuration holds {run_dir(cfg)}; this run "
            f"checkpoints to {folder}",
            file=sys.stderr,
            flush=True,
        )
    checkpointer = Checkpointer(cfg, folder, lock)
    if cfg.resume == "never":
        shutil.rmtree(checkpointer.dir, ignore_errors=True)
        return checkpointer, None
    meta = checkpointer.peek()
    if meta is not None and meta["epoch"] > cfg.epochs:
        checkpointer.close()
        raise ConfigError(
            f"the checkpoint in {checkpointer.dir} has reached epoch "
            f"{meta['epoch']}, past --epochs={cfg.epochs}; pass --epochs={meta['epoch']} "
            "or more to continue it, or --resume=never to start over"
        )
    if meta is not None:
        print(
            f"resuming from epoch {meta['epoch']} (checkpoint {checkpointer.dir})",
            file=sys.stderr,
            flush=True,
        )
    return checkpointer, meta
