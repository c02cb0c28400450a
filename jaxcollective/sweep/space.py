"""Local sweeps of W&B sweep files on Optuna: space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from optuna import distributions as d

from jaxcollective.config import ConfigError


HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "eta", "s"}


# ------------------------------------------------------------- the sweep file
def read_sweep(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"sweep file {path} not found; pass a W&B sweep YAML such as sweeps/phase1.yaml"
        )
    try:
        sweep = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        raise ConfigError(f"{path} has no `parameters:` mapping; is it a W&B sweep file?")
    return sweep


def search_space(parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed values, Optuna distributions) of a sweep's `parameters`; anything that
    cannot be mapped is a one-line error naming the key."""
    fixed, space = {}, {}
    for key, spec in parameters.items():
        if not isinstance(spec, dict):
            raise ConfigError(
                f"sweep parameter {key!r} must be a mapping (value, values or "
                f"distribution), not {spec!r}"
            )
        dist = spec.get("distribution")
        if "value" in spec:
            fixed[key] = spec["value"]
        elif "values" in spec and dist in (None, "categorical"):
            vals = spec["values"]
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"sweep parameter {key!r}: `values` must be a non-empty list")
            # Optuna's choices are scalars: lists (widths) travel as their str(), which
            # Config parses as the agent's command line does
            space[key] = d.CategoricalDistribution(
                [v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for v in vals]
            )
        elif dist in (
            "uniform",
            "log_uniform_values",
            "int_uniform",
            "q_uniform",
            "q_log_uniform_values",
        ):
            if "min" not in spec or "max" not in spec:
                raise ConfigError(f"sweep parameter {key!r}: {dist} needs min and max")
            lo, hi = spec["min"], spec["max"]
            if dist == "uniform":
                space[key] = d.FloatDistribution(float(lo), float(hi))
            elif dist == "log_uniform_values":
                space[key] = d.FloatDistribution(float(lo), float(hi), log=True)
            elif dist == "int_uniform":
                space[key] = d.IntDistribution(int(lo), int(hi))
            elif dist == "q_uniform":
                space[key] = d.FloatDistribution(
                    float(lo), float(hi), step=float(spec.get("q", 1.0))
                )
            else:
                raise ConfigError(
                    f"sweep parameter {key!r}: distribution q_log_uniform_values "
                    "has no Optuna equivalent (a log scale with a step); use "
                    "log_uniform_values or a values list"
                )
        else:
            raise ConfigError(
                f"sweep parameter {key!r}: distribution {dist!r} cannot be run "
                "locally; use value, values, uniform, log_uniform_values, "
                "int_uniform, q_uniform or categorical"
            )
    return fixed, space


def parse_sets(items: list[str]) -> dict[str, str]:
    """`--set KEY=VALUE` items as a dict."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set dataset=digits")
        out[key.strip()] = value.strip()
    return out


def _ends(dist) -> list:
    """The values a distribution can take at its edges: every choice, or both ends."""
    if hasattr(dist, "choices"):
        return list(dist.choices)
    return [dist.low, dist.high]


def suggest(trial, key: str, dist):
    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
