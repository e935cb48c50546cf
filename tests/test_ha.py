"""Standby replicas with --ha-lock: one serves, the others wait, take-over in seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connector import Config, ConfigError, Connector, DataSource
from connector.daemon import ha
from connector.daemon.ha import FileLock, LeaderLock, LeaseLock, PostgresLock, lock_from_url
from connector.daemon.ha_mysql import MySQLLock
from connector.dev.engine import DevEngine
from tests.handlers import TestSource
from tests.helpers import Process, connector_args, eventually, free_port

KEY = "sk_test_ha_2f9d1c"
ENV = {"ABLO_API_KEY": KEY}


@contextlib.asynccontextmanager
async def replicas(
    engine: DevEngine, lock: Path, count: int = 3
) -> AsyncIterator[list[tuple[Process, int]]]:
    started = []
    try:
        for _ in range(count):
            health = free_port()
            args = connector_args(
                engine.base_url, "tests.handlers:TestSource",
                "--ha-lock", f"file://{lock}", "--health-addr", f"127.0.0.1:{health}",
            )  # fmt: skip
            started.append((await Process(args, ENV).start(), health))
        yield started
    finally:
        for proc, _ in started:
            await proc.stop()


async def _state(health_port: int) -> str:
    def get() -> str:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{health_port}/healthz", timeout=2
            ) as response:
                return str(json.loads(response.read())["state"])
        except (urllib.error.URLError, OSError):
            return "down"

    return await asyncio.to_thread(get)


@contextlib.asynccontextmanager
async def steady_stream(engine: DevEngine) -> AsyncIterator[list[Any]]:
    """Requests one after another until the block ends; yields their results."""
    results: list[Any] = []
    done = asyncio.Event()

    async def stream() -> None:
        n = 0
        while not done.is_set():
            results.append(await engine.request({"type": "load", "model": "m", "id": f"s{n}"}))
            n += 1
            await asyncio.sleep(0.02)

    task = asyncio.create_task(stream())
    try:
        yield results
    finally:
        done.set()
        await task


async def _leader(engine: DevEngine, group: list[tuple[Process, int]]) -> Process:
    result = await engine.request({"type": "load", "model": "m", "id": "who"})
    pid = result.json()["row"]["pid"]
    return next(proc for proc, _ in group if proc.pid == pid)


async def test_one_replica_serves_and_a_killed_leader_is_replaced_within_5s(tmp_path: Path) -> None:
    async with (
        DevEngine(KEY, request_timeout=2, max_attempts=10) as engine,
        replicas(engine, tmp_path / "lock") as group,
    ):
        await engine.wait_attached(15)
        await asyncio.sleep(2)
        assert (engine.attaches, engine.supersedes) == (1, 0), "exactly one replica dialed"
        states = sorted([await _state(port) for _, port in group])
        assert states == ["ready", "standby", "standby"]

        async with steady_stream(engine) as stream_results:
            await asyncio.sleep(0.5)
            leader = await _leader(engine, group)
            leader.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await leader.wait()
            await eventually(lambda: engine.attaches == 2 and engine.attached, timeout=10)
            takeover = time.monotonic() - killed_at
            assert takeover < 5, f"take-over took {takeover:.2f} s"
            await asyncio.sleep(1)
        assert engine.supersedes == 0, "no two leaders at once"
        failed = [(r.status, r.body, r.attempts) for r in stream_results if r.status != 200]
        assert stream_results and not failed
        new_leader = await _leader(engine, group)
        assert new_leader is not leader


async def test_sigterm_hands_over_at_once(tmp_path: Path) -> None:
    async with DevEngine(KEY) as engine, replicas(engine, tmp_path / "lock", count=2) as group:
        await engine.wait_attached(15)
        leader = await _leader(engine, group)
        leader.signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert await leader.wait(10) == 0
        await eventually(lambda: engine.attaches == 2 and engine.attached, timeout=10)
        assert time.monotonic() - stopped_at < 2.5
        assert engine.supersedes == 0
        assert (await _leader(engine, group)) is not leader


async def test_a_deleted_lock_file_fences_the_leader(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    async with DevEngine(KEY) as engine, replicas(engine, lock, count=2) as group:
        await engine.wait_attached(15)
        leader = await _leader(engine, group)
        lock.unlink()
        await eventually(lambda: "lost the HA lock" in leader.output(), timeout=10)
        await eventually(lambda: engine.attaches >= 2 and engine.attached, timeout=10)
        assert engine.supersedes == 0, "the fenced leader closed before another dialed"
        detaches = [event for event in engine.history if event[1] == "detached"]
        attaches = [event for event in engine.history if event[1] == "attached"]
        assert detaches[0][0] <= attaches[1][0], "no overlap: the old leader left first"
        result = await engine.request({"type": "load", "model": "m", "id": "after-fence"})
        assert result.status == 200


async def test_file_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    path = str(tmp_path / "l")
    first, second = FileLock(path), FileLock(path)
    assert await first.try_acquire()
    assert not await second.try_acquire()
    await first.release()
    assert await second.try_acquire()
    watcher = asyncio.create_task(second.wait_lost())
    await asyncio.sleep(0.1)
    assert not watcher.done()
    Path(path).unlink()
    await asyncio.wait_for(watcher, 3)
    await second.release()


async def test_lock_urls(monkeypatch: Any) -> None:
    assert isinstance(lock_from_url("file:///var/run/ablo.lock"), FileLock)
    monkeypatch.delenv("ABLO_K8S_API_URL", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="k8s:// locks run in a Kubernetes pod"):
        lock_from_url("k8s:///ablo")  # outside a pod no attempt could ever succeed
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    in_cluster = lock_from_url("k8s:///ablo")  # credentials are read when first used
    with pytest.raises(OSError):
        await in_cluster.try_acquire()  # no service account mounted here
    for bad in ("file://host/x", "redis://x", "file://"):
        with pytest.raises(ValueError):
            lock_from_url(bad)
    with pytest.raises(ConfigError, match="unsupported scheme 'zookeeper'"):
        Connector(Config(api_key=KEY, ha_lock="zookeeper://x"), DataSource())


@contextlib.asynccontextmanager
async def pg_replicas(engine: DevEngine, dsn: str, count: int = 3) -> AsyncIterator[list[Process]]:
    started = []
    try:
        for _ in range(count):
            args = connector_args(
                engine.base_url, "tests.handlers:TestSource", "--ha-lock", f"{dsn}?name=orders"
            )
            started.append(await Process(args, ENV).start())
        yield started
    finally:
        for proc in started:
            await proc.stop()


async def test_postgres_lost_means_fenced(postgres: Any) -> None:
    async with DevEngine(KEY) as engine, pg_replicas(engine, postgres.dsn, count=2) as group:
        await engine.wait_attached(20)
        await asyncio.to_thread(postgres.stop, "immediate")
        await eventually(lambda: not engine.attached, timeout=15)
        # The leader says so once it has drained, closed and let the lock go.
        await eventually(lambda: any("lost the HA lock" in p.output() for p in group), timeout=15)
        await asyncio.sleep(2)
        assert not engine.attached, "nobody serves without the lock"
        await asyncio.to_thread(postgres.start)
        await eventually(lambda: engine.attached, timeout=20)
        assert engine.supersedes == 0


def _fast_lease(api: Any, name: str, identity: str) -> LeaseLock:
    """A Lease lock on the fake API with a one-second lease, so take-overs fit a test."""
    return LeaseLock(
        api.url, "ns", name, token=api.token, identity=identity,
        lease_duration=1.0, renew_deadline=0.6, retry_period=0.2,
    )  # fmt: skip


async def test_lease_lock_against_a_fake_lease_api() -> None:
    from tests.fake_k8s import FakeLeaseAPI

    api = await FakeLeaseAPI().start()
    try:
        a, b, c = (_fast_lease(api, "src", name) for name in ("a", "b", "c"))
        results = await asyncio.gather(a.try_acquire(), b.try_acquire(), c.try_acquire())
        assert sorted(results) == [False, False, True], "exactly one wins a race"
        winner = {"a": a, "b": b, "c": c}[api.holder("ns", "src") or ""]
        others = [x for x in (a, b, c) if x is not winner]
        watcher = asyncio.create_task(winner.wait_lost())
        await asyncio.sleep(1.5)  # renewed past the lease duration: still ours
        assert not watcher.done()
        assert not await others[0].try_acquire()

        await winner.release()  # explicit hand-over: free at once
        watcher.cancel()
        assert await others[0].try_acquire()
        assert api.holder("ns", "src") == others[0].identity

        # A holder that stops renewing (crashed) expires after the lease duration.
        assert not await others[1].try_acquire()
        await asyncio.sleep(1.2)
        assert await others[1].try_acquire()

        # The old holder, still believing, counts the lock as lost: past its
        # renew deadline it does not wait for an answer from the API.
        await asyncio.wait_for(others[0].wait_lost(), 3)

        # The API going away is a lost lock after the renew deadline.
        holder = others[1]
        api.down = True
        started = time.monotonic()
        await asyncio.wait_for(holder.wait_lost(), 3)
        assert time.monotonic() - started <= 1.5
    finally:
        await api.close()


async def test_a_lease_written_by_another_replica_is_lost_at_the_next_renewal() -> None:
    """Within its renew deadline a holder learns of a take-over from the API's
    conflict, not from its clock. The deadline here is long, so only the
    409 can end the wait in time."""
    from tests.fake_k8s import FakeLeaseAPI

    api = await FakeLeaseAPI().start()
    try:
        lock = LeaseLock(
            api.url, "ns", "src", token=api.token, identity="a",
            lease_duration=60.0, renew_deadline=40.0, retry_period=0.1,
        )  # fmt: skip
        assert await lock.try_acquire()
        watcher = asyncio.create_task(lock.wait_lost())
        await asyncio.sleep(0.3)  # renewed a few times: still ours
        assert not watcher.done()
        conflicts = api.conflicts

        lease = api.leases[("ns", "src")]
        lease["spec"]["holderIdentity"] = "b"
        lease["metadata"]["resourceVersion"] = api._next_version()
        await asyncio.wait_for(watcher, 10)
        assert api.conflicts > conflicts
        assert not lock.held
    finally:
        await api.close()


async def test_k8s_lease_replicas_take_over_after_a_kill() -> None:
    from tests.fake_k8s import FakeLeaseAPI

    api = await FakeLeaseAPI().start()
    env = {**ENV, "ABLO_K8S_API_URL": api.url, "ABLO_K8S_TOKEN": api.token}
    try:
        async with DevEngine(KEY) as engine:
            group = []
            try:
                for _ in range(2):
                    args = connector_args(
                        engine.base_url, "tests.handlers:TestSource", "--ha-lock", "k8s://ns/ablo",
                        "--ha-lease-duration", "3",
                    )  # fmt: skip
                    group.append(await Process(args, env).start())
                await engine.wait_attached(20)
                await asyncio.sleep(1)
                assert (engine.attaches, engine.supersedes) == (1, 0)
                leader = await _leader(engine, [(p, 0) for p in group])
                leader.signal(signal.SIGTERM)
                assert await leader.wait(10) == 0
                await eventually(lambda: engine.attaches == 2 and engine.attached, timeout=10)
                assert engine.supersedes == 0
            finally:
                for proc in group:
                    await proc.stop()
    finally:
        await api.close()


# ------------------------------------------------------------ the fence window


class _ScriptedLock(LeaderLock):
    """A lock whose confirmations the test decides."""

    def __init__(self) -> None:
        super().__init__()
        self.settle_delay = 0.3
        self.confirm_interval = 10.0  # confirms only when asked to
        self.verdicts: list[bool | None] = []
        self.checks = 0

    async def try_acquire(self) -> bool:
        self._took(ha._now())
        return True

    async def _check(self) -> bool | None:
        self.checks += 1
        return self.verdicts.pop(0)

    async def release(self) -> None:
        self._let_go()


async def test_a_leader_serves_only_within_the_settle_delay_of_a_confirmation() -> None:
    lock = _ScriptedLock()
    assert await lock.try_acquire() and lock.may_serve()
    watcher = asyncio.create_task(lock.wait_lost())
    time.sleep(0.35)  # the event loop stalls past the window (GC, CPU starvation, SIGSTOP)
    assert not lock.may_serve(), "a stalled leader must not serve on an old confirmation"
    lock.verdicts.append(True)
    assert await asyncio.wait_for(lock.confirm(), 2)
    assert lock.may_serve() and lock.checks == 1
    time.sleep(0.35)
    lock.verdicts.append(False)
    assert not await asyncio.wait_for(lock.confirm(), 2)
    assert not lock.held and not lock.may_serve()
    await asyncio.wait_for(watcher, 1)


# ------------------------------------------------------------ file lock safety


async def test_file_lock_refuses_a_symlink_and_leaves_its_target_alone(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    (tmp_path / "leader.lock").symlink_to(precious)
    with pytest.raises(ConfigError, match="symbolic link"):
        await FileLock(str(tmp_path / "leader.lock")).try_acquire()
    assert precious.read_text() == "keep me\n"
    (tmp_path / "dangling.lock").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        await FileLock(str(tmp_path / "dangling.lock")).try_acquire()
    assert not (tmp_path / "nowhere").exists(), "followed a dangling link to create its target"


async def test_file_lock_never_writes_a_file_it_did_not_create(tmp_path: Path) -> None:
    existing = tmp_path / "leader.lock"
    existing.write_text("someone else's content\n")
    lock = FileLock(str(existing))
    assert await lock.try_acquire()
    assert existing.read_text() == "someone else's content\n"
    await lock.release()
    os.link(existing, tmp_path / "second-name")
    with pytest.raises(ConfigError, match="hard links"):
        await FileLock(str(existing)).try_acquire()


async def test_file_lock_refuses_a_directory_other_users_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    for mode in (0o777, 0o770, 0o757):
        shared.chmod(mode)
        with pytest.raises(ConfigError, match="can be written by other users"):
            FileLock(str(shared / "leader.lock"))
        assert not (shared / "leader.lock").exists()
    # Sticky and owned by this user: others cannot rename or delete our file.
    shared.chmod(0o1777)
    lock = FileLock(str(shared / "leader.lock"))
    assert await lock.try_acquire()
    await lock.release()
    # A directory that turns unsafe later is refused at the next attempt.
    shared.chmod(0o777)
    with pytest.raises(ConfigError):
        await lock.try_acquire()


async def test_daemon_exits_78_on_an_unsafe_lock_path(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    (tmp_path / "lock").symlink_to(tmp_path / "elsewhere")
    for url, expected in (
        (f"file://{shared}/leader.lock", "can be written by other users"),
        (f"file://{tmp_path}/lock", "is a symbolic link"),
    ):
        args = connector_args("http://127.0.0.1:9", "tests.handlers:TestSource", "--ha-lock", url)
        proc = await Process(args, ENV).start()
        try:
            assert await proc.wait(20) == 78
            assert expected in proc.output()
        finally:
            await proc.stop()
    assert not (tmp_path / "elsewhere").exists()


def test_lease_duration_has_a_floor() -> None:
    with pytest.raises(ConfigError, match="at least 3"):
        Config(api_key=KEY, ha_lock="k8s://ns/l", ha_lease_duration=2)
    assert Config(api_key=KEY, ha_lock="k8s://ns/l", ha_lease_duration=3).ha_lease_duration == 3


# ------------------------------------------------------------- Lease and clocks


async def test_lease_expiry_is_judged_on_the_standby_clock(monkeypatch: Any) -> None:
    """A holder whose wall clock runs 20 s slow writes renewTimes that look
    expired to everyone else; only a lease seen unchanged for its duration,
    on the standby's own clock, may be taken."""
    from tests.fake_k8s import FakeLeaseAPI

    real = ha._micro_time
    monkeypatch.setattr(ha, "_micro_time", lambda when=None: real(time.time() - 20))
    api = await FakeLeaseAPI().start()
    try:
        holder = _fast_lease(api, "skew", "slow-clock")
        standby = _fast_lease(api, "skew", "standby")
        assert await holder.try_acquire()
        renewing = asyncio.create_task(holder.wait_lost())
        until = time.monotonic() + 2.5  # two and a half lease durations of renewals
        while time.monotonic() < until:
            assert not await standby.try_acquire(), "took a lease its holder keeps renewing"
            await asyncio.sleep(0.1)
        assert not renewing.done() and holder.may_serve()

        renewing.cancel()  # the holder dies: no more renewals
        stopped = time.monotonic()
        while not await standby.try_acquire():
            await asyncio.sleep(0.05)
        waited = time.monotonic() - stopped
        assert 0.7 < waited < 2.0, f"took over {waited:.2f} s after the last renewal"
    finally:
        await api.close()


