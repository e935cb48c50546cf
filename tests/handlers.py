"""Handlers the end-to-end tests load into connector subprocesses."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from typing import Any

from connector import CommitRequest, CommitResult, DataSource, ListPage, ListQuery, RequestContext


class TestSource(DataSource):
    """load ``sleep:N`` waits N seconds; ``hang`` never answers; ``boom`` raises
    with the API key in its message (which must never reach a log)."""

    __test__ = False

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any] | None:
        if id.startswith("sleep:"):
            await asyncio.sleep(float(id.split(":", 1)[1]))
        elif id == "hang":
            await asyncio.sleep(3600)
        elif id == "boom":
            raise RuntimeError(f"database refused credentials {os.environ.get('ABLO_API_KEY')}")
        return {"id": id, "model": model, "pid": os.getpid()}

    async def list(self, model: str, query: ListQuery, ctx: RequestContext) -> ListPage:
        return ListPage(rows=[{"id": "a"}])


class StuckProbeSource(TestSource):
    """A plain ``def`` probe that never returns (a health check on a host that
    stopped answering, with no timeout of its own)."""

    __test__ = False

    def probe(self) -> None:
        threading.Event().wait()


class RecordingSource(DataSource):
    """Commits take 0 to 50 ms and are recorded as ``correlationId messageId``
    lines in ``$ABLO_TEST_RECORD``, so a test can count handler runs."""

    __test__ = False

    def __init__(self) -> None:
        self._record = open(os.environ["ABLO_TEST_RECORD"], "a", buffering=1)  # noqa: SIM115
        self._rng = random.Random()

    async def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        self._record.write(f"{commit.correlation_id} {ctx.message_id}\n")
        await asyncio.sleep(self._rng.uniform(0, 0.05))
        return CommitResult(rows=[{"id": op.id} for op in commit.operations])

    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        return {"id": id}


class BlockingSource(DataSource):
    """Plain ``def`` methods, run in worker threads: load ``block:N`` blocks its
    thread for N seconds (a query without a timeout); ``big:N`` answers a row
    of N bytes; commits answer a row of ``input.size`` bytes."""

    __test__ = False

    def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        if id.startswith("block:"):
            time.sleep(float(id.split(":", 1)[1]))
        if id.startswith("big:"):
            return {"id": id, "blob": "x" * int(id.split(":", 1)[1])}
        return {"id": id, "pid": os.getpid()}

    def commit(self, commit: CommitRequest, ctx: RequestContext) -> CommitResult:
        size = int((commit.operations[0].input or {}).get("size", 0))
        return CommitResult(rows=[{"id": commit.operations[0].id, "blob": "x" * size}])


class ClashingModels(DataSource):
    """Declares two models that answer to one name: refused at start."""

    model_names = ("Task", "task")

    def load(self, model: str, id: str, ctx: RequestContext) -> None:
        return None
