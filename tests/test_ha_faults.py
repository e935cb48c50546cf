"""The HA fault matrix: each fault injected at a random phase under a steady
stream of requests, against replicas that really run, recording which
replica answered each request and when.

Every round asserts:

- no overlap: no replica answers a request sent after a later leader's first
  answer (late answers count: the engine journals every answer it receives);
- the longest gap between two answers stays within the take-over bound the
  README documents for that backend and fault;
- every request of the stream is answered 200 in the end.

The engine runs in spread mode: every replica that dials stays attached and
gets requests round-robin, so two replicas serving at once cannot hide behind
a supersede. ``ABLO_HA_SEED=<n>`` replays a run's phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connector.daemon.ha import FileLock, LeaseLock, PostgresLock
from connector.daemon.ha_mysql import MySQLLock
from connector.dev.engine import DevEngine, EngineResult, Exchange
from tests.helpers import Process, connector_args, eventually
from tests.tcp_proxy import FreezableProxy

KEY = "sk_test_ha_faults_5e1b"
ENV = {"ABLO_API_KEY": KEY}
RETRY = 0.5  # Config.ha_retry_interval: how often a standby tries the lock
# Dialing and registering once the settle delay is over, with room for a
# loaded 2-core machine (it takes well under 0.5 s when idle).
DIAL = 1.5
PG_LEASE = 4.0  # --ha-lease-duration for the PostgreSQL rounds (15 s by default)
MYSQL_LEASE = 4.0  # and for the MySQL rounds (wait_timeout 4 s)
K8S_LEASE = 3.0


def _seed() -> int:
    return int(os.environ.get("ABLO_HA_SEED") or random.SystemRandom().randrange(1 << 30))


def _pid(exchange: Exchange) -> int | None:
    if exchange.status != 200:
        return None
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return int(json.loads(exchange.body)["row"]["pid"])
    return None


@dataclass
class Round:
    fault: str
    started: float
    bound: float = math.inf
    fault_at: float = 0.0
    old_leader: int = 0
    new_leader: int | None = None
    gap: float = 0.0
    answers: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.fault:<13} leader {self.old_leader} -> {self.new_leader}, "
            f"{self.answers} answers, longest gap {self.gap:.2f} s (bound {self.bound:.2f} s)"
            + "".join(f"\n    PROBLEM: {p}" for p in self.problems)
        )


class Stream:
    """A request every ``interval`` seconds, each in its own task: nothing
    waits for an answer before the next one goes out."""

    def __init__(self, engine: DevEngine, interval: float = 0.05) -> None:
        self.engine = engine
        self.interval = interval
        self.results: list[EngineResult] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: asyncio.Task[None] | None = None
        self._n = 0

    def start(self) -> None:
        self._running = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._n += 1
            task = asyncio.create_task(self._one(f"r{self._n}"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(self.interval)

    async def _one(self, id: str) -> None:
        self.results.append(await self.engine.request({"type": "load", "model": "m", "id": id}))

    async def stop(self, timeout: float = 30.0) -> None:
        if self._running is not None:
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)


class Matrix:
    """One engine, one replica group, rounds of faults."""

    def __init__(self, engine: DevEngine, seed: int) -> None:
        self.engine = engine
        self.seed = seed
        self.rng = random.Random(seed)
        self.replicas: dict[int, Process] = {}
        self.rounds: list[Round] = []
        self.broken = False  # a round never got service back: later rounds are moot

    @property
    def journal(self) -> list[Exchange]:
        assert self.engine.journal is not None
        return self.engine.journal

    async def spawn(self, *args: str, env: dict[str, str] | None = None) -> Process:
        proc = await Process(
            connector_args(self.engine.base_url, "tests.handlers:TestSource", *args),
            {**ENV, **(env or {})},
        ).start()
        self.replicas[proc.pid] = proc
        return proc

    async def elected(self) -> None:
        """The first leader is up, and only it ever dialed."""
        await self.engine.wait_attached(30)
        await asyncio.sleep(1.0)
        assert self.engine.attaches == 1, "exactly one replica dialed"

    def attached(self) -> int:
        events = [what for _, what, _ in self.engine.history]
        return events.count("attached") - events.count("detached")

    async def leader(self) -> int:
        result = await self.engine.request({"type": "load", "model": "m", "id": "who"})
        assert result.status == 200, result.body
        return int(result.json()["row"]["pid"])

    def answered_after(self, moment: float, *, other_than: int | None = None) -> bool:
        return any(
            e.sent_at > moment and (pid := _pid(e)) is not None and pid != other_than
            for e in reversed(self.journal)
        )

    async def run_round(
        self,
        fault: str,
        inject: Callable[[Round], Awaitable[None]],
        *,
        bound: Callable[[Round], float],
        leader_changes: bool,
        recover: Callable[[Round], Awaitable[None]] | None = None,
    ) -> None:
        """Stream, inject at a random phase, wait for service to come back,
        undo the fault, and check what the engine saw."""
        round_ = Round(fault, started=time.monotonic())
        self.rounds.append(round_)
        if self.broken:
            round_.problems.append("not run: an earlier round left no replica serving")
            return
        await eventually(lambda: self.attached() == 1, timeout=30)
        round_.old_leader = await self.leader()
        stream = Stream(self.engine)
        stream.start()
        try:
            await asyncio.sleep(self.rng.uniform(0.3, 1.5))
            round_.fault_at = time.monotonic()
            await inject(round_)
            round_.bound = bound(round_)
            other = round_.old_leader if leader_changes else None
            try:
                await eventually(
                    lambda: self.answered_after(round_.fault_at, other_than=other),
                    timeout=round_.bound + 15,
                )
            except AssertionError:
                round_.problems.append(f"no replica served within {round_.bound + 15:.1f} s")
                self.broken = True
            if recover is not None:
                await asyncio.sleep(self.rng.uniform(0.0, 1.0))
                await recover(round_)
            await asyncio.sleep(1.5)  # a resumed or cut-off old leader would answer now
        finally:
            await stream.stop(timeout=1 if self.broken else 30)
        self._check(round_, stream)

    def _check(self, round_: Round, stream: Stream) -> None:
        exchanges = [e for e in self.journal if e.sent_at >= round_.started]
        leader_of = {e.connector: pid for e in exchanges if (pid := _pid(e)) is not None}
        first: dict[int, float] = {}
        for e in sorted(exchanges, key=lambda e: e.answered_at):
            if e.connector in leader_of:
                first.setdefault(leader_of[e.connector], e.answered_at)
        overlaps = []  # (how long after a later leader's first answer it was sent, by whom)
        for e in exchanges:
            who = leader_of.get(e.connector)
            if who is None:
                continue
            overlaps += [
                (e.sent_at - at, who, p)
                for p, at in first.items()
                if p != who and at > first[who] and e.sent_at > at
            ]
        if overlaps:
            late, who, later = max(overlaps)
            round_.problems.append(
                f"overlap: {len(overlaps)} answer(s) from an old leader to requests sent after a "
                f"new leader's first answer; the latest: {who} answered a request sent {late:.3f} "
                f"s after {later}'s first answer"
            )
        answered = sorted(e.answered_at for e in exchanges if e.status == 200)
        round_.answers = len(answered)
        round_.gap = max((b - a for a, b in itertools.pairwise(answered)), default=0)
        if round_.gap > round_.bound:
            round_.problems.append(f"gap {round_.gap:.2f} s exceeds the bound {round_.bound:.2f} s")
        last = max(
            (e for e in exchanges if e.connector in leader_of),
            key=lambda e: e.answered_at,
            default=None,
        )
        round_.new_leader = None if last is None else leader_of[last.connector]
        failed = [r for r in stream.results if r.status != 200]
        if failed or len(stream.results) < 10:
            round_.problems.append(
                f"{len(failed)} of {len(stream.results)} requests failed: "
                f"{[(r.status, r.body[:80]) for r in failed[:3]]}"
            )

    def verdict(self) -> None:
        report = "\n".join(r.summary() for r in self.rounds)
        print(f"\nHA fault matrix (ABLO_HA_SEED={self.seed}):\n{report}")
        assert not any(r.problems for r in self.rounds), (
            f"ABLO_HA_SEED={self.seed}\n{report}\n"
            + "\n".join(
                f"--- replica {pid}:\n{p.output()[-3000:]}" for pid, p in self.replicas.items()
            )
        )

    async def stop(self) -> None:
        for proc in self.replicas.values():
            await proc.stop()


@contextlib.asynccontextmanager
async def matrix() -> AsyncIterator[Matrix]:
    engine = DevEngine(KEY, request_timeout=1.0, max_attempts=60, spread=True, journal=True)
    async with engine:
        group = Matrix(engine, _seed())
        try:
            yield group
        finally:
            await group.stop()


# ---------------------------------------------------------------- PostgreSQL


@pytest.mark.timeout(150)
async def test_postgres_lock_fault_matrix(postgres: Any) -> None:
    import psycopg

    settle = PostgresLock("", "x", lease_duration=PG_LEASE).settle_delay
    proxies: dict[int, FreezableProxy] = {}

    async with matrix() as m:

        async def spawn() -> None:
            proxy = await FreezableProxy(postgres.port).start()
            url = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres?name=orders"
            proc = await m.spawn("--ha-lock", url, "--ha-lease-duration", str(PG_LEASE))
            proxies[proc.pid] = proxy

        async def kill_backend(round_: Round) -> None:
            async with await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True) as db:
                cursor = await db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted"
                )
                assert [row[0] for row in await cursor.fetchall()] == [True]

        down = {"for": 0.0}

        async def restart(round_: Round) -> None:
            started = time.monotonic()
            await asyncio.to_thread(postgres.stop, "fast")
            await asyncio.to_thread(postgres.start)
            down["for"] = time.monotonic() - started

        async def partition(round_: Round) -> None:
            proxies[round_.old_leader].freeze()

        async def heal(round_: Round) -> None:
            proxies[round_.old_leader].thaw()

        async def stop_leader(round_: Round) -> None:
            m.replicas[round_.old_leader].signal(signal.SIGSTOP)

        async def resume_leader(round_: Round) -> None:
            m.replicas[round_.old_leader].signal(signal.SIGCONT)

        async def kill_leader(round_: Round) -> None:
            m.replicas[round_.old_leader].signal(signal.SIGKILL)

        try:
            for _ in range(3):
                await spawn()
            await m.elected()
            # Free at once: the session is gone (killed, or its process died).
            at_once = lambda _: RETRY + settle + DIAL  # noqa: E731
            # Free after T: the server drops a silent session (idle_session_timeout).
            after_lease = lambda _: PG_LEASE + RETRY + settle + DIAL  # noqa: E731
            await m.run_round("kill-backend", kill_backend, bound=at_once, leader_changes=False)
            await m.run_round(
                "restart", restart, bound=lambda _: down["for"] + at_once(_), leader_changes=False
            )
            await m.run_round(
                "partition", partition, bound=after_lease, leader_changes=True, recover=heal
            )
            await m.run_round(
                "sigstop", stop_leader, bound=after_lease, leader_changes=True,
                recover=resume_leader,
            )  # fmt: skip
            await m.run_round("kill-backend", kill_backend, bound=at_once, leader_changes=False)
            await m.run_round("sigkill", kill_leader, bound=at_once, leader_changes=True)
        finally:
            for proxy in proxies.values():
                await proxy.close()
        m.verdict()


# ------------------------------------------------------------ MySQL / MariaDB


@pytest.mark.timeout(150)
async def test_mysql_lock_fault_matrix(mariadb: Any) -> None:
    settle = MySQLLock({}, "x", lease_duration=MYSQL_LEASE).settle_delay
    proxies: dict[int, FreezableProxy] = {}

    async with matrix() as m:

        async def spawn() -> None:
            proxy = await FreezableProxy(mariadb.port).start()
            url = f"mysql://root@127.0.0.1:{proxy.port}/?name=orders"
            proc = await m.spawn("--ha-lock", url, "--ha-lease-duration", str(MYSQL_LEASE))
            proxies[proc.pid] = proxy

        async def kill_session(round_: Round) -> None:
            holder = await asyncio.to_thread(
                mariadb.execute, "SELECT IS_USED_LOCK('ablo-connector:orders')"
            )
            assert holder.strip().isdigit(), holder
            await asyncio.to_thread(mariadb.execute, f"KILL CONNECTION {holder.strip()}")

        down = {"for": 0.0}

        async def restart(round_: Round) -> None:
            started = time.monotonic()
            await asyncio.to_thread(mariadb.stop)
            await asyncio.to_thread(mariadb.start)
            down["for"] = time.monotonic() - started

        async def partition(round_: Round) -> None:
            proxies[round_.old_leader].freeze()

        async def heal(round_: Round) -> None:
            proxies[round_.old_leader].thaw()

        async def stop_leader(round_: Round) -> None:
            m.replicas[round_.old_leader].signal(signal.SIGSTOP)

        async def resume_leader(round_: Round) -> None:
            m.replicas[round_.old_leader].signal(signal.SIGCONT)

        async def kill_leader(round_: Round) -> None:
            m.replicas[round_.old_leader].signal(signal.SIGKILL)

        try:
            for _ in range(3):
                await spawn()
            await m.elected()
            # Free at once: the session is gone (killed, or its process died);
            # the leader learns it at its next probe.
            at_once = lambda _: RETRY + settle + DIAL  # noqa: E731
            # Free after T: the server drops a silent session (wait_timeout).
            after_lease = lambda _: MYSQL_LEASE + RETRY + settle + DIAL  # noqa: E731
            await m.run_round("kill-session", kill_session, bound=at_once, leader_changes=False)
            await m.run_round(
                "restart", restart, bound=lambda _: down["for"] + at_once(_), leader_changes=False
            )
            await m.run_round(
                "partition", partition, bound=after_lease, leader_changes=True, recover=heal
            )
            await m.run_round(
                "sigstop", stop_leader, bound=after_lease, leader_changes=True,
                recover=resume_leader,
            )  # fmt: skip
            await m.run_round("kill-session", kill_session, bound=at_once, leader_changes=False)
            await m.run_round("sigkill", kill_leader, bound=at_once, leader_changes=True)
        finally:
            for proxy in proxies.values():
                await proxy.close()
        m.verdict()


# ----------------------------------------------------------------- file lock


@pytest.mark.timeout(90)
async def test_file_lock_fault_matrix(tmp_path: Path) -> None:
    lock = tmp_path / "leader.lock"
    settle = FileLock(str(lock)).settle_delay
    frozen = {"for": 0.0}

    async with matrix() as m:

        async def replace_file(round_: Round) -> None:
            fresh = tmp_path / "leader.lock.new"
            fresh.write_text("")
            os.replace(fresh, lock)

        async def freeze_leader(round_: Round) -> None:
            # The frozen leader keeps its flock: nobody may take over; it
            # serves again when it thaws.
            proc = m.replicas[round_.old_leader]
            frozen["for"] = m.rng.uniform(1.0, 2.0)
            proc.signal(signal.SIGSTOP)
            await asyncio.sleep(frozen["for"])
            proc.signal(signal.SIGCONT)

        async def kill_leader(round_: Round) -> None:
            m.replicas[round_.old_leader].signal(signal.SIGKILL)

        for _ in range(2):
            await m.spawn("--ha-lock", f"file://{lock}")
        await m.elected()
        at_once = lambda _: RETRY + settle + DIAL  # noqa: E731
        await m.run_round("replace-file", replace_file, bound=at_once, leader_changes=False)
        await m.run_round(
            "sigstop", freeze_leader, bound=lambda _: frozen["for"] + DIAL, leader_changes=False
        )
        await m.run_round("replace-file", replace_file, bound=at_once, leader_changes=False)
        await m.run_round("sigkill", kill_leader, bound=at_once, leader_changes=True)
        m.verdict()


# ---------------------------------------------------------- Kubernetes Lease


@pytest.mark.timeout(90)
async def test_lease_lock_fault_matrix() -> None:
    from tests.fake_k8s import FakeLeaseAPI

    timing = LeaseLock("http://x", "ns", "l", lease_duration=K8S_LEASE)
    api = await FakeLeaseAPI().start()
    env = {"ABLO_K8S_API_URL": api.url, "ABLO_K8S_TOKEN": api.token}
    try:
        async with matrix() as m:

            async def stop_leader(round_: Round) -> None:
                m.replicas[round_.old_leader].signal(signal.SIGSTOP)

            async def resume_leader(round_: Round) -> None:
                m.replicas[round_.old_leader].signal(signal.SIGCONT)

            for _ in range(2):
                await m.spawn(
                    "--ha-lock", "k8s://ns/ablo", "--ha-lease-duration", str(K8S_LEASE), env=env
                )
            await m.elected()
            # The standby sees the last renewal within one retry, counts the
            # lease duration from then, takes it at its next retry, settles.
            bound = K8S_LEASE + 2 * RETRY + timing.settle_delay + DIAL
            for _ in range(2):
                await m.run_round(
                    "sigstop", stop_leader, bound=lambda _: bound, leader_changes=True,
                    recover=resume_leader,
                )  # fmt: skip
            m.verdict()
    finally:
        await api.close()
