"""`describe(config)`: what a config resolves to, without building any array."""

from __future__ import annotations

from typing import Any, Optional

from .config import NO_EFFECT, Config, collective_dims
from .sizing import Resolved, component_params, resolve

# Keys read only by the collective, and only by baselines.
COLLECTIVE_ONLY = frozenset(k for k, f in Config.__dataclass_fields__.items()
                            if f.metadata["group"] == "collective")
BASELINE_ONLY = frozenset({"target_params"})


def unused_keys(cfg: Config, given: Optional[set[str]] = None) -> dict[str, str]:
    """Keys in `given` that this run does not read, each with a one-word reason: the
    seed's sweep sends collective keys to baselines and target_params to the collective,
    and the original's configs carry keys that have no effect here."""
    given = set(given or ())
    ignored, why = ((BASELINE_ONLY, "baseline-only") if cfg.model_type == "collective"
                    else (COLLECTIVE_ONLY, "collective-only"))
    out = {k: why for k in ignored & given}
    out.update({k: NO_EFFECT[k] for k in given if k in NO_EFFECT})
    if "use_gpu" in given and cfg.use_gpu is not False:
        out["use_gpu"] = "see-device"  # true is the default (auto); false means --device=cpu
    return dict(sorted(out.items()))


def describe_resolved(r: Resolved, given: Optional[set[str]] = None) -> dict[str, Any]:
    cfg = r.cfg
    out: dict[str, Any] = {"model_type": cfg.model_type, "dataset": cfg.dataset,
                           "model_params": r.model_params}
    if cfg.model_type == "collective":
        d = collective_dims(cfg)
        out.update(n_experts=d.n_experts, n_analysts=d.n_analysts,
                   expert_encoder_output_dim=d.expert_encoder_output_dim,
                   analyst_input_dim=d.analyst_input_dim, adaptive_dim=d.adaptive_dim,
                   collective_input_dim=d.collective_input_dim,
                   params_by_component=component_params(cfg))
    else:
        out.update(hidden_dims=list(r.hidden_dims), target_params=r.target_params,
                   params_off_target=round((r.model_params - r.target_params) / r.target_params, 6))
    if given is not None:
        out["unused_keys"] = unused_keys(cfg, given)
    return out


def describe(config: dict[str, Any], preset: Optional[str] = None) -> dict[str, Any]:
    """Resolve `config` (SPEC's key names; strings accepted as from the command line)."""
    return describe_resolved(resolve(Config.from_dict(config, preset)), set(config))
