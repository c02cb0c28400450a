"""Parameter counting over `jax.eval_shape` and baseline sizing.

`count_params` builds the model abstractly (shapes only: nothing allocated, no random
initialisation traced, `layers.ShapesOnly`) and sums the sizes of its `nnx.Param`s:
every trainable parameter, BatchNorm scale and bias included, running statistics
excluded, as PyTorch's `parameters()` counts.

Each baseline family is a one-parameter family of widths `widths(s)`; its count grows
with `s` (nearly as a quadratic), so a search on `s` guided by the counter finds the
closest count to a target (neighbours checked, so ties and plateaus are handled).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx

from jaxcollective.config import BASELINE_TYPES, Config, ConfigError, collective_dims
from jaxcollective.model.layers import ShapesOnly
from jaxcollective.model.networks import BASELINE_FAMILIES, build_model

MIN_TARGET, MAX_TARGET = 1, 10**10
MAX_MISMATCH = 0.02  # closest count further off than this: the family cannot reach the target
_MAX_WIDTH = 1 << 20


def count_params(cfg: Config, hidden_dims: Optional[tuple[int, ...]] = None) -> int:
    return _count(cfg.shape_key(), tuple(hidden_dims) if hidden_dims is not None else None)


def abstract_params(cfg: Config, hidden_dims: Optional[tuple[int, ...]] = None):
    """The model's `nnx.Param` state as shapes (jax.ShapeDtypeStruct): built under
    `jax.eval_shape`, nothing allocated, no random initialisation traced (ShapesOnly)."""
    return jax.eval_shape(
        lambda: nnx.state(build_model(cfg, hidden_dims, rngs=ShapesOnly()), nnx.Param)
    )


@functools.lru_cache(maxsize=4096)
def _count(cfg: Config, hidden_dims: Optional[tuple[int, ...]]) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(abstract_params(cfg, hidden_dims)))


def component_params(cfg: Config) -> dict[str, int]:
    """Parameters per top-level component of the collective (experts, encoders, ...)."""
    params = abstract_params(cfg)
    out: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = str(getattr(path[0], "key", path[0]))
        out[name] = out.get(name, 0) + leaf.size
    return out


# ----------------------------------------------------------------- search
@dataclass(frozen=True)
class BaselineMatch:
    model_type: str
    target_params: int
    hidden_dims: tuple[int, ...]
    model_params: int

    @property
    def rel_error(self) -> float:
        return (self.model_params - self.target_params) / self.target_params


def _family_count(cfg: Config, s: int) -> Optional[tuple[tuple[int, ...], int]]:
    widths_fn, _ = BASELINE_FAMILIES[cfg.model_type]
    widths = widths_fn(s, cfg.dataset_info.num_classes)
    if widths is None:
        return None
    widths = tuple(widths)
    return widths, count_params(cfg, widths)


def match_baseline(cfg: Config, target: int) -> BaselineMatch:
    """The architecture of `cfg.model_type`'s family whose count is closest to `target`."""
    if cfg.model_type not in BASELINE_TYPES:
        raise ValueError(f"{cfg.model_type} is not a baseline")
    if not MIN_TARGET <= target <= MAX_TARGET:
        raise ConfigError(f"invalid target_params={target}: expected 1 to {MAX_TARGET:,}")
    # Smallest valid s (balanced needs 3 layers wider than 2 * classes).
    lo = 1
    while _family_count(cfg, lo) is None:
        lo *= 2
        if lo > _MAX_WIDTH:
            raise ConfigError(f"no {cfg.model_type} architecture exists for this dataset")
    lo = _first_valid(cfg, lo // 2 + 1 if lo > 1 else 1, lo)
    s0 = _largest_within(cfg, target, lo)
    # counts rise strictly with s (the first layer alone grows with it): the closest is
    # s0 or s0 + 1, both counted by the search already
    candidates = [r for s in (s0, s0 + 1) if s <= _MAX_WIDTH and (r := _family_count(cfg, s))]
    widths, n = min(candidates, key=lambda r: (abs(r[1] - target), r[1]))
    match = BaselineMatch(cfg.model_type, target, widths, n)
    if abs(match.rel_error) > MAX_MISMATCH:
        smallest = _family_count(cfg, lo)[1]
        raise ConfigError(
            f"invalid target_params={target:,}: the closest {cfg.model_type} architecture "
            f"{list(widths)} has {n:,} parameters ({match.rel_error:+.1%}); this family "
            f"starts at {smallest:,} parameters on {cfg.dataset}"
        )
    return match


def _largest_within(cfg: Config, target: int, lo: int) -> int:
    """The largest width s >= lo whose count is <= target (lo if even lo is above it).
    Counts grow with s, nearly as a quadratic: an estimate from three exact counts (the
    same three for every target, so cached), then galloping and bisection on exact
    counts, which only the estimate's error costs."""

    def n(w: int) -> int:
        return _family_count(cfg, w)[1]

    if n(lo) > target:
        return lo
    xs = [max(lo, 64) * k for k in (1, 2, 4)]
    poly = np.polyfit(xs, [n(x) for x in xs], 2)
    poly[-1] -= target
    roots = [r.real for r in np.roots(poly) if abs(r.imag) < 1e-9 and r.real > 0]
    est = int(min(max(roots, default=lo), _MAX_WIDTH))
    est = max(lo, est)
    step = 1
    if n(est) <= target:  # gallop up to a bracket [a, b): n(a) <= target < n(b)
        a = est
        while a + step <= _MAX_WIDTH and n(a + step) <= target:
            a, step = a + step, step * 2
        b = min(a + step, _MAX_WIDTH + 1)
    else:  # gallop down
        b = est
        while b - step > lo and n(b - step) > target:
            b, step = b - step, step * 2
        a = max(b - step, lo)
    while b - a > 1:
        mid = (a + b) // 2
        if n(mid) <= target:
            a = mid
        else:
            b = mid
    return a


def _first_valid(cfg: Config, a: int, b: int) -> int:
    """Smallest s in [a, b] with a valid family member (b is valid)."""
    while a < b:
        mid = (a + b) // 2
        if _family_count(cfg, mid) is None:
            a = mid + 1
        else:
            b = mid
    return b


# ---------------------------------------------------------------- resolve
@dataclass(frozen=True)
class Resolved:
    """A config with its architecture fixed: what the training and the logs use."""

    cfg: Config
    hidden_dims: Optional[tuple[int, ...]]  # baselines only
    target_params: Optional[int]  # baselines only
    model_params: int


def resolve(cfg: Config) -> Resolved:
    if cfg.model_type == "collective":
        return Resolved(cfg, None, None, count_params(cfg))
    target = cfg.target_params
    if target is None:  # as the original: the size of the collective of this config
        target = count_params(cfg.replace(model_type="collective"))
    m = match_baseline(cfg, target)
    return Resolved(cfg, m.hidden_dims, target, m.model_params)


@functools.lru_cache(maxsize=256)
def _biases(cfg: Config, hidden_dims: Optional[tuple[int, ...]]) -> int:
    """Entries of every bias (Linear and BatchNorm), members included: one per unit whose
    activations the backward pass keeps."""
    params = abstract_params(cfg, hidden_dims)
    return sum(
        leaf.size
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if "bias" in jax.tree_util.keystr(path)
    )


def memory_need(r: Resolved, train_examples: int, test_examples: int) -> dict[str, int]:
    """An estimate, in bytes, of what a run holds on its device at its peak: per replica
    the parameters, optimizer moments and gradients with the new copies an update makes
    of each (4 bytes each), and the activations of one micro-batch kept for the backward
    pass (about 4 values per bias entry); once, the data (uint8)."""
    cfg = r.cfg
    moments = {"adam": 2, "adamw": 2, "sgd": 1}[cfg.optimizer]
    state = 4 * r.model_params * 2 * (2 + moments)
    acts = 4 * 4 * cfg.batch_size * _biases(cfg.shape_key(), r.hidden_dims)
    info = cfg.dataset_info
    data = (train_examples + test_examples) * (info.input_dim + 1)
    return {"state": cfg.num_seeds * state, "activations": cfg.num_seeds * acts, "data": data}


def describe_resolved(r: Resolved) -> dict[str, Any]:
    """What a resolved config is: type, data, parameters, and the collective's derived
    dims and per-component counts, or the baseline's widths and distance to target."""
    cfg = r.cfg
    out: dict[str, Any] = {
        "model_type": cfg.model_type,
        "dataset": cfg.dataset,
        "model_params": r.model_params,
    }
    if cfg.model_type == "collective":
        d = collective_dims(cfg)
        out.update(
            n_experts=d.n_experts,
            n_analysts=d.n_analysts,
            expert_encoder_output_dim=d.expert_encoder_output_dim,
            analyst_input_dim=d.analyst_input_dim,
            adaptive_dim=d.adaptive_dim,
            collective_input_dim=d.collective_input_dim,
            params_by_component=component_params(cfg),
        )
    else:
        out.update(
            hidden_dims=list(r.hidden_dims),
            target_params=r.target_params,
            params_off_target=round((r.model_params - r.target_params) / r.target_params, 6),
        )
    return out
