"""Flax NNX modules: the collective and the baselines.

See docs/design.md, "The collective", and docs/design.md, "The baselines".

Every model is called as `model(x_BxD, train=..., key=...)` and returns
`(logits_BxC, aux)`; for the collective `aux` holds the expert and analyst outputs
(`experts_NxBxD`, `analysts_NxBxD`) that the diversity loss reads. `key` feeds
dropout and model-level dropout and is only used when `train` is true.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcollective.config import Config, collective_dims
from jaxcollective.model.layers import BatchNorm, Dense, KeySeq, drop_members, dropout

# ------------------------------------------------------------------ members


def member_widths(base: Sequence[int], variant: int) -> list[int]:
    """The four width variants (docs/design.md, "The collective") of a member's hidden layers."""
    h = list(base)
    if variant == 0:
        return h
    if variant == 1:
        return [int(w * 1.25) for w in h]
    if variant == 2:
        return [h[0], (h[0] + h[-1]) // 2, h[-1]]
    if variant == 3:
        return [int(w * 0.8) for w in h]
    raise ValueError(f"variant {variant}")


class MemberStack(nnx.Module):
    """N identical member MLPs as one batched computation:
    per hidden width Linear -> BatchNorm -> ReLU -> Dropout (none after the last),
    then a Linear projection. Input x_BxD (shared) -> output h_NxBxO."""

    def __init__(
        self,
        n: int,
        din: int,
        hidden: Sequence[int],
        dout: int,
        *,
        rate: float,
        rngs: nnx.Rngs,
        in_parts: Optional[tuple[int, ...]] = None,
    ):
        stack = (n,)
        dims = [din, *hidden]
        self.dense = nnx.List(
            [
                Dense(
                    a,
                    b,
                    stack=stack,
                    shared_input=(i == 0),
                    in_parts=in_parts if i == 0 else None,
                    rngs=rngs,
                )
                for i, (a, b) in enumerate(zip(dims, dims[1:]))
            ]
        )
        self.norm = nnx.List([BatchNorm(b, stack=stack) for b in hidden])
        self.proj = Dense(dims[-1], dout, stack=stack, rngs=rngs)
        self.rate = rate

    def __call__(self, x_BxD, train, keys: KeySeq):
        h = x_BxD
        last = len(self.dense) - 1
        for i, (dense, norm) in enumerate(zip(self.dense, self.norm)):
            h = jax.nn.relu(norm(dense(h), train))
            if i < last:
                h = dropout(h, self.rate, keys(), train)
        return self.proj(h)


class MemberGroups(nnx.Module):
    """A collective's experts (or analysts): members grouped by width variant, each
    group one MemberStack; outputs returned in member order as h_NxBxO."""

    def __init__(
        self,
        n: int,
        din: int,
        hidden: Sequence[int],
        dout: int,
        *,
        vary: bool,
        rate: float,
        rngs: nnx.Rngs,
        in_parts: Optional[tuple[int, ...]] = None,
    ):
        variants = [i % 4 if (vary and n >= 2) else 0 for i in range(n)]
        kinds = sorted(set(variants))
        self.stacks = nnx.List(
            [
                MemberStack(
                    variants.count(v),
                    din,
                    member_widths(hidden, v),
                    dout,
                    rate=rate,
                    rngs=rngs,
                    in_parts=in_parts,
                )
                for v in kinds
            ]
        )
        order = [i for v in kinds for i in range(n) if variants[i] == v]
        # Static permutation from grouped order back to member order (identity if one group).
        self.perm = None if len(kinds) == 1 else tuple(int(i) for i in np.argsort(order))

    def __call__(self, x_BxD, train, keys: KeySeq):
        outs = [stack(x_BxD, train, keys) for stack in self.stacks]
        h_NxBxO = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=0)
        if self.perm is not None:
            h_NxBxO = h_NxBxO[np.asarray(self.perm)]
        return h_NxBxO


def flatten_members(h_NxBxO):
    """Concatenate member outputs along features, member 0 first: (B, N*O)."""
    n, b, o = h_NxBxO.shape
    return jnp.transpose(h_NxBxO, (1, 0, 2)).reshape(b, n * o)


