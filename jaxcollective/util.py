"""Small helpers the core and the command line share: an exception in one line, a
warning line, a network probe that never hangs."""

from __future__ import annotations

import os
import socket
import sys
import threading


def describe_error(err: BaseException, width: int = 160) -> str:
    """An exception in one short line: its type and its message's first line."""
    first = (str(err).strip().splitlines() or [""])[0][:width]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def alive(pid: int) -> bool:
    """A process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def reachable(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 2.0) -> bool:
    """True if `host` answers within `timeout` seconds, DNS included (hard cap via a thread).
    JAXCOLLECTIVE_OFFLINE=1 says no without asking (tests, air-gapped clusters)."""
    if os.environ.get("JAXCOLLECTIVE_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return False
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)
