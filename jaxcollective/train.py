"""The training engine: loss, one compiled epoch, compiled evaluation.

One call of `Engine.epoch` is one jit-compiled program that trains for an epoch
(`lax.scan` over optimizer updates, each update a scan over accumulated
micro-batches) and then evaluates validation and test in padded, masked batches, so
every example counts and nothing runs in Python per step. The data live on the device
as uint8 and are gathered, augmented and normalised inside the program.

Everything is written for one replica and `jax.vmap`ped over a leading replica axis
(K seeds trained together); with several devices the batch is sharded over a
`data` mesh axis (BatchNorm statistics and gradients are then reduced over the whole
batch, so the result equals one device up to float error).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .augment import AUGMENTATIONS, AugSpec, augment
from .config import Config, ConfigError, DatasetInfo
from .models import build_model
from .sizing import Resolved

STREAMS = ("params", "dropout", "augment", "shuffle")


def stream_keys(seed: int) -> dict[str, jax.Array]:
    """Named RNG streams derived from the config's one seed."""
    root = jax.random.key(seed)
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(STREAMS)}


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """SPEC section 5's optimizers (a zero weight decay adds no pass over the parameters)."""
    lr, wd = cfg.learning_rate, cfg.weight_decay
    decay = [optax.add_decayed_weights(wd)] if wd else []
    if cfg.optimizer == "adam":  # torch.optim.Adam: weight decay is L2 added to the gradient
        tx = optax.chain(*decay, optax.scale_by_adam(), optax.scale_by_learning_rate(lr))
    elif cfg.optimizer == "adamw":  # decoupled, as torch.optim.AdamW
        tx = optax.adamw(lr, weight_decay=wd)
    else:  # torch.optim.SGD(momentum=0.9): L2 in the gradient, then momentum
        tx = optax.chain(*decay, optax.sgd(lr, momentum=0.9))
    return tx


def diversity(h_NxBxD: jax.Array, temperature: float) -> jax.Array:
    """Mean over member pairs i < j of |batch mean of cos_sim(h_i, h_j)| / temperature."""
    n, b, _ = h_NxBxD.shape
    h = h_NxBxD.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(h * h, axis=-1, keepdims=True))
    unit = h / jnp.maximum(norm, 1e-8)  # a zeroed output gives 0, not NaN
    cos_NxN = jnp.einsum("ibd,jbd->ij", unit, unit) / b
    iu = np.triu_indices(n, 1)
    return jnp.mean(jnp.abs(cos_NxN[iu])) / temperature


class TrainState(NamedTuple):
    params: Any
    stats: Any
    opt_state: Any


class DeviceData(NamedTuple):
    """Arrays on the device, shared by all replicas: the official splits (uint8)."""
    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    test_idx_MxE: jax.Array  # the test split padded into M batches of E, with a mask
    test_mask_MxE: jax.Array


class ReplicaData(NamedTuple):
    """Per replica (leading axis K): its train/validation split of the training set."""
    train_idx_KxN: jax.Array
    val_idx_KxMxE: jax.Array
    val_mask_KxMxE: jax.Array


