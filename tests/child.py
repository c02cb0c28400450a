"""A subprocess whose output the tests wait on with a deadline, never with a fixed sleep."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Optional

import pytest


class Child:
    """A process (started from `cmd`, or an existing `proc` with piped stdout and stderr)
    whose stdout and stderr threads read line by line, so that a test waits for an event
    (a line, a checkpoint on disk, a state) with a deadline and fails with the output so
    far, instead of hanging on a pipe (until CI's own limit) or racing a fixed sleep. As
    a context manager it kills the process if the test leaves it running."""

    def __init__(self, cmd: Optional[list[str]] = None, proc=None, **popen):
        self.proc = proc or subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._news = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
            if stream is not None
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, lines):
        for line in stream:
            with self._news:
                lines.append(line)
                self._news.notify_all()

    def output(self) -> str:
        return (
            f"\n--- stdout:\n{''.join(self.out)[-3000:]}\n--- stderr:\n{''.join(self.err)[-3000:]}"
        )

    def wait_for(self, cond, what: str, timeout: float = 300, poll: float = 0.01) -> None:
        """Return once cond() holds (checked at each line of output and every `poll` s);
        fail after `timeout` s, or as soon as the process has ended without it."""
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None:
                for t in self._readers:  # the last lines it wrote
                    t.join(timeout=10)
                if cond():
                    return
                pytest.fail(
                    f"the process ended (exit {self.proc.returncode}) before {what}" + self.output()
                )
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {what} within {timeout:g} s" + self.output())
            with self._news:
                self._news.wait(min(left, poll))

    def count(self, fragment: str, stream: str = "err") -> int:
        """Lines of stderr (or stdout) holding `fragment` so far."""
        lines = self.err if stream == "err" else self.out
        with self._news:
            return sum(fragment in line for line in lines)

    def wait_line(
        self, fragment: str, n: int = 1, stream: str = "err", timeout: float = 300
    ) -> None:
        """Wait for `n` lines of stderr (or stdout) holding `fragment`."""
        self.wait_for(
            lambda: self.count(fragment, stream) >= n,
            f"{n} line(s) with {fragment!r} on std{stream}",
            timeout,
        )

    def finish(self, timeout: float = 300) -> tuple[str, str]:
        """Wait for the process to end (failing, after killing it, past `timeout` s);
        its whole stdout and stderr."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the process did not end within {timeout:g} s" + self.output())
        for t in self._readers:
            t.join(timeout=30)
        return "".join(self.out), "".join(self.err)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
