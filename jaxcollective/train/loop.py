"""`train_and_evaluate(cfg, writer)`: one run, from config to results.

Metrics are fetched from the device once per epoch. Every epoch row also carries the
`final/*` metrics as they would be if the run ended there, so a run stopped at any
point (SIGTERM from Hyperband, Ctrl-C) reports its last completed epoch as final,
and a sweep's early-termination sees its metric in every history row.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jaxcollective.train import schedule
from jaxcollective.train.checkpoint import check_writable
from jaxcollective.config import Config, ConfigError
from jaxcollective.data.datasets import TRAIN_SIZES, load, train_split_size
from jaxcollective.train.metrics import (
    EPOCH_TIME,
    LOSSES,
    TEST_CURVES,
    VAL_CURVES,
    final_metrics,
    history_row,
    replica_finals,
    val_curves,
)
from jaxcollective.train.signals import StopFlag
from jaxcollective.train.writers import Writer


def run_info(resolved, ds, unused: dict[str, str]) -> dict[str, Any]:
    """What a run's record and W&B config start with: the architecture, the data, the
    seeds, the keys it does not read, the resolved config."""
    from jaxcollective.model.sizing import describe_resolved

    cfg = resolved.cfg
    info = describe_resolved(resolved)
    info.update(
        dataset=cfg.dataset,
        data_name=ds.name,
        synthetic=ds.synthetic,
        num_seeds=cfg.num_seeds,
        seeds=cfg.seeds,
        unused_keys=unused,
        config=resolved.config.to_dict(),
    )
    return info


class RunLog:
    """One run's bookkeeping, apart from how it is trained (alone, or as a member of a
    population): its info, its history of epoch metrics, the rows and the record it
    reports through `writer`."""

    def __init__(
        self,
        resolved,
        ds,
        writer: Writer,
        *,
        unused: Optional[dict[str, str]] = None,
        history: Optional[list] = None,
        extra_info: Optional[dict] = None,
    ):
        self.t0 = time.perf_counter()
        self.cfg, self.writer, self.params = resolved.cfg, writer, resolved.model_params
        self.history: list[dict[str, np.ndarray]] = list(history or [])
        self.resumed_from = len(self.history)
        self.info = run_info(resolved, ds, unused or {})
        self.info["resumed_from_epoch"] = self.resumed_from
        self.info.update(extra_info or {})
        writer.start(self.info)

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return len(self.history)

    def add(self, m: dict[str, np.ndarray], epoch_s: float) -> bool:
        """One epoch's metrics (host arrays, leading replica axis): False, and nothing
        logged, if a loss is not finite (the run diverged)."""
        if not all(np.all(np.isfinite(m[k])) for k in LOSSES):
            return False
        self.history.append(m)
        lr = None
        if self.cfg.lr_plateau_patience:  # the rate this epoch trained at (mean over replicas)
            lr = float(np.mean(schedule.learning_rates(self.cfg, self.history[:-1])))
        row = history_row(self.epoch, self.history, self.cfg, self.params, lr)
        row[EPOCH_TIME] = epoch_s
        self.writer.log(row)
        self.last_row = row
        return True

    def record(self, status: str) -> dict[str, Any]:
        record: dict[str, Any] = dict(self.info)
        record.update(
            status=status,
            diverged=status == "diverged",
            epochs_completed=len(self.history),
            resumed_from_epoch=self.resumed_from,
            stopped_early=schedule.stops(self.cfg, self.history),
            wall_s=time.perf_counter() - self.t0,
        )
        if self.history:
            record.update(final_metrics(self.history, self.params))
            record["replicas"] = replica_finals(self.history, self.cfg.seeds)
            # the rate of the last epoch (mean over the replicas): the plateau's reductions
            record["last_lr"] = float(np.mean(schedule.learning_rates(self.cfg, self.history[:-1])))
            record[VAL_CURVES] = val_curves(self.history)
            record[TEST_CURVES] = val_curves(self.history, "test")
        return record

    def finish(self, status: str) -> dict[str, Any]:
        record = self.record(status)
        self.writer.finish(record)
        return record


def train_and_evaluate(
    cfg: Config,
    writer: Writer,
    *,
    unused: Optional[dict[str, str]] = None,
    stop: Optional[StopFlag] = None,
    dataset=None,
    resolved=None,
    checkpointer=None,
    resume_meta: Optional[dict] = None,
    wandb_id: Optional[str] = None,
    extra_info: Optional[dict] = None,
) -> dict[str, Any]:
    """Train `cfg` (cfg.num_seeds replicas at once) and report through `writer`.
    `dataset` and `resolved` are the already loaded data and sized architecture (else
    made from cfg). With a `checkpointer` the run saves as it goes and, given the
    `resume_meta` of a checkpoint of the same config, continues from it. Returns the
    results record (also given to `writer.finish`)."""
    import jax

    # JAX: imported once the config has been checked
    from jaxcollective.model.sizing import resolve  # JAX: imported once the config has been checked
    from jaxcollective.train.trainer import Trainer

    resolved = resolved if resolved is not None else resolve(cfg)
    ds = dataset if dataset is not None else load(cfg)
    trainer = Trainer(resolved, ds)
    state = trainer.init()
    history: list[dict[str, np.ndarray]] = []
    if checkpointer is not None and resume_meta is not None:
        restored = checkpointer.restore(state, resume_meta)
        if restored is not None:
            state, history = restored
    log = RunLog(resolved, ds, writer, unused=unused, history=history, extra_info=extra_info)
    status = "finished"
    if stop is not None:  # a second signal writes what was measured, then exits at once
        stop.on_force = lambda: writer.finish(log.record("stopped"))
    try:
        while not schedule.ends(cfg, log.history):  # also a resumed run's early stop
            if stop is not None and stop.requested:
                status = stop.status  # "stopped" (a signal) or "pruned" (a local sweep)
                break
            epoch = log.epoch + 1
            if cfg.lr_plateau_patience:
                state = trainer.with_learning_rates(
                    state, schedule.learning_rates(cfg, log.history)
                )
            te = time.perf_counter()
            state, m = trainer.epoch(state, epoch)
            m = jax.device_get(m)  # the one host round-trip per epoch
            if not log.add(m, time.perf_counter() - te):
                status = "diverged"
                break
            if checkpointer is not None and checkpointer.due(epoch):
                checkpointer.save(epoch, state, log.history, wandb_id)
    except KeyboardInterrupt:
        status = "stopped"
    finally:
        if stop is not None:
            stop.on_force = None

    if checkpointer is not None:
        close_checkpoints(checkpointer, status, state, log.history, wandb_id, cfg.keep_checkpoint)
    return log.finish(status)


def close_checkpoints(checkpointer, status: str, state, history, wandb_id, keep: bool) -> None:
    """A stopped run saves where it is; a finished one removes its folder (or keeps its
    final state), as does a run a local sweep pruned (it will not be continued); a
    diverged one keeps its last finite checkpoint and says where."""
    last = len(history)
    if status == "stopped" and last:
        checkpointer.save(last, state, history, wandb_id, wait=True)
        checkpointer.close()
    elif status in ("finished", "pruned"):
        if keep and last:
            checkpointer.save(last, state, history, wandb_id, wait=True)
        checkpointer.finish(keep=keep)
    else:
        checkpointer.close()
        if status == "diverged" and checkpointer.dir.exists():
            print(f"the last finite state is kept in {checkpointer.dir}", file=sys.stderr)


def check_results_file(path: str) -> None:
    """The results file can be appended to (else the run's result would be lost at the
    end): its folder can be made, it is not a folder, and opening it to append works."""
    check_appendable(path, f"--results={path}", "--results=runs/results.jsonl")


def check_appendable(path: str, option: str, example: str) -> None:
    """`path` can be made or appended to (see check_results_file); else one line naming
    `option` with `example` of a good value."""
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            raise IsADirectoryError(21, "is a folder")
        blocking = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
        if blocking is not None:
            raise NotADirectoryError(20, f"{blocking} is a file, not a folder")
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            with open(p, "a"):
                pass
        else:  # a probe of this process's own: workers checking one file at once never race
            probe = p.with_name(f".{p.name}.probe-{os.getpid()}-{time.time_ns()}")
            with open(probe, "a"):
                pass
            probe.unlink(missing_ok=True)
    except OSError as err:
        raise ConfigError(
            f"{option} cannot be appended to ({err.strerror or err}); "
            f"pass a file in a writable folder, e.g. {example}"
        ) from None


def preflight(cfg: Config, replicas: str = "--num_seeds"):
    """Every check that needs no data and no compilation: devices and batch, the size
    of the training split, the baseline's sizing. Returns the resolved architecture.
    `replicas` is the option that set cfg.num_seeds (a sweep's --population), which a
    memory error advises lowering."""
    import jax

    from jaxcollective.model.sizing import resolve

    check_writable(cfg)
    nd = len(jax.devices())
    if cfg.batch_size % nd:
        raise ConfigError(
            f"invalid batch_size={cfg.batch_size}: expected a multiple of the "
            f"{nd} devices it is split across"
        )
    if cfg.batch_size // nd < 2:  # every model type has BatchNorm
        raise ConfigError(
            f"invalid batch_size={cfg.batch_size}: BatchNorm needs at least 2 "
            f"examples per device per batch ({nd} device(s)); use "
            f"--batch_size={2 * nd} or more"
        )
    n = train_split_size(cfg)
    need = cfg.batch_size * cfg.gradient_accumulation_steps
    if n is not None and n < need:
        raise ConfigError(
            f"{cfg.dataset}'s training split has {n} examples, fewer than one "
            f"update of batch_size * gradient_accumulation_steps = {need}; use a "
            "smaller --batch_size"
        )
    resolved = resolve(cfg)
    check_memory(resolved, jax.devices(), replicas)
    return resolved


def check_memory(resolved, devices, replicas: str = "--num_seeds") -> None:
    """Refuse, before any work, a run that cannot fit on its device (a raw out-of-memory
    error from XLA after W&B has started helps nobody)."""
    have = device_memory(devices[0])
    if have is None:
        return
    cfg = resolved.cfg
    need = memory_parts(resolved, len(devices))
    total = sum(need.values())
    if total > have:
        gb = lambda b: f"{b / 2**30:.1f} GB"  # noqa: E731
        raise ConfigError(
            f"{cfg.model_type} with {resolved.model_params:,} parameters x{cfg.num_seeds} "
            f"needs about {gb(total)} (parameters, gradients and optimizer state "
            f"{gb(need['state'])}, activations {gb(need['activations'])}, data "
            f"{gb(need['data'])}) but {devices[0].platform} has {gb(have)} free; use a smaller "
            f"--target_params, --batch_size or {replicas}"
        )


def memory_parts(resolved, n_devices: int = 1) -> dict[str, int]:
    """Bytes a run needs on each device: its state, activations (the batch is split
    across the devices) and data (sizing.memory_need at the dataset's sizes)."""
    from jaxcollective.model.sizing import memory_need

    need = memory_need(resolved, TRAIN_SIZES.get(resolved.cfg.data_like, 60_000), 10_000)
    need["activations"] //= n_devices
    return need


def device_memory(device) -> Optional[int]:
    """Bytes free for a run on `device`: the accelerator's allocator limit, or the host's
    available memory for the CPU; None where neither can be read."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend reports
        stats = {}
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    if device.platform != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def enable_compilation_cache() -> None:
    """Persistent XLA cache: repeated sweep runs of one architecture skip compiling.
    JAXCOLLECTIVE_CACHE_DIR sets the folder (an empty value turns it off) and
    JAXCOLLECTIVE_CACHE_MIN_S the shortest compile worth keeping (default 0.5 s)."""
    import jax

    path = os.environ.get("JAXCOLLECTIVE_CACHE_DIR", "~/.cache/jaxcollective/xla")
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
        jax.config.update(
            "jax_persistent_cache_min_compile_time_secs",
            float(os.environ.get("JAXCOLLECTIVE_CACHE_MIN_S", "0.5")),
        )


def setup_backend(cfg: Config) -> None:
    """Environment that must be set before JAX starts."""
    # Several agents can share a GPU: allocate on demand, not 75% up front (read when
    # the backend starts, which is later).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if cfg.device == "cpu":
        # jax reads JAX_PLATFORMS at import (the package imports it); this still works
        # because no backend has started yet.
        jax.config.update("jax_platforms", "cpu")
    enable_compilation_cache()

    if cfg.device in ("cuda", "gpu") and jax.default_backend() != "gpu":
        print(
            f"warning: --device={cfg.device} but no GPU is visible to JAX; running on "
            f"{jax.default_backend()}",
            file=sys.stderr,
        )
