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


# ------------------------------------------------------- collective budget
MAX_COLLECTIVE_MISMATCH = 0.01
_WIDTH_KEYS = ("expert_hidden", "expert_output", "analyst_hidden", "analyst_output")


def _scaled(cfg: Config, s: float) -> tuple:
    """The collective's widths at scale `s` (each at least 1): the given widths times s,
    the experts' also times expert_width_factor."""
    f = cfg.expert_width_factor

    def sc(w: int, k: float) -> int:
        return max(1, min(_MAX_WIDTH, round(w * s * k)))

    return (
        tuple(sc(w, f) for w in cfg.expert_hidden),
        sc(cfg.expert_output, f),
        tuple(sc(w, 1.0) for w in cfg.analyst_hidden),
        sc(cfg.analyst_output, 1.0),
    )


def _with_widths(cfg: Config, widths: tuple) -> Config:
    return cfg.replace(**dict(zip(_WIDTH_KEYS, widths)), collective_budget=None)


_REFUSED: dict[Config, str] = {}  # per sized config, why some widths were refused


def _widths_count(cfg: Config, widths: tuple) -> int:
    """The count of the collective with these widths (0 where the derivation rules refuse
    them, e.g. an expert encoder of width 0: the reason is kept for the error)."""
    try:
        return count_params(_with_widths(cfg, widths))
    except ConfigError as err:
        _REFUSED[cfg] = str(err)
        return 0


def size_collective(cfg: Config) -> Config:
    """The collective sized to `cfg.collective_budget` (docs/design.md, "A collective sized
    to a budget"): its widths, the config's times one scale, with the count closest to the
    budget. The count rises with the scale, so a bisection on the scale brackets the budget
    between two width sets; then single widths are raised one unit at a time from the one
    below (the last layers' units cost least), for a count within 1% of the budget at any
    n_total. Returned with collective_budget unset: the widths are the architecture."""
    if cfg.collective_budget is None:
        return cfg
    return _size_collective(cfg.shape_key())


@functools.lru_cache(maxsize=256)
def _size_collective(cfg: Config) -> Config:
    target = cfg.collective_budget
    if not MIN_TARGET <= target <= MAX_TARGET:
        raise ConfigError(f"invalid collective_budget={target}: expected 1 to {MAX_TARGET:,}")

    def n(s: float) -> int:
        return _widths_count(cfg, _scaled(cfg, s))

    lo, hi = 0.0, 1.0
    while n(hi) <= target:
        lo, hi = hi, hi * 2
        if max(_scaled(cfg, hi)[0]) >= _MAX_WIDTH:
            raise ConfigError(f"invalid collective_budget={target:,}: no widths reach it")
    for _ in range(40):  # counts are cached: halvings that change no width cost nothing
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if n(mid) <= target else (lo, mid)
    below, above = list(_scaled(cfg, lo)), _scaled(cfg, hi)
    best_above = _widths_count(cfg, above)
    while True:  # raise the one width whose unit brings the count closest, staying <= budget
        steps = []
        for i, w in enumerate(below):
            for j in range(len(w)) if isinstance(w, tuple) else [None]:
                trial = list(below)
                trial[i] = tuple(v + (k == j) for k, v in enumerate(w)) if j is not None else w + 1
                c = _widths_count(cfg, tuple(trial))
                if c > target:
                    best_above = min(best_above, c)
                    if c == best_above:
                        above = tuple(trial)
                elif c > _widths_count(cfg, tuple(below)):
                    steps.append((c, trial))
        if not steps:
            break
        below = max(steps, key=lambda t: t[0])[1]
    below = tuple(below)
    n_below = _widths_count(cfg, below)
    widths, got = (
        (below, n_below) if target - n_below <= best_above - target else (above, best_above)
    )
    if got == 0 or abs(got - target) > MAX_COLLECTIVE_MISMATCH * target:
        why = (
            f"the widths below it are refused ({_REFUSED[cfg]})"
            if cfg in _REFUSED
            else "its smallest widths may already be above it"
        )
        found = f"{got:,} parameters ({(got - target) / target:+.1%})" if got else "none"
        raise ConfigError(
            f"invalid collective_budget={target:,}: the closest collective of this profile "
            f"has {found}; {why}: give a larger budget, fewer members or another profile"
        )
    return _with_widths(cfg, widths)


def _size_widths_into(cfg: Config) -> Config:
    """`cfg` with the sized collective's widths (its other keys as given) and no budget:
    the architecture itself, which resolving again leaves as it is."""
    sized = size_collective(cfg)
    return cfg.replace(**{k: getattr(sized, k) for k in _WIDTH_KEYS}, collective_budget=None)


# ---------------------------------------------------------------- resolve
@dataclass(frozen=True)
class Resolved:
    """A config with its architecture fixed: what the training and the logs use."""

    cfg: Config  # a collective sized to a budget: with its sized widths
    hidden_dims: Optional[tuple[int, ...]]  # baselines only
    target_params: Optional[int]  # baselines, and a collective sized to a budget
    model_params: int
    given: Optional[Config] = None  # the config as given, where sizing changed it

    @property
    def config(self) -> Config:
        """The config as given: what a record keeps (a rerun sizes it again, the same)."""
        return self.given or self.cfg


def resolve(cfg: Config) -> Resolved:
    if cfg.model_type == "collective":
        if cfg.collective_budget is None:
            return Resolved(cfg, None, None, count_params(cfg))
        sized = _size_widths_into(cfg)
        return Resolved(sized, None, cfg.collective_budget, count_params(sized), given=cfg)
    target = cfg.target_params
    if target is None:  # as the original: the size of the collective of this config
        target = count_params(size_collective(cfg.replace(model_type="collective")))
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
        if r.given is not None:  # sized to a budget: the widths it got
            out.update(
                collective_budget=r.target_params,
                params_off_target=round((r.model_params - r.target_params) / r.target_params, 6),
                sized_widths={k: _plain(getattr(cfg, k)) for k in _WIDTH_KEYS},
            )
    else:
        out.update(
            hidden_dims=list(r.hidden_dims),
            target_params=r.target_params,
            params_off_target=round((r.model_params - r.target_params) / r.target_params, 6),
        )
    return out


def _plain(v):
    return list(v) if isinstance(v, tuple) else v
