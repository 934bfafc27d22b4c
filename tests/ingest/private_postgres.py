"""A PostgreSQL server of a test's own (initdb, pg_ctl), to stop and start at will without
touching the shared server the other tests use.

The cluster lives in a fresh temporary folder, listens on a free loopback port and puts
its unix socket in that folder. PostgreSQL refuses to run as root: started as root, the
server runs as the ``postgres`` user (``runuser``), which owns the folder.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries on this machine (the message says where we looked)."""


def find_pg_bin() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: the newest /usr/lib/postgresql/*/bin,
    or the one of ``initdb`` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailable("initdb not found in /usr/lib/postgresql/*/bin nor on PATH "
                              "(install the PostgreSQL server package)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """``start()``, ``stop(mode)``, ``url``; ``close()`` stops it and removes its folder."""

    def __init__(self):
        self.bin = find_pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="emfence-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.root}'\nfsync = off\n")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv) -> str:
        proc = subprocess.run([*self.as_user, *map(str, argv)], capture_output=True, text=True,
                              check=False, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def start(self) -> PrivatePostgres:
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log",
                  "-w", "-t", "60", "start")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # -w waits, but be sure TCP answers too
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL on port {self.port} did not accept connections")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (or ``immediate``: like a crash)."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
