"""Building blocks with an optional leading stack axis (N members computed as one).

Shapes: `x_BxD` for one module, `x_NxBxD` for a stack of N modules. A stacked layer
also accepts an unstacked `x_BxD` (all members read the same input) and returns
`y_NxBxD` from a single matmul.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def kaiming_normal(mode: str, in_axis: int, out_axis: int, batch_axis: tuple[int, ...]):
    """PyTorch's kaiming_normal_ (ReLU gain, untruncated normal), fans over the
    non-stack axes."""
    return jax.nn.initializers.variance_scaling(
        2.0, mode, "normal", in_axis=in_axis, out_axis=out_axis, batch_axis=batch_axis
    )


class ShapesOnly(nnx.Rngs):
    """Stands in for `nnx.Rngs` where only the parameters' shapes are wanted (counting
    them under `jax.eval_shape`, sizing.py): layers then skip their random
    initialisation and hold zeros, which saves most of the cost of tracing a model's
    construction (the initialisers' random bits). Never for a model that trains."""

    def __init__(self):
        super().__init__(0)


class Dense(nnx.Module):
    """A linear layer, or a stack of N (`stack=(N,)`).

    A stack that reads one shared input (`shared_input=True`) keeps its kernel as
    (in, N, out), so all members are one (B, in) x (in, N*out) GEMM, with no transpose.
    `in_parts` splits the input features into blocks that arrive as separate arrays
    (e.g. the analysts' [x, encoded]): each block has its own kernel rows, so no
    gradient is computed for a block that needs none (data) and nothing is sliced or
    concatenated per step. Initialisation and parameter count are those of one kernel.
    """

    def __init__(
        self,
        din: int,
        dout: int,
        *,
        stack: tuple[int, ...] = (),
        shared_input: bool = False,
        in_parts: Optional[tuple[int, ...]] = None,
        fan: str = "fan_in",
        rngs: nnx.Rngs,
    ):
        if stack and shared_input:
            shape, axes = (din, *stack, dout), (0, 2, (1,))
        else:
            shape, axes = (*stack, din, dout), (-2, -1, tuple(range(len(stack))))
        self.shared_input = bool(stack) and shared_input
        full = (
            jnp.zeros(shape, jnp.float32)
            if isinstance(rngs, ShapesOnly)
            else kaiming_normal(fan, *axes)(rngs.params(), shape, jnp.float32)
        )
        in_parts = tuple(in_parts or (din,))
        if sum(in_parts) != din or (len(in_parts) > 1 and not self.shared_input):
            raise ValueError(f"in_parts {in_parts} must split a shared input of width {din}")
        row = np.cumsum((0,) + in_parts)
        self.kernels = nnx.List(
            [nnx.Param(full[a:b] if self.shared_input else full) for a, b in zip(row, row[1:])]
        )
        self.bias = nnx.Param(jnp.zeros(stack + (dout,), jnp.float32))

    def member_kernel(self, i: int) -> jax.Array:
        """Member i's (in, out) kernel."""
        k = jnp.concatenate([p[...] for p in self.kernels], axis=0)
        return k[:, i] if self.shared_input else (k[i] if k.ndim == 3 else k)

    def __call__(self, x) -> jax.Array:
        """`x` is x_BxD, x_NxBxD, or for `in_parts` a tuple of x_BxD_i."""
        parts = x if isinstance(x, tuple) else (x,)
        if len(parts) != len(self.kernels):
            raise ValueError(f"expected {len(self.kernels)} input blocks, got {len(parts)}")
        dtype = parts[0].dtype
        if self.shared_input:
            y_BxNO = None
            for p, k in zip(parts, self.kernels):
                din, n, dout = k.shape
                term = p @ k[...].astype(dtype).reshape(din, n * dout)
                y_BxNO = term if y_BxNO is None else y_BxNO + term
            y = jnp.transpose(y_BxNO.reshape(-1, n, dout), (1, 0, 2))
        else:
            y = jnp.matmul(parts[0], self.kernels[0][...].astype(dtype))
        return y + self.bias[...].astype(dtype)[..., None, :]


class BatchNorm(nnx.Module):
    """torch.nn.BatchNorm1d semantics: momentum 0.1, eps 1e-5, biased variance to
    normalise, unbiased variance in the running estimate. Statistics in float32."""

    def __init__(
        self, dim: int, *, stack: tuple[int, ...] = (), momentum: float = 0.1, eps: float = 1e-5
    ):
        self.scale = nnx.Param(jnp.ones(stack + (dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros(stack + (dim,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros(stack + (dim,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(stack + (dim,), jnp.float32))
        self.momentum, self.eps = momentum, eps

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train:
            xf = x.astype(jnp.float32)
            # One pass over shifted data: E[d^2] - E[d]^2 with d = x - x_0 (the batch's
            # first row, a constant to the gradient). The unshifted E[x^2] - E[x]^2
            # cancels catastrophically for a feature whose spread is small against its
            # mean; its rounding then differs between programs (vmapped or not, another
            # CPU's vector width) and rsqrt(var + eps) amplified it ~400x in one update.
            # Shifted by a sample, the error is float-level relative to the variance, and
            # both reductions still fuse into one pass (a two-pass variance costs ~13%).
            shift = jax.lax.stop_gradient(xf[..., :1, :])
            d = xf - shift
            mean_d = d.mean(axis=-2)
            var = jnp.maximum(jnp.mean(jnp.square(d), axis=-2) - jnp.square(mean_d), 0.0)
            mean = mean_d + shift[..., 0, :]
            n = x.shape[-2]
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * mean
            self.var[...] = (1 - m) * self.var[...] + m * var * (n / max(n - 1, 1))
        else:
            mean, var = self.mean[...], self.var[...]
        mul = jax.lax.rsqrt(var + self.eps) * self.scale[...]
        add = self.bias[...] - mean * mul
        return x * mul[..., None, :].astype(x.dtype) + add[..., None, :].astype(x.dtype)


def mask_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 per element, for dropout masks: one threefry draw seeds a Weyl
    sequence, finished by murmur3's fmix32 (about 6 integer ops per element instead of
    threefry's ~50; the random numbers were a sixth of a collective's step on a CPU).
    A pure function of (key, position): deterministic, and the same under vmap."""
    seed = jax.random.bits(key, (2,), jnp.uint32)
    h = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    h = (h + seed[0]) * jnp.uint32(0x9E3779B9) ^ seed[1]
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def dropout(x: jax.Array, rate: float, key: Optional[jax.Array], train: bool) -> jax.Array:
    """Inverted dropout, as torch.nn.Dropout (keep probability exact to 2^-32)."""
    if not train or rate == 0.0:
        return x
    keep = mask_bits(key, x.shape) >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1))
    return jnp.where(keep, x * (1.0 / (1.0 - rate)), jnp.zeros_like(x))


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