# ------------------------------------------------------- PostgreSQL detection


def _lock_name() -> str:
    import uuid

    return f"test-{uuid.uuid4().hex[:8]}"


async def test_postgres_leader_cut_off_fences_itself_and_the_server_frees_its_lock(
    postgres_server: Any,
) -> None:
    from tests.tcp_proxy import FreezableProxy

    proxy = await FreezableProxy(postgres_server.port).start()
    name = _lock_name()
    leader = PostgresLock(
        f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres", name, lease_duration=3.0
    )
    standby = PostgresLock(postgres_server.dsn, name, lease_duration=3.0)
    try:
        assert await leader.try_acquire()
        cursor = await leader._connection.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('idle_session_timeout',"
            " 'tcp_user_timeout', 'tcp_keepalives_idle', 'tcp_keepalives_count') ORDER BY name"
        )
        assert await cursor.fetchall() == [
            ("idle_session_timeout", "3000"),  # ms
            ("tcp_keepalives_count", "2"),
            ("tcp_keepalives_idle", "1"),  # s, then 2 probes 1 s apart
            ("tcp_user_timeout", "3000"),
        ]
        watcher = asyncio.create_task(leader.wait_lost())
        assert not await standby.try_acquire()

        proxy.freeze()  # packets to and from the leader vanish; nothing is closed
        frozen = time.monotonic()
        await eventually(lambda: not leader.may_serve(), timeout=leader.settle_delay + 1)
        await asyncio.wait_for(watcher, leader.lost_after + 2)
        assert not leader.held
        released = time.monotonic()
        await leader.release()  # never waits on the network it cannot reach
        assert time.monotonic() - released < 0.5

        while not await standby.try_acquire():
            await asyncio.sleep(0.1)
        took = time.monotonic() - frozen
        # The server dropped the silent session after the lease duration, not
        # before: nobody could take the lock while the leader might serve.
        assert 3.0 - leader.confirm_interval - 0.2 < took < 3.0 + 1.5, took
    finally:
        await leader.release()
        await standby.release()
        await proxy.close()


