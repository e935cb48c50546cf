"""A handler module that takes seconds to import: a start-up to interrupt midway."""

from __future__ import annotations

import sys
import time

from connector import DataSource

sys.stderr.write("importing tests.slow_import\n")
sys.stderr.flush()
_deadline = time.monotonic() + 30
while time.monotonic() < _deadline:
    time.sleep(0.01)


class Source(DataSource):
    def load(self, model: str, id: str, ctx: object) -> None:
        return None
