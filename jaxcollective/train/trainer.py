"""A run's compiled epoch: the `Trainer` owns what one run holds (the resolved config, the
devices and mesh, the data on the device with each replica's split, the seeds and their
keys) and runs each epoch of `train.step` as one jit-compiled program over the replicas
(`over_replicas`); programs are kept per program key, so a sweep's next trial with the
same program neither traces nor compiles. Axis names as in `train.step`."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcollective.config import ConfigError, DatasetInfo
from jaxcollective.data.datasets import split_indices
from jaxcollective.model.sizing import Resolved
from jaxcollective.train.step import (
    STEP_STREAMS,
    DeviceData,
    ReplicaData,
    TrainState,
    epoch_step,
    init_state,
    make_step,
    scan_steps,
    step_values,
    stream_keys,
)

_PROGRAMS: dict[tuple, tuple] = {}  # program key -> (step, init, epoch): reused across runs


def over_replicas(fn: Callable, in_axes=0) -> Callable:
    """`fn`, written for one replica, applied over the leading replica axis R of the
    arguments whose `in_axes` is 0 (as `jax.vmap(fn, in_axes)`; outputs get the R axis).
    With R = 1, most runs, the axis is indexed away and restored instead of vmapped:
    the same computation, traced 3 to 4 times faster (vmap batches every scan body
    of the epoch, to a fixed point of the carry), and no batched variants of its ops."""
    batched = jax.vmap(fn, in_axes=in_axes)

    def apply(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        sizes = {
            leaf.shape[0] for a, ax in zip(args, axes) if ax == 0 for leaf in jax.tree.leaves(a)
        }
        if sizes != {1}:
            return batched(*args)
        one = [jax.tree.map(lambda v: v[0], a) if ax == 0 else a for a, ax in zip(args, axes)]
        return jax.tree.map(lambda v: v[None], fn(*one))

    return apply


def pad_batches(idx: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices padded to whole batches of `batch`, with a mask of the real ones."""
    m = max(1, math.ceil(len(idx) / batch))
    out = np.zeros(m * batch, np.int32)
    mask = np.zeros(m * batch, bool)
    out[: len(idx)], mask[: len(idx)] = idx, True
    return out.reshape(m, batch), mask.reshape(m, batch)


class Trainer:
    """What one run holds: the resolved config, the devices and mesh, the data on the
    device with each replica's split, the seeds and their keys, the compiled epoch.
    `init()` gives the replicas' first state; `epoch(state, epoch)` trains and evaluates
    one epoch of all replicas at once."""

    def __init__(
        self,
        resolved: Resolved,
        ds,
        *,
        devices=None,
        build: Optional[Callable[[jax.Array], nnx.Module]] = None,
    ):
        cfg = self.cfg = resolved.cfg
        self.resolved = resolved
        self.seeds = cfg.seeds
        self.devices = list(devices or jax.devices())
        nd = len(self.devices)
        if cfg.batch_size % nd:
            raise ConfigError(
                f"invalid batch_size={cfg.batch_size}: expected a multiple of the "
                f"{nd} devices it is split across"
            )
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.step, self._init, self._epoch = self._program(resolved, ds.info, build)
        eval_batch = math.ceil(cfg.eval_batch_size / nd) * nd
        put = lambda a: jax.device_put(np.asarray(a), self.replicated)  # noqa: E731
        splits = [split_indices(len(ds.y_train), s, cfg.val_split) for s in self.seeds]
        vals = [pad_batches(v, eval_batch) for _, v in splits]
        test_idx, test_mask = pad_batches(np.arange(len(ds.y_test), dtype=np.int32), eval_batch)
        self.data = DeviceData(
            put(ds.x_train),
            put(ds.y_train),
            put(ds.x_test),
            put(ds.y_test),
            put(test_idx),
            put(test_mask),
        )
        self.rep = ReplicaData(
            put(np.stack([t for t, _ in splits])),
            put(np.stack([v for v, _ in vals])),
            put(np.stack([m for _, m in vals])),
            jax.tree.map(put, step_values([cfg] * len(self.seeds))),
        )

    def _program(self, resolved: Resolved, info: DatasetInfo, build):
        """(step, init, epoch) compiled for this program; a later run (a sweep's next
        trial) whose program is the same reuses them: no tracing, no compiling."""
        cfg = resolved.cfg
        key = None
        if build is None:  # the config's declared PROGRAM keys (docs/design.md, Config keys)
            key = (cfg.program_key(), resolved.hidden_dims, tuple(map(str, self.devices)))
            if key in _PROGRAMS:
                return _PROGRAMS[key]
        nd = len(self.devices)
        step = make_step(resolved, info, mesh=self.mesh if nd > 1 else None, build=build)
        program = (
            step,
            jax.jit(over_replicas(partial(init_state, step))),
            jax.jit(
                over_replicas(partial(epoch_step, step), in_axes=(0, None, 0, 0)),
                donate_argnums=(0,),
            ),
        )
        if key is not None:
            _PROGRAMS[key] = program
        return program

    def init(self) -> TrainState:
        keys_R = jnp.stack([stream_keys(s)["params"] for s in self.seeds])
        state = self._init(keys_R)
        # this run's hyperparameters (a reused program's step was made for another run)
        r = len(self.seeds)
        hp = {
            k: jnp.full((r,), getattr(self.cfg, k), jnp.float32)
            for k in state.opt_state.hyperparams
        }
        state = state._replace(opt_state=state.opt_state._replace(hyperparams=hp))
        return jax.device_put(state, self.replicated)

    def with_learning_rates(self, state: TrainState, lrs) -> TrainState:
        """`state` with each replica's learning rate set (schedule.learning_rates)."""
        hp = dict(state.opt_state.hyperparams)
        hp["learning_rate"] = jax.device_put(np.asarray(lrs, np.float32), self.replicated)
        return state._replace(opt_state=state.opt_state._replace(hyperparams=hp))

    def epoch_keys(self, epoch: int) -> dict[str, jax.Array]:
        """Per replica, this epoch's shuffle, dropout and augment keys (leading axis R)."""
        per = [stream_keys(s) for s in self.seeds]
        return {
            n: jnp.stack([jax.random.fold_in(p[n], epoch) for p in per])
            for n in ("shuffle", *STEP_STREAMS)
        }

    def epoch(self, state: TrainState, epoch: int) -> tuple[TrainState, dict]:
        """Train epoch `epoch` and evaluate val and test, for all replicas at once."""
        return self._epoch(state, self.data, self.rep, self.epoch_keys(epoch))

    def steps_fn(self):
        """A compiled function (state, idx_UxAxB, keys, rep.values) -> (state, metrics_U)
        that runs U updates of every replica on fixed batches, as an epoch runs them
        (benchmarks)."""

        def run(state, idx_UxAxB, keys, values):
            return scan_steps(self.step, state, idx_UxAxB, keys, self.data, values)

        return jax.jit(over_replicas(run, in_axes=(0, None, 0, 0)), donate_argnums=(0,))
