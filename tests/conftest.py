from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# A command started in the background by a script inherits SIGINT ignored, and
# so would every connector a test spawns, until its launcher takes SIGINT
# over: a Ctrl-C sent in the first milliseconds would be lost, where a
# terminal's would end the process. The tests spawn what a terminal spawns.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


VECTORS = Path(__file__).resolve().parent / "vectors"


def load_vectors(name: str) -> dict[str, Any]:
    """One of the engine's reference vector files, kept in ``tests/vectors/``."""
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def frame_vectors() -> dict[str, Any]:
    return load_vectors("frames.json")


@pytest.fixture(scope="session")
def signature_vectors() -> dict[str, Any]:
    return load_vectors("signatures.json")


@pytest.fixture
def postgres() -> Any:
    """A private PostgreSQL of this test's own (it may stop and start it)."""
    from tests.postgres import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """One private PostgreSQL for every test that only needs a fresh database."""
    from tests.postgres import running_postgres

    with running_postgres() as server:
        yield server


@pytest.fixture
def mariadb() -> Any:
    """A private MariaDB of this test's own (it may stop and start it)."""
    from tests.mariadb import running_mariadb

    with running_mariadb() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb_server() -> Any:
    """One private MariaDB for every test that only needs a fresh database."""
    from tests.mariadb import running_mariadb

    with running_mariadb() as server:
        yield server
