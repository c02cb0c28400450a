"""Where a local sweep's study lives: an Optuna RDB storage (SQLite on one machine, a
PostgreSQL server for many), opened with one clear line when it cannot be, locked
while a worker claims a trial, and patient while its server restarts.

- SQLite: a file lock beside the database makes the processes of one machine take turns.
- PostgreSQL: a session-level advisory lock (`pg_advisory_lock`) does the same across
  machines; it ends with the connection, so a worker that dies holding it holds nothing.
- Other servers (MySQL): no lock; a trial claimed beyond --trials in a race is failed at
  once as `surplus` (sweep.claim).
- A server that stops answering (a restart, a network cut) makes every storage call wait
  and retry, with a line when the outage starts and one when it ends, up to
  OUTAGE_LIMIT_S; pooled connections are checked before use, so the first call after
  the restart reconnects.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import sys
import time
import zlib
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import optuna

from jaxcollective.config import ConfigError

OUTAGE_LIMIT_S = 600.0  # how long a worker waits for its study's server to come back
RETRY_EVERY_S = 2.0
CONNECT_TIMEOUT_S = 10
# one advisory lock per database for claiming trials (a 64-bit key from its name)
LOCK_KEY = zlib.crc32(b"jaxcollective.sweep.claim")


def masked(url: str) -> str:
    """The URL without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def is_server(url: Optional[str]) -> bool:
    return bool(url) and not url.startswith("sqlite")


def has_lock(url: Optional[str]) -> bool:
    """Whether `study_lock` makes claims on this store exact (SQLite, PostgreSQL)."""
    return bool(url) and (url.startswith("sqlite:///") or url.startswith("postgresql"))


def _transient(err: BaseException) -> bool:
    """A lost or refused connection (the server restarting, the network), not a bad query."""
    import sqlalchemy.exc as sa

    while err is not None:
        if isinstance(err, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)):
            return True
        if isinstance(err, sa.DBAPIError) and err.connection_invalidated:
            return True
        err = err.__cause__ or err.__context__
    return False