async def test_postgres_leader_notices_a_killed_session_at_once(postgres_server: Any) -> None:
    import psycopg

    # Probes 5 s apart: only the watched socket can tell within a second.
    lock = PostgresLock(
        postgres_server.dsn, _lock_name(), lease_duration=15, probe_interval=5, settle_delay=6
    )
    try:
        assert await lock.try_acquire()
        watcher = asyncio.create_task(lock.wait_lost())
        await asyncio.sleep(0.2)
        async with await psycopg.AsyncConnection.connect(
            postgres_server.dsn, autocommit=True
        ) as db:
            killed = time.monotonic()
            cursor = await db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND granted AND objid = %s::oid",
                (lock.key & 0xFFFFFFFF,),
            )
            assert [row[0] for row in await cursor.fetchall()] == [True]
        await asyncio.wait_for(watcher, 3)
        assert time.monotonic() - killed < 1.5
        assert not lock.may_serve()
    finally:
        await lock.release()


# ------------------------------------------------------------ MySQL / MariaDB


def _mysql_lock(port: int, name: str, lease: float = 3.0) -> MySQLLock:
    lock = lock_from_url(f"mysql://root@127.0.0.1:{port}/?name={name}", lease_duration=lease)
    assert isinstance(lock, MySQLLock)
    return lock


