"""The config keys of the model: the experiment (model type, dataset, a baseline's
budget) and the collective's architecture, each declared with its role (`_key`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .choices import MODEL_TYPES
from .datasets import DATASET_NAMES
from .roles import _ARCH, _STEP_VALUE, P, V, _key


@dataclass(frozen=True)
class ModelKeys:
    """The experiment's and the collective's keys (the first fields of `Config`)."""

    # --- experiment
    model_type: str = _key(
        "collective", f"one of {', '.join(MODEL_TYPES)}", "experiment", P, "selects the model"
    )
    dataset: str = _key(
        "mnist",
        f"one of {', '.join(DATASET_NAMES)}",
        "experiment",
        P,
        "input width, normalisation and augmentation",
    )
    synthetic_like: str = _key(
        "fashion_mnist",
        "shape of the synthetic dataset",
        "experiment",
        P,
        "the synthetic data's shape",
    )
    target_params: Optional[int] = _key(
        None,
        "baselines: parameter budget (default: size of the collective of this config)",
        "experiment",
        P,
        "a baseline's widths are sized from it",
    )
    # --- baselines
    baseline_dropout: float = _key(
        0.1,
        "baselines: dropout after each hidden layer (the original's 0.1), in [0, 1)",
        "baseline",
        P,
        "a constant of the baseline's program",
        since="best shot",
    )
    # --- collective
    n_total: int = _key(8, "experts + analysts", "collective", P, _ARCH)
    expert_ratio: float = _key(
        0.2, "fraction of n_total that are experts, in (0, 1)", "collective", P, _ARCH
    )
    n_experts: Optional[int] = _key(
        None, "number of experts (overrides expert_ratio)", "collective", P, _ARCH
    )
    expert_hidden: tuple = _key(
        [512, 256], "expert hidden widths (2 or more)", "collective", P, _ARCH
    )
    expert_output: int = _key(128, "expert output width", "collective", P, _ARCH)
    analyst_hidden: tuple = _key(
        [256, 128], "analyst hidden widths (2 or more)", "collective", P, _ARCH
    )
    analyst_output: int = _key(64, "analyst output width", "collective", P, _ARCH)
    collective_budget: Optional[int] = _key(
        None,
        "size the collective to this many parameters, within 1%: every width of "
        "expert_hidden, expert_output, analyst_hidden, analyst_output times one scale the "
        "parameter counter finds (the experts' also times expert_width_factor); unset: the "
        'widths as given (docs/design.md, "A collective sized to a budget")',
        "collective",
        P,
        _ARCH,
        since="best shot",
    )
    expert_width_factor: float = _key(
        1.0,
        "with collective_budget: the experts' widths relative to the analysts' (their given "
        "widths times this, before the scale)",
        "collective",
        P,
        _ARCH,
        since="best shot",
    )
    c_expert: float = _key(0.25, "expert encoder compression", "collective", P, _ARCH)
    c_collective: float = _key(1.0, "collective input compression", "collective", P, _ARCH)
    collective_version: str = _key(
        "simple_mlp", "head: simple_mlp or encoder_head", "collective", P, _ARCH
    )
    collective_hidden_scale: float = _key(
        1.0, "head hidden width / head input width", "collective", P, _ARCH
    )
    adaptive_collective_min_dim: int = _key(
        64, "lower bound of the adaptive width", "collective", P, _ARCH
    )
    adaptive_collective_max_dim: int = _key(
        2048, "upper bound of the adaptive width", "collective", P, _ARCH
    )
    vary_expert_architectures: bool = _key(
        False, "expert i uses width variant i % 4", "collective", P, _ARCH
    )
    vary_analyst_architectures: bool = _key(
        False, "analyst i uses width variant i % 4", "collective", P, _ARCH
    )
    use_drop_models: bool = _key(
        False,
        "model-level dropout of whole members",
        "collective",
        P,
        "adds the member-dropout computation",
    )
    drop_models_expert_rate: float = _key(
        0.1, "probability an expert is dropped", "collective", V, _STEP_VALUE, step_value=True
    )
    drop_models_analyst_rate: float = _key(
        0.1, "probability an analyst is dropped", "collective", V, _STEP_VALUE, step_value=True
    )
    use_expert_diversity: bool = _key(
        False, "add the expert diversity loss", "collective", P, "adds a loss term"
    )
    use_analyst_diversity: bool = _key(
        False, "add the analyst diversity loss", "collective", P, "adds a loss term"
    )
    diversity_lambda: float = _key(
        0.01, "weight of each diversity loss", "collective", V, _STEP_VALUE, step_value=True
    )
    diversity_temperature: float = _key(
        1.0, "divisor of the diversity loss", "collective", V, _STEP_VALUE, step_value=True
    )
