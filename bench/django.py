"""Benchmark: the Django adapter against Django's ORM alone, same project, same database.

Starts a private PostgreSQL as ``bench/sql.py`` does, writes a small Django
project (one model, ``Task``, on the table ``tasks``, 256 rows) and measures,
in paired rounds (the yardstick, then the connector, back to back):

- the yardstick: the ORM calls an application would make, in this process,
  on 8 worker threads (the adapter's own default), with no WebSocket,
  signing, JSON, ledger or outbox in the way: ``load`` is one
  ``values_list(...).first()`` by id, ``list`` the same page as
  ``bench/sql.py``'s (``done = false``, ``priority >= 2``, ordered by
  ``due_at``, 51 rows), ``commit`` a ``select_for_update()`` and ``save()``
  in ``transaction.atomic()``. The connector's app is not installed here, so
  no signal writes an event. Both processes keep their connections
  (``CONN_MAX_AGE = 600``; at Django's default, 0, each request opens one);
- the connector: ``ablo-connector run --django bench_settings`` as its own
  process, driven by the engine side of ``bench/run.py`` (pre-signed request
  frames, every request its own ``webhook-id``, closed loop on 127.0.0.1): a
  commit there is the ledger row, ``full_clean()``, ``save()``, the row
  read back and the outbox event, in one transaction;

for ``load``, ``list`` and ``commit``, each at 1 and 64 in flight, and prints
the ratios (medians of the per-round ratios).

    python bench/django.py                # 3 rounds, medians
    python bench/django.py --rounds 1     # quicker
    python bench/django.py --capture      # with the served table captured

Prints a table, the connector's resident memory and one JSON line. Nothing
here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.asyncio.server import serve
from websockets.typing import Subprotocol

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this folder comes first on sys.path, where this file would
# shadow Django itself.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

from bench.run import KEY, Engine, proc_status  # noqa: E402
from bench.sql import COLUMNS, OPERATIONS, ROWS, Yardstick, render, rounds, rows_sql  # noqa: E402
from tests.django_processes import django_database  # noqa: E402
from tests.postgres import PrivatePostgres  # noqa: E402

WORKERS = 8  # the Django adapter's default worker threads
MODELS = """from django.db import models


class Task(models.Model):
    id = models.CharField(primary_key=True, max_length=64)
    title = models.TextField()
    done = models.BooleanField(default=False)
    priority = models.IntegerField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    estimate = models.FloatField(null=True, blank=True)

    class Meta:
        db_table = "tasks"
"""


def database(url: str) -> dict[str, Any]:
    """``DATABASES["default"]``, its connections kept (``CONN_MAX_AGE``) in both
    processes: Django's default, 0, opens one per request, on each path."""
    return {**django_database(url), "CONN_MAX_AGE": 600}


def write_project(folder: Path, database_url: str) -> None:
    """``benchapp`` (the model) and ``bench_settings`` (the connector's app, ABLO)."""
    app = folder / "benchapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(MODELS)
    (folder / "bench_settings.py").write_text(
        f"DATABASES = {{'default': {database(database_url)!r}}}\n"
        "INSTALLED_APPS = ['connector.adapters.django', 'benchapp']\n"
        "USE_TZ = True\nSECRET_KEY = 'bench'\n"
        "DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'\n"
        "ABLO = {'models': {'task': 'benchapp.Task'}}\n"
    )


def project_env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)]),
        "DJANGO_SETTINGS_MODULE": "bench_settings",
        "ABLO_API_KEY": KEY,
    }


