"""How does a run go? A local engine, a connector serving the source, the checks, the clean-up.

:func:`verify_source` starts a :class:`~connector.dev.engine.DevEngine` on
127.0.0.1 and a :class:`~connector.Connector` serving the source to it, in
this process: every request the checks send is signed by the engine,
crosses a real WebSocket, is verified and dispatched by the connector and
served by the source, as in production. Then it deletes the rows it wrote
(through the source, with DELETE operations) and stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..daemon.config import Config
from ..daemon.supervisor import Connector
from ..errors import ConfigError
from ..serve.datasource import DataSource, overridden
from ..wire.bodies import OPERATIONS
from .checks import CHECKS, Check, check_names
from .plan import FieldSpec, Plan, plan_for_django, plan_for_handler, plan_for_sql
from .session import Inconclusive, NotServed, Session, Violation

__all__ = ["Outcome", "Report", "plan_for", "select_checks", "served_operations", "verify_source"]

#: The connector's deadline for one request when none is given: ``run``'s default.
DEFAULT_REQUEST_TIMEOUT = 25.0
_CLEANUP_BATCH = 100


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one check found."""

    check: Check
    status: Literal["passed", "failed", "not run"]
    #: A passed check's note, a failed check's finding in words, why a check did not run.
    detail: str = ""
    violation: Violation | None = None
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.check.name

    def to_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            "name": self.name,
            "passed": self.status == "passed",
            "detail": self.detail,
            "guarantee": self.check.guarantee,
            "documented": self.check.documented,
            "seconds": round(self.seconds, 3),
        }
        if self.violation is not None:
            item.update(
                sent=self.violation.sent,
                got=self.violation.got,
                expected=self.violation.expected,
                fix=self.violation.fix,
            )
        return item


@dataclass(slots=True)
class Report:
    plan: Plan
    served: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    #: Ids the clean-up could not delete.
    left_behind: list[str] = field(default_factory=list)
    #: What the clean-up did, in words.
    cleanup: str = ""

    @property
    def passed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "passed"]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def not_run(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "not run"]

    @property
    def not_served(self) -> list[str]:
        return [op for op in OPERATIONS if op not in self.served]

    def to_json(self) -> dict[str, Any]:
        return {
            "checks": [o.to_json() for o in self.outcomes if o.status != "not run"],
            "passed": len(self.passed),
            "failed": len(self.failed),
            "notRun": [{"name": o.name, "reason": o.detail} for o in self.not_run],
            "notServed": self.not_served,
            "model": self.plan.model,
            "fields": {spec.name: spec.kind for spec in self.plan.fields},
            "prefix": self.plan.prefix,
            "cleanup": self.cleanup,
            "leftBehind": self.left_behind,
        }


def served_operations(source: DataSource) -> list[str]:
    """The operations the source implements (the others answer 404 not_configured)."""
    return [op for op in OPERATIONS if overridden(source, op)]


def plan_for(source: DataSource, model: str | None, fields: Sequence[FieldSpec]) -> Plan:
    """What to write: an adapter's models (SQL, Django), or the handler's model and fields."""
    from ..adapters.sql import SQLSource

    if isinstance(source, SQLSource):
        return plan_for_sql(source.prepare(), model, fields)
    # Loaded only when a Django project is served (Django is an optional extra).
    django = sys.modules.get("connector.adapters.django.source")
    if django is not None and isinstance(source, django.DjangoSource):
        return plan_for_django(source.models, model, fields)
    return plan_for_handler(source, model, fields)


def select_checks(only: Collection[str] = (), skip: Collection[str] = ()) -> list[Check]:
    """The checks to run, by name; ConfigError names an unknown one and lists the rest."""
    known = check_names()
    unknown = [name for name in [*only, *skip] if name not in known]
    if unknown:
        raise ConfigError(f"no check named {unknown[0]!r}; the checks are: {', '.join(known)}")
    return [c for c in CHECKS if (not only or c.name in only) and c.name not in skip]


