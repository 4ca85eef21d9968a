"""A throwaway PostgreSQL server for tests: its own cluster in a temporary folder, on 127.0.0.1 only.

Used by the ``postgres_url`` fixture (conftest.py). Needs Debian's server binaries (``apt-get install
postgresql``; ``.ci/run`` installs them) and the psycopg 3 driver (``pip install -e ".[postgres]"``, part of the
test extra). As root the server runs as the ``postgres`` user (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

USER = "nas"
DATABASE = "nas_test"


def server_binaries() -> Path | None:
    """The folder of ``initdb`` / ``pg_ctl`` (PATH first, then Debian's /usr/lib/postgresql/N/bin), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``initdb`` + ``pg_ctl start`` in ``root``; :attr:`url` carries a random password; :meth:`stop` ends it."""

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root, self.bin = root, bin_dir
        self.password = secrets.token_hex(12)
        self.port = _free_port()
        self.data = root / "data"
        as_postgres = os.geteuid() == 0
        self._prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
        pwfile = root / "pw"
        pwfile.write_text(self.password + "\n")
        if as_postgres:
            shutil.chown(root, "postgres")
            shutil.chown(pwfile, "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8"
        )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {root} -c fsync=off -c max_connections=50"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
        import psycopg

        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._prefix, str(self.bin / tool), *args], check=True, capture_output=True, text=True)

    def url_for(self, database: str = DATABASE) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for()

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
