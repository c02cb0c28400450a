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
import time
from typing import Callable, Optional

FORCED_EXIT = 130


class StopFlag:
    """Set by SIGTERM / SIGINT; the training loop stops after the epoch in flight."""

    def __init__(self, announce: bool = True, waiting_for: str = "the epoch in flight"):
        self.announce = announce  # a line when the first signal comes
        self.waiting_for = waiting_for  # what that line says the stop waits for
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
                print(
                    f"\n{name}: stopping after {self.waiting_for} (again to stop at once)",
                    file=sys.stderr,
                    flush=True,
                )
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

    def sleep(self, seconds: float) -> bool:
        """Wait `seconds`, or less when a signal comes first; whether one has come."""
        end = time.monotonic() + seconds
        while not self.requested and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
        return self.requested

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
