"""A private MariaDB for the tests and the benchmarks: a temp dir, a free port
on 127.0.0.1, its own socket file, stopped and removed after. Needs nothing
beyond the standard library and the server's own programs (``mariadb-install-db``,
``mariadbd`` and the ``mariadb`` client, from Debian's ``mariadb-server`` and
``mariadb-client``), so ``bench/mysql_drivers.py`` imports it without pytest.

The server keeps its compiled-in ``sql_mode`` (strict: ``STRICT_TRANS_TABLES``,
as a fresh production server has it) and stores text as ``utf8mb4``. As root
it runs as the ``mysql`` user the package creates: ``mariadbd`` refuses to run
as root unless told to, and a production server never does.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.postgres import free_port  # one definition: never the same port twice

# How long a start may take before it counts as failed: far above the half a
# second it takes on an idle machine, so a busy 2-core CI box does not fail it.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
_POLL_INTERVAL_S = 0.02

# The account the package creates; the server drops to it when started as root.
_SERVICE_USER = "mysql"

# Durability traded for speed, as the PostgreSQL helper runs with fsync=off:
# every instance is thrown away. A small redo log keeps each data dir near
# 25 MB instead of 110 MB.
_SERVER_OPTIONS = (
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
    "--innodb-log-file-size=8M",
    "--innodb-buffer-pool-size=64M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--loose-innodb-buffer-pool-dump-at-shutdown=0",
    "--loose-innodb-buffer-pool-load-at-startup=0",
)


class MariaDBError(RuntimeError):
    """The private server could not be set up, started or asked something."""


def _program(*names: str) -> str:
    # Debian puts mariadbd in /usr/sbin, which is not on a normal user's PATH.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    raise MariaDBError(
        f"{names[0]} is not installed: apt-get install -y --no-install-recommends "
        "mariadb-server mariadb-client"
    )


def _service_user_options(directory: Path) -> list[str]:
    """Hand ``directory`` to the service user and return the option that makes
    the server drop to it, when run as root; nothing otherwise."""
    if os.geteuid() != 0:
        return []
    try:
        shutil.chown(directory, _SERVICE_USER, _SERVICE_USER)
    except LookupError:
        raise MariaDBError(
            f"running as root, the server needs the {_SERVICE_USER!r} user "
            "that Debian's mariadb-server package creates"
        ) from None
    return [f"--user={_SERVICE_USER}"]


def _quote(text: str) -> str:
    """``text`` as an SQL string literal (only ever our own generated names)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


_template: Path | None = None