def prepare(folder: Path, database_url: str, capture: bool) -> None:
    """The table and its rows (syncdb: the app has no migrations), the ledger
    and outbox (the connector's migration), and the capture if asked."""
    import psycopg

    manage = "from django.core.management import execute_from_command_line as run; run(sys.argv)"
    subprocess.run(
        [sys.executable, "-c", f"import sys; {manage}", "migrate", "--run-syncdb", "-v", "0"],
        cwd=folder, env=project_env(folder), check=True,
    )  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as connection:
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO tasks ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)", rows_sql()
            )
        connection.execute("ANALYZE tasks")
    if capture:
        subprocess.run(
            [sys.executable, "-m", "connector", "migrate", "--django", "bench_settings",
             "--capture"],
            cwd=folder, env=project_env(folder), check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip


class Orm(Yardstick):
    """The same reads and write through Django's ORM, on the adapter's worker count."""

    name = f"Django's ORM alone on {WORKERS} worker threads"

    def __init__(self, folder: Path, database_url: str) -> None:
        import django
        from django.conf import settings

        sys.path.insert(0, str(folder))
        settings.configure(
            DATABASES={"default": database(database_url)},
            INSTALLED_APPS=["benchapp"],  # not the connector's: no signal writes events
            USE_TZ=True,
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        )
        django.setup()
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="orm")
        self.fields = [field.strip() for field in COLUMNS.split(",")]

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self.pool.shutdown(wait=True)

    async def _run(self, work: Callable[[], Any]) -> None:
        def unit() -> Any:
            from django.db import close_old_connections

            close_old_connections()
            try:
                return work()
            finally:
                close_old_connections()

        await asyncio.get_running_loop().run_in_executor(self.pool, unit)

    async def load(self, i: int, tag: str) -> None:
        from benchapp.models import Task  # type: ignore[import-not-found]

        await self._run(
            lambda: Task.objects.filter(pk=f"t{i % ROWS}").values_list(*self.fields).first()
        )

    async def list(self, i: int, tag: str) -> None:
        from benchapp.models import Task
        from django.db.models import F

        def page() -> Any:
            found = Task.objects.filter(done=False, priority__gte=2).order_by(
                F("due_at").asc(nulls_last=True), "id"
            )
            return list(found.values_list(*self.fields)[:51])

        await self._run(page)

    async def commit(self, i: int, tag: str) -> None:
        from benchapp.models import Task
        from django.db import transaction

        def write() -> None:
            with transaction.atomic():
                task = Task.objects.select_for_update().get(pk=f"t{i % ROWS}")
                task.title = f"{tag} {i}"
                task.save()

        await self._run(write)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ablo-bench-")))
        server = PrivatePostgres()
        stack.callback(server.close)
        server.start()
        url = server.dsn
        write_project(folder, url)
        prepare(folder, url, args.capture)
        orm = Orm(folder, url)
        log = folder / "connector.log"
        engine = Engine()
        async with serve(
            engine.handler, "127.0.0.1", 0, subprotocols=[Subprotocol("ablo.source.v1")],
            compression=None, max_size=None,
        ) as server_socket:  # fmt: skip
            port = server_socket.sockets[0].getsockname()[1]
            with open(log, "ab") as output:
                peer = subprocess.Popen(
                    [sys.executable, "-m", "connector", "run", "--django", "bench_settings",
                     "--base-url", f"http://127.0.0.1:{port}", "--log-level", "warning"],
                    cwd=folder, env=project_env(folder), stdout=output, stderr=output,
                )  # fmt: skip
            try:
                try:
                    await asyncio.wait_for(engine.attached.wait(), 30)
                except TimeoutError:
                    raise SystemExit(f"the connector did not attach:\n{log.read_text()}") from None
                started_kib = proc_status(peer.pid, "VmRSS")
                result = await rounds(args, engine, peer, orm, None)
                result["connector_rss_mib"] = {
                    "attached": round(started_kib / 1024, 1),
                    "peak": round(proc_status(peer.pid, "VmHWM") / 1024, 1),
                    "end": round(proc_status(peer.pid, "VmRSS") / 1024, 1),
                }
                result["capture"] = args.capture
                return result
            finally:
                await orm.close()
                peer.terminate()
                peer.wait(10)


def table(result: dict[str, Any]) -> str:
    """``bench/sql.py``'s table, its yardstick named for what it is here."""
    for sample in result["samples"]:
        if sample["path"] == "driver":
            sample["path"] = "orm"
    return render(result).replace("driver alone", "the ORM alone")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the requests per round (load at 64: 6000)",
    )
    parser.add_argument("--capture", action="store_true", help="capture the served table")
    parser.add_argument(
        "--operations", default=",".join(OPERATIONS), help="a subset of load,list,commit"
    )
    args = parser.parse_args()
    args.operations = [op for op in args.operations.split(",") if op]
    if set(args.operations) - set(OPERATIONS):
        parser.error("--operations takes load, list and commit")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = asyncio.run(measure(args))
    print(table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
