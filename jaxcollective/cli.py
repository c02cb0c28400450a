"""Command-line parsing shared by run.py and the benchmark.

Every config key is `--key=value` or `--key value`; a bare `--flag` means true. Values
stay strings here and are typed by `Config.from_dict`, which is also what turns the
`str()` forms that wandb's agent writes (`True`, `[512, 256]`, `1e-05`, `None`) into
the field's type.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable

from .config import ALIASES, FIELDS, PRESETS, ConfigError, _to_bool, _to_int


class UsageError(ConfigError):
    pass


def parse_argv(argv: Iterable[str], extra: dict[str, str] | None = None,
               flags: Iterable[str] = ()) -> tuple[dict[str, str], dict[str, str]]:
    """Split argv into (config values, extra options). `extra` maps the names of
    non-config options to their help; `flags` are the extra options that take no value.
    Every other name is a config value, checked (unknown keys too) by `Config`."""
    extra = extra or {}
    flags = set(flags)
    values: dict[str, str] = {}
    options: dict[str, str] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or tok == "--":
            raise UsageError(f"unexpected argument {tok!r}: options are written --key=value")
        name, eq, value = tok[2:].partition("=")
        name = ALIASES.get(name.replace("-", "_"), name.replace("-", "_"))
        if not eq:
            if name in flags or (name in FIELDS and FIELDS[name].type in ("bool", bool)):
                if i + 1 < len(args) and not args[i + 1].startswith("--") and name not in flags:
                    value, i = args[i + 1], i + 1
                else:
                    value = "true"
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                raise UsageError(f"option --{name} needs a value: --{name}=VALUE")
        target = options if (name in extra or name in flags) else values
        if name in target and target[name] != value:
            print(f"warning: --{name} is given twice ({target[name]!r}, then {value!r}); "
                  f"using {value!r}", file=sys.stderr)
        target[name] = value  # an unknown key is Config's to refuse, as from a sweep
        i += 1
    return values, options


def bool_option(opts: dict[str, str], name: str, default: bool = False) -> bool:
    """An extra option read as a boolean, with the config keys' spellings."""
    if name not in opts:
        return default
    try:
        return _to_bool(opts[name])
    except ValueError:
        raise UsageError(f"--{name} must be true or false, got {opts[name]!r}") from None


def int_option(opts: dict[str, str], name: str, default: int, minimum: int) -> int:
    """An extra option read as an integer >= minimum."""
    if name not in opts:
        return default
    try:
        value = _to_int(opts[name])
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise UsageError(f"--{name} must be an integer >= {minimum}, got {opts[name]!r}")
    return value


def help_text(prog: str, summary: str, extra: dict[str, str]) -> str:
    lines = [f"usage: {prog} [--key=value ...]", "", summary, "", "options:"]
    for name, text in extra.items():
        lines.append(f"  --{name:<30} {text}")
    group = None
    for name, f in FIELDS.items():
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines += ["", f"{group} keys:"]
        default = f.default
        if isinstance(default, tuple):
            default = list(default)
        text = f.metadata["help"]
        if "default" not in text:  # some keys say what their default means themselves
            text += f" (default: {default})"
        lines.append(f"  --{name:<30} {text}")
    lines += ["", f"presets (--config): {', '.join(PRESETS)}"]
    return "\n".join(lines)


def describe_error(err: BaseException, width: int = 160) -> str:
    """An exception in one short line: its type and its message's first line."""
    first = (str(err).strip().splitlines() or [""])[0][:width]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def guarded(main: Callable[[], int]) -> int:
    """Run `main`; a bad input becomes one line on stderr and exit status 2."""
    try:
        return main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
