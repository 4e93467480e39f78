"""A PostgreSQL cluster of the test suite's own: made with initdb in a temporary folder,
listening only on a Unix socket there (no TCP port), started once per pytest process and
ended by its postmaster's pid. Each test that needs it gets a database of its own.

initdb refuses to run as root: as root the cluster runs as the system user ``ci-postgres``
(scripts/setup.sh makes it). Durability is off (fsync, synchronous commit): a test's
cluster outlives no machine crash, and the suite is faster for it.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

USER = "ci-postgres"


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class Cluster:
    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql)")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))  # short: a socket's path is at most 107 bytes
        self.data = self.root / "data"
        self.pid: int | None = None
        self._names = itertools.count(1)

    def _as_owner(self, *args: str) -> list[str]:
        return ["runuser", "-u", USER, "--", *args] if os.geteuid() == 0 else list(args)

    def start(self) -> Cluster:
        if os.geteuid() == 0:
            shutil.chown(self.root, USER)
        subprocess.run(
            self._as_owner(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._start_postmaster()
        return self

    def _start_postmaster(self) -> None:
        options = (
            f"-k {self.root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        subprocess.run(
            self._as_owner(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self, down: float) -> None:
        """Stop the server (a fast shutdown: connections cut), keep it down ``down`` seconds,
        start it again on the same data and socket."""
        self._end_postmaster()
        time.sleep(down)
        self._start_postmaster()

    def stop(self) -> None:
        """End the postmaster by its pid (a fast shutdown), then remove the folder."""
        self._end_postmaster()
        shutil.rmtree(self.root, ignore_errors=True)

    def _end_postmaster(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.05)
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
