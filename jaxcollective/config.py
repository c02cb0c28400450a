"""One config object: defaults, presets, overrides, the derivation rules (docs/design.md,
"Derivation rules").

Every key a user (or a wandb sweep) can set is a field of `Config`. Values arrive as
Python objects (from YAML or wandb.config) or as strings (from the command line,
where wandb's agent writes `str(value)`), and `Config.from_dict` turns both into the
field's type. Anything invalid raises `ConfigError` with one line naming the key,
the value and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

MODEL_TYPES = (
    "collective",
    "shallow",
    "balanced",
    "deep",
    "very_deep",
    "deep_resnet",
    "very_deep_resnet",
)
BASELINE_TYPES = MODEL_TYPES[1:]
COLLECTIVE_VERSIONS = ("simple_mlp", "encoder_head")
OPTIMIZERS = ("adam", "adamw", "sgd")
DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cuda", "gpu", "cpu")
RESUME = ("auto", "never")


@dataclass(frozen=True)
class DatasetInfo:
    input_dim: int
    num_classes: int
    image_shape: tuple[int, int, int]  # H, W, C
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS = {
    "mnist": DatasetInfo(784, 10, (28, 28, 1), (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo(784, 10, (28, 28, 1), (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(
        3072, 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    # scikit-learn's 8x8 digits (pixel values 0..16, stored scaled to 0..255).
    "digits": DatasetInfo(64, 10, (8, 8, 1), (0.3053,), (0.3760,)),
}
# `synthetic` takes the shape and normalisation of `synthetic_like`.
DATASET_NAMES = tuple(DATASETS) + ("synthetic",)
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10")


# The original's command line: `train.py --config phase1 --model shallow --device cuda`.
ALIASES = {"model": "model_type"}


class ConfigError(ValueError):
    """A config value is invalid; the message is one line meant for the user."""


class Role(str, enum.Enum):
    """What a config key does to a run (docs/design.md, "Config keys and their roles").
    Declared once, on the key's field; every list that must know it derives from it."""

    PROGRAM = "program"  # shapes the compiled program: another value compiles anew
    VALUE = "value"  # reaches the compiled program as data (optimizer state, RNG
    #                          keys, index arrays): trials that differ only in these share
    #                          one compiled program and may be members of one population
    LENGTH = "length"  # how long the run is: a longer run extends a shorter one
    DATA = "data"  # where the data are read from (the data are checked by content)
    OUTPUT = "output"  # what is written where: results, logging, checkpoints
    DEVICE = "device"  # where the program runs (not what it computes)
    CHECK = "check"  # the original's keys that must agree with the dataset, then
    #                          change nothing
    NO_EFFECT = "no-effect"  # accepted for the original's configs; changes nothing here


def _key(
    default,
    help,
    group,
    role: Role,
    why: str,
    *,
    trajectory: bool = True,
    program_part=None,
    setting: bool = False,
    step_value: bool = False,
):
    """A config field and its declaration: `help` for --help, `group` for its section,
    `role` and `why` (the role's reason; for NO_EFFECT the one word a run records).
    `trajectory=False`: the metrics do not depend on it although it shapes the program.
    `program_part(value)`: the part of a VALUE key that shapes the program.
    `setting=True`: a training setting that runs compared in one report section share.
    `step_value=True`: a VALUE key the train step reads from its replica's row of
    train.ReplicaData (a number of the loss or the model), not a constant it compiles in."""
    assert not step_value or role is Role.VALUE
    meta = {
        "help": help,
        "group": group,
        "role": role,
        "why": why,
        "trajectory": trajectory,
        "program_part": program_part,
        "setting": setting,
        "step_value": step_value,
    }
    return field(default=tuple(default) if isinstance(default, list) else default, metadata=meta)


P, V = Role.PROGRAM, Role.VALUE
_ARCH = "an architecture key"
_STEP_VALUE = "reaches the step as data (its replica's row), not compiled in"