def _template_data() -> Path:
    """A data dir made by ``mariadb-install-db`` once per process (over a
    second on a busy machine), which every server copies (milliseconds)."""
    global _template
    if _template is None:
        directory = Path(tempfile.mkdtemp(prefix="ablo-mariadb-template-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        user_options = _service_user_options(directory)
        result = subprocess.run(
            [
                _program("mariadb-install-db", "mysql_install_db"),
                "--no-defaults",  # must come first: no /etc/mysql settings leak in
                f"--datadir={directory / 'data'}",
                *user_options,
                # root with no password (over TCP too), as PostgreSQL's trust:
                # the server listens on 127.0.0.1 only and lives for one test run.
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *_SERVER_OPTIONS,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise MariaDBError(f"mariadb-install-db failed:\n{result.stdout}{result.stderr}")
        _template = directory
    return _template / "data"


class PrivateMariaDB:
    """One throwaway server. ``start()`` and ``stop()`` may be called again and
    again (the data survives a stop); ``close()`` stops it and removes the dir.
    ``dsn`` logs in as root with no password; ``password_dsn`` as a user the
    server asks for its password."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="ablo-mariadb-"))
        self.data = self.directory / "data"
        self.socket = self.directory / "mariadb.sock"
        self.error_log = self.directory / "error.log"
        self.port = free_port()
        self.dsn = f"mysql://root@127.0.0.1:{self.port}/test"
        self.password_user = "ablo_tester"
        self.password = secrets.token_urlsafe(18)
        self._process: subprocess.Popen[bytes] | None = None
        self._bootstrapped = False
        try:
            self._user_options = _service_user_options(self.directory)
            # cp -a keeps the owner (the service user) when run as root.
            subprocess.run(
                ["cp", "-a", str(_template_data()), str(self.data)],
                check=True, capture_output=True,
            )  # fmt: skip
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def __repr__(self) -> str:
        return f"PrivateMariaDB(port={self.port}, directory={str(self.directory)!r})"

    @property
    def password_dsn(self) -> str:
        return f"mysql://{self.password_user}:{self.password}@127.0.0.1:{self.port}/test"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and return once it accepts a login on its port."""
        if self.running:
            return
        with open(self.directory / "console.log", "ab") as console:
            self._process = subprocess.Popen(
                [
                    _program("mariadbd", "mysqld"),
                    "--no-defaults",
                    f"--datadir={self.data}",
                    f"--socket={self.socket}",
                    f"--pid-file={self.directory / 'mariadb.pid'}",
                    f"--log-error={self.error_log}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    *self._user_options,
                    *_SERVER_OPTIONS,
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
            )
        self._wait_for_login()
        if not self._bootstrapped:
            self._bootstrap()
            self._bootstrapped = True

    def _wait_for_login(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise MariaDBError(
                    f"mariadbd exited with {self._process.returncode}:\n{self._log_tail()}"
                )
            attempt = self._client(["--connect-timeout=5", "--execute=SELECT 1"])
            if attempt.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise MariaDBError(
                    f"mariadbd took over {START_TIMEOUT_S:.0f} s to accept a login: "
                    f"{attempt.stderr.strip()}\n{self._log_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def _bootstrap(self) -> None:
        self.execute(
            "CREATE DATABASE test;"
            f"CREATE USER {_quote(self.password_user)}@'%' IDENTIFIED BY {_quote(self.password)};"
            f"GRANT ALL ON test.* TO {_quote(self.password_user)}@'%';"
        )

    def _client(
        self, arguments: list[str], statements: str = ""
    ) -> subprocess.CompletedProcess[str]:
        # Statements go in on stdin, not in argv, where `ps` would show a password.
        return subprocess.run(
            [
                _program("mariadb", "mysql"),
                "--no-defaults",
                "--protocol=tcp",
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--user=root",
                "--default-character-set=utf8mb4",  # the client's own default is utf8mb3
                "--batch",
                "--skip-column-names",
                *arguments,
            ],
            input=statements,
            capture_output=True,
            text=True,
            check=False,
        )

    def execute(self, statements: str) -> str:
        """Run ``statements`` as root; returns what they printed, tab-separated."""
        result = self._client([], statements)
        if result.returncode != 0:
            raise MariaDBError(f"the statements failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM) and wait until it has exited."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Kill the server (its data is about to go) and remove its directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _log_tail(self, lines: int = 20) -> str:
        texts = []
        for log in (self.directory / "console.log", self.error_log):
            with contextlib.suppress(OSError):
                texts.extend(log.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts)


@contextlib.contextmanager
def running_mariadb() -> Iterator[PrivateMariaDB]:
    server = PrivateMariaDB()
    try:
        server.start()
        yield server
    finally:
        server.close()


def create_database(server: PrivateMariaDB) -> str:
    """A new empty database on ``server``; returns its URL (as root)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.execute(f"CREATE DATABASE `{name}`")
    return f"mysql://root@127.0.0.1:{server.port}/{name}"


def drop_database(server: PrivateMariaDB, url: str) -> None:
    """Drop the database at ``url``, ending the sessions still on it first (as
    PostgreSQL's ``DROP DATABASE … WITH (FORCE)`` does): one a failing test
    left in a transaction would hold the DROP forever."""
    name = url.rsplit("/", 1)[1]
    sessions = server.execute(
        f"SELECT ID FROM information_schema.PROCESSLIST WHERE DB = {_quote(name)}"
    ).split()
    for session in sessions:
        with contextlib.suppress(MariaDBError):  # (ended meanwhile)
            server.execute(f"KILL CONNECTION {int(session)}")
    server.execute(f"DROP DATABASE IF EXISTS `{name}`")


def require_password(server: PrivateMariaDB, user: str, password: str) -> None:
    """Create ``user``, who must give ``password`` to log in (from 127.0.0.1,
    to every database), as a production server would."""
    server.execute(
        f"CREATE USER {_quote(user)}@'%' IDENTIFIED BY {_quote(password)};"
        f"GRANT ALL ON *.* TO {_quote(user)}@'%';"
    )