def _held_by(server: Any, lock: MySQLLock) -> str:
    """The connection id holding ``lock`` on ``server``, as root sees it ("NULL": free)."""
    return str(server.execute(f"SELECT IS_USED_LOCK('{lock.lock_name}')")).strip()


def test_mysql_lock_urls_and_their_refusals() -> None:
    lock = lock_from_url("mariadb://ha:pw@db.internal:3307/app?name=orders&ssl=true")
    assert isinstance(lock, MySQLLock) and lock.lock_name == "ablo-connector:orders"
    assert lock.description == "mysql lock 'orders'" and "pw" not in repr(lock)
    assert isinstance(lock_from_url("mysql://ha@db/"), MySQLLock)
    longest = "n" * (64 - len("ablo-connector:"))
    at_the_limit = lock_from_url(f"mysql://ha@db/?name={longest}")
    assert isinstance(at_the_limit, MySQLLock) and len(at_the_limit.lock_name) == 64
    for url, message in (
        (f"mysql://ha@db/?name={longest}x", "MySQL allows 64 for a GET_LOCK name, so at most 49"),
        ("mysql://ha@db/?name=x&sslmode=required", "unknown parameter(s) sslmode"),
        ("mysql://ha@db/?ssl=yes", "ssl= takes true or false"),
        ("mysql://ha@db:port/", "the port is not a number"),
    ):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            lock_from_url(url)
    # At start, a bad lock URL is a ConfigError (exit 78) that never shows the password.
    with pytest.raises(ConfigError, match="at most 49") as refused:
        Connector(
            Config(api_key=KEY, ha_lock=f"mysql://ha:TOPSECRET@db/?name={longest}x"), DataSource()
        )
    assert "TOPSECRET" not in str(refused.value)