async def verify_source(
    source: DataSource,
    plan: Plan,
    checks: Sequence[Check] | None = None,
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    on_outcome: Callable[[Outcome], None] | None = None,
    keep_rows: bool = False,
    stop: asyncio.Event | None = None,
) -> Report:
    """Run ``checks`` (default: all) against ``source`` over the real wire; delete the
    rows written unless ``keep_rows``. Once ``stop`` is set, the check under way is
    abandoned and the others are not run, but the rows are still deleted."""
    from ..dev.engine import DevEngine

    checks = list(CHECKS if checks is None else checks)
    served = served_operations(source)
    report = Report(plan, served)
    key = f"sk_test_verify_{secrets.token_hex(12)}"
    # The engine waits longer than the connector's deadline, so a slow handler
    # is answered 504 by the connector (as in production), and never retried:
    # every request the kit sends reaches the source once.
    engine = DevEngine(key, request_timeout=request_timeout + 5, max_attempts=1, attach_timeout=10)
    await engine.start()
    try:
        config = Config(
            api_key=key,
            base_url=engine.base_url,
            request_timeout=request_timeout,
            detailed_errors=True,
        )
        connector = Connector(config, source)
        serving = asyncio.create_task(connector.run())
        try:
            await _ready(connector, serving)
            session = Session(engine, plan, served, request_timeout)
            try:
                for item in checks:
                    outcome = await _unless_stopped(item, _run_one(item, session), stop)
                    report.outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)
            finally:
                if keep_rows:
                    report.cleanup = f"kept {len(session.written)} rows (--keep-rows)"
                    report.left_behind = list(session.written)
                else:
                    await _clean_up(session, report)
        finally:
            connector.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 30)
    finally:
        await engine.close()
    return report


async def _ready(connector: Connector, serving: asyncio.Task[None]) -> None:
    waiting = asyncio.ensure_future(connector.wait_ready())
    done, _ = await asyncio.wait({waiting, serving}, timeout=30, return_when="FIRST_COMPLETED")
    if waiting in done:
        waiting.result()
        return
    waiting.cancel()
    if serving in done:
        serving.result()  # the connector's own error (a handler it refuses, say)
        raise ConfigError("the connector stopped before it was ready")
    raise ConfigError("the connector did not register with the local engine within 30 s")


async def _unless_stopped(
    item: Check, running: Coroutine[Any, Any, Outcome], stop: asyncio.Event | None
) -> Outcome:
    if stop is None:
        return await running
    if stop.is_set():
        running.close()
        return Outcome(item, "not run", "interrupted")
    task = asyncio.ensure_future(running)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when="FIRST_COMPLETED")
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return Outcome(item, "not run", "interrupted")


async def _run_one(item: Check, session: Session) -> Outcome:
    missing = item.missing(session.served)
    if missing:
        return Outcome(item, "not run", f"not served: {', '.join(missing)}")
    started = time.monotonic()
    try:
        note = await item.run(session)
    except NotServed as error:
        return Outcome(item, "not run", f"not served: {error.operation}")
    except Inconclusive as error:
        return Outcome(item, "not run", f"could not decide: {error}")
    except Violation as violation:
        detail = f"expected {violation.expected}; got {violation.got}"
        return Outcome(item, "failed", detail, violation, time.monotonic() - started)
    except Exception as error:  # the kit's own failure: say so, and go on with the others
        return Outcome(
            item,
            "failed",
            f"the check itself failed: {type(error).__name__}: {error}",
            seconds=time.monotonic() - started,
        )
    return Outcome(item, "passed", note or "", seconds=time.monotonic() - started)


async def _clean_up(session: Session, report: Report) -> None:
    """Delete every row the run wrote, through the source, under the scope it was written in."""
    if not session.written:
        report.cleanup = "wrote no rows"
        return
    if "commit" not in session.served:
        report.cleanup = "cannot delete: the source does not serve commit"
        report.left_behind = list(session.written)
        return
    groups: dict[str, list[str]] = {}
    where: dict[str, tuple[str, Mapping[str, Any] | None]] = {}
    for row_id, (model, scope) in session.written.items():
        key = json.dumps([model, scope], sort_keys=True)
        groups.setdefault(key, []).append(row_id)
        where[key] = (model, scope)
    left: list[str] = []
    for key, ids in groups.items():
        for start in range(0, len(ids), _CLEANUP_BATCH):
            left += await _delete(session, ids[start : start + _CLEANUP_BATCH], *where[key])
    report.left_behind = left
    deleted = len(session.written) - len(left)
    report.cleanup = (
        "deleted the row it wrote" if deleted == 1 else f"deleted the {deleted} rows it wrote"
    ) + (f"; {len(left)} could not be deleted" if left else "")


async def _delete(
    session: Session, ids: Sequence[str], model: str, scope: Mapping[str, Any] | None
) -> list[str]:
    """Delete ``ids`` in one commit, or one by one if the source refuses the batch
    (some refuse to delete a row that was never written); returns those left."""

    def delete(row_id: str) -> dict[str, Any]:
        return {"type": "DELETE", "model": model, "id": row_id}

    with contextlib.suppress(NotServed):
        reply = await session.commit(
            [delete(i) for i in ids], session.correlation("cleanup"), scope=scope
        )
        if reply.ok:
            return []
        if len(ids) == 1:
            return [] if reply.status == 404 else list(ids)
        left = []
        for row_id in ids:
            left += await _delete(session, [row_id], model, scope)
        return left
    return list(ids)
