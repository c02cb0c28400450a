"""The collective's derived widths (docs/design.md, "Derivation rules")."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .values import ConfigError


@dataclass(frozen=True)
class CollectiveDims:
    input_dim: int
    num_classes: int
    n_experts: int
    n_analysts: int
    expert_encoder_output_dim: int
    analyst_input_dim: int
    adaptive_dim: int
    collective_input_dim: int


# cfg is a Config (its class is not imported here: config.core imports this module)
def collective_dims(cfg) -> CollectiveDims:
    """docs/design.md, "Derivation rules", literally (Python's round, int() truncation)."""
    n_total = cfg.n_total
    if cfg.n_experts is not None:
        n_experts = max(2, min(int(cfg.n_experts), n_total - 1))
    else:
        n_experts = max(2, round(n_total * cfg.expert_ratio))
    if n_experts >= n_total:
        n_experts = n_total - 1
    n_analysts = n_total - n_experts
    info = cfg.dataset_info
    eed = int(n_experts * cfg.expert_output * cfg.c_expert)
    if eed < 1:
        raise ConfigError(
            f"c_expert={cfg.c_expert} gives an expert encoder output of width 0 "
            f"(int({n_experts} * {cfg.expert_output} * {cfg.c_expert})); use a larger c_expert"
        )
    adaptive = min(
        cfg.adaptive_collective_max_dim,
        max(
            cfg.adaptive_collective_min_dim,
            int(cfg.analyst_output * (1 + math.log2(max(n_analysts, 1)))),
        ),
    )
    cid = int(adaptive * cfg.c_collective)
    if cid < 1:
        raise ConfigError(
            f"c_collective={cfg.c_collective} gives a collective input of width 0; "
            "use a larger c_collective"
        )
    return CollectiveDims(
        info.input_dim,
        info.num_classes,
        n_experts,
        n_analysts,
        eed,
        info.input_dim + eed,
        adaptive,
        cid,
    )
