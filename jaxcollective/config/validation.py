"""The checks of a config's values (`Config.validate`): each failure is one
`ConfigError` line naming the key, the value and what is allowed."""

from __future__ import annotations

from .choices import COLLECTIVE_VERSIONS, DEVICES, DTYPES, MODEL_TYPES, OPTIMIZERS, RESUME
from .datasets import DATASET_NAMES, DATASETS
from .values import _check_choice, _fail


def validate(cfg) -> None:
    """Raise `ConfigError` for the first invalid value of `cfg` (a `Config`)."""
    _check_choice("model_type", cfg.model_type, MODEL_TYPES)
    _check_choice("dataset", cfg.dataset, DATASET_NAMES)
    _check_choice("synthetic_like", cfg.synthetic_like, DATASETS)
    _check_choice("collective_version", cfg.collective_version, COLLECTIVE_VERSIONS)
    _check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _check_choice("dtype", cfg.dtype, DTYPES)
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("resume", cfg.resume, RESUME)
    for k in ("lr_plateau_patience", "early_stopping_patience"):
        if getattr(cfg, k) < 0:
            _fail(k, getattr(cfg, k), "an integer >= 0 (0: off)")
    if not 0.0 < cfg.lr_plateau_factor < 1.0:
        _fail(
            "lr_plateau_factor",
            cfg.lr_plateau_factor,
            "a number strictly between 0 and 1, e.g. 0.1",
        )
    if cfg.checkpoint_every < 0:
        _fail("checkpoint_every", cfg.checkpoint_every, "an integer >= 0 (0: every 60 s)")
    if cfg.n_total < 2:
        _fail("n_total", cfg.n_total, "an integer >= 2 (at least 1 expert and 1 analyst)")
    if not 0.0 < cfg.expert_ratio < 1.0:
        _fail("expert_ratio", cfg.expert_ratio, "a number strictly between 0 and 1")
    if cfg.n_experts is not None and cfg.n_experts < 1:
        _fail("n_experts", cfg.n_experts, "a positive integer")
    for k in (
        "c_expert",
        "c_collective",
        "collective_hidden_scale",
        "learning_rate",
        "diversity_temperature",
    ):
        if not getattr(cfg, k) > 0:
            _fail(k, getattr(cfg, k), "a number > 0")
    if not 0.0 < cfg.val_split < 1.0:
        _fail("val_split", cfg.val_split, "a fraction strictly between 0 and 1, e.g. 0.1")
    classes = cfg.dataset_info.num_classes
    if not cfg.topk or any(not 1 <= k <= classes for k in cfg.topk):
        _fail("topk", cfg.topk, f"k values between 1 and {classes}, e.g. (1,) or (1, 5)")
    if cfg.seed < 0:
        _fail("seed", cfg.seed, "a non-negative integer")
    for k in (
        "expert_output",
        "analyst_output",
        "adaptive_collective_min_dim",
        "batch_size",
        "eval_batch_size",
        "gradient_accumulation_steps",
        "epochs",
        "num_seeds",
    ):
        if getattr(cfg, k) < 1:
            _fail(k, getattr(cfg, k), "a positive integer")
    if cfg.adaptive_collective_max_dim < cfg.adaptive_collective_min_dim:
        _fail(
            "adaptive_collective_max_dim",
            cfg.adaptive_collective_max_dim,
            f"an integer >= adaptive_collective_min_dim ({cfg.adaptive_collective_min_dim})",
        )
    for k in ("expert_hidden", "analyst_hidden"):
        widths = getattr(cfg, k)
        if len(widths) < 2:
            _fail(k, widths, "a list of 2 or more hidden widths, e.g. [512, 256]")
        if any(w < 1 for w in widths):
            _fail(k, widths, "positive widths")
        vary = f"vary_{k.split('_')[0]}_architectures"
        if getattr(cfg, vary) and any(w < 2 for w in widths):  # variant 3: int(w * 0.8)
            _fail(k, widths, f"widths >= 2 with {vary} (its 0.8x variant would have width 0)")
    for k in ("drop_models_expert_rate", "drop_models_analyst_rate", "baseline_dropout"):
        if not 0.0 <= getattr(cfg, k) < 1.0:
            _fail(k, getattr(cfg, k), "a probability in [0, 1)")
    for k in ("weight_decay", "diversity_lambda"):
        if getattr(cfg, k) < 0:
            _fail(k, getattr(cfg, k), "a number >= 0")
    if cfg.collective_budget is not None and cfg.collective_budget < 1:
        _fail("collective_budget", cfg.collective_budget, "a positive parameter count")
    if not cfg.expert_width_factor > 0:
        _fail("expert_width_factor", cfg.expert_width_factor, "a number > 0, e.g. 1.0")
    if cfg.target_params is not None and cfg.target_params < 1:
        _fail("target_params", cfg.target_params, "a positive parameter count")
    info = cfg.dataset_info
    for k, want in (("input_dim", info.input_dim), ("num_classes", info.num_classes)):
        got = getattr(cfg, k)
        if got is not None and got != want:
            _fail(k, got, f"{want} for dataset {cfg.dataset!r} (or leave it unset)")