def _pad_batches(idx: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    m = max(1, math.ceil(len(idx) / batch))
    out = np.zeros(m * batch, np.int32)
    mask = np.zeros(m * batch, bool)
    out[:len(idx)], mask[:len(idx)] = idx, True
    return out.reshape(m, batch), mask.reshape(m, batch)


class Engine:
    def __init__(self, resolved: Resolved, info: DatasetInfo, *, devices=None,
                 build: Optional[Callable[[jax.Array], nnx.Module]] = None):
        """`build(key)` replaces the registry's model (for tests of the engine itself)."""
        self.resolved, self.cfg, self.info = resolved, resolved.cfg, info
        self._build_fn = build
        cfg = self.cfg
        self.devices = list(devices or jax.devices())
        self.mesh = Mesh(np.array(self.devices), ("data",))
        nd = len(self.devices)
        if cfg.batch_size % nd:
            raise ConfigError(f"invalid batch_size={cfg.batch_size}: expected a multiple of the "
                              f"{nd} devices it is split across")
        self.eval_batch = math.ceil(cfg.eval_batch_size / nd) * nd
        self.topk = cfg.extra_topk
        self.dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32
        self.aug: Optional[AugSpec] = None
        if cfg.use_augmentation:
            self.aug = AUGMENTATIONS[cfg.synthetic_like if cfg.dataset == "synthetic" else cfg.dataset]
        self.tx = make_optimizer(cfg)
        abstract = nnx.eval_shape(lambda: self._build(jax.random.key(0)))
        self.graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        self.mean = jnp.asarray(info.mean, jnp.float32)
        self.std = jnp.asarray(info.std, jnp.float32)
        self._epoch = jax.jit(jax.vmap(self._epoch_one, in_axes=(0, None, 0, 0)),
                              donate_argnums=(0,))
        self._init = jax.jit(jax.vmap(self._init_one))

    # ------------------------------------------------------------- building
    def _build(self, key):
        if self._build_fn is not None:
            return self._build_fn(key)
        r = self.resolved
        return build_model(r.cfg, r.hidden_dims, rngs=nnx.Rngs(params=key))

    def _init_one(self, key) -> TrainState:
        _, params, stats = nnx.split(self._build(key), nnx.Param, nnx.BatchStat)
        return TrainState(params, stats, self.tx.init(params))

    def init(self, seeds: list[int]) -> TrainState:
        keys = jnp.stack([stream_keys(s)["params"] for s in seeds])
        return jax.device_put(self._init(keys), NamedSharding(self.mesh, P()))

    def put_data(self, ds, seeds: list[int]) -> tuple[DeviceData, ReplicaData]:
        from .data import split_indices

        splits = [split_indices(len(ds.y_train), s, self.cfg.val_split) for s in seeds]
        vals = [_pad_batches(v, self.eval_batch) for _, v in splits]
        test_idx, test_mask = _pad_batches(np.arange(len(ds.y_test), dtype=np.int32), self.eval_batch)
        rep = NamedSharding(self.mesh, P())
        put = lambda a: jax.device_put(np.asarray(a), rep)  # noqa: E731
        shared = DeviceData(put(ds.x_train), put(ds.y_train), put(ds.x_test), put(ds.y_test),
                            put(test_idx), put(test_mask))
        replicas = ReplicaData(put(np.stack([t for t, _ in splits])),
                               put(np.stack([v for v, _ in vals])), put(np.stack([m for _, m in vals])))
        return shared, replicas

    # ------------------------------------------------------------ the model
    def _shard_batch(self, x):
        if len(self.devices) == 1:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P("data")))

    def prepare(self, x_u8_BxHxWxC, key: Optional[jax.Array]) -> jax.Array:
        """uint8 images -> normalised, flattened (C, H, W order, as torch) compute-dtype rows."""
        x = self._shard_batch(x_u8_BxHxWxC).astype(jnp.float32) / 255.0
        if key is not None and self.aug is not None:
            x = augment(x, key, self.aug)
        x = (x - self.mean) / self.std
        b = x.shape[0]
        return jnp.transpose(x, (0, 3, 1, 2)).reshape(b, -1).astype(self.dtype)

    def loss_fn(self, params, stats, x_BxD, y_B, key):
        model = nnx.merge(self.graphdef, params, stats, copy=True)
        logits, aux = model(x_BxD, train=True, key=key)
        logits = logits.astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()
        cfg, zero = self.cfg, jnp.zeros((), jnp.float32)
        div_e = div_a = zero
        if cfg.model_type == "collective":
            if cfg.use_expert_diversity and aux["experts"].shape[0] >= 2:
                div_e = cfg.diversity_lambda * diversity(aux["experts"], cfg.diversity_temperature)
            if cfg.use_analyst_diversity and aux["analysts"].shape[0] >= 2:
                div_a = cfg.diversity_lambda * diversity(aux["analysts"], cfg.diversity_temperature)
        loss = ce + div_e + div_a
        metrics = {"loss": loss, "loss_prediction": ce, "loss_diversity_expert": div_e,
                   "loss_diversity_analyst": div_a,
                   **{n: jnp.sum(c).astype(jnp.float32)
                      for n, c in self.correct(logits, y_B).items()}}
        return loss, (nnx.state(model, nnx.BatchStat), metrics)

    def correct(self, logits_BxC, y_B) -> dict[str, jax.Array]:
        """Per example: top-1 correct (`correct`) and, for each extra k, in the top k
        (`correct_topK`: fewer than k classes score strictly higher than the label)."""
        out = {"correct": jnp.argmax(logits_BxC, -1) == y_B}
        if self.topk:
            true = jnp.take_along_axis(logits_BxC, y_B[:, None], axis=-1)
            rank = jnp.sum(logits_BxC > true, axis=-1)
            out.update({f"correct_top{k}": rank < k for k in self.topk})
        return out

    # ------------------------------------------------------------- training
    def _update(self, state: TrainState, idx_KxB, keys, data: DeviceData):
        """One optimizer update from k micro-batches (gradients averaged)."""
        k = idx_KxB.shape[0]
        grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)

        def micro(carry, i):
            stats, g_acc, m_acc = carry
            idx = idx_KxB[i]
            k_aug = jax.random.fold_in(keys["augment"], i)
            k_drop = jax.random.fold_in(keys["dropout"], i)
            x = self.prepare(data.x_train[idx], k_aug if self.aug else None)
            (_, (stats, m)), g = grad_fn(state.params, stats, x, data.y_train[idx], k_drop)
            g_acc = jax.tree.map(lambda a, b: a + b / k, g_acc, g)
            return (stats, g_acc, jax.tree.map(jnp.add, m_acc, m)), None

        zeros_g = jax.tree.map(jnp.zeros_like, state.params)
        zeros_m = {n: jnp.zeros((), jnp.float32) for n in
                   ("loss", "loss_prediction", "loss_diversity_expert", "loss_diversity_analyst",
                    "correct", *(f"correct_top{k}" for k in self.topk))}
        carry = (state.stats, zeros_g, zeros_m)
        if k == 1:
            (stats, grads, m), _ = micro(carry, 0)
        else:
            (stats, grads, m), _ = jax.lax.scan(micro, carry, jnp.arange(k))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, stats, opt_state), m

    def scan_updates(self, state: TrainState, idx_UxKxB, keys, data: DeviceData):
        """U optimizer updates over the batches idx_UxKxB as one lax.scan (no Python per
        update); per-update keys are folded from this epoch's dropout and augment keys."""
        def body(state, inp):
            idx_KxB, u = inp
            step_keys = {n: jax.random.fold_in(keys[n], u) for n in ("dropout", "augment")}
            return self._update(state, idx_KxB, step_keys, data)

        return jax.lax.scan(body, state, (idx_UxKxB, jnp.arange(idx_UxKxB.shape[0])))

    def _train_one(self, state, data: DeviceData, train_idx_N, keys):
        cfg = self.cfg
        b, k = cfg.batch_size, cfg.gradient_accumulation_steps
        n = train_idx_N.shape[0]
        updates = n // (b * k)
        if updates < 1:
            raise ConfigError(f"{n} training examples are fewer than one update of "
                              f"batch_size * gradient_accumulation_steps = {b * k}")
        perm = jax.random.permutation(keys["shuffle"], train_idx_N)
        idx_UxKxB = perm[: updates * k * b].reshape(updates, k, b)
        state, m_U = self.scan_updates(state, idx_UxKxB, keys, data)
        examples = updates * k * b
        m = {name: v.sum() / (updates * k) for name, v in m_U.items()
             if not name.startswith("correct")}
        for name, v in m_U.items():
            if name.startswith("correct"):
                m[name.replace("correct", "accuracy")] = 100.0 * v.sum() / examples
        return state, m

    def _evaluate_one(self, params, stats, x_all, y_all, idx_MxE, mask_MxE):
        model = nnx.merge(self.graphdef, params, stats, copy=True)

        def body(acc, inp):
            idx, mask = inp
            logits, _ = model(self.prepare(x_all[idx], None), train=False)
            logits = logits.astype(jnp.float32)
            y = y_all[idx]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            sums = {"loss": jnp.sum(jnp.where(mask, ce, 0.0))}
            sums.update({n.replace("correct", "accuracy"): jnp.sum(c & mask).astype(jnp.float32)
                         for n, c in self.correct(logits, y).items()})
            return jax.tree.map(jnp.add, acc, sums), None

        names = ("loss", "accuracy", *(f"accuracy_top{k}" for k in self.topk))
        sums, _ = jax.lax.scan(body, {n: jnp.zeros(()) for n in names}, (idx_MxE, mask_MxE))
        count = jnp.maximum(mask_MxE.sum(), 1)
        return {n: (v if n == "loss" else 100.0 * v) / count for n, v in sums.items()}

    def _epoch_one(self, state, data: DeviceData, rep: ReplicaData, keys):
        state, m = self._train_one(state, data, rep.train_idx_KxN, keys)
        out = {f"train/{n}": v for n, v in m.items()}
        val = self._evaluate_one(state.params, state.stats, data.x_train, data.y_train,
                                 rep.val_idx_KxMxE, rep.val_mask_KxMxE)
        test = self._evaluate_one(state.params, state.stats, data.x_test, data.y_test,
                                  data.test_idx_MxE, data.test_mask_MxE)
        out.update({f"val/{n}": v for n, v in val.items()})
        out.update({f"test/{n}": v for n, v in test.items()})
        return state, out

    @staticmethod
    def epoch_keys(seeds: list[int], epoch: int) -> dict[str, jax.Array]:
        """Per replica, this epoch's shuffle, dropout and augment keys (leading axis K)."""
        per = [stream_keys(s) for s in seeds]
        return {n: jnp.stack([jax.random.fold_in(p[n], epoch) for p in per])
                for n in ("shuffle", "dropout", "augment")}

    def epoch(self, state: TrainState, data: DeviceData, rep: ReplicaData,
              keys: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        """Train one epoch and evaluate val and test, for all replicas at once."""
        return self._epoch(state, data, rep, keys)
