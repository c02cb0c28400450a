"""run.py's job: parse flags (and a sweep's wandb.config) into one config, then
describe it (--dry_run) or train it."""

from __future__ import annotations

import json
import os
import sys

from .cli import bool_option, guarded, help_text, parse_argv
from .config import Config

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
    preset = opts.get("config")
    cfg = Config.from_dict(values, preset)  # bad flags fail before anything starts
    _setup_backend(cfg)
    from .api import describe, unused_keys

    if bool_option(opts, "dry_run"):
        print(json.dumps(describe(values, preset)))
        return 0

    from .experiment import StopFlag, train_and_evaluate
    from .writers import ConsoleWriter, MultiWriter, ResultsWriter, WandbWriter
    from . import wandb_run

    run = None
    mode = wandb_run.wandb_mode()
    if mode:
        run, values = wandb_run.start(values, mode)
        cfg = Config.from_dict(values, preset)
    writers = [ConsoleWriter(cfg.epochs, cfg.progress), ResultsWriter(cfg.results)]
    if run is not None:
        writers.append(WandbWriter(run))
    try:
        with StopFlag() as stop:
            record = train_and_evaluate(cfg, MultiWriter(*writers),
                                        unused=unused_keys(cfg, set(values)), stop=stop)
    except BaseException:
        if run is not None:
            run.finish(exit_code=1)
        raise
    if record["status"] == "diverged":
        print(f"error: the loss became NaN or infinite at epoch {record['epochs_completed'] + 1}; "
              "recorded as diverged. Try a lower --learning_rate.", file=sys.stderr)
        return 3
    return 0


def enable_compilation_cache() -> None:
    """Persistent XLA cache: repeated sweep runs of one architecture skip compiling.
    JAXCOLLECTIVE_CACHE_DIR sets the folder; an empty value turns it off."""
    import jax

    path = os.environ.get("JAXCOLLECTIVE_CACHE_DIR", "~/.cache/jaxcollective/xla")
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _setup_backend(cfg: Config) -> None:
    """Environment that must be set before JAX starts."""
    # Several agents can share a GPU: allocate on demand, not 75% up front (read when
    # the backend starts, which is later).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if cfg.device == "cpu":
        # jax reads JAX_PLATFORMS at import (the package imports it); this still works
        # because no backend has started yet.
        jax.config.update("jax_platforms", "cpu")
    enable_compilation_cache()

    if cfg.device in ("cuda", "gpu") and jax.default_backend() != "gpu":
        print(f"warning: --device={cfg.device} but no GPU is visible to JAX; running on "
              f"{jax.default_backend()}", file=sys.stderr)
