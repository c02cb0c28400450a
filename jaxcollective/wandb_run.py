"""Starting a wandb run, and reading a sweep's values back from it.

Under `wandb agent`, run.py is started as `python run.py --key=value ...` and
`wandb.init()` merges the sweep's parameter file (WANDB_SWEEP_PARAM_PATH) into
`wandb.config`; both sources are read, with the same typed parsing.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from .config import FIELDS


def wandb_mode() -> Optional[str]:
    """None when wandb is not to be used (not installed, or WANDB_MODE=disabled);
    else the mode to start it in."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "disabled":
        return None
    try:
        import wandb  # noqa: F401
    except ImportError:
        return None
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode == "online" or _logged_in():
        return "online"
    print("wandb: no API key found (WANDB_API_KEY or `wandb login`); logging offline to "
          "./wandb, upload later with `wandb sync`", file=sys.stderr)
    return "offline"


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start(values: dict[str, Any], mode: str):
    """wandb.init, then the sweep's values (if any) merged over the command line's."""
    import wandb

    project = values.get("wandb_project") or FIELDS["wandb_project"].default
    entity = values.get("wandb_entity")
    if entity in ("None", ""):
        entity = None
    run = wandb.init(project=str(project), entity=entity, mode=mode, reinit="finish_previous")
    merged = dict(values)
    for k, v in dict(run.config).items():
        if not k.startswith("_"):
            merged[k] = v
    return run, merged