def patiently(call, what: str):
    """`call()`, retried while the storage's server cannot be reached (up to
    OUTAGE_LIMIT_S), saying so once when the outage starts and once when it ends."""
    start = None
    while True:
        try:
            out = call()
        except Exception as err:  # noqa: BLE001 - only connection losses are retried
            if not _transient(err):
                raise
            now = time.monotonic()
            if start is None:
                start = now
                print(
                    f"[sweep] the study's database cannot be reached ({_reason(err)}); "
                    f"waiting for it, retrying every {RETRY_EVERY_S:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            elif now - start > OUTAGE_LIMIT_S:
                raise ConfigError(
                    f"the study's database has not answered for "
                    f"{OUTAGE_LIMIT_S:.0f} s ({_reason(err)}); the trials in flight "
                    "are retried when the same command runs again"
                ) from None
            time.sleep(RETRY_EVERY_S)
            continue
        if start is not None:
            print(
                f"[sweep] the study's database is back after {time.monotonic() - start:.0f} s "
                f"({what})",
                file=sys.stderr,
                flush=True,
            )
        return out


def _reason(err: BaseException) -> str:
    """The first line of the driver's message, e.g. `connection refused`."""
    import sqlalchemy.exc as sa

    while err.__cause__ is not None and not isinstance(err, sa.DBAPIError):
        err = err.__cause__
    inner = getattr(err, "orig", None) or err
    text = str(inner).strip().splitlines()
    return (text[0] if text else type(inner).__name__)[:300]


class PatientStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose every call waits out a server restart (see `patiently`)."""


def _patient(name):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return patiently(lambda: method(self, *args, **kwargs), name)

    return wrapper


# every public call, the heartbeat's, and the private ones Optuna's _CachedStorage (which a
# study puts in front of an RDB storage) calls on it
for _name in [n for n in vars(optuna.storages.BaseStorage) if not n.startswith("_")] + [
    "record_heartbeat",
    "get_heartbeat_interval",
    "_get_stale_trial_ids",
    "_get_trials",
    "_create_new_trial",
    "_get_best_trial_id",
    "_set_trial_param",
]:
    if callable(getattr(optuna.storages.RDBStorage, _name, None)):
        setattr(PatientStorage, _name, _patient(_name))


def open_storage(url: str, heartbeat: int, retry_callback):
    """The study's storage: a trial whose process died (no heartbeat for 2 intervals) is
    failed, then `retry_callback` queues it again. A storage that cannot be opened (bad
    URL, password, unreachable server, missing driver) is one line (ConfigError)."""
    if not url:
        return optuna.storages.InMemoryStorage()
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:  # a restarted server leaves dead pooled connections: test each before use
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        # PostgreSQL: Optuna creates its tables at the first open, which two hosts must not
        # do at once (no concurrent schema creation there either)
        with (
            _pg_lock(url, patient=False)
            if url.startswith("postgresql")
            else contextlib.nullcontext()
        ):
            return PatientStorage(
                url,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=retry_callback,
                engine_kwargs=engine_kwargs,
            )
    except ImportError as err:
        scheme = url.split(":", 1)[0]
        hint = (
            "pip install 'psycopg[binary]'"
            if scheme.startswith("postgresql")
            else "pip install pymysql (and write mysql+pymysql://...)"
            if scheme.startswith("mysql")
            else "install its SQLAlchemy driver"
        )
        raise ConfigError(
            f"--storage={masked(url)}: no database driver for {scheme!r} "
            f"({_reason(err.__cause__ or err)}); {hint}"
        ) from None
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - sqlalchemy's errors, ArgumentError for a bad URL
        raise ConfigError(
            f"--storage={masked(url)} cannot be opened: {_reason(err)}; check the "
            "URL, the user and password, and that the server is running and "
            "reachable"
        ) from None


_LOCK_ENGINES: dict = {}
_HELD: dict = {}  # url -> how deep this process holds its advisory lock


@contextlib.contextmanager
def study_lock(url: Optional[str]):
    """Processes on one study take turns to claim a trial (and, on SQLite, to create its
    tables: SQLite has no concurrent schema creation), so that --trials=N is exact:
    a file lock beside an SQLite file; a PostgreSQL advisory lock, which spans machines
    and ends with its connection. Elsewhere, nothing (see sweep.claim's surplus)."""
    if url and url.startswith("sqlite:///"):
        lock = Path(url[len("sqlite:///") :] + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if not (url and url.startswith("postgresql")):
        yield
        return
    with _pg_lock(url, patient=True):
        yield


@contextlib.contextmanager
def _pg_lock(url: str, patient: bool):
    """PostgreSQL's session-level advisory lock LOCK_KEY, held by a connection of its own
    (released with it however this process ends). `patient`: wait out a server outage
    (see `patiently`); else a failure to connect is raised as it is. Re-entrant: taken
    again in this process (opening a storage while claiming), it is already held."""
    import sqlalchemy

    if _HELD.get(url):
        _HELD[url] += 1
        try:
            yield
        finally:
            _HELD[url] -= 1
        return

    engine = _LOCK_ENGINES.get(url)
    if engine is None:
        engine = _LOCK_ENGINES[url] = sqlalchemy.create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
        )
    take = sqlalchemy.text("SELECT pg_advisory_lock(:k)")
    release = sqlalchemy.text("SELECT pg_advisory_unlock(:k)")

    def locked():
        conn = engine.connect()
        try:
            conn.execute(take, {"k": LOCK_KEY})
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    conn = patiently(locked, "claim lock") if patient else locked()
    _HELD[url] = 1
    try:
        yield
    finally:
        _HELD[url] = 0
        try:
            conn.execute(release, {"k": LOCK_KEY})
            conn.commit()
        except Exception as err:  # noqa: BLE001 - a lost connection released the lock with it
            if not _transient(err):
                raise
        finally:
            conn.close()
