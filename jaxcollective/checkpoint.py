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

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .cli import describe_error
from .config import Config, ConfigError

# Keys that do not change what the run computes, epoch by epoch.
NOT_TRAJECTORY = frozenset({
    "epochs", "results", "progress", "wandb_project", "wandb_entity", "wandb_name",
    "checkpoint_dir", "checkpoint_every", "resume", "keep_checkpoint", "eval_batch_size",
    "data_dir", "manual_dir", "device", "num_workers", "log_interval", "use_torch_compile",
    "training_strategy", "use_gpu", "input_dim", "num_classes"})
SAVE_INTERVAL_S = 60.0  # the default policy: save after an epoch 60 s past the last save


def fingerprint(cfg: Config) -> str:
    keep = {k: v for k, v in cfg.to_dict().items() if k not in NOT_TRAJECTORY}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def run_dir(cfg: Config) -> Path:
    return Path(cfg.checkpoint_dir).expanduser() / f"{cfg.model_type}-{fingerprint(cfg)}"


def check_writable(cfg: Config) -> None:
    """The checkpoint folder can be created and written (checked before any work)."""
    root = Path(cfg.checkpoint_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"--checkpoint_dir={cfg.checkpoint_dir} is not writable "
                          f"({err.strerror or err}); pass a writable folder") from None


def _to_json(history: list[dict[str, np.ndarray]]) -> list[dict[str, list]]:
    return [{k: np.asarray(v).tolist() for k, v in h.items()} for h in history]


def _from_json(history: list[dict[str, list]]) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(v, np.float32) for k, v in h.items()} for h in history]


class Checkpointer:
    """Saves (async) and restores one run's state; every failure to write is a warning
    and training goes on."""

    def __init__(self, cfg: Config):
        import orbax.checkpoint as ocp

        self.ocp, self.cfg = ocp, cfg
        self.dir = run_dir(cfg).resolve()
        self.every = cfg.checkpoint_every
        self.last_save = time.perf_counter()
        self._manager = None

    @property
    def manager(self):
        if self._manager is None:
            ocp = self.ocp
            self._manager = ocp.CheckpointManager(self.dir, options=ocp.CheckpointManagerOptions(
                max_to_keep=1, enable_async_checkpointing=True, create=True))
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
            meta = self.manager.restore(step, args=self.ocp.args.Composite(
                meta=self.ocp.args.JsonRestore()))["meta"]
            meta["step"] = step
            return meta
        except Exception as err:  # noqa: BLE001 - any damage means: start fresh
            warn(f"checkpoint in {self.dir} cannot be read ({type(err).__name__}); starting fresh")
            return None

    def restore(self, target, meta: dict) -> Optional[tuple[Any, list]]:
        """(state, history) of the checkpoint `meta` came from, shaped like `target`;
        None (with a warning) when the shapes do not match or it cannot be read."""
        try:
            got = self.manager.restore(meta["step"], args=self.ocp.args.Composite(
                state=self.ocp.args.StandardRestore(target)))["state"]
            import jax
            if jax.tree.structure(got) != jax.tree.structure(target) or any(
                    a.shape != b.shape for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(target))):
                raise ValueError("shapes differ")
            return got, _from_json(meta["history"])
        except Exception as err:  # noqa: BLE001
            warn(f"checkpoint in {self.dir} does not fit this run ({describe_error(err)}); starting fresh")
            return None

    def due(self, epoch: int) -> bool:
        if self.every > 0:
            return epoch % self.every == 0
        return time.perf_counter() - self.last_save >= SAVE_INTERVAL_S

    def save(self, epoch: int, state, history: list, wandb_id: Optional[str], *,
             wait: bool = False) -> None:
        """Save asynchronously (the arrays are copied off first, so training goes on);
        `wait` blocks until it is committed (when the run stops)."""
        meta = {"epoch": epoch, "history": _to_json(history), "wandb_id": wandb_id,
                "fingerprint": fingerprint(self.cfg), "config": self.cfg.to_dict()}
        try:
            self.manager.save(epoch, args=self.ocp.args.Composite(
                state=self.ocp.args.StandardSave(state), meta=self.ocp.args.JsonSave(meta)),
                force=True)
            if wait:
                self.manager.wait_until_finished()
            self.last_save = time.perf_counter()
        except Exception as err:  # noqa: BLE001 - a full disk must not end the run
            warn(f"could not save a checkpoint to {self.dir} ({describe_error(err)}); training goes on")

    def finish(self, keep: bool) -> None:
        """Wait for saves in flight; remove the folder unless asked to keep it."""
        self.close()
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        """Wait for saves in flight, then release the manager."""
        try:
            if self._manager is not None:
                self._manager.wait_until_finished()
                self._manager.close()
        except Exception as err:  # noqa: BLE001
            warn(f"checkpoint save did not complete ({type(err).__name__})")


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)
