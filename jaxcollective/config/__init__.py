"""One config object: defaults, presets, overrides, the derivation rules (docs/design.md,
"Derivation rules").

Every key a user (or a wandb sweep) can set is a field of `Config`. Values arrive as
Python objects (from YAML or wandb.config) or as strings (from the command line,
where wandb's agent writes `str(value)`), and `Config.from_dict` turns both into the
field's type. Anything invalid raises `ConfigError` with one line naming the key,
the value and what is allowed.

Every name is imported from this package (`from jaxcollective.config import Config`);
its modules, each importing only those listed before it:

- `choices`: the allowed values of the choice keys (`MODEL_TYPES`, `OPTIMIZERS`, ...);
- `datasets`: `DatasetInfo`, `DATASETS` (the datasets' dims and normalisation);
- `roles`: `Role` and `_key`, a key's one declaration (help, group, role, why);
- `values`: `ConfigError`, `_fail`, the converters `to_bool`, `to_int`, ...;
- `keys_model`, `keys_training`, `keys_runtime`: the keys, as fields of the frozen
  dataclasses `Config` inherits (experiment and collective; training; runtime and the
  original's compatibility keys);
- `validation`: the checks of `Config.validate`;
- `derive`: `collective_dims` (docs/design.md, "Derivation rules");
- `presets`: `PRESETS`, the original's named configs;
- `core`: `Config` itself, `FIELDS`, every list derived from the keys' roles
  (`VALUE_KEYS`, `TRAJECTORY_KEYS`, ...), `parse_value`.
"""

from .choices import (
    BASELINE_TYPES,
    COLLECTIVE_VERSIONS,
    DEVICES,
    DTYPES,
    MODEL_TYPES,
    OPTIMIZERS,
    RESUME,
)
from .core import (
    _HINTS,
    ALIASES,
    BASELINE_ONLY,
    BUDGET_ONLY,
    COLLECTIVE_SIZE,
    COLLECTIVE_ONLY,
    FIELDS,
    MEMBER_KEYS,
    NO_EFFECT,
    PLATEAU,
    SHAPE_FIELDS,
    SHARED_SETTINGS,
    STEP_VALUES,
    TRAJECTORY_KEYS,
    VALUE_KEYS,
    Config,
    _resolve_dtype,
    keys_of,
    parse_value,
    role,
)
from .datasets import DATASET_NAMES, DATASETS, TFDS_DATASETS, DatasetInfo
from .derive import CollectiveDims, collective_dims
from .presets import PRESETS
from .roles import _ARCH, _STEP_VALUE, P, Role, V, _key
from .values import (
    _FALSE,
    _NONE,
    _TRUE,
    ConfigError,
    _check_choice,
    _fail,
    to_bool,
    to_float,
    to_int,
    to_widths,
)

__all__ = [
    # choices
    "BASELINE_TYPES",
    "COLLECTIVE_VERSIONS",
    "DEVICES",
    "DTYPES",
    "MODEL_TYPES",
    "OPTIMIZERS",
    "RESUME",
    # core
    "ALIASES",
    "BASELINE_ONLY",
    "BUDGET_ONLY",
    "COLLECTIVE_SIZE",
    "COLLECTIVE_ONLY",
    "FIELDS",
    "MEMBER_KEYS",
    "NO_EFFECT",
    "PLATEAU",
    "SHAPE_FIELDS",
    "SHARED_SETTINGS",
    "STEP_VALUES",
    "TRAJECTORY_KEYS",
    "VALUE_KEYS",
    "Config",
    "_HINTS",
    "_resolve_dtype",
    "keys_of",
    "parse_value",
    "role",
    # datasets
    "DATASET_NAMES",
    "DATASETS",
    "TFDS_DATASETS",
    "DatasetInfo",
    # derive
    "CollectiveDims",
    "collective_dims",
    # presets
    "PRESETS",
    # roles
    "P",
    "Role",
    "V",
    "_ARCH",
    "_STEP_VALUE",
    "_key",
    # values
    "ConfigError",
    "_FALSE",
    "_NONE",
    "_TRUE",
    "_check_choice",
    "_fail",
    "to_bool",
    "to_float",
    "to_int",
    "to_widths",
]