async def test_mysql_lock_is_exclusive_never_reentered_and_released(mariadb_server: Any) -> None:
    name = _lock_name()
    first, second = _mysql_lock(mariadb_server.port, name), _mysql_lock(mariadb_server.port, name)
    try:
        assert await first.try_acquire()
        assert not await second.try_acquire()
        # Asking again on the holding session must not take the lock a second
        # time: GET_LOCK is re-entrant, and one release would then leave it held.
        await first.release()
        assert await first.try_acquire()
        first._held = False  # as if this replica had forgotten it leads
        assert not await first.try_acquire(), "GET_LOCK re-entered on the holding session"
        first._held = True
        await first.release()
        assert _held_by(mariadb_server, first) == "NULL", "released once, free at once"
        assert await second.try_acquire()
    finally:
        await first.release()
        await second.release()
    assert _held_by(mariadb_server, second) == "NULL"


async def test_mysql_lock_session_is_dropped_by_the_server_after_the_lease(
    mariadb_server: Any,
) -> None:
    """A leader cut off from MariaDB fences itself within 2/3 T, and the server
    frees its lock after T (wait_timeout), not before."""
    from tests.tcp_proxy import FreezableProxy

    proxy = await FreezableProxy(mariadb_server.port).start()
    name = _lock_name()
    leader = _mysql_lock(proxy.port, name)
    standby = _mysql_lock(mariadb_server.port, name)
    try:
        assert await leader.try_acquire()
        cursor = leader._connection.cursor()
        await cursor.execute(
            "SELECT @@session.wait_timeout, @@session.net_read_timeout, @@session.net_write_timeout"
        )
        assert await cursor.fetchone() == (3, 3, 3)
        watcher = asyncio.create_task(leader.wait_lost())
        assert not await standby.try_acquire()

        proxy.freeze()  # packets to and from the leader vanish; nothing is closed
        frozen = time.monotonic()
        await eventually(lambda: not leader.may_serve(), timeout=leader.settle_delay + 1)
        await asyncio.wait_for(watcher, leader.lost_after + 2)
        assert not leader.held
        released = time.monotonic()
        await leader.release()  # never waits on the network it cannot reach
        assert time.monotonic() - released < 0.5

        while not await standby.try_acquire():
            await asyncio.sleep(0.1)
        took = time.monotonic() - frozen
        assert 3.0 - leader.confirm_interval - 0.2 < took < 3.0 + 1.5, took
    finally:
        await leader.release()
        await standby.release()
        await proxy.close()


