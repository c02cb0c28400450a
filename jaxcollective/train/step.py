"""Training: the loss, one optimizer update, one compiled epoch, evaluation.

`loss_fn` (cross-entropy plus the diversity penalty), `train_step` (one optimizer
update, accumulating micro-batches), `train_epoch` (a `lax.scan` of steps over the
shuffled training split), `evaluate` (padded, masked batches, so every example
counts) and `epoch_step` (train, then validation and test) are plain functions of a
`Step`, the static part of the computation. `train.trainer.Trainer` owns what one run
holds (the config, the devices, the data on the device, the seeds) and runs each epoch as
one jit-compiled program over replicas, with no Python per update. The data live
on the device as uint8 and are gathered, augmented and normalised inside the program.

Axis legend of batched tensor names (`x_BxD`):
  R replicas (seeds trained together)   U optimizer updates in an epoch
  A accumulated micro-batches per update  B batch   N members of a stack
  M evaluation batches   E evaluation batch size   D features   C classes
  H, W, Ch image height, width and channels (images are BxHxWxCh, uint8 on the device)
Functions written for one replica (then mapped over R) name no R axis. With several
devices the batch is sharded over a `data` mesh axis (BatchNorm statistics and
gradients are then reduced over the whole batch, so the result equals one device up
to float error).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcollective.data.augment import AUGMENTATIONS, AugSpec, augment
from jaxcollective.config import STEP_VALUES, Config, ConfigError, DatasetInfo
from jaxcollective.train.metrics import CORRECT, LOSS_PARTS, SPLITS, count_names, name, rate_name
from jaxcollective.model.networks import build_model
from jaxcollective.model.sizing import Resolved

# Named RNG streams, all derived from the config's one seed.
STREAMS = ("params", "dropout", "augment", "shuffle")
STEP_STREAMS = ("dropout", "augment")  # folded with the update's index inside an epoch


def stream_keys(seed: int) -> dict[str, jax.Array]:
    """Named RNG streams derived from one seed."""
    root = jax.random.key(seed)
    return {s: jax.random.fold_in(root, i) for i, s in enumerate(STREAMS)}


def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    """The optimizers of docs/design.md ("Training"). The learning rate and weight decay live in the
    optimizer state (optax.inject_hyperparams), not in the compiled program, so trials
    of a sweep that differ only in them share one compiled epoch."""
    has_decay = cfg.weight_decay > 0  # a zero weight decay adds no pass over the parameters

    def make(learning_rate, weight_decay):
        decay = [optax.add_decayed_weights(weight_decay)] if has_decay else []
        if cfg.optimizer == "adam":  # torch.optim.Adam: weight decay is L2 in the gradient
            return optax.chain(
                *decay, optax.scale_by_adam(), optax.scale_by_learning_rate(learning_rate)
            )
        if cfg.optimizer == "adamw":  # decoupled, as torch.optim.AdamW
            return optax.adamw(learning_rate, weight_decay=weight_decay)
        # torch.optim.SGD(momentum=0.9): L2 in the gradient, then momentum
        return optax.chain(*decay, optax.sgd(learning_rate, momentum=0.9))

    return optax.inject_hyperparams(make)(
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay
    )


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
    """Per replica (leading axis R): its train/validation split of the training set, and
    the numbers its step reads (config.STEP_VALUES: the diversity weight and temperature,
    the member-dropout rates), so that replicas (population members) may differ in them."""

    train_idx_RxN: jax.Array
    val_idx_RxMxE: jax.Array
    val_mask_RxMxE: jax.Array
    values: dict[str, jax.Array]  # name -> (R,) float32


def step_values(cfgs: list[Config]) -> dict[str, np.ndarray]:
    """The STEP_VALUES of each replica's config, as ReplicaData.values holds them."""
    return {k: np.array([getattr(c, k) for c in cfgs], np.float32) for k in STEP_VALUES}


@dataclass(frozen=True)
class Step:
    """What the compiled functions close over: config, model structure, optimizer,
    augmentation, normalisation, compute dtype, and the mesh (None on one device)."""

    cfg: Config
    graphdef: Any
    build: Callable[[jax.Array], nnx.Module]
    tx: optax.GradientTransformation
    aug: Optional[AugSpec]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: Any
    mesh: Optional[Mesh] = None

    @property
    def topk(self) -> tuple[int, ...]:
        return self.cfg.extra_topk


def make_step(
    resolved: Resolved,
    info: DatasetInfo,
    *,
    mesh: Optional[Mesh] = None,
    build: Optional[Callable[[jax.Array], nnx.Module]] = None,
) -> Step:
    """The Step of a resolved config; `build(key)` replaces the registry's model (tests)."""
    cfg = resolved.cfg
    if build is None:

        def build(key):
            return build_model(cfg, resolved.hidden_dims, rngs=nnx.Rngs(params=key))

    graphdef, _, _ = nnx.split(
        nnx.eval_shape(lambda: build(jax.random.key(0))), nnx.Param, nnx.BatchStat
    )
    aug = AUGMENTATIONS[cfg.data_like] if cfg.use_augmentation else None
    return Step(
        cfg,
        graphdef,
        build,
        make_optimizer(cfg),
        aug,
        info.mean,
        info.std,
        jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32,
        mesh,
    )


