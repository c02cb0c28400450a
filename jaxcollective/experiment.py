"""`train_and_evaluate(cfg, writer)`: one run, from config to results.

Metrics are fetched from the device once per epoch. Every epoch row also carries the
`final/*` metrics as they would be if the run ended there, so a run stopped at any
point (SIGTERM from Hyperband, Ctrl-C) reports its last completed epoch as final,
and a sweep's early-termination sees its metric in every history row.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from .config import Config
from .metrics import final_metrics, history_row, replica_finals
from .signals import StopFlag
from .writers import Writer

def run_info(resolved, ds, unused: dict[str, str]) -> dict[str, Any]:
    """What a run's record and W&B config start with: the architecture, the data, the
    seeds, the keys it does not read, the resolved config."""
    from .sizing import describe_resolved
    cfg = resolved.cfg
    info = describe_resolved(resolved)
    info.update(dataset=cfg.dataset, data_name=ds.name, synthetic=ds.synthetic,
                num_seeds=cfg.num_seeds, seeds=cfg.seeds, unused_keys=unused,
                config=cfg.to_dict())
    return info


def train_and_evaluate(cfg: Config, writer: Writer, *, unused: Optional[dict[str, str]] = None,
                       stop: Optional[StopFlag] = None, dataset=None, resolved=None,
                       checkpointer=None, resume_meta: Optional[dict] = None,
                       wandb_id: Optional[str] = None,
                       extra_info: Optional[dict] = None) -> dict[str, Any]:
    """Train `cfg` (cfg.num_seeds replicas at once) and report through `writer`.
    `dataset` and `resolved` are the already loaded data and sized architecture (else
    made from cfg). With a `checkpointer` the run saves as it goes and, given the
    `resume_meta` of a checkpoint of the same config, continues from it. Returns the
    results record (also given to `writer.finish`)."""
    import jax

    from .data import load
    from .sizing import resolve
    from .train import Trainer

    t0 = time.perf_counter()
    resolved = resolved if resolved is not None else resolve(cfg)
    ds = dataset if dataset is not None else load(cfg)
    seeds = cfg.seeds
    trainer = Trainer(resolved, ds)
    state = trainer.init()
    history: list[dict[str, np.ndarray]] = []
    if checkpointer is not None and resume_meta is not None:
        restored = checkpointer.restore(state, resume_meta)
        if restored is not None:
            state, history = restored
    resumed_from = len(history)
    info = run_info(resolved, ds, unused or {})
    info["resumed_from_epoch"] = resumed_from
    info.update(extra_info or {})
    writer.start(info)

    status = "finished"
    params = resolved.model_params

    def record_of(status: str) -> dict[str, Any]:
        record: dict[str, Any] = dict(info)
        record.update(status=status, diverged=status == "diverged",
                      epochs_completed=len(history), resumed_from_epoch=resumed_from,
                      wall_s=time.perf_counter() - t0)
        if history:
            record.update(final_metrics(history, params))
            record["replicas"] = replica_finals(history, seeds)
        return record

    if stop is not None:  # a second signal writes what was measured, then exits at once
        stop.on_force = lambda: writer.finish(record_of("stopped"))
    try:
        for epoch in range(resumed_from + 1, cfg.epochs + 1):
            if stop is not None and stop.requested:
                status = stop.status  # "stopped" (a signal) or "pruned" (a local sweep)
                break
            te = time.perf_counter()
            state, m = trainer.epoch(state, epoch)
            m = jax.device_get(m)  # the one host round-trip per epoch
            if not all(np.all(np.isfinite(m[k])) for k in ("train/loss", "val/loss", "test/loss")):
                status = "diverged"
                break
            history.append(m)
            row = history_row(epoch, history, cfg, params)
            row["time/epoch_s"] = time.perf_counter() - te
            writer.log(row)
            if checkpointer is not None and checkpointer.due(epoch):
                checkpointer.save(epoch, state, history, wandb_id)
    except KeyboardInterrupt:
        status = "stopped"
    finally:
        if stop is not None:
            stop.on_force = None

    if checkpointer is not None:
        close_checkpoints(checkpointer, status, state, history, wandb_id, cfg.keep_checkpoint)
    record = record_of(status)
    writer.finish(record)
    return record


def close_checkpoints(checkpointer, status: str, state, history, wandb_id, keep: bool) -> None:
    """A stopped run saves where it is; a finished one removes its folder (or keeps its
    final state), as does a run a local sweep pruned (it will not be continued); a
    diverged one keeps its last finite checkpoint and says where."""
    import sys

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
