"""Handlers the end-to-end tests load into connector subprocesses."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from connector import DataSource, ListPage, ListQuery, RequestContext


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