def init_state(step: Step, key: jax.Array) -> TrainState:
    """A fresh model's parameters, BatchNorm statistics and optimizer state."""
    _, params, stats = nnx.split(step.build(key), nnx.Param, nnx.BatchStat)
    return TrainState(params, stats, step.tx.init(params))


# ------------------------------------------------------------------- the loss
def diversity_penalty(h_NxBxD: jax.Array, temperature: float) -> jax.Array:
    """How alike the members' outputs are: mean over member pairs i < j of
    |batch mean of cos_sim(h_i, h_j)| / temperature (docs/design.md, "Loss")."""
    n, b, _ = h_NxBxD.shape
    h = h_NxBxD.astype(jnp.float32)
    # ||h|| floored at 1e-8 (as torch's cosine_similarity), the floor taken inside the
    # square root: a zeroed output (a member dropped by model-level dropout) then has a
    # zero gradient, not sqrt's infinite slope at 0 times 0 = NaN.
    norm = jnp.sqrt(jnp.maximum(jnp.sum(h * h, axis=-1, keepdims=True), 1e-16))
    unit = h / norm
    cos_NxN = jnp.einsum("ibd,jbd->ij", unit, unit) / b
    iu = np.triu_indices(n, 1)
    return jnp.mean(jnp.abs(cos_NxN[iu])) / temperature


def correct(logits_BxC, y_B, topk: tuple[int, ...]) -> dict[str, jax.Array]:
    """Per example: top-1 correct (`correct`) and, for each extra k, in the top k
    (`correct_topK`: fewer than k classes score strictly higher than the label)."""
    out = {CORRECT: jnp.argmax(logits_BxC, -1) == y_B}
    if topk:
        true_Bx1 = jnp.take_along_axis(logits_BxC, y_B[:, None], axis=-1)
        rank_B = jnp.sum(logits_BxC > true_Bx1, axis=-1)
        out.update(zip(count_names(topk)[1:], (rank_B < k for k in topk)))
    return out


def loss_fn(step: Step, params, stats, x_BxD, y_B, key, values=None):
    """Cross-entropy plus, for the collective, the weighted diversity penalty of its
    experts and analysts (docs/design.md, "Loss"). `values`: this replica's STEP_VALUES
    (ReplicaData.values; None: the config's). Returns (loss, (new stats, metrics))."""
    cfg, zero = step.cfg, jnp.zeros((), jnp.float32)
    v = values if values is not None else {k: getattr(cfg, k) for k in STEP_VALUES}
    model = nnx.merge(step.graphdef, params, stats, copy=True)
    extra = {}
    if cfg.model_type == "collective" and cfg.use_drop_models:
        extra["drop_rates"] = (v["drop_models_expert_rate"], v["drop_models_analyst_rate"])
    logits_BxC, aux = model(x_BxD, train=True, key=key, **extra)
    logits_BxC = logits_BxC.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_B).mean()
    div_e = div_a = zero
    if cfg.model_type == "collective":
        lam, temp = v["diversity_lambda"], v["diversity_temperature"]
        if cfg.use_expert_diversity and aux["experts"].shape[0] >= 2:
            div_e = lam * diversity_penalty(aux["experts"], temp)
        if cfg.use_analyst_diversity and aux["analysts"].shape[0] >= 2:
            div_a = lam * diversity_penalty(aux["analysts"], temp)
    loss = ce + div_e + div_a
    metrics = dict(zip(LOSS_PARTS, (loss, ce, div_e, div_a)))
    metrics.update(
        {n: jnp.sum(c).astype(jnp.float32) for n, c in correct(logits_BxC, y_B, step.topk).items()}
    )
    return loss, (nnx.state(model, nnx.BatchStat), metrics)


# ------------------------------------------------------------------ training
def prepare(step: Step, x_u8_BxHxWxCh, key: Optional[jax.Array]) -> jax.Array:
    """uint8 images -> normalised, flattened (C, H, W order, as torch) compute-dtype rows."""
    x = x_u8_BxHxWxCh
    if step.mesh is not None:
        x = jax.lax.with_sharding_constraint(x, NamedSharding(step.mesh, P("data")))
    x = x.astype(jnp.float32) / 255.0
    if key is not None and step.aug is not None:
        x = augment(x, key, step.aug)
    x = (x - jnp.asarray(step.mean, jnp.float32)) / jnp.asarray(step.std, jnp.float32)
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1).astype(step.dtype)


