"""Running a study's steps (each a process of its own, stoppable at any moment) and
showing its progress: a line per run ended, the epochs of the run in flight."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from jaxcollective.train.metrics import BEST_VAL_ACCURACY, TEST_ACCURACY
from jaxcollective.train.signals import StopFlag

from .records import COPY, answers, read_records


class Stopped(Exception):
    """The study was asked to stop (Ctrl-C, SIGTERM) and its step in flight has stopped."""


def run(cmd: list[str], log, stop: StopFlag, progress: "Progress") -> None:
    """One step of the study in a process of its own session, its output to the log: a
    signal reaches this process only, which passes it on once (a second one at once, and
    leaves), so the step stops as it would on its own (a sweep trial recorded as stopped,
    its checkpoint kept). Meanwhile its finished runs are shown as they come."""
    if stop.requested:  # between two steps
        raise Stopped
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stop.on_force = lambda: _force(proc, stop.signal)
    try:
        passed = False
        while proc.poll() is None:
            if stop.requested and not passed:
                proc.send_signal(stop.signal)
                passed = True
            progress.show()
            time.sleep(0.2)
    finally:
        stop.on_force = None
    progress.show()
    if stop.requested:
        raise Stopped
    if proc.returncode != 0:
        raise SystemExit(
            f"study: `{' '.join(cmd[1:])}` failed with exit code {proc.returncode}; "
            f"its output is in {log.name}; fix it and run the same command again "
            "to continue"
        )


def _force(proc, signum) -> None:
    """A second signal: the step in flight writes what it measured and ends at once too."""
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


EPOCH_LINE = re.compile(r"\bepoch\s+\d+/\d+")  # run.py's and a sweep trial's epoch lines


def of_cells(types: list[str], sizes) -> Callable[[dict], bool]:
    """Whether a record is of these model types and sizes (parameter counts): within 1%
    of a size's count (the sizing's bound for a collective sized to a budget; a baseline
    is matched within 0.4%). The study's files also hold the runs of another invocation's
    --model_types or --sizes, which this one's count of runs leaves out."""
    sizes = list(sizes)

    def mine(rec: dict) -> bool:
        n = rec.get("model_params", 0)
        return rec.get("model_type") in types and any(abs(n - p) <= 0.01 * p for p in sizes)

    return mine