async def test_mysql_leader_notices_a_killed_session_at_its_next_probe(
    mariadb_server: Any,
) -> None:
    lock = _mysql_lock(mariadb_server.port, _lock_name(), lease=15)
    try:
        assert await lock.try_acquire()
        watcher = asyncio.create_task(lock.wait_lost())
        await asyncio.sleep(0.2)
        holder = _held_by(mariadb_server, lock)
        assert holder == str(lock._connection_id)
        killed = time.monotonic()
        await asyncio.to_thread(mariadb_server.execute, f"KILL CONNECTION {holder}")
        await asyncio.wait_for(watcher, 3)
        assert time.monotonic() - killed < lock.confirm_interval + 1
        assert not lock.may_serve()
    finally:
        await lock.release()


async def test_mysql_probe_on_another_session_confirms_nothing(mariadb_server: Any) -> None:
    """A connection that reaches another session (a multiplexing pooler, a
    reconnect) must not confirm a lock that session holds for someone else."""
    name = _lock_name()
    leader, other = _mysql_lock(mariadb_server.port, name), _mysql_lock(mariadb_server.port, name)
    try:
        assert await leader.try_acquire()
        first_session = leader._connection
        assert await leader._check()
        await leader.release()
        assert await other.try_acquire()
        # The old leader's "connection" now lands on the session holding the lock.
        leader._connection, leader._held = other._connection, True
        assert not await leader._check()
        leader._connection = first_session
    finally:
        leader._connection = None
        await leader.release()
        await other.release()


