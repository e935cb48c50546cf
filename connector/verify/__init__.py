"""Does a source keep the engine's guarantees? ``ablo-connector verify``, as a library.

The checks (:mod:`.checks`) send what the engine sends, through the local
engine, a real WebSocket and a connector serving the source
(:mod:`.runner`), and say for each guarantee whether the source keeps it:
idempotent commits, intent-hash conflicts, concurrent replays, the outbox
and its cursor, list operators, ordering and paging, and more. What they
write is planned in :mod:`.plan`; :mod:`.testing` runs them as tests of a
user's own pytest suite.

Layering: the command (``connector.cli``) builds the source and calls
:func:`verify_source`; this package drives ``connector.daemon`` and
``connector.dev`` and never imports ``connector.cli``.
"""

from .checks import CHECKS, Check, check_names
from .plan import FieldSpec, Plan, parse_field
from .runner import Outcome, Report, plan_for, select_checks, served_operations, verify_source

__all__ = [
    "CHECKS",
    "Check",
    "FieldSpec",
    "Outcome",
    "Plan",
    "Report",
    "check_names",
    "parse_field",
    "plan_for",
    "select_checks",
    "served_operations",
    "verify_source",
]