class Progress:
    """A console line per run ended (read from the study's results files as they grow),
    with the study's count of runs and the time left at this invocation's pace of work
    done. Work is counted in parameter-epochs (an epoch of a model of P parameters, per
    seed, is P), as an epoch's time grows with the model: the study's sizes differ 5x."""

    def __init__(
        self,
        files: list[Path],
        runs: int,
        work: float,
        to_stop: float = 0.0,
        rungs: tuple[int, ...] = (),
        mine: Callable[[dict], bool] = lambda rec: True,
    ):
        self.files, self.total, self.total_work, self.start = files, runs, work, time.time()
        self.mine = mine  # the records this invocation counts (of_cells)
        self.log: Optional[Path] = None  # the steps' log, whose epoch lines show_epochs shows
        self.log_at = 0
        # of `work`, what runs to early stopping train, counted at the cap (the last of the
        # halving's `rungs`): the time left is then an upper bound until the first runs
        # have stopped, then estimated from where they stopped
        self.to_stop, self.rungs = to_stop, tuple(rungs)
        self.cap = self.rungs[-1] if self.rungs else 0
        self.seen = {f: read_records(f) for f in files}
        self.sizes: dict[Path, int] = {}
        self.done_before, self.work_before = self.count()
        self.done, self.work_done = self.done_before, self.work_before

    def count(self) -> tuple[int, float]:
        """(runs ended: a record of K seeds is K runs, a stopped one is continued later;
        parameter-epochs trained, K per epoch of K seeds, a stopped record's too)."""
        recs = [
            r
            for rs in self.seen.values()
            for r in rs
            if COPY not in r and self.mine(r) and not self.superseded(r)
        ]
        runs = sum(len(r.get("replicas") or [0]) for r in recs if r.get("status") != "stopped")
        work = sum(
            (r.get("epochs_completed", 0) - r.get("resumed_from_epoch", 0))
            * r.get("num_seeds", 1)
            * r.get("model_params", 0)
            for r in recs
        )
        return runs, work

    def final_rung(self, rec: dict) -> bool:
        """A finished run to early stopping past the halving's earlier rungs: a survivor's
        or a seed's run to its stop (at most `cap`, or an earlier, lower cap)."""
        cfg = rec.get("config", {})
        return (
            bool(self.to_stop)
            and rec.get("status") == "finished"
            and bool(cfg.get("early_stopping_patience"))
            and cfg.get("epochs") not in self.rungs[:-1]
        )

    def superseded(self, rec: dict) -> bool:
        """A run to early stopping that reached an earlier, lower cap without stopping:
        the study trains it again to this cap, and counts that run instead."""
        return self.final_rung(rec) and not answers(rec, self.cap)

    def show(self) -> None:
        self.show_epochs()
        for f in self.files:
            try:  # polled 5 times a second: a file is read again only once it has grown
                size = f.stat().st_size
            except FileNotFoundError:
                continue
            if self.sizes.get(f) == size:
                continue
            self.sizes[f] = size
            recs = read_records(f)
            for rec in recs[len(self.seen[f]) :]:
                self.seen[f].append(rec)
                self.done, self.work_done = self.count()
                if rec.get("status") != "stopped" and COPY not in rec:
                    self.say(rec)

    def show_epochs(self) -> None:
        """The run in flight's epoch lines (its step writes them to the log), as they come,
        so that the console is never silent for a whole run."""
        if self.log is None:
            return
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_at)
                new = f.read()
        except FileNotFoundError:
            return
        done = new.rfind(b"\n") + 1  # whole lines only: the last one may be in writing
        self.log_at += done
        for line in new[:done].decode(errors="replace").splitlines():
            if EPOCH_LINE.search(line):
                print(f"[run] {line.strip()}", file=sys.stderr, flush=True)

    def expected_work(self) -> tuple[float, bool]:
        """(the study's parameter-epochs, whether that is an upper bound): runs to early
        stopping are expected to train the mean fraction of `cap` that the ones already
        ended trained."""
        if not self.to_stop:
            return self.total_work, False
        stops = [
            r["epochs_completed"] / self.cap
            for rs in self.seen.values()
            for r in rs
            if COPY not in r and self.final_rung(r) and answers(r, self.cap)
        ]
        if not stops:
            return self.total_work, True
        return self.total_work - self.to_stop * (1 - sum(stops) / len(stops)), False

    def say(self, rec: dict) -> None:
        left = ""
        trained = self.work_done - self.work_before
        total, bound = self.expected_work()
        if trained and self.work_done < total:
            s = (time.time() - self.start) / trained * (total - self.work_done)
            left = f"{s / 60:.0f} min left" if s >= 60 else f"{s:.0f} s left"
            left = f", at most ~{left}" if bound else f", about {left}"
        cfg = rec.get("config", {})
        first, last = cfg.get("seed", 0), cfg.get("seed", 0) + cfg.get("num_seeds", 1) - 1
        seeds = f"seed {first}" if first == last else f"seeds {first}-{last}"
        acc = rec.get(TEST_ACCURACY)
        wd = f" wd={cfg['weight_decay']}" if cfg.get("weight_decay") else ""
        print(
            f"[study] {self.done}/{self.total} runs: {rec.get('model_type')} "
            f"{rec.get('model_params', 0):,} params lr={cfg.get('learning_rate')}{wd} {seeds}, "
            f"{rec.get('epochs_completed')} epochs {rec.get('status')}: val "
            f"{rec.get(BEST_VAL_ACCURACY, float('nan')):.2f}% test "
            f"{float('nan') if acc is None else acc:.2f}%{left}",
            file=sys.stderr,
            flush=True,
        )


def run_py(keys: dict, results: Path, log, stop, progress) -> None:
    run(
        [
            sys.executable,
            "-m",
            "jaxcollective.main",
            *(f"--{k}={v}" for k, v in keys.items()),
            f"--results={results}",
        ],
        log,
        stop,
        progress,
    )
