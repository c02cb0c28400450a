"""A throwaway PostgreSQL server for the tests (Debian's, started with initdb and pg_ctl in
a temporary folder, on a free port), and test hosts in network namespaces that reach it
over a network address."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

PASSWORD = "sweep-secret"


def pg_bindir() -> Optional[Path]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """initdb + pg_ctl under `root`, listening on 127.0.0.1 (and `addresses`) at a free port;
    the role `sweep` (password PASSWORD, scram over TCP) owns the database `sweeps`."""

    def __init__(self, addresses: tuple[str, ...] = ()):
        self.bin = pg_bindir()
        # a folder of its own under /tmp: the postgres user must reach it (pytest's
        # tmp_path is under a folder only root may enter)
        self.root, self.port = Path(tempfile.mkdtemp(prefix="jc-pg-")), free_port()
        root = self.root
        self.data = root / "data"
        self.addresses = ("127.0.0.1", *addresses)
        self.as_postgres = os.geteuid() == 0  # initdb refuses root
        root.mkdir(parents=True, exist_ok=True)
        if self.as_postgres:
            shutil.chown(root, "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
        )
        with open(self.data / "pg_hba.conf", "a") as f:  # the test hosts' range
            f.write("host all all 10.231.0.0/16 scram-sha-256\n")
        self.start()
        self.psql(f"CREATE ROLE sweep LOGIN PASSWORD '{PASSWORD}'")
        self.psql("CREATE DATABASE sweeps OWNER sweep")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)

    def pg_ctl(self, action: str, *extra: str) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-w",
            "-m",
            "fast",
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses={','.join(self.addresses)}",
            *extra,
            action,
        )

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        self.pg_ctl("restart")

    def psql(self, sql: str) -> str:
        return self._run(
            "psql",
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        ).stdout

    def url(self, host: str = "127.0.0.1", password: str = PASSWORD, db: str = "sweeps") -> str:
        return f"postgresql://sweep:{password}@{host}:{self.port}/{db}"


class Hosts:
    """Test hosts: network namespaces, each joined to this one by a veth pair, so that a
    worker in host i reaches a server here at `server_address(i)` over a network, not
    loopback. `available()` says whether this machine allows it (root, iproute2)."""

    def __init__(self, n: int):
        # a block of addresses of this test process's own: one no namespace uses yet (a
        # test process killed before its clean-up leaves its namespaces behind)
        taken = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        tag = next(
            b for k in range(200) for b in [(os.getpid() + k) % 200 + 20] if f"jc{b}h" not in taken
        )
        self.names = [f"jc{tag}h{i}" for i in range(n)]
        self.block, self.made = tag, []
        try:
            for i, ns in enumerate(self.names):
                # a /30 of a test-only range per host: .1 here, .2 in the host
                here, there = self.server_address(i), f"10.231.{tag}.{4 * i + 2}"
                veth = f"vjc{tag}x{i}"
                self._ip("netns", "add", ns)
                self.made.append(ns)
                self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._ip("addr", "add", f"{here}/30", "dev", veth)
                self._ip("link", "set", veth, "up")
                for args in (
                    ("addr", "add", f"{there}/30", "dev", "eth0"),
                    ("link", "set", "eth0", "up"),
                    ("link", "set", "lo", "up"),
                ):
                    self._ip("-n", ns, *args)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0 or not shutil.which("ip"):
            return False
        probe = f"jcprobe{os.getpid()}"
        ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
        return ok

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    def server_address(self, i: int) -> str:
        return f"10.231.{self.block}.{4 * i + 1}"

    def command(self, i: int, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[i], *cmd]

    def kill(self, i: int, sig: int = signal.SIGKILL) -> list[int]:
        """SIGKILL every process in host i, with no clean-up (a host dying); SIGSTOP
        freezes them (a host hanging: no work, no heartbeats)."""
        out = subprocess.run(["ip", "netns", "pids", self.names[i]], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def close(self) -> None:
        for ns in self.made:
            self.kill(self.names.index(ns))
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        self.made = []
