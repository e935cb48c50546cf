"""Floods and chaos against a connector process: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from connector.dev.engine import DevEngine
from tests.helpers import connector_args, free_port, process

KEY = "sk_test_hardening_4b8e"
ENV = {"ABLO_API_KEY": KEY}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_flood_of_20000_requests_is_answered_exactly_once_in_bounded_memory() -> None:
    async with (
        DevEngine(KEY, request_timeout=30) as engine,
        process(
            connector_args(engine.base_url, "tests.handlers:TestSource", "--max-in-flight", "4"),
            ENV,
        ) as connector,
    ):
        await engine.wait_attached(10)

        async def flood(count: int, tag: str) -> list[Any]:
            return await asyncio.gather(
                *(
                    engine.request({"type": "load", "model": "m", "id": f"{tag}{i}"})
                    for i in range(count)
                )
            )

        await flood(2000, "warm")
        before = _rss_kib(connector.pid)
        results = await flood(20000, "f")
        after = _rss_kib(connector.pid)
    assert [r.status for r in results] == [200] * 20000
    assert all(r.attempts == 1 for r in results), "nothing was retried, so nothing was lost"
    ids = Counter(r.json()["row"]["id"] for r in results)
    assert len(ids) == 20000 and set(ids.values()) == {1}
    assert after - before < 8 * 1024, f"RSS grew {after - before} KiB over the flood"


async def test_chaos_engine_crashes_lose_nothing_and_run_no_commit_twice(tmp_path: Path) -> None:
    record = tmp_path / "commits.log"
    record.touch()
    rng = random.Random(7)
    async with (
        DevEngine(KEY, request_timeout=2, max_attempts=20, attach_timeout=20) as engine,
        process(
            connector_args(
                engine.base_url, "tests.handlers:RecordingSource", "--max-in-flight", "16"
            ),
            {**ENV, "ABLO_TEST_RECORD": str(record)},
        ),
    ):
        await engine.wait_attached(10)

        async def commit(i: int) -> Any:
            await asyncio.sleep(rng.uniform(0, 4))
            body = {
                "type": "commit",
                "correlationId": f"corr_{i}",
                "operations": [
                    {"type": "CREATE", "model": "task", "id": f"t{i}", "input": {"n": i}}
                ],
            }
            return await engine.request(body)

        async def crash_now_and_then() -> int:
            crashes = 0
            for _ in range(4):
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                await engine.restart(down_for=rng.uniform(0, 0.3))
                crashes += 1
            return crashes

        chaos = asyncio.create_task(crash_now_and_then())
        results = await asyncio.gather(*(commit(i) for i in range(600)))
        assert await chaos == 4
    assert [r.status for r in results] == [200] * 600, Counter(r.status for r in results)
    for i, result in enumerate(results):
        assert result.json()["rows"] == [{"id": f"t{i}"}]
    retried = [r for r in results if r.attempts > 1]
    assert retried, "the crashes hit no request in flight; the test proved nothing"
    runs = Counter(tuple(line.split()) for line in record.read_text().splitlines())
    doubles = {key: n for key, n in runs.items() if n > 1}
    assert not doubles, f"handler ran twice for the same correlationId + webhook-id: {doubles}"
    assert {corr for corr, _ in runs} == {f"corr_{i}" for i in range(600)}


def _mutations(rng: random.Random, engine: DevEngine) -> list[str | bytes]:
    body = json.dumps({"type": "load", "model": "m", "id": "x"})
    valid = {
        "type": "request", "id": "fz", "method": "POST", "url": "u",
        "headers": engine.sign("msg_fuzz", body), "body": body,
    }  # fmt: skip
    junk: list[Any] = [None, True, 0, -1, 2**60, 1.5, "", "x" * 50, [], {}, ["a"], {"a": 1}]
    frames: list[str | bytes] = []
    for n in range(1500):
        frame = dict(valid, id=f"fz{n}")
        choice = rng.randrange(6)
        if choice == 0:
            frame[rng.choice(list(frame))] = rng.choice(junk)
        elif choice == 1:
            del frame[rng.choice(list(frame))]
        elif choice == 2:
            frame["type"] = rng.choice(
                ["response", "error", "ready", "register", "request", "REQUEST"]
            )
        elif choice == 3:
            frame["body"] = rng.choice(
                ['{"type":"load"}', "[]", "{", '{"type":"commit","operations":7}', body + " "]
            )
        text = json.dumps(frame)
        if choice == 4:
            cut = rng.randrange(len(text))
            text = text[:cut] + rng.choice(["", "\x00", "}", '"', "\\ud800"]) + text[cut + 1 :]
        if choice == 5:
            frames.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
        else:
            frames.append(text)
    return frames


async def test_fuzzed_frames_never_break_serving_nor_answer_an_unasked_id() -> None:
    rng = random.Random(20261127)
    async with (
        DevEngine(KEY) as engine,
        process(connector_args(engine.base_url, "tests.handlers:TestSource"), ENV) as connector,
    ):
        await engine.wait_attached(10)
        frames = _mutations(rng, engine)
        for raw in frames:
            await engine.send_raw(raw)
        after = await engine.request({"type": "load", "model": "m", "id": "still-serving"})
        assert after.status == 200 and after.attempts == 1, connector.output()[-3000:]
        await asyncio.sleep(0.5)
        assert connector.returncode is None
        assert "Traceback" not in connector.output()
    sent = "\n".join(raw for raw in frames if isinstance(raw, str))
    unasked = {
        answered
        for answered in engine.answered_ids
        if json.dumps(answered) not in sent and not answered.startswith("req_")
    }
    assert not unasked, f"answers to ids that were never sent: {unasked}"
    assert len(engine.answered_ids) > 100, "the fuzz reached the dispatcher"


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_memory_stays_within_budget_under_a_stream_of_large_answers() -> None:
    """Reads are not kept for replays at all; commit answers only within --replay-memory."""
    mib = 1024 * 1024
    async with (
        DevEngine(KEY, request_timeout=30) as engine,
        process(
            connector_args(
                engine.base_url, "tests.handlers:BlockingSource", "--replay-memory", str(8 * mib)
            ),
            ENV,
        ) as connector,
    ):
        await engine.wait_attached(10)
        for i in range(10):  # warm up the allocator and the thread pool
            await engine.request({"type": "load", "model": "m", "id": f"big:{mib}", "n": i})
        before = _rss_kib(connector.pid)
        for _ in range(200):  # 200 MiB of answers, each request its own webhook-id
            result = await engine.request({"type": "load", "model": "m", "id": f"big:{mib}"})
            assert result.status == 200 and len(result.body) > mib
        after_reads = _rss_kib(connector.pid)
        for i in range(60):  # 60 MiB of commit answers against an 8 MiB budget
            commit = {
                "type": "commit",
                "correlationId": f"c{i}",
                "operations": [
                    {"type": "UPDATE", "model": "m", "id": f"r{i}", "input": {"size": mib}}
                ],
            }
            assert (await engine.request(commit)).status == 200
        after_commits = _rss_kib(connector.pid)
    assert after_reads - before < 48 * 1024, f"reads: RSS grew {after_reads - before} KiB"
    assert after_commits - before < (48 + 8) * 1024, (
        f"commits: RSS grew {after_commits - before} KiB"
    )


async def test_stuck_handler_threads_are_replaced_then_reported_unhealthy() -> None:
    health = free_port()
    args = connector_args(
        "http://127.0.0.1:1", "tests.handlers:BlockingSource",
        "--max-in-flight", "2", "--spare-threads", "2", "--request-timeout", "0.5",
        "--health-addr", f"127.0.0.1:{health}",
    )  # fmt: skip
    async with DevEngine(KEY, request_timeout=10, max_attempts=1) as engine:
        args[args.index("--base-url") + 1] = engine.base_url
        async with process(args, ENV):
            await engine.wait_attached(10)
            stuck = await asyncio.gather(
                *(engine.request({"type": "load", "model": "m", "id": "block:6"}) for _ in range(2))
            )
            assert [r.status for r in stuck] == [504, 504]
            # Both in-flight threads are stuck: spare threads serve on.
            served = await asyncio.gather(
                *(engine.request({"type": "load", "model": "m", "id": f"ok{i}"}) for i in range(4))
            )
            assert [r.status for r in served] == [200] * 4
            status, ready = await asyncio.to_thread(_get, f"http://127.0.0.1:{health}/readyz")
            assert status == 200 and ready["stuckHandlerThreads"] == 2
            # One more stuck call than there are spares: the process says it is unhealthy.
            third = await engine.request({"type": "load", "model": "m", "id": "block:4"})
            assert third.status == 504
            status, ready = await asyncio.to_thread(_get, f"http://127.0.0.1:{health}/readyz")
            assert status == 503 and ready["reason"] == "handler_threads_stuck"
            assert ready["stuckHandlerThreads"] == 3
            status, alive = await asyncio.to_thread(_get, f"http://127.0.0.1:{health}/healthz")
            assert status == 503 and alive["reason"] == "handler_threads_stuck"
            # The threads return: healthy and ready again, no restart needed.
            deadline = time.monotonic() + 15
            while (await asyncio.to_thread(_get, f"http://127.0.0.1:{health}/readyz"))[0] != 200:
                assert time.monotonic() < deadline, "never ready again"
                await asyncio.sleep(0.2)
            assert (
                await engine.request({"type": "load", "model": "m", "id": "after"})
            ).status == 200


async def test_sigterm_ends_the_process_even_with_a_stuck_handler_thread() -> None:
    async with DevEngine(KEY, request_timeout=10, max_attempts=1) as engine:
        args = connector_args(
            engine.base_url, "tests.handlers:BlockingSource",
            "--request-timeout", "0.5", "--shutdown-grace", "1",
        )  # fmt: skip
        async with process(args, ENV) as connector:
            await engine.wait_attached(10)
            stuck = await engine.request({"type": "load", "model": "m", "id": "block:120"})
            assert stuck.status == 504
            # and one still running when the signal comes, past the grace period
            running = asyncio.ensure_future(
                engine.request({"type": "load", "model": "m", "id": "block:120"})
            )
            await asyncio.sleep(0.2)
            started = time.monotonic()
            connector.signal(signal.SIGTERM)
            assert await connector.wait(10) == 0
            assert time.monotonic() - started < 5
            running.cancel()
            output = connector.output()
    assert "connector stopped" in output


async def test_a_request_during_the_drain_is_answered_503_at_once() -> None:
    async with DevEngine(KEY, request_timeout=10, max_attempts=1) as engine:
        args = connector_args(engine.base_url, "tests.handlers:TestSource")
        async with process(args, ENV) as connector:
            await engine.wait_attached(10)
            slow = asyncio.ensure_future(
                engine.request({"type": "load", "model": "m", "id": "sleep:2"})
            )
            await asyncio.sleep(0.3)
            connector.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            started = time.monotonic()
            late = await engine.request({"type": "load", "model": "m", "id": "late"})
            answered_in = time.monotonic() - started
            assert late.status == 503 and late.json()["error"] == "source_connector_draining"
            assert answered_in < 0.5, "answered at once, not when the socket closes"
            assert (await slow).status == 200, "the request under way still finishes"
            assert await connector.wait(10) == 0
