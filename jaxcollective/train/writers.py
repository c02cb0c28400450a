"""One small writer interface for everything a run reports.

`start(info)` once, `log(row)` per epoch, `finish(record)` once (also for stopped and
diverged runs). Console, results file and wandb are three implementations; tests and
offline runs need no wandb account.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jaxcollective.train.metrics import EPOCH_TIME, SPLITS, TEST_ACCURACY, is_summary, name


class Writer:
    def start(self, info: dict[str, Any]) -> None:
        pass

    def log(self, row: dict[str, Any]) -> None:
        pass

    def finish(self, record: dict[str, Any]) -> None:
        pass


class MultiWriter(Writer):
    def __init__(self, *writers: Writer):
        self.writers = [w for w in writers if w is not None]

    def start(self, info):
        for w in self.writers:
            w.start(info)

    def log(self, row):
        for w in self.writers:
            w.log(row)

    def finish(self, record):
        # Every writer gets the record even if one of them fails.
        errors = []
        for w in self.writers:
            try:
                w.finish(record)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors:
            raise errors[0]


class ConsoleWriter(Writer):
    """A line per epoch on stdout, a progress bar over epochs on stderr."""

    def __init__(self, epochs: int, progress: bool = True, stream=None):
        self.epochs, self.stream = epochs, stream or sys.stdout
        self.bar = None
        self.progress = progress
        self.tag = ""

    def start(self, info):
        self.tag = "[synthetic] " if info.get("synthetic") else ""
        desc = f"{info['model_type']} {info['model_params']:,} params on {info['dataset']}"
        if info.get("hidden_dims"):
            desc += f" hidden_dims={info['hidden_dims']}"
        if info.get("num_seeds", 1) > 1:
            desc += f" x{info['num_seeds']} seeds"
        print(f"{self.tag}{desc}", file=self.stream, flush=True)
        if self.progress:
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=self.epochs,
                    unit="epoch",
                    file=sys.stderr,
                    leave=False,
                    dynamic_ncols=True,
                )
            except ImportError:
                self.bar = None

    def log(self, row):
        parts = "  ".join(
            f"{s} loss {row[name(s, 'loss')]:.4f} acc {row[name(s, 'accuracy')]:6.2f}"
            for s in SPLITS
        )
        line = f"{self.tag}epoch {row['epoch']:>3}/{self.epochs}  {parts}  {row[EPOCH_TIME]:.2f}s"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self.bar.update(1)
        else:
            print(line, file=self.stream, flush=True)

    def finish(self, record):
        if self.bar is not None:
            self.bar.close()
        status = record["status"]
        acc = record.get(TEST_ACCURACY)
        acc_s = "n/a" if acc is None else f"{acc:.2f}%"
        n = record["epochs_completed"]
        early = (
            " (early stopping: no new best validation accuracy for "
            f"{record['config']['early_stopping_patience']} epochs)"
            if record.get("stopped_early")
            else ""
        )
        print(
            f"{self.tag}{status}: final test accuracy {acc_s} after {n} "
            f"epoch{'' if n == 1 else 's'}{early}, {record['wall_s']:.1f}s",
            file=self.stream,
            flush=True,
        )


class ResultsWriter(Writer):
    """Appends one JSON line per finished (or stopped, or diverged) run; `line` is then
    its 1-based line number. Processes appending to one file take turns (flock), so lines
    never interleave and each knows its number."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.line: Optional[int] = None

    def finish(self, record):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, default=_jsonable) + "\n"
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            self.line = sum(1 for _ in f) + 1
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            fcntl.flock(f, fcntl.LOCK_UN)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class WandbWriter(Writer):
    """Logs to an already initialised wandb run (see wandb_run.py)."""

    def __init__(self, run):
        self.run = run

    def start(self, info):
        """Config with derived dims and parameter count; a name and tags from type and size."""
        cfg = info["config"]
        size = f"{info['model_params'] / 1e6:.2f}M"
        if cfg.get("wandb_name"):
            self.run.name = cfg["wandb_name"]
        elif not os.environ.get("WANDB_NAME"):
            self.run.name = f"{cfg['model_type']}-{size}-{cfg['dataset']}-s{cfg['seed']}"
        tags = {cfg["model_type"], cfg["dataset"], f"params:{size}"}
        if info.get("synthetic"):
            tags.add("synthetic")
        self.run.tags = tuple(sorted(set(self.run.tags or ()) | tags))
        self.run.config.update(cfg, allow_val_change=True)
        self.run.config.update(
            {k: v for k, v in info.items() if k != "config"}, allow_val_change=True
        )

    def log(self, row):
        self.run.log(row, step=row["epoch"])

    def finish(self, record):
        for k, v in record.items():
            if is_summary(k):
                self.run.summary[k] = v
        self.run.finish(exit_code=1 if record.get("diverged") else 0)
