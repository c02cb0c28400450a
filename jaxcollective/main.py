"""run.py's job: parse flags (and a sweep's wandb.config) into one config, check
everything that can be checked, then describe it (--dry_run) or train it.

Order matters: the signal handlers come first (a SIGTERM at any moment ends the run
cleanly); then every check that needs no data (config, results file, devices and
batch, sizing), then the data; W&B starts only when all of that passed, so a bad
configuration leaves no W&B run behind.
"""

from __future__ import annotations

import json
import os
import sys

from .cli import bool_option, guarded, help_text, parse_argv
from .config import Config, ConfigError
from .signals import StopFlag

EXTRA = {
    "config": "preset applied before the other keys: debug or phase1 (the original's "
              "CONFIG_DEBUG / CONFIG_PHASE1, training keys included)",
    "model": "the original's name of --model_type",
    "dry_run": "print the resolved architecture as one JSON line and exit",
    "help": "show this message (also -h)",
}


def main(argv: list[str]) -> int:
    stop = StopFlag().install()  # first: a SIGTERM from here on stops cleanly
    try:
        return guarded(lambda: _main(argv, stop))
    finally:
        stop.uninstall()


def _main(argv: list[str], stop: StopFlag) -> int:
    if "-h" in argv:
        argv = ["--help"]
    values, opts = parse_argv(argv, EXTRA, flags=("dry_run", "help"))
    if "help" in opts:
        print(help_text("run.py", "Train one model (or describe it with --dry_run).", EXTRA))
        return 0
    preset = opts.get("config")
    cfg = Config.from_values(values, preset)  # bad flags fail before anything starts
    dry_run = bool_option(opts, "dry_run")
    if not dry_run:
        check_results_file(cfg.results)
    _setup_backend(cfg)
    from .api import describe, unused_keys

    if dry_run:
        print(json.dumps(describe(values, preset)))
        return 0

    from .data import load
    from .experiment import train_and_evaluate
    from .writers import ConsoleWriter, MultiWriter, ResultsWriter, WandbWriter
    from . import wandb_run

    resolved = preflight(cfg)
    ds = load(cfg)
    checkpointer, meta = open_checkpoints(cfg)
    run = None
    mode = None if stop.requested else wandb_run.wandb_mode()
    if mode:
        # a standalone run continues its own W&B run; under a sweep a retried trial is a
        # new W&B run (W&B does not resume runs inside a sweep) that records where it resumed
        resume_id = (meta or {}).get("wandb_id") if not os.environ.get("WANDB_SWEEP_ID") else None
        run, merged = wandb_run.start(values, mode, cfg, resume_id=resume_id)
        sweep_cfg = Config.from_values(merged, preset)  # a sweep may send `config: phase1`
        if sweep_cfg != cfg:  # the sweep's parameter file said more than the command line
            try:
                resolved = preflight(sweep_cfg)
                if (sweep_cfg.dataset, sweep_cfg.data_dir) != (cfg.dataset, cfg.data_dir):
                    ds = load(sweep_cfg)
                checkpointer, meta = open_checkpoints(sweep_cfg)
            except ConfigError:
                run.finish(exit_code=2)
                raise
            cfg, values = sweep_cfg, merged
    writers = [ConsoleWriter(cfg.epochs, cfg.progress), ResultsWriter(cfg.results)]
    if run is not None:
        writers.append(WandbWriter(run))
    try:
        record = train_and_evaluate(cfg, MultiWriter(*writers), unused=unused_keys(cfg, set(values)),
                                    stop=stop, dataset=ds, resolved=resolved,
                                    checkpointer=checkpointer, resume_meta=meta,
                                    wandb_id=run.id if run is not None else None)
    except BaseException:
        if run is not None:
            run.finish(exit_code=1)
        raise
    if record["status"] == "diverged":
        print(f"error: the loss became NaN or infinite at epoch {record['epochs_completed'] + 1}; "
              "recorded as diverged. Try a lower --learning_rate.", file=sys.stderr)
        return 3
    return 0


def open_checkpoints(cfg: Config):
    """The run's checkpointer and, with --resume=auto, what its latest checkpoint says
    (None when there is none); --resume=never removes an existing one."""
    import shutil

    from .checkpoint import Checkpointer

    checkpointer = Checkpointer(cfg)
    if cfg.resume == "never":
        shutil.rmtree(checkpointer.dir, ignore_errors=True)
        return checkpointer, None
    meta = checkpointer.peek()
    if meta is not None:
        print(f"resuming from epoch {meta['epoch']} (checkpoint {checkpointer.dir})",
              file=sys.stderr, flush=True)
    return checkpointer, meta


def check_results_file(path: str) -> None:
    """The results file can be appended to (else the run's result would be lost at the
    end): its folder can be made, it is not a folder, and opening it to append works."""
    from pathlib import Path

    p = Path(path).expanduser()
    try:
        if p.is_dir():
            raise IsADirectoryError(21, "is a folder")
        blocking = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
        if blocking is not None:
            raise NotADirectoryError(20, f"{blocking} is a file, not a folder")
        p.parent.mkdir(parents=True, exist_ok=True)
        existed = p.exists()
        with open(p, "a"):
            pass
        if not existed:
            p.unlink()
    except OSError as err:
        raise ConfigError(f"--results={path} cannot be appended to ({err.strerror or err}); "
                          "pass a file in a writable folder, e.g. --results=runs/results.jsonl") from None


def preflight(cfg: Config):
    """Every check that needs no data and no compilation: devices and batch, the size
    of the training split, the baseline's sizing. Returns the resolved architecture."""
    import jax

    from .checkpoint import check_writable
    from .data import train_split_size
    from .sizing import resolve

    check_writable(cfg)
    nd = len(jax.devices())
    if cfg.batch_size % nd:
        raise ConfigError(f"invalid batch_size={cfg.batch_size}: expected a multiple of the "
                          f"{nd} devices it is split across")
    if cfg.batch_size // nd < 2:  # every model type has BatchNorm
        raise ConfigError(f"invalid batch_size={cfg.batch_size}: BatchNorm needs at least 2 "
                          f"examples per device per batch ({nd} device(s)); use "
                          f"--batch_size={2 * nd} or more")
    n = train_split_size(cfg)
    need = cfg.batch_size * cfg.gradient_accumulation_steps
    if n is not None and n < need:
        raise ConfigError(f"{cfg.dataset}'s training split has {n} examples, fewer than one "
                          f"update of batch_size * gradient_accumulation_steps = {need}; use a "
                          "smaller --batch_size")
    return resolve(cfg)


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
