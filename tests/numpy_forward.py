"""A baseline MLP's training step written out in plain NumPy (float64), as docs/design.md
describes it, to check the JAX/Flax implementation against something that shares none
of its code: "The baselines" (per hidden width Linear -> BatchNorm -> ReLU -> Dropout(0.1);
then Linear to the classes), BatchNorm as PyTorch's in training mode (batch mean and
biased batch variance, eps 1e-5), cross-entropy averaged over the batch, and the updates
of docs/design.md's optimizers ("Training"): the first update of `adam` (weight decay
added to the gradient as L2, as torch.optim.Adam) and of `adamw` (weight decay decoupled
from the gradient, as torch.optim.AdamW), and any update of `sgd` (momentum 0.9, L2 in
the gradient, as torch.optim.SGD).

Only the dropout masks' random bits are the implementation's own choice; they are
rebuilt here from their documented recipe (layers.mask_bits: a JAX threefry draw seeds a
Weyl sequence over the element positions, finished by murmur3's fmix32), in NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

BN_EPS = 1e-5  # docs/design.md: "BatchNorm follows PyTorch: ... eps 1e-5"
DROPOUT = 0.1  # docs/design.md, "The baselines": Dropout(0.1)


def mlp_weights(params) -> dict:
    """The Flax params of models.MLP as float64 arrays: a list of hidden layers
    (W, b, gamma, beta) and the output layer (W, b)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(params))
    hidden = [
        {
            "W": p["dense"][i]["kernels"][0],
            "b": p["dense"][i]["bias"],
            "gamma": p["norm"][i]["scale"],
            "beta": p["norm"][i]["bias"],
        }
        for i in sorted(p["dense"])
    ]
    return {"hidden": hidden, "out": {"W": p["out"]["kernels"][0], "b": p["out"]["bias"]}}


def inputs(x_u8_BxHxWxCh, mean, std) -> np.ndarray:
    """uint8 images -> /255, normalised per channel, flattened in (C, H, W) order (torch's)."""
    x = np.asarray(x_u8_BxHxWxCh, np.float64) / 255.0
    x = (x - np.asarray(mean)) / np.asarray(std)
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


def keep_mask(key: jax.Array, shape, rate: float) -> np.ndarray:
    """Which elements dropout keeps: the recipe of layers.mask_bits, in NumPy uint32."""
    seed = np.asarray(jax.random.bits(key, (2,), jnp.uint32), np.uint32)
    with np.errstate(over="ignore"):
        h = np.arange(int(np.prod(shape)), dtype=np.uint32).reshape(shape)
        h = ((h + seed[0]) * np.uint32(0x9E3779B9)) ^ seed[1]
        h = (h ^ (h >> np.uint32(16))) * np.uint32(0x85EBCA6B)
        h = (h ^ (h >> np.uint32(13))) * np.uint32(0xC2B2AE35)
        h = h ^ (h >> np.uint32(16))
    return h >= np.uint32(round(rate * 2**32))


def loss_and_grads(
    w: dict, x_BxD: np.ndarray, y_B: np.ndarray, keep: list[np.ndarray], rate: float = DROPOUT
):
    """Training-mode cross-entropy of the MLP `w` on (x, y), dropout keeping `keep[i]` after
    hidden layer i, and its gradient by hand-written backpropagation (same structure as w)."""
    h, cache = x_BxD, []
    for layer, k in zip(w["hidden"], keep):
        z = h @ layer["W"] + layer["b"]
        mu, var = z.mean(0), z.var(0)  # batch statistics, biased variance
        inv = 1.0 / np.sqrt(var + BN_EPS)
        zn = (z - mu) * inv
        a = np.maximum(layer["gamma"] * zn + layer["beta"], 0.0)
        cache.append((h, zn, inv, a > 0, k))
        h = np.where(k, a / (1.0 - rate), 0.0)
    logits = h @ w["out"]["W"] + w["out"]["b"]
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    b = len(y_B)
    loss = -logp[np.arange(b), y_B].mean()

    dlogits = np.exp(logp)
    dlogits[np.arange(b), y_B] -= 1.0
    dlogits /= b
    grads = {"out": {"W": h.T @ dlogits, "b": dlogits.sum(0)}, "hidden": [None] * len(keep)}
    dh = dlogits @ w["out"]["W"].T
    for i in reversed(range(len(keep))):
        h_in, zn, inv, pos, k = cache[i]
        layer = w["hidden"][i]
        dy = np.where(k, dh / (1.0 - rate), 0.0) * pos
        dzn = dy * layer["gamma"]
        dz = inv * (dzn - dzn.mean(0) - zn * (dzn * zn).mean(0))
        grads["hidden"][i] = {
            "W": h_in.T @ dz,
            "b": dz.sum(0),
            "gamma": (dy * zn).sum(0),
            "beta": dy.sum(0),
        }
        dh = dz @ layer["W"].T
    return loss, grads


def adam_first_update(
    w: dict, grads: dict, lr: float, weight_decay: float, eps: float = 1e-8
) -> dict:
    """The weights after Adam's first step from zero moments (torch.optim.Adam and
    optax.adam defaults: after bias correction m = g and v = g^2), L2 in the gradient."""

    def one(p, g):
        g = g + weight_decay * p
        return p - lr * g / (np.abs(g) + eps)

    return jax.tree.map(one, w, grads)


def adamw_first_update(
    w: dict, grads: dict, lr: float, weight_decay: float, eps: float = 1e-8
) -> dict:
    """The weights after AdamW's first step from zero moments (torch.optim.AdamW and
    optax.adamw: after bias correction m = g and v = g^2), the weight decay decoupled: the
    gradient is not touched by it, the weights shrink by lr * weight_decay besides."""

    def one(p, g):
        return p - lr * (g / (np.abs(g) + eps) + weight_decay * p)

    return jax.tree.map(one, w, grads)


SGD_MOMENTUM = 0.9  # docs/design.md, "Training": "`sgd` uses momentum 0.9"


def sgd_momentum_update(
    w: dict, grads: dict, buf, lr: float, weight_decay: float, momentum: float = SGD_MOMENTUM
):
    """One step of torch.optim.SGD(momentum, weight_decay) (no dampening, not Nesterov):
    g' = g + weight_decay * p (L2 in the gradient); the momentum buffer is g' on the first
    step (`buf` None), else momentum * buf + g'; p -= lr * buf. Returns (weights, buf)."""
    g2 = jax.tree.map(lambda p, g: g + weight_decay * p, w, grads)
    buf = g2 if buf is None else jax.tree.map(lambda b, g: momentum * b + g, buf, g2)
    return jax.tree.map(lambda p, b: p - lr * b, w, buf), buf
