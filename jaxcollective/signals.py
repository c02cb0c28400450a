"""Stopping a run on SIGTERM (Hyperband's stop) or Ctrl-C, installed first thing.

The first signal asks the run to stop after the epoch in flight (its last completed
epoch becomes its final result). A second one ends the process at once: what was
measured so far is written (the `on_force` callback), then the process exits 130.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Optional

FORCED_EXIT = 130


class StopFlag:
    """Set by SIGTERM / SIGINT; the training loop stops after the epoch in flight."""

    def __init__(self, announce: bool = True):
        self.announce = announce  # a line when the first signal comes
        self.signal: Optional[int] = None
        self.status = "stopped"  # what a run stopped by this flag is recorded as
        self.on_force: Optional[Callable[[], None]] = None
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame):
        if self.signal is None:
            self.signal = signum
            name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            if self.announce:
                print(f"\n{name}: stopping after the epoch in flight (again to stop at once)",
                      file=sys.stderr, flush=True)
            return
        # A second signal: write what was measured, then leave without unwinding
        # through JAX (whose callbacks would swallow a KeyboardInterrupt).
        try:
            if self.on_force is not None:
                self.on_force()
        finally:
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(FORCED_EXIT)

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.uninstall()
