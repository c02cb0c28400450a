"""The `Config` class (its keys are the fields of the mixins in keys_model, keys_training
and keys_runtime, in that order), its building and derived properties, and every list
that derives from the keys' declarations; typed parsing of one key's value."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any, Optional

from . import validation
from .datasets import DATASETS, DatasetInfo
from .derive import CollectiveDims, collective_dims
from .keys_model import ModelKeys
from .keys_runtime import RuntimeKeys
from .keys_training import TrainingKeys
from .presets import PRESETS
from .roles import _ARCH, Role
from .values import _NONE, ConfigError, _check_choice, _fail, to_bool, to_float, to_int, to_widths


# The original's command line: `train.py --config phase1 --model shallow --device cuda`.
ALIASES = {"model": "model_type"}


# The fields come from the mixins in reversed order (dataclasses collect them along the
# reversed MRO): ModelKeys's, then TrainingKeys's, then RuntimeKeys's.
@dataclass(frozen=True)
class Config(RuntimeKeys, TrainingKeys, ModelKeys):
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
        """Keys this run does not read: collective keys for a baseline (but for those that
        size the collective whose count a baseline without target_params takes),
        target_params for the collective, expert_width_factor without collective_budget,
        and the plateau's keys when it is off (a constant learning rate:
        the run is the one that never had them, with the same checkpoint fingerprint)."""
        if self.model_type == "collective":
            model = BASELINE_ONLY
        elif self.target_params is None:  # sized to the collective's count: its shape keys
            model = COLLECTIVE_ONLY - COLLECTIVE_SIZE
        else:
            model = COLLECTIVE_ONLY
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
        ignored = self.ignored_keys()
        return {
            k: v
            for k, v in self.to_dict().items()
            if k in TRAJECTORY_KEYS
            and k not in ignored
            and not (FIELDS[k].metadata["since"] and v == FIELDS[k].default)
        }

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        validation.validate(self)

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


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def role(key: str) -> Role:
    return FIELDS[key].metadata["role"]


def keys_of(*roles: Role) -> frozenset[str]:
    return frozenset(k for k in FIELDS if role(k) in roles)


# Everything below derives from the fields' declarations.
# Keys read only by the collective, and only by baselines.
COLLECTIVE_ONLY = frozenset(k for k, f in FIELDS.items() if f.metadata["group"] == "collective")
BASELINE_ONLY = frozenset(
    {"target_params"} | {k for k, f in FIELDS.items() if f.metadata["group"] == "baseline"}
)
# Keys read only by a collective sized to a budget (collective_budget set).
BUDGET_ONLY = frozenset({"expert_width_factor"})
# The collective's keys that decide its parameter count (its architecture keys): what a
# baseline without target_params reads, since it takes that count.
COLLECTIVE_SIZE = frozenset(k for k in COLLECTIVE_ONLY if FIELDS[k].metadata["why"] == _ARCH)
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
