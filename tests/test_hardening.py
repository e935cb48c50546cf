"""Floods and chaos against a connector process: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from connector.dev.engine import DevEngine
from tests.helpers import connector_args, process

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
