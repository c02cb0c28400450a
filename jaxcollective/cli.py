"""The command line of every entry point: run.py, the sweep, the report, the benchmark.

One parser: `--key=value` or `--key value`; a bare `--flag` means true; `-h` is
`--help`. For run.py and the benchmark every config key is an option; values stay
strings here and are typed by `Config.from_dict`, which is also what turns the `str()`
forms that wandb's agent writes (`True`, `[512, 256]`, `1e-05`, `None`) into the
field's type. The sweep and the report take their own options only.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Optional

from jaxcollective.config import ALIASES, FIELDS, PRESETS, ConfigError, to_bool, to_int


class UsageError(ConfigError):
    pass


def parse_argv(
    argv: Iterable[str],
    extra: Optional[dict[str, str]] = None,
    flags: Iterable[str] = (),
    *,
    repeated: Iterable[str] = (),
    positional: Optional[str] = None,
    config_keys: bool = True,
) -> tuple[dict[str, str], dict]:
    """Split argv into (config values, extra options). `extra` maps the names of
    non-config options to their help; `flags` are the extra options that take no value;
    `repeated` ones collect a list (`--set A=1 --set B=2`); `positional` names the one
    bare argument allowed (stored among the options). With `config_keys`, every other
    name is a config value, checked (unknown keys too) by `Config`; without, it is an
    error here."""
    extra = extra or {}
    flags, repeated = set(flags), set(repeated)
    values: dict[str, str] = {}
    options: dict = {}
    args = ["--help" if a == "-h" else a for a in argv]
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or tok == "--":
            if positional and positional not in options:
                options[positional] = tok
                i += 1
                continue
            raise UsageError(
                f"unexpected argument {tok!r}: options are written --key=value; see --help"
            )
        name, eq, value = tok[2:].partition("=")
        name = name.replace("-", "_")
        name = ALIASES.get(name, name) if config_keys else name
        is_option = name in extra or name in flags or name in repeated
        if not is_option and not config_keys:
            raise UsageError(f"unknown option --{name}; see --help")
        if not eq:
            takes_bool = name in flags or (
                not is_option and name in FIELDS and FIELDS[name].type in ("bool", bool)
            )
            nxt = args[i + 1] if i + 1 < len(args) else None
            if name in flags:
                value = "true"
            elif nxt is not None and not nxt.startswith("--"):
                value, i = nxt, i + 1
            elif takes_bool:
                value = "true"
            else:
                raise UsageError(f"option --{name} needs a value: --{name}=VALUE")
        if name in repeated:
            options.setdefault(name, []).append(value)
            i += 1
            continue
        target = options if is_option else values
        if name in target and target[name] != value:
            print(
                f"warning: --{name} is given twice ({target[name]!r}, then {value!r}); "
                f"using {value!r}",
                file=sys.stderr,
            )
        target[name] = value  # an unknown key is Config's to refuse, as from a sweep
        i += 1
    return values, options


def bool_option(opts: dict, name: str, default: bool = False) -> bool:
    """An extra option read as a boolean, with the config keys' spellings."""
    if name not in opts:
        return default
    try:
        return to_bool(opts[name])
    except ValueError:
        raise UsageError(f"--{name} must be true or false, got {opts[name]!r}") from None


def int_option(opts: dict, name: str, default: int, minimum: int) -> int:
    """An extra option read as an integer >= minimum."""
    if name not in opts:
        return default
    try:
        value = to_int(opts[name])
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise UsageError(f"--{name} must be an integer >= {minimum}, got {opts[name]!r}")
    return value


def help_text(
    prog: str,
    summary: str,
    extra: dict[str, str],
    *,
    config_keys: bool = True,
    args: str = "[--key=value ...]",
) -> str:
    """--help of an entry point: usage, summary, its own options, then (where config keys
    are options) every key by group with its default."""
    lines = [f"usage: {prog} {args}", "", summary, "", "options:"]
    for name, text in extra.items():
        lines.append(f"  --{name:<30} {text}")
    if not config_keys:
        return "\n".join(lines)
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


def guarded(main: Callable[[], int]) -> int:
    """Run `main`; a bad input becomes one line on stderr and exit status 2. Output cut
    short by the reader (`run.py --help | head`) ends quietly."""
    try:
        return main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader is gone: later writes to stdout (at exit too) would fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def console_script(main: Callable[[list[str]], int]) -> Callable[[], None]:
    """An installed command (pyproject's [project.scripts]) that runs `main(argv)`."""

    def run() -> None:
        sys.exit(main(sys.argv[1:]))

    return run
