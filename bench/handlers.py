"""The trivial handler the benchmark serves."""

from __future__ import annotations

from typing import Any

from connector import DataSource, RequestContext

ROW = {"id": "t1"}


class Trivial(DataSource):
    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        return ROW