class Encoder(nnx.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear, hidden int(sqrt(in * out))."""

    def __init__(self, din: int, dout: int, *, rate: float, rngs: nnx.Rngs):
        hid = int(math.sqrt(din * dout))
        self.fc1, self.norm, self.fc2 = (
            Dense(din, hid, rngs=rngs),
            BatchNorm(hid),
            Dense(hid, dout, rngs=rngs),
        )
        self.rate = rate

    def __call__(self, x, train, keys: KeySeq):
        h = jax.nn.relu(self.norm(self.fc1(x), train))
        return self.fc2(dropout(h, self.rate, keys(), train))


class SimpleHead(nnx.Module):
    """Linear -> ReLU -> Dropout(0.2) -> Linear(classes); no BatchNorm."""

    def __init__(self, din: int, scale: float, classes: int, *, rngs: nnx.Rngs):
        hid = max(int(din * scale), 2 * classes)
        self.fc1, self.fc2 = Dense(din, hid, rngs=rngs), Dense(hid, classes, rngs=rngs)

    def __call__(self, x, train, keys: KeySeq):
        return self.fc2(dropout(jax.nn.relu(self.fc1(x)), 0.2, keys(), train))


class EncoderHead(nnx.Module):
    """An encoder (Dropout 0.2) to max(int(in * c_collective), 2C), then a SimpleHead."""

    def __init__(
        self, din: int, c_collective: float, scale: float, classes: int, *, rngs: nnx.Rngs
    ):
        enc = max(int(din * c_collective), 2 * classes)
        self.encoder = Encoder(din, enc, rate=0.2, rngs=rngs)
        self.mlp = SimpleHead(enc, scale, classes, rngs=rngs)

    def __call__(self, x, train, keys: KeySeq):
        return self.mlp(self.encoder(x, train, keys), train, keys)


class Collective(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        d = collective_dims(cfg)
        self.experts = MemberGroups(
            d.n_experts,
            d.input_dim,
            cfg.expert_hidden,
            cfg.expert_output,
            vary=cfg.vary_expert_architectures,
            rate=0.2,
            rngs=rngs,
        )
        self.expert_encoder = Encoder(
            d.n_experts * cfg.expert_output, d.expert_encoder_output_dim, rate=0.1, rngs=rngs
        )
        self.analysts = MemberGroups(
            d.n_analysts,
            d.analyst_input_dim,
            cfg.analyst_hidden,
            cfg.analyst_output,
            vary=cfg.vary_analyst_architectures,
            rate=0.2,
            rngs=rngs,
            in_parts=(d.input_dim, d.expert_encoder_output_dim),
        )
        self.analyst_encoder = Encoder(
            d.n_analysts * cfg.analyst_output, d.collective_input_dim, rate=0.1, rngs=rngs
        )
        if cfg.collective_version == "simple_mlp":
            self.head = SimpleHead(
                d.collective_input_dim, cfg.collective_hidden_scale, d.num_classes, rngs=rngs
            )
        else:
            self.head = EncoderHead(
                d.collective_input_dim,
                cfg.c_collective,
                cfg.collective_hidden_scale,
                d.num_classes,
                rngs=rngs,
            )
        self.drop_rates = (
            (cfg.drop_models_expert_rate, cfg.drop_models_analyst_rate)
            if cfg.use_drop_models
            else None
        )

    def __call__(
        self, x_BxD, *, train: bool = False, key: Optional[jax.Array] = None, drop_rates=None
    ):
        """`drop_rates` (expert, analyst) replace the config's (they may be traced values:
        population members differ in them); whether members are dropped is the config's."""
        keys = KeySeq(key if train else None)
        rates = drop_rates if drop_rates is not None else self.drop_rates
        experts_NxBxO = self.experts(x_BxD, train, keys)
        if train and self.drop_rates:
            experts_NxBxO = drop_members(experts_NxBxO, rates[0], keys())
        encoded_BxE = self.expert_encoder(flatten_members(experts_NxBxO), train, keys)
        # The analysts read concat[x, encoded]; passed as parts, so the first layer
        # computes no gradient for x (data).
        analysts_NxBxO = self.analysts((x_BxD, encoded_BxE.astype(x_BxD.dtype)), train, keys)
        if train and self.drop_rates:
            analysts_NxBxO = drop_members(analysts_NxBxO, rates[1], keys())
        collective_BxD = self.analyst_encoder(flatten_members(analysts_NxBxO), train, keys)
        logits = self.head(collective_BxD, train, keys)
        return logits, {"experts": experts_NxBxO, "analysts": analysts_NxBxO}


