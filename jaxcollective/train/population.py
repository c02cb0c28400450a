"""Population trials: K runs whose compiled program is the same, trained together as
the K replicas of one vmapped epoch (docs/design.md, "Population trials").

Members may differ in the config's VALUE keys (seed, learning rate, weight decay, the
diversity weight and temperature, the member-dropout rates): each member's split,
initialisation, shuffles and dropout come from its own seed, its learning rate and
weight decay sit in its row of the optimizer state, the other numbers its step reads
in its row of ReplicaData.values. Each member keeps its own
epoch counter, so a slot whose run ended takes a new run at once, from its own fresh
initialisation, without compiling anything: the replica axis keeps its length K.
Member i after its epoch e equals a sequential run of its config after epoch e, to
float noise (tests/test_population.py).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcollective.config import STEP_VALUES, Config, ConfigError
from jaxcollective.data.datasets import split_indices
from jaxcollective.model.sizing import Resolved
from jaxcollective.train.step import STEP_STREAMS, ReplicaData, TrainState, init_state, stream_keys
from jaxcollective.train.trainer import Trainer, pad_batches


@partial(jax.jit, donate_argnums=(0,))
def _set_row(tree, i, row):
    return jax.tree.map(lambda a, b: a.at[i].set(b), tree, row)


@partial(jax.jit, static_argnums=(2,))
def _get_row(tree, i, keep_axis: bool):
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=keep_axis), tree)


@partial(jax.jit, static_argnums=(1,))
def _stack(tree, k: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (k, *a.shape)), tree)


def holding(n: int) -> int:
    """The smallest power of 2 that holds n members (the sizes populations shrink to)."""
    k = 1
    while k < n:
        k *= 2
    return k


_INIT_ONE: dict[int, tuple] = {}  # id(step) -> (step, compiled init of one member)


def _init_one(step):
    """The compiled init of one member, one per program (steps are reused, see
    train.Trainer._program), so that no population compiles it again."""
    if id(step) not in _INIT_ONE:
        _INIT_ONE[id(step)] = (step, jax.jit(partial(init_state, step)))
    return _INIT_ONE[id(step)][1]


class Population:
    """K slots over one compiled program. `assign(slot, cfg)` starts run `cfg` in a slot
    (a fresh state from cfg.seed), `epoch()` trains every slot one epoch (its own next
    epoch) and returns the metrics per slot; `release(slot)` empties one."""

    def __init__(self, resolved: Resolved, ds, k: int):
        if k < 1:
            raise ConfigError(f"--population={k}: expected 1 or more")
        cfg = resolved.cfg
        # members are configs as given (a collective sized to a budget: before sizing)
        self.program = resolved.config.replace(num_seeds=1).program_key()
        self.k, self.ds, self.resolved = k, ds, resolved
        # The program of K replicas; the seeds are placeholders until slots are assigned.
        self.trainer = Trainer(replace(resolved, cfg=cfg.replace(num_seeds=k)), ds)
        self._init_one = _init_one(self.trainer.step)
        # K copies of one fresh state (not the vmapped init: one compile fewer per K)
        one = self._init_one(stream_keys(cfg.seed)["params"])
        self.state = jax.device_put(_stack(one, k), self.trainer.replicated)
        self.configs: list[Optional[Config]] = [None] * k
        self.epochs = [0] * k  # epochs each slot's run has completed
        rep = self.trainer.rep
        self._host = [np.array(a) for a in rep[:3]]  # each slot's split, on the host
        self._values = {k: np.array(v) for k, v in rep.values.items()}
        self._rows_changed = False
        self._lr = np.full(k, cfg.learning_rate, np.float32)  # each slot's learning rate
        self._lr_changed = False

    @property
    def free(self) -> list[int]:
        return [i for i, c in enumerate(self.configs) if c is None]

    def fits(self, cfg: Config) -> bool:
        """Whether run `cfg` can be a member: the same program, one replica."""
        return cfg.num_seeds == 1 and cfg.program_key() == self.program

    def assign(
        self, slot: int, cfg: Config, state: Optional[TrainState] = None, epoch: int = 0
    ) -> None:
        """Run `cfg` in `slot`: a fresh state from its seed, or `state` (one member's,
        no replica axis) after `epoch` epochs (a resumed run)."""
        if not self.fits(cfg):
            raise ConfigError(
                f"a population member must share the population's program: "
                f"{cfg.program_key()} is not {self.program}"
            )
        if state is None:
            state = self._init_one(stream_keys(cfg.seed)["params"])
        hp = {k: jnp.asarray(getattr(cfg, k), jnp.float32) for k in state.opt_state.hyperparams}
        state = state._replace(opt_state=state.opt_state._replace(hyperparams=hp))
        self.state = _set_row(self.state, jnp.int32(slot), state)
        train, val = split_indices(len(self.ds.y_train), cfg.seed, cfg.val_split)
        val_idx, val_mask = pad_batches(val, self._host[1].shape[-1])
        for host, row in zip(self._host, (train, val_idx, val_mask)):
            host[slot] = row
        for k in STEP_VALUES:
            self._values[k][slot] = getattr(cfg, k)
        self._rows_changed = True  # sent to the device once, before the next epoch
        self._lr[slot] = cfg.learning_rate  # as _set_row just wrote it
        self.configs[slot], self.epochs[slot] = cfg, epoch

    def set_learning_rate(self, slot: int, lr: float) -> None:
        """The learning rate of the slot's next epochs (a plateau reduction); sent to the
        device with the other slots', once, before the next epoch."""
        if np.float32(lr) != self._lr[slot]:
            self._lr[slot] = lr
            self._lr_changed = True

    def smaller(self, slots: list[int]) -> tuple["Population", list[int]]:
        """A population of the smallest power of 2 that holds `slots` (one compile),
        with those slots' runs moved into it, state and epoch counter as they are.
        Returns it and each moved slot's new index."""
        pop = Population(self.resolved, self.ds, holding(len(slots)))
        for j, i in enumerate(slots):
            pop.assign(j, self.configs[i], state=self.member_state(i), epoch=self.epochs[i])
            pop.set_learning_rate(j, self._lr[i])  # a plateau-reduced rate moves with it
        return pop, list(range(len(slots)))

    def release(self, slot: int) -> None:
        """An empty slot keeps training its last run's state (its results are not read)
        until a new run is assigned: the program's shape never changes."""
        self.configs[slot] = None

    def member_state(self, slot: int, keep_axis: bool = False) -> TrainState:
        """A slot's state; with `keep_axis`, as a one-replica run holds it (its checkpoint
        is then a sequential run's, and either resumes the other)."""
        return _get_row(self.state, jnp.int32(slot), keep_axis)  # one compiled gather

    def epoch_keys(self) -> dict[str, jax.Array]:
        """Each slot's keys for its own next epoch, as a sequential run of its config."""
        per = [stream_keys(c.seed if c is not None else 0) for c in self.configs]
        return {
            n: jnp.stack([jax.random.fold_in(p[n], e + 1) for p, e in zip(per, self.epochs)])
            for n in ("shuffle", *STEP_STREAMS)
        }

    def epoch(self) -> list[Optional[dict[str, np.ndarray]]]:
        """Every slot trains its next epoch; per slot its metrics (None if empty)."""
        t = self.trainer
        if self._rows_changed:  # the slots assigned since the last epoch, in one transfer
            put = partial(jax.device_put, device=t.replicated)
            t.rep = ReplicaData(*map(put, self._host), jax.tree.map(put, self._values))
            self._rows_changed = False
        if self._lr_changed:
            self.state = t.with_learning_rates(self.state, self._lr)
            self._lr_changed = False
        self.state, m = t._epoch(self.state, t.data, t.rep, self.epoch_keys())
        m = jax.device_get(m)  # the one host round-trip per epoch
        out = []
        for i, cfg in enumerate(self.configs):
            if cfg is None:
                out.append(None)
                continue
            self.epochs[i] += 1
            out.append({k: v[i : i + 1] for k, v in m.items()})  # a run of one replica
        return out
