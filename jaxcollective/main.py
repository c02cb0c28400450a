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

from jaxcollective.cli import bool_option, console_script, guarded, help_text, parse_argv
from jaxcollective.config import Config, ConfigError
from jaxcollective.train.signals import StopFlag

EXTRA = {
    "config": "preset applied before the other keys: debug or phase1 (the original's "
    "CONFIG_DEBUG / CONFIG_PHASE1, training keys included)",
    "model": "the original's name of --model_type",
    "from_record": "FILE:LINE: train again exactly the run that line of a results file "
    "records (its config, seed and data split; the data folder and device are this "
    "machine's, the outputs go to runs/reruns/ unless given); other flags override the "
    "record's values",
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
    # here, not at the top: the signal handlers are installed before anything heavy
    from jaxcollective.train.loop import check_results_file, preflight, setup_backend

    preset = opts.get("config")
    if "from_record" in opts:
        from jaxcollective.rerun import rerun_line, rerun_values

        if preset is not None:
            raise ConfigError("--config and --from_record: the record holds the whole config")
        values, rec, where = rerun_values(opts["from_record"], values)
        print(rerun_line(rec, where), file=sys.stderr)
    cfg = Config.from_values(values, preset)  # bad flags fail before anything starts
    dry_run = bool_option(opts, "dry_run")
    if not dry_run:
        check_results_file(cfg.results)
    setup_backend(cfg)
    from jaxcollective.api import describe, unused_keys

    if dry_run:
        print(json.dumps(describe(values, preset)))
        return 0

    from jaxcollective import wandb_run
    from jaxcollective.train.checkpoint import open_checkpoints
    from jaxcollective.data.datasets import load
    from jaxcollective.train.loop import train_and_evaluate
    from jaxcollective.train.writers import ConsoleWriter, MultiWriter, ResultsWriter, WandbWriter

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
                checkpointer.close()  # the sweep's config may be another run's
                checkpointer, meta = open_checkpoints(sweep_cfg)
            except ConfigError:
                run.finish(exit_code=2)
                raise
            cfg, values = sweep_cfg, merged
    writers = [ConsoleWriter(cfg.epochs, cfg.progress), ResultsWriter(cfg.results)]
    if run is not None:
        writers.append(WandbWriter(run))
    try:
        record = train_and_evaluate(
            cfg,
            MultiWriter(*writers),
            unused=unused_keys(cfg, set(values)),
            stop=stop,
            dataset=ds,
            resolved=resolved,
            checkpointer=checkpointer,
            resume_meta=meta,
            wandb_id=run.id if run is not None else None,
        )
    except BaseException:
        if run is not None:
            run.finish(exit_code=1)
        raise
    if record["status"] == "diverged":
        print(
            f"error: the loss became NaN or infinite at epoch {record['epochs_completed'] + 1}; "
            "recorded as diverged. Try a lower --learning_rate.",
            file=sys.stderr,
        )
        return 3
    return 0


console = console_script(main)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