# ---------------------------------------------------------------- baselines


class MLP(nnx.Module):
    """Per hidden width Linear -> BatchNorm -> ReLU -> Dropout(0.1); then Linear(classes)."""

    def __init__(
        self, din: int, hidden: Sequence[int], classes: int, *, rngs: nnx.Rngs, rate: float = 0.1
    ):
        dims = [din, *hidden]
        self.dense = nnx.List(
            [Dense(a, b, fan="fan_out", rngs=rngs) for a, b in zip(dims, dims[1:])]
        )
        self.norm = nnx.List([BatchNorm(b) for b in hidden])
        self.out = Dense(dims[-1], classes, fan="fan_out", rngs=rngs)
        self.rate = rate

    def __call__(self, x_BxD, *, train: bool = False, key: Optional[jax.Array] = None):
        keys = KeySeq(key if train else None)
        h = x_BxD
        for dense, norm in zip(self.dense, self.norm):
            h = dropout(jax.nn.relu(norm(dense(h), train)), self.rate, keys(), train)
        return self.out(h), {}


class ResidualMLP(nnx.Module):
    """Per layer y = BN(Linear(x)); skip = x or Linear(x) when widths differ;
    x = Dropout(ReLU(y + skip)); then Linear(classes)."""

    def __init__(
        self, din: int, hidden: Sequence[int], classes: int, *, rngs: nnx.Rngs, rate: float = 0.1
    ):
        dims = [din, *hidden]
        self.dense = nnx.List(
            [Dense(a, b, fan="fan_out", rngs=rngs) for a, b in zip(dims, dims[1:])]
        )
        self.norm = nnx.List([BatchNorm(b) for b in hidden])
        self.skip = nnx.List(
            [
                Dense(a, b, fan="fan_out", rngs=rngs) if a != b else None
                for a, b in zip(dims, dims[1:])
            ]
        )
        self.out = Dense(dims[-1], classes, fan="fan_out", rngs=rngs)
        self.rate = rate

    def __call__(self, x_BxD, *, train: bool = False, key: Optional[jax.Array] = None):
        keys = KeySeq(key if train else None)
        h = x_BxD
        for dense, norm, skip in zip(self.dense, self.norm, self.skip):
            s = h if skip is None else skip(h)
            h = dropout(jax.nn.relu(norm(dense(h), train) + s), self.rate, keys(), train)
        return self.out(h), {}


# ----------------------------------------------------------------- registry


# model_type -> (family widths from one size s, residual). Each baseline family is
# one-parameter: sizing (sizing.py) searches s for the closest parameter count.
def _shallow(s, c):
    return [s, max(s // 2, 1)]


def _balanced(s, c):
    widths = [w for w in (s, s // 2, s // 4, s // 8) if w > 2 * c]
    return widths if len(widths) >= 3 else None


BASELINE_FAMILIES: dict[str, tuple[Callable[[int, int], Optional[list[int]]], bool]] = {
    "shallow": (_shallow, False),
    "balanced": (_balanced, False),
    "deep": (lambda s, c: [s] * 8, False),
    "very_deep": (lambda s, c: [s] * 12, False),
    "deep_resnet": (lambda s, c: [s] * 8, True),
    "very_deep_resnet": (lambda s, c: [s] * 12, True),
}


def build_model(
    cfg: Config, hidden_dims: Optional[Sequence[int]] = None, *, rngs: nnx.Rngs
) -> nnx.Module:
    """The registry: the collective and the six baselines are peers here."""
    if cfg.model_type == "collective":
        return Collective(cfg, rngs=rngs)
    if hidden_dims is None:
        raise ValueError(f"{cfg.model_type} needs hidden_dims (see sizing.resolve)")
    _, residual = BASELINE_FAMILIES[cfg.model_type]
    info = cfg.dataset_info
    cls = ResidualMLP if residual else MLP
    return cls(
        info.input_dim, list(hidden_dims), info.num_classes, rngs=rngs, rate=cfg.baseline_dropout
    )
