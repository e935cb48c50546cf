"""The checks as tests in your own suite: one pytest test per guarantee.

A test module of three lines::

    from connector.verify.testing import verify_checks
    from mypkg.source import OrdersSource
    test_orders_source = verify_checks(OrdersSource, model="order", fields={"title": "text"})

collects ``test_orders_source[commit-returns-rows]``,
``test_orders_source[replay-returns-first-answer]``, … : each passes, fails
with what was sent, what came back and what the engine expects, or is
skipped (an operation the source does not serve). The first of them runs
the whole suite once, over the real wire as ``ablo-connector verify`` does;
the others read its outcome. No pytest plugin or asyncio plugin is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Mapping

from ..serve.datasource import DataSource
from .plan import FieldSpec, parse_field
from .report import outcome_lines
from .runner import DEFAULT_REQUEST_TIMEOUT, Outcome, plan_for, select_checks, verify_source

__all__ = ["verify_checks"]

SourceSpec = str | DataSource | Callable[[], DataSource]


def _source(spec: SourceSpec) -> DataSource:
    """A ``module:attr`` string, an instance, or a class or factory called with no argument."""
    if isinstance(spec, DataSource):
        return spec
    if isinstance(spec, str):
        from ..serve.loader import load_handler

        return load_handler(spec)
    made = spec()
    if not isinstance(made, DataSource):
        raise TypeError(f"{spec!r} made a {type(made).__name__}, not a connector.DataSource")
    return made


def _fields(fields: Mapping[str, str] | Iterable[str | FieldSpec]) -> list[FieldSpec]:
    if isinstance(fields, Mapping):
        return [parse_field(f"{name}={kind}") for name, kind in fields.items()]
    return [item if isinstance(item, FieldSpec) else parse_field(item) for item in fields]


def verify_checks(
    source: SourceSpec,
    *,
    model: str | None = None,
    fields: Mapping[str, str] | Iterable[str | FieldSpec] = (),
    only: Collection[str] = (),
    skip: Collection[str] = (),
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> Callable[[str], None]:
    """A pytest test function parametrized over the checks: assign it to a ``test_`` name.

    ``source`` is what ``--handler`` names (a ``module:attr`` string, a
    class, a factory) or an instance (a :class:`~connector.adapters.sql.SQLSource`
    too); ``model`` and ``fields`` are ``--model`` and ``--field``
    (``{"title": "text"}`` or ``["title=text"]``); ``only``/``skip`` select
    checks by name.
    """
    import pytest

    checks = select_checks(only, skip)
    outcomes: dict[str, Outcome] = {}
    problem: list[BaseException] = []

    def run_once() -> dict[str, Outcome]:
        if problem:
            raise problem[0]
        if not outcomes:
            try:
                instance = _source(source)
                plan = plan_for(instance, model, _fields(fields))
                report = asyncio.run(
                    verify_source(instance, plan, checks, request_timeout=request_timeout)
                )
            except Exception as error:
                problem.append(error)
                raise
            outcomes.update((outcome.name, outcome) for outcome in report.outcomes)
        return outcomes

    @pytest.mark.parametrize("check", [item.name for item in checks])
    def test_guarantee(check: str) -> None:
        outcome = run_once()[check]
        if outcome.status == "not run":
            pytest.skip(outcome.detail)
        if outcome.status == "failed":
            pytest.fail("\n".join(outcome_lines(outcome)), pytrace=False)

    test_guarantee.__doc__ = "One guarantee the engine relies on (ablo-connector verify)."
    return test_guarantee
