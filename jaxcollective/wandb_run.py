"""Starting a wandb run, and reading a sweep's values back from it.

Under `wandb agent`, run.py is started as `python run.py --key=value ...` and
`wandb.init()` merges the sweep's parameter file (WANDB_SWEEP_PARAM_PATH) into
`wandb.config`; both sources are read, with the same typed parsing.
"""

from __future__ import annotations

import netrc
import os
import sys
from typing import Any, Optional
from urllib.parse import urlsplit

from jaxcollective.config import FIELDS
from jaxcollective.util import describe_error, reachable


_said_offline: list = []


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
    if _said_offline:  # once per process (a sweep starts a run per trial)
        return "offline"
    _said_offline.append(True)
    print(
        "wandb: no API key found (WANDB_API_KEY or `wandb login`); logging offline to "
        "./wandb, upload later with `wandb sync`",
        file=sys.stderr,
    )
    return "offline"


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


# An unreachable W&B server costs at most these (checking the key, then starting the
# run), then the run logs offline: it never waits ~100 s on wandb's default retries.
LOGIN_TIMEOUT_S, INIT_TIMEOUT_S = 3, 9


def _server_reachable(timeout: float = 3.0) -> bool:
    """A TCP connection to the W&B server opens within `timeout` s (DNS included)."""
    url = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    return reachable(url.hostname or "api.wandb.ai", port, timeout)


def start(
    values: dict[str, Any],
    mode: str,
    cfg=None,
    resume_id: Optional[str] = None,
    group: Optional[str] = None,
    name: Optional[str] = None,
    reinit: str = "finish_previous",
    quiet: bool = False,
):
    """wandb.init, then the sweep's values (if any) merged over the command line's.
    `reinit="create_new"` leaves runs already open in this process open (a population's
    members log at once, each to its own run). `quiet`: none of wandb's own lines on
    the console (a sweep's trials are runs each: wandb's header, history and summary
    are ~40 lines a trial); the run keeps everything, its logs included.
    Online, a server that does not answer within INIT_TIMEOUT_S seconds (or refuses)
    makes the run log offline instead, saying so in one line."""
    import wandb

    project = (cfg.wandb_project if cfg is not None else values.get("wandb_project")) or FIELDS[
        "wandb_project"
    ].default
    entity = cfg.wandb_entity if cfg is not None else values.get("wandb_entity")
    if entity in ("None", ""):
        entity = None
    kw = dict(project=str(project), entity=entity, reinit=reinit)
    if resume_id:
        kw.update(id=resume_id, resume="allow")
    if group:
        kw.update(group=group, name=name)
    quietly = {"silent": True} if quiet else {}
    if mode == "online" and not _server_reachable():
        url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        print(
            f"wandb: {url} cannot be reached; logging offline to ./wandb instead, upload "
            "later with `wandb sync`",
            file=sys.stderr,
            flush=True,
        )
        mode = "offline"
    try:
        run = wandb.init(
            mode=mode,
            settings=wandb.Settings(
                init_timeout=INIT_TIMEOUT_S, login_timeout=LOGIN_TIMEOUT_S, **quietly
            ),
            **kw,
        )
    except Exception as err:  # noqa: BLE001 - CommError, UsageError, timeouts, auth
        if mode != "online":
            raise
        print(
            f"wandb: the W&B server did not answer in time ({describe_error(err)}); "
            "logging offline to ./wandb instead, upload later with `wandb sync`",
            file=sys.stderr,
            flush=True,
        )
        run = wandb.init(mode="offline", settings=wandb.Settings(**quietly), **kw)
    merged = dict(values)
    for k, v in dict(run.config).items():
        if not k.startswith("_"):
            merged[k] = v
    return run, merged
