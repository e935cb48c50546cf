"""What does the user read? A run's lines, for people and for CI."""

from __future__ import annotations

from .plan import Plan
from .runner import Outcome, Report

__all__ = ["header_lines", "outcome_lines", "summary_line"]

_LABELS = {"passed": "PASS", "failed": "FAIL", "not run": "SKIP"}
_INDENT = " " * 6


def header_lines(source: str, plan: Plan, served: list[str]) -> list[str]:
    """What the run is about to do, before it does it: it writes rows."""
    lines = [
        f"verify {source}: serves {', '.join(served) or 'nothing'}",
        f"writes rows: {plan.describe()} ({plan.origin}); every id and text value it writes "
        f"starts with {plan.prefix!r}, and it deletes those rows when done (the source keeps "
        "their events and idempotency records)",
    ]
    missing = [op for op in ("load", "list", "commit", "events") if op not in served]
    if missing:
        lines.append(
            f"does not serve {', '.join(missing)}: the checks that need "
            f"{'it' if len(missing) == 1 else 'them'} are skipped"
        )
    return lines


def outcome_lines(outcome: Outcome) -> list[str]:
    """One line per check; a failure adds what was sent, what came back, what was expected."""
    head = f"{_LABELS[outcome.status]}  {outcome.name}: {outcome.check.guarantee}"
    if outcome.status == "not run":
        return [f"{head} ({outcome.detail})"]
    lines = [head]
    violation = outcome.violation
    if violation is not None:
        lines += [
            f"{_INDENT}sent:     {violation.sent}",
            f"{_INDENT}got:      {violation.got}",
            f"{_INDENT}expected: {violation.expected}",
        ]
        if violation.fix:
            lines.append(f"{_INDENT}fix:      {violation.fix}")
        lines.append(f"{_INDENT}see:      {outcome.check.documented}")
    elif outcome.detail:
        lines.append(
            f"{_INDENT}{'note' if outcome.status == 'passed' else 'error'}: {outcome.detail}"
        )
    return lines


def summary_line(report: Report) -> str:
    parts = [f"{len(report.passed)} passed", f"{len(report.failed)} failed"]
    if report.not_run:
        parts.append(f"{len(report.not_run)} skipped")
    return f"{', '.join(parts)}; {report.cleanup}" + (
        f" (left: {', '.join(report.left_behind[:5])}{', …' if len(report.left_behind) > 5 else ''})"
        if report.left_behind
        else ""
    )