async def test_mysql_lock_refuses_a_galera_node(monkeypatch: Any) -> None:
    """GET_LOCK is local to one Galera node (and MariaDB 10.11 allows it there):
    two replicas reaching two nodes would both lead, so such a server is refused.
    A one-node cluster on the private server (Debian's mariadb-server depends on
    galera-4, which provides the library)."""
    import tests.mariadb as harness

    # Galera's group channel listens on 0.0.0.0:4567 unless told: a port of
    # its own on loopback, so two runs of the suite side by side never meet.
    group = f"gmcast.listen_addr=tcp://127.0.0.1:{harness.free_port()}"
    monkeypatch.setattr(
        harness, "_SERVER_OPTIONS", (*harness._SERVER_OPTIONS, "--wsrep-on=ON",
        "--wsrep-provider=/usr/lib/galera/libgalera_smm.so", "--wsrep-cluster-address=gcomm://",
        f"--wsrep-provider-options={group}", "--wsrep-node-address=127.0.0.1",
        "--binlog-format=ROW"),
    )  # fmt: skip
    with harness.running_mariadb() as node:
        assert node.execute("SELECT @@wsrep_on, GET_LOCK('plain', 0)").split() == ["1", "1"]
        lock = _mysql_lock(node.port, "orders")
        with pytest.raises(ConfigError, match="Galera cluster node"):
            await lock.try_acquire()
        assert _held_by(node, lock) == "NULL" and lock._connection is None
        args = connector_args(
            "http://127.0.0.1:9", "tests.handlers:TestSource",
            "--ha-lock", f"mysql://root@127.0.0.1:{node.port}/?name=orders",
        )  # fmt: skip
        proc = await Process(args, ENV).start()
        try:
            assert await proc.wait(20) == 78
            assert "Galera cluster node" in proc.output()
        finally:
            await proc.stop()


@pytest.mark.parametrize("phase", ["settle", "backoff", "serving"])
async def test_a_cancel_that_lands_as_the_lock_is_lost_ends_run(phase: str, tmp_path: Path) -> None:
    """Losing the lock and being cancelled at almost the same moment: for every
    loop turn between the two, run() ends cancelled, never back in standby to
    take the lock and serve again."""
    tmp_path.chmod(0o700)
    async with DevEngine(KEY) as engine:
        for turns in range(6):
            config = Config(
                api_key=KEY,
                base_url=engine.base_url if phase != "backoff" else "http://127.0.0.1:9",
                ha_lock=f"file://{tmp_path}/lock{turns}",
                reconnect_schedule=(30.0,),
                reconnect_jitter=0.0,
            )
            connector = Connector(config, TestSource())
            lock = connector._lock
            assert isinstance(lock, FileLock)
            lock.settle_delay = 5.0 if phase == "settle" else 0.2
            lock.confirm_interval = 60.0  # the loss comes from the test, not a confirmation
            task = asyncio.create_task(connector.run())
            if phase == "settle":
                await eventually(lambda lock=lock: lock.held)
            elif phase == "backoff":
                await eventually(lambda c=connector: c.status.state.value == "backoff")
            else:
                await connector.wait_ready(10)
            lock._confirmed_at = ha._now() + 1e6  # still serving when the loss lands
            lock._lose("the test took it")
            loop = asyncio.get_running_loop()
            if turns == 0:
                task.cancel()
            else:
                for _ in range(turns - 1):
                    await asyncio.sleep(0)
                loop.call_soon(task.cancel)
            done, _ = await asyncio.wait({task}, timeout=3)
            if task not in done:
                connector.stop()
                await asyncio.gather(task, return_exceptions=True)
            assert task in done and task.cancelled(), (turns, connector.status.state)
