"""Building blocks with an optional leading stack axis (N members computed as one).

Shapes: `x_BxD` for one module, `x_NxBxD` for a stack of N modules. A stacked layer
also accepts an unstacked `x_BxD` (all members read the same input) and returns
`y_NxBxD` from a single matmul.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx


def kaiming_normal(mode: str, stack_ndim: int):
    """PyTorch's kaiming_normal_ (ReLU gain, untruncated), fan over the non-stack axes."""
    return jax.nn.initializers.variance_scaling(
        2.0, mode, "normal", in_axis=-2, out_axis=-1,
        batch_axis=tuple(range(stack_ndim)))


class Dense(nnx.Module):
    def __init__(self, din: int, dout: int, *, stack: tuple[int, ...] = (),
                 fan: str = "fan_in", rngs: nnx.Rngs):
        init = kaiming_normal(fan, len(stack))
        self.kernel = nnx.Param(init(rngs.params(), stack + (din, dout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros(stack + (dout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        k = self.kernel[...].astype(dtype)
        if k.ndim == 3 and x.ndim == 2:
            # Shared input: one (B, in) x (in, N*out) matmul for all members.
            y = jnp.einsum("bi,nio->nbo", x, k)
        else:
            y = jnp.matmul(x, k)
        return y + self.bias[...].astype(dtype)[..., None, :]


class BatchNorm(nnx.Module):
    """torch.nn.BatchNorm1d semantics: momentum 0.1, eps 1e-5, biased variance to
    normalise, unbiased variance in the running estimate. Statistics in float32."""

    def __init__(self, dim: int, *, stack: tuple[int, ...] = (), momentum: float = 0.1,
                 eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones(stack + (dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros(stack + (dim,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros(stack + (dim,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(stack + (dim,), jnp.float32))
        self.momentum, self.eps = momentum, eps

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train:
            xf = x.astype(jnp.float32)
            mean = xf.mean(axis=-2)
            var = jnp.mean(jnp.square(xf - mean[..., None, :]), axis=-2)
            n = x.shape[-2]
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * mean
            self.var[...] = (1 - m) * self.var[...] + m * var * (n / max(n - 1, 1))
        else:
            mean, var = self.mean[...], self.var[...]
        mul = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        add = self.bias[...] - mean * mul
        return (x * mul[..., None, :].astype(x.dtype) + add[..., None, :].astype(x.dtype))


def dropout(x: jax.Array, rate: float, key: Optional[jax.Array], train: bool) -> jax.Array:
    """Inverted dropout, as torch.nn.Dropout."""
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def drop_members(h_NxBxD: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Zero each member's whole output with probability `rate`, keeping one random
    member when all would be dropped. No rescaling (as the original)."""
    n = h_NxBxD.shape[0]
    k_drop, k_keep = jax.random.split(key)
    keep_N = jax.random.uniform(k_drop, (n,)) >= rate
    forced_N = jnp.arange(n) == jax.random.randint(k_keep, (), 0, n)
    keep_N = jnp.where(keep_N.any(), keep_N, forced_N)
    return h_NxBxD * keep_N[:, None, None].astype(h_NxBxD.dtype)


class KeySeq:
    """Hands out fresh dropout keys in a fixed order (None when not training)."""

    def __init__(self, key: Optional[jax.Array]):
        self.key, self.i = key, 0

    def __call__(self) -> Optional[jax.Array]:
        if self.key is None:
            return None
        self.i += 1
        return jax.random.fold_in(self.key, self.i)
