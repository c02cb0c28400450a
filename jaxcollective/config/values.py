"""Typed values: `ConfigError`, the one-line failure naming key, value and what is
allowed, and the converters from a Python object or its string to a field's type."""

from __future__ import annotations

import ast
import math
import typing
from typing import Any


class ConfigError(ValueError):
    """A config value is invalid; the message is one line meant for the user."""


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
