"""run.py's job: parse flags into one config, then describe (--dry_run) or train."""

from __future__ import annotations

import json
import sys

from .cli import guarded, help_text, parse_argv

EXTRA = {
    "config": "preset applied before the other keys: debug or phase1",
    "dry_run": "print the resolved architecture as one JSON line and exit",
    "help": "show this message",
}


def main(argv: list[str]) -> int:
    return guarded(lambda: _main(argv))


def _main(argv: list[str]) -> int:
    values, opts = parse_argv(argv, EXTRA, flags=("dry_run", "help"))
    if "help" in opts:
        print(help_text("run.py", "Train one model (or describe it with --dry_run).", EXTRA))
        return 0
    from .api import describe

    preset = opts.get("config")
    if opts.get("dry_run", "false").lower() in ("true", "1", "yes"):
        print(json.dumps(describe(values, preset)))
        return 0
    raise NotImplementedError("training arrives with issue 3")
