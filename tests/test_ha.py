"""Standby replicas with --ha-lock: one serves, the others wait, take-over in seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connector import Config, ConfigError, Connector, DataSource
from connector.daemon.ha import FileLock, lock_from_url
from connector.dev.engine import DevEngine
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


def test_lock_urls() -> None:
    assert isinstance(lock_from_url("file:///var/run/ablo.lock"), FileLock)
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


async def test_postgres_lock_one_leader_and_sigkill_takeover(postgres: Any) -> None:
    async with (
        DevEngine(KEY, request_timeout=2, max_attempts=10) as engine,
        pg_replicas(engine, postgres.dsn) as group,
    ):
        await engine.wait_attached(20)
        await asyncio.sleep(2)
        assert (engine.attaches, engine.supersedes) == (1, 0)
        result = await engine.request({"type": "load", "model": "m", "id": "who"})
        leader = next(p for p in group if p.pid == result.json()["row"]["pid"])
        async with steady_stream(engine) as stream_results:
            await asyncio.sleep(0.5)
            leader.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await leader.wait()
            await eventually(lambda: engine.attaches == 2 and engine.attached, timeout=10)
            assert time.monotonic() - killed_at < 5
            await asyncio.sleep(0.5)
        assert stream_results and all(r.status == 200 for r in stream_results)
        assert engine.supersedes == 0
        assert (await engine.request({"type": "load", "model": "m", "id": "x"})).status == 200


async def test_postgres_lost_means_fenced(postgres: Any) -> None:
    async with DevEngine(KEY) as engine, pg_replicas(engine, postgres.dsn, count=2) as group:
        await engine.wait_attached(20)
        await asyncio.to_thread(postgres.stop, "immediate")
        await eventually(lambda: not engine.attached, timeout=15)
        assert any("lost the HA lock" in p.output() for p in group)
        await asyncio.sleep(2)
        assert not engine.attached, "nobody serves without the lock"
        await asyncio.to_thread(postgres.start)
        await eventually(lambda: engine.attached, timeout=20)
        assert engine.supersedes == 0


async def test_lease_lock_against_a_fake_lease_api() -> None:
    from connector.daemon.ha import LeaseLock
    from tests.fake_k8s import FakeLeaseAPI

    api = await FakeLeaseAPI().start()
    try:

        def lease(identity: str) -> LeaseLock:
            return LeaseLock(
                api.url, "ns", "src", token=api.token, identity=identity,
                lease_duration=1.0, renew_deadline=0.6, retry_period=0.2,
            )  # fmt: skip

        a, b, c = lease("a"), lease("b"), lease("c")
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

        # The old holder, still believing, finds the lease written by someone
        # else: its renewal conflicts and it counts the lock as lost.
        await asyncio.wait_for(others[0].wait_lost(), 3)

        # The API going away is a lost lock after the renew deadline.
        holder = others[1]
        api.down = True
        started = time.monotonic()
        await asyncio.wait_for(holder.wait_lost(), 3)
        assert time.monotonic() - started <= 1.5
        assert api.conflicts >= 2
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
                        engine.base_url, "tests.handlers:TestSource", "--ha-lock", "k8s://ns/ablo"
                    )
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
