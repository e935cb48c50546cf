"""A private PostgreSQL 15 for the tests and the benchmark: a temp dir, a free
port, stopped after. Needs nothing beyond the standard library and psycopg
(``bench/sql.py`` imports it without pytest)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 now, and never one this process was given
    before: two asked in a row (``--port``, ``--api-port``) may otherwise be
    the same, as the kernel may hand a just-closed port out again."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class PrivatePostgres:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ablo-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        subprocess.run(
            _as_postgres(["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c wal_level=logical -c max_replication_slots=4 -c fsync=off"
        )
        subprocess.run(
            _as_postgres(["pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.directory / "log"), "-w", "start"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False, capture_output=True,
        )  # fmt: skip

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


def create_database(server: PrivatePostgres) -> str:
    """A new empty database on ``server``; returns its URL."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


def drop_database(server: PrivatePostgres, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(server.dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_password(server: PrivatePostgres, role: str, password: str) -> None:
    """Create ``role`` and make the server ask it for its password (scram), as
    a production server would; every other user stays trusted."""
    import psycopg

    hba = server.data / "pg_hba.conf"
    rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    hba.write_text(rule + hba.read_text())  # the first matching line wins
    with psycopg.connect(server.dsn, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        connection.execute("SELECT pg_reload_conf()")