def train_step(step: Step, state: TrainState, idx_AxB, keys, data: DeviceData, values=None):
    """One optimizer update from A micro-batches of the training split (gradients
    averaged); `keys` holds this update's dropout and augment keys, `values` the
    replica's STEP_VALUES (None: the config's)."""
    a = idx_AxB.shape[0]
    grad_fn = jax.value_and_grad(partial(loss_fn, step, values=values), has_aux=True)

    def micro(carry, i):
        stats, g_acc, m_acc = carry
        idx_B = idx_AxB[i]
        k_aug = jax.random.fold_in(keys["augment"], i)
        k_drop = jax.random.fold_in(keys["dropout"], i)
        x_BxD = prepare(step, data.x_train[idx_B], k_aug if step.aug else None)
        (_, (stats, m)), g = grad_fn(state.params, stats, x_BxD, data.y_train[idx_B], k_drop)
        g_acc = jax.tree.map(lambda s, t: s + t / a, g_acc, g)
        return (stats, g_acc, jax.tree.map(jnp.add, m_acc, m)), None

    zeros_g = jax.tree.map(jnp.zeros_like, state.params)
    zeros_m = {n: jnp.zeros((), jnp.float32) for n in (*LOSS_PARTS, *count_names(step.topk))}
    carry = (state.stats, zeros_g, zeros_m)
    if a == 1:
        (stats, grads, m), _ = micro(carry, 0)
    else:
        (stats, grads, m), _ = jax.lax.scan(micro, carry, jnp.arange(a))
    updates, opt_state = step.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, stats, opt_state), m


def scan_steps(step: Step, state: TrainState, idx_UxAxB, keys, data: DeviceData, values=None):
    """U updates over the batches idx_UxAxB as one lax.scan (no Python per update);
    each update's keys are this epoch's dropout and augment keys folded with its index."""

    def body(state, inp):
        idx_AxB, u = inp
        return train_step(
            step,
            state,
            idx_AxB,
            {n: jax.random.fold_in(keys[n], u) for n in STEP_STREAMS},
            data,
            values,
        )

    return jax.lax.scan(body, state, (idx_UxAxB, jnp.arange(idx_UxAxB.shape[0])))


def train_epoch(step: Step, state: TrainState, data: DeviceData, train_idx_N, keys, values=None):
    """One epoch over a fresh shuffle of the training split (the last partial update
    is dropped); the metrics are means over the epoch, accuracies in percent."""
    b, a = step.cfg.batch_size, step.cfg.gradient_accumulation_steps
    n = train_idx_N.shape[0]
    u = n // (b * a)
    if u < 1:
        raise ConfigError(
            f"{n} training examples are fewer than one update of "
            f"batch_size * gradient_accumulation_steps = {b * a}"
        )
    perm_N = jax.random.permutation(keys["shuffle"], train_idx_N)
    state, m_U = scan_steps(step, state, perm_N[: u * a * b].reshape(u, a, b), keys, data, values)
    counts = count_names(step.topk)
    m = {n: v.sum() / (u * a) for n, v in m_U.items() if n not in counts}
    m.update({rate_name(n): 100.0 * m_U[n].sum() / (u * a * b) for n in counts})
    return state, m


def evaluate(step: Step, params, stats, x_all, y_all, idx_MxE, mask_MxE) -> dict[str, jax.Array]:
    """Loss and accuracies (percent) over the masked examples of M padded batches."""
    model = nnx.merge(step.graphdef, params, stats, copy=True)

    def body(acc, inp):
        idx_E, mask_E = inp
        logits_ExC, _ = model(prepare(step, x_all[idx_E], None), train=False)
        logits_ExC = logits_ExC.astype(jnp.float32)
        y_E = y_all[idx_E]
        ce_E = optax.softmax_cross_entropy_with_integer_labels(logits_ExC, y_E)
        sums = {"loss": jnp.sum(jnp.where(mask_E, ce_E, 0.0))}
        sums.update(
            {
                rate_name(n): jnp.sum(c & mask_E).astype(jnp.float32)
                for n, c in correct(logits_ExC, y_E, step.topk).items()
            }
        )
        return jax.tree.map(jnp.add, acc, sums), None

    names = ("loss", *map(rate_name, count_names(step.topk)))
    sums, _ = jax.lax.scan(body, {n: jnp.zeros(()) for n in names}, (idx_MxE, mask_MxE))
    count = jnp.maximum(mask_MxE.sum(), 1)
    return {n: (v if n == "loss" else 100.0 * v) / count for n, v in sums.items()}


def evaluate_splits(step: Step, state: TrainState, data: DeviceData, rep: ReplicaData):
    """One replica's validation and test metrics, (val, test)."""
    val = evaluate(
        step,
        state.params,
        state.stats,
        data.x_train,
        data.y_train,
        rep.val_idx_RxMxE,
        rep.val_mask_RxMxE,
    )
    test = evaluate(
        step,
        state.params,
        state.stats,
        data.x_test,
        data.y_test,
        data.test_idx_MxE,
        data.test_mask_MxE,
    )
    return val, test


def epoch_step(step: Step, state: TrainState, data: DeviceData, rep: ReplicaData, keys):
    """One replica's epoch: train, then evaluate validation and test."""
    state, m = train_epoch(step, state, data, rep.train_idx_RxN, keys, rep.values)
    val, test = evaluate_splits(step, state, data, rep)
    return state, {
        name(split, n): v for split, part in zip(SPLITS, (m, val, test)) for n, v in part.items()
    }
