"""`describe(config)`: what a config resolves to, without building any array."""

from __future__ import annotations

from typing import Any, Optional

from jaxcollective.config import BASELINE_ONLY, BUDGET_ONLY, COLLECTIVE_ONLY, NO_EFFECT, Config
from jaxcollective.model.sizing import describe_resolved, resolve


def unused_keys(cfg: Config, given: Optional[set[str]] = None) -> dict[str, str]:
    """Keys in `given` that this run does not read, each with a one-word reason: the
    seed's sweep sends collective keys to baselines and target_params to the collective,
    and the original's configs carry keys that have no effect here."""
    given = set(given or ())
    ignored = cfg.ignored_keys() & given
    out = {k: "baseline-only" for k in ignored & BASELINE_ONLY}
    out.update({k: "collective-only" for k in ignored & COLLECTIVE_ONLY})
    if cfg.model_type == "collective":  # read only with a budget
        out.update({k: "budget-off" for k in ignored & BUDGET_ONLY})
    if "lr_plateau_factor" in given and cfg.lr_plateau_patience == 0:
        out["lr_plateau_factor"] = "plateau-off"  # a constant learning rate
    out.update({k: NO_EFFECT[k] for k in given if k in NO_EFFECT})
    if "use_gpu" in given and cfg.use_gpu is not False:
        out["use_gpu"] = "see-device"  # true is the default (auto); false means --device=cpu
    return dict(sorted(out.items()))


def describe(config: dict[str, Any], preset: Optional[str] = None) -> dict[str, Any]:
    """Resolve `config` (the config's key names; strings accepted as from the command line)."""
    cfg = Config.from_dict(config, preset)
    return {**describe_resolved(resolve(cfg)), "unused_keys": unused_keys(cfg, set(config))}