@dataclass(frozen=True)
class Config:
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
    )
    expert_width_factor: float = _key(
        1.0,
        "with collective_budget: the experts' widths relative to the analysts' (their given "
        "widths times this, before the scale)",
        "collective",
        P,
        _ARCH,
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
    # --- training
    optimizer: str = _key(
        "adam",
        "adam (L2 in the gradient), adamw or sgd (momentum 0.9)",
        "training",
        P,
        "the update rule",
    )
    learning_rate: float = _key(
        1e-3,
        "learning rate (constant unless lr_plateau_patience > 0)",
        "training",
        V,
        "lives in the optimizer state",
    )
    lr_plateau_patience: int = _key(
        0,
        "multiply the learning rate by lr_plateau_factor after this many epochs in a row "
        "without a new best validation accuracy (0: constant, as the original)",
        "training",
        V,
        "sets the learning rate in the optimizer state from the validation history",
        setting=True,
    )
    lr_plateau_factor: float = _key(
        0.1,
        "the factor of each plateau reduction, in (0, 1)",
        "training",
        V,
        "sets the learning rate in the optimizer state from the validation history",
        setting=True,
    )
    weight_decay: float = _key(
        0.0,
        "adam: L2 coefficient; adamw: decoupled decay; sgd: L2",
        "training",
        V,
        "lives in the optimizer state; 0 compiles without the decay pass",
        program_part=lambda v: v > 0,
    )
    batch_size: int = _key(
        128, "global batch size (split across devices)", "training", P, "the batch's shape"
    )
    eval_batch_size: int = _key(
        1000,
        "validation/test batch size (padded and masked: the metrics do not depend on it)",
        "training",
        P,
        "the evaluation batches' shape; masked, so no metric changes",
        trajectory=False,
    )
    val_split: float = _key(
        0.1,
        "fraction of the training split held out for validation, in (0, 1)",
        "training",
        V,
        "the split's index arrays, whose lengths are shapes",
        program_part=lambda v: v,
    )
    gradient_accumulation_steps: int = _key(
        1,
        "micro-batches of batch_size per update",
        "training",
        P,
        "the update's inner loop",
        setting=True,
    )
    epochs: int = _key(
        20,
        "training epochs (with early stopping: at most)",
        "training",
        Role.LENGTH,
        "a run with more epochs extends one with fewer",
        setting=True,
    )
    early_stopping_patience: int = _key(
        0,
        "stop once this many epochs in a row brought no new best validation accuracy (mean "
        "over the replicas; 0: train all epochs)",
        "training",
        Role.LENGTH,
        "decides where the run ends, from its validation history; the epochs before are the same",
        setting=True,
    )
    use_augmentation: bool = _key(
        False,
        "on-device augmentation (docs/design.md, Data)",
        "training",
        P,
        "adds the augmentation",
        setting=True,
    )
    seed: int = _key(
        0, "one seed: split, init, shuffling, dropout, augmentation", "training", V, "the RNG keys"
    )
    num_seeds: int = _key(
        1,
        "replicas trained together with seeds seed, seed+1, ...",
        "training",
        P,
        "the replica axis",
    )
    dtype: str = _key(
        "float32",
        "compute dtype: float32 or bfloat16 (parameters stay float32)",
        "training",
        P,
        "the compute dtype",
        setting=True,
    )
    use_mixed_precision: Optional[bool] = _key(
        None,
        "the original's key: true = dtype bfloat16 (float32 parameters; bf16 has float32's "
        "exponent range, so no loss scaling is needed), false = float32; a value given wins "
        "over a preset's; contradicting an explicit dtype is an error",
        "training",
        P,
        "sets dtype",
    )
    topk: tuple = _key(
        (1,),
        "accuracies to log, e.g. (1, 5): top-k for each k > 1 as "
        "*/accuracy_topK (top-1 stays */accuracy)",
        "training",
        P,
        "adds metrics to the step",
    )
    # --- runtime
    device: str = _key(
        "auto",
        "auto, cuda (alias gpu) or cpu; a missing GPU is a warning",
        "runtime",
        Role.DEVICE,
        "where, not what",
    )
    data_dir: Optional[str] = _key(
        None,
        "folder with the raw dataset files (itself, DIR/<dataset>, torchvision's "
        "DIR/MNIST/raw, DIR/downloads/manual) or a prepared TFDS data dir; then "
        "$JAXCOLLECTIVE_DATA_DIR, $TFDS_DATA_DIR, ~/tensorflow_datasets, "
        "/usr/share/datasets are searched",
        "runtime",
        Role.DATA,
        "the files are checked by content",
    )
    manual_dir: Optional[str] = _key(
        None,
        "another folder searched like data_dir (TFDS's name)",
        "runtime",
        Role.DATA,
        "the files are checked by content",
    )
    results: str = _key(
        "runs/results.jsonl",
        "results file: one JSON line per finished run",
        "runtime",
        Role.OUTPUT,
        "where the record goes",
    )
    wandb_project: str = _key("jaxcollective", "wandb project", "runtime", Role.OUTPUT, "logging")
    wandb_name: Optional[str] = _key(
        None, "wandb run name (default: type-size-dataset-seed)", "runtime", Role.OUTPUT, "logging"
    )
    wandb_entity: Optional[str] = _key(None, "wandb entity", "runtime", Role.OUTPUT, "logging")
    progress: bool = _key(
        True, "progress bar over epochs on stderr", "runtime", Role.OUTPUT, "display"
    )
    checkpoint_dir: str = _key(
        "runs/checkpoints",
        "checkpoints, a folder per run named by its config's fingerprint",
        "runtime",
        Role.OUTPUT,
        "checkpoints",
    )
    checkpoint_every: int = _key(
        0,
        "save every K epochs; 0: after any epoch ending 60 s or more "
        "after the last save (and always when the run stops)",
        "runtime",
        Role.OUTPUT,
        "checkpoints",
    )
    resume: str = _key(
        "auto",
        "auto: continue from a checkpoint of the same config; never: start over (and replace it)",
        "runtime",
        Role.OUTPUT,
        "checkpoints",
    )
    keep_checkpoint: bool = _key(
        False,
        "keep the final state when the run finishes (else its checkpoint folder is removed)",
        "runtime",
        Role.OUTPUT,
        "checkpoints",
    )
    # Accepted for the original's sweeps; checked against the dataset or ignored.
    input_dim: Optional[int] = _key(
        None, "must match the dataset if given", "compat", Role.CHECK, "checked against the dataset"
    )
    num_classes: Optional[int] = _key(
        None, "must match the dataset if given", "compat", Role.CHECK, "checked against the dataset"
    )
    num_workers: Optional[int] = _key(
        None,
        "no effect: the data pipeline runs on the device",
        "compat",
        Role.NO_EFFECT,
        "on-device-data",
    )
    use_gpu: Optional[bool] = _key(
        None,
        "the original's key: false runs on the CPU (as --device=cpu)",
        "compat",
        Role.DEVICE,
        "sets device",
    )
    use_torch_compile: Optional[bool] = _key(
        None, "no effect: every step is compiled (jit)", "compat", Role.NO_EFFECT, "always-compiled"
    )
    log_interval: Optional[int] = _key(
        None,
        "no effect: metrics are logged once per epoch",
        "compat",
        Role.NO_EFFECT,
        "per-epoch-logging",
    )
    training_strategy: Optional[str] = _key(
        None, "no effect: one training strategy here", "compat", Role.NO_EFFECT, "single-strategy"
    )

    # ---------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, values: dict[str, Any], preset: Optional[str] = None) -> "Config":
        """Defaults, then `preset`, then `values` (strings are parsed to the field type)."""
        base: dict[str, Any] = (
            dict(PRESETS[_check_choice("config", preset, PRESETS)]) if preset else {}
        )
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ConfigError(
                f"unknown config key {unknown[0]!r}; run `python run.py --help` "
                "for the list of keys"
            )
        given = {k: parse_value(k, v) for k, v in values.items()}
        merged = {**base, **given}
        merged["dtype"] = _resolve_dtype(given, base)
        merged["use_mixed_precision"] = merged["dtype"] == "bfloat16"
        if given.get("use_gpu") is False and "device" not in given:
            merged["device"] = "cpu"
        cfg = cls(**merged)
        cfg.validate()
        return cfg

    @classmethod
    def from_values(cls, values: dict[str, Any], preset: Optional[str] = None) -> "Config":
        """`from_dict` for what a user or a sweep sends: the original's `model` alias of
        `model_type`, and `config` (the preset, as a sweep parameter) among the values."""
        values = dict(values)
        preset = values.pop("config", None) or preset
        for alias, key in ALIASES.items():
            if alias in values:
                values[key] = values.pop(alias)
        return cls.from_dict(values, None if preset in (None, "None", "") else str(preset))

    def replace(self, **kw) -> "Config":
        if "use_mixed_precision" in kw or "dtype" in kw:  # one sets the other
            base = {
                k: v for k, v in self.to_dict().items() if k not in ("use_mixed_precision", "dtype")
            }
            return Config.from_dict({**base, **kw})
        cfg = dataclasses.replace(self, **{k: parse_value(k, v) for k, v in kw.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def shape_key(self) -> "Config":
        """This config with every field that does not change the model's shapes reset."""
        return Config(**{k: getattr(self, k) for k in SHAPE_FIELDS})

    def ignored_keys(self) -> frozenset[str]:
        """Keys this run does not read: collective keys for a baseline, target_params for
        the collective, and the plateau's keys when it is off (a constant learning rate:
        the run is the one that never had them, with the same checkpoint fingerprint)."""
        model = BASELINE_ONLY if self.model_type == "collective" else COLLECTIVE_ONLY
        if self.collective_budget is None:
            model = model | BUDGET_ONLY
        return model | PLATEAU if self.lr_plateau_patience == 0 else model

    def program_key(self) -> str:
        """What decides the compiled program, as a canonical string: the PROGRAM keys this
        model type reads, and the program-shaping part of VALUE keys (weight_decay > 0)."""
        out = {}
        for k, v in self.to_dict().items():
            meta = FIELDS[k].metadata
            if meta["role"] is Role.PROGRAM and k not in self.ignored_keys():
                out[k] = v
            elif meta["program_part"] is not None:
                out[k] = meta["program_part"](v)
        return json.dumps(out, sort_keys=True, default=str)

    def trajectory(self) -> dict[str, Any]:
        """The keys that decide what this run computes, epoch by epoch: two runs with the
        same trajectory are the same experiment (checkpoint fingerprint, report folding)."""
        return {
            k: v
            for k, v in self.to_dict().items()
            if k in TRAJECTORY_KEYS and k not in self.ignored_keys()
        }

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        _check_choice("model_type", self.model_type, MODEL_TYPES)
        _check_choice("dataset", self.dataset, DATASET_NAMES)
        _check_choice("synthetic_like", self.synthetic_like, DATASETS)
        _check_choice("collective_version", self.collective_version, COLLECTIVE_VERSIONS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("resume", self.resume, RESUME)
        for k in ("lr_plateau_patience", "early_stopping_patience"):
            if getattr(self, k) < 0:
                _fail(k, getattr(self, k), "an integer >= 0 (0: off)")
        if not 0.0 < self.lr_plateau_factor < 1.0:
            _fail(
                "lr_plateau_factor",
                self.lr_plateau_factor,
                "a number strictly between 0 and 1, e.g. 0.1",
            )
        if self.checkpoint_every < 0:
            _fail("checkpoint_every", self.checkpoint_every, "an integer >= 0 (0: every 60 s)")
        if self.n_total < 2:
            _fail("n_total", self.n_total, "an integer >= 2 (at least 1 expert and 1 analyst)")
        if not 0.0 < self.expert_ratio < 1.0:
            _fail("expert_ratio", self.expert_ratio, "a number strictly between 0 and 1")
        if self.n_experts is not None and self.n_experts < 1:
            _fail("n_experts", self.n_experts, "a positive integer")
        for k in (
            "c_expert",
            "c_collective",
            "collective_hidden_scale",
            "learning_rate",
            "diversity_temperature",
        ):
            if not getattr(self, k) > 0:
                _fail(k, getattr(self, k), "a number > 0")
        if not 0.0 < self.val_split < 1.0:
            _fail("val_split", self.val_split, "a fraction strictly between 0 and 1, e.g. 0.1")
        classes = self.dataset_info.num_classes
        if not self.topk or any(not 1 <= k <= classes for k in self.topk):
            _fail("topk", self.topk, f"k values between 1 and {classes}, e.g. (1,) or (1, 5)")
        if self.seed < 0:
            _fail("seed", self.seed, "a non-negative integer")
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
            if getattr(self, k) < 1:
                _fail(k, getattr(self, k), "a positive integer")
        if self.adaptive_collective_max_dim < self.adaptive_collective_min_dim:
            _fail(
                "adaptive_collective_max_dim",
                self.adaptive_collective_max_dim,
                f"an integer >= adaptive_collective_min_dim ({self.adaptive_collective_min_dim})",
            )
        for k in ("expert_hidden", "analyst_hidden"):
            widths = getattr(self, k)
            if len(widths) < 2:
                _fail(k, widths, "a list of 2 or more hidden widths, e.g. [512, 256]")
            if any(w < 1 for w in widths):
                _fail(k, widths, "positive widths")
        for k in ("drop_models_expert_rate", "drop_models_analyst_rate"):
            if not 0.0 <= getattr(self, k) < 1.0:
                _fail(k, getattr(self, k), "a probability in [0, 1)")
        for k in ("weight_decay", "diversity_lambda"):
            if getattr(self, k) < 0:
                _fail(k, getattr(self, k), "a number >= 0")
        if self.collective_budget is not None and self.collective_budget < 1:
            _fail("collective_budget", self.collective_budget, "a positive parameter count")
        if not self.expert_width_factor > 0:
            _fail("expert_width_factor", self.expert_width_factor, "a number > 0, e.g. 1.0")
        if self.target_params is not None and self.target_params < 1:
            _fail("target_params", self.target_params, "a positive parameter count")
        info = self.dataset_info
        for k, want in (("input_dim", info.input_dim), ("num_classes", info.num_classes)):
            got = getattr(self, k)
            if got is not None and got != want:
                _fail(k, got, f"{want} for dataset {self.dataset!r} (or leave it unset)")

    # ------------------------------------- derived (docs/design.md, Derivation rules)
    @property
    def dataset_info(self) -> DatasetInfo:
        return DATASETS[self.data_like]

    @property
    def dims(self) -> "CollectiveDims":
        return collective_dims(self)

    @property
    def data_like(self) -> str:
        """The real dataset whose shape, normalisation and augmentation this run uses."""
        return self.synthetic_like if self.dataset == "synthetic" else self.dataset

    @property
    def data_name(self) -> str:
        """The data's name in logs and records: `synthetic[fashion_mnist]` for synthetic."""
        return f"synthetic[{self.synthetic_like}]" if self.dataset == "synthetic" else self.dataset

    @property
    def seeds(self) -> list[int]:
        """The replicas' seeds: seed, seed + 1, ..., seed + num_seeds - 1."""
        return [self.seed + i for i in range(self.num_seeds)]

    @property
    def extra_topk(self) -> tuple[int, ...]:
        """The k > 1 of `topk`, sorted, each logged as */accuracy_topK."""
        return tuple(sorted({k for k in self.topk if k > 1}))


def _resolve_dtype(given: dict[str, Any], preset: dict[str, Any]) -> str:
    """dtype from `dtype` and the original's `use_mixed_precision`: what the user gave
    wins over the preset; both given and contradicting is an error."""
    mp, dt = given.get("use_mixed_precision"), given.get("dtype")
    if mp is not None and dt is not None and mp != (dt == "bfloat16"):
        raise ConfigError(
            f"use_mixed_precision={mp} contradicts dtype={dt}; give one of them "
            "(use_mixed_precision=true means dtype=bfloat16)"
        )
    if dt is not None:
        return dt
    if mp is not None:
        return "bfloat16" if mp else "float32"
    if preset.get("use_mixed_precision") is not None:
        return "bfloat16" if preset["use_mixed_precision"] else "float32"
    return preset.get("dtype", FIELDS["dtype"].default)


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


def collective_dims(cfg: Config) -> CollectiveDims:
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


# ------------------------------------------------------------------ presets
PRESETS: dict[str, dict[str, Any]] = {
    # The original's CONFIG_PHASE1: 2 experts, 6 analysts, 2,969,887 parameters.
    "phase1": dict(
        dataset="fashion_mnist",
        n_total=8,
        expert_ratio=0.2,
        expert_hidden=(512, 256),
        expert_output=128,
        analyst_hidden=(256, 128),
        analyst_output=64,
        c_expert=0.25,
        c_collective=1.0,
        collective_version="simple_mlp",
        collective_hidden_scale=1.0,
        batch_size=128,
        gradient_accumulation_steps=4,
        eval_batch_size=1024,
        learning_rate=1e-3,
        epochs=100,
        optimizer="adam",
        weight_decay=1e-4,
        use_augmentation=True,
        use_mixed_precision=False,
        topk=(1,),
        val_split=0.1,
        seed=42,
    ),
    # The original's CONFIG_DEBUG: the same rules at small widths, 567,044 parameters.
    "debug": dict(
        dataset="fashion_mnist",
        n_total=8,
        expert_ratio=0.2,
        expert_hidden=(128, 64),
        expert_output=32,
        analyst_hidden=(64, 32),
        analyst_output=16,
        c_expert=0.25,
        c_collective=1.0,
        collective_version="simple_mlp",
        collective_hidden_scale=1.0,
        batch_size=128,
        gradient_accumulation_steps=4,
        eval_batch_size=512,
        learning_rate=1e-3,
        epochs=5,
        optimizer="adam",
        weight_decay=0.0,
        use_augmentation=True,
        use_mixed_precision=True,
        topk=(1,),
        val_split=0.1,
        seed=42,
    ),
}
FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def role(key: str) -> Role:
    return FIELDS[key].metadata["role"]


def keys_of(*roles: Role) -> frozenset[str]:
    return frozenset(k for k in FIELDS if role(k) in roles)


# Everything below derives from the fields' declarations.
# Keys read only by the collective, and only by baselines.
COLLECTIVE_ONLY = frozenset(k for k, f in FIELDS.items() if f.metadata["group"] == "collective")
BASELINE_ONLY = frozenset({"target_params"})
# Keys read only by a collective sized to a budget (collective_budget set).
BUDGET_ONLY = frozenset({"expert_width_factor"})
PLATEAU = frozenset({"lr_plateau_patience", "lr_plateau_factor"})
SHAPE_FIELDS = ("model_type", "dataset", "synthetic_like") + tuple(sorted(COLLECTIVE_ONLY))
# Keys that change nothing here, with the one-word reason a run records for each.
NO_EFFECT = {k: FIELDS[k].metadata["why"] for k in sorted(keys_of(Role.NO_EFFECT))}
# Keys that may differ between trials sharing one compiled program.
VALUE_KEYS = keys_of(Role.VALUE)
# What may differ between the members of one population (jaxcollective.train.population): the
# VALUE keys no part of which shapes the program.
MEMBER_KEYS = frozenset(k for k in VALUE_KEYS if FIELDS[k].metadata["program_part"] is None)
# The VALUE keys the train step reads per replica (train.ReplicaData.values).
STEP_VALUES = tuple(k for k, f in FIELDS.items() if f.metadata["step_value"])
# Keys that decide what a run computes epoch by epoch (its checkpoint fingerprint).
TRAJECTORY_KEYS = frozenset(
    k for k in keys_of(Role.PROGRAM, Role.VALUE) if FIELDS[k].metadata["trajectory"]
)
# Training settings that every run compared in one report section must share.
SHARED_SETTINGS = tuple(k for k, f in FIELDS.items() if f.metadata["setting"])


# ---------------------------------------------------------- typed parsing
def _fail(key: str, value: Any, allowed: str) -> typing.NoReturn:
    if isinstance(value, tuple):
        value = list(value)
    raise ConfigError(f"invalid {key}={value!r}: expected {allowed}")


def _check_choice(key: str, value: Any, choices) -> Any:
    if value not in choices:
        _fail(key, value, "one of " + ", ".join(choices))
    return value


_NONE = {"none", "null", ""}
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def parse_value(key: str, value: Any) -> Any:
    """Convert `value` (a Python object, or its `str()` as wandb's agent sends it) to the
    type of config field `key`."""
    if key not in FIELDS:
        raise ConfigError(
            f"unknown config key {key!r}; run `python run.py --help` for the list of keys"
        )
    hint = _HINTS[key]
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if isinstance(value, str) and value.strip().lower() in _NONE and (optional or value == ""):
        if optional:
            return None
        _fail(key, value, f"a {base.__name__} value")
    if value is None:
        if optional:
            return None
        _fail(key, value, f"a {base.__name__} value")
    try:
        if base is bool:
            return to_bool(value)
        if base is int:
            return to_int(value)
        if base is float:
            return to_float(value)
        if base is tuple:
            return to_widths(value)
        if base is str:
            return str(value)
    except (ValueError, TypeError, SyntaxError):
        pass
    kind = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        tuple: "a list of integers such as [512, 256]",
        str: "a string",
    }[base]
    _fail(key, value, kind)


def to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(v)


def to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(v)
    if isinstance(v, int):
        return v
    f = float(v)  # accepts "6100000", "6.1e6", "6100000.0"
    if not math.isfinite(f) or f != int(f):
        raise ValueError(v)
    return int(f)


def to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(v)
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(v)
    return f


def to_widths(v: Any) -> tuple[int, ...]:
    if isinstance(v, str):
        s = v.strip()
        v = ast.literal_eval(s if s.startswith(("[", "(")) else f"[{s}]")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise ValueError(v)
    return tuple(to_int(x) for x in v)
