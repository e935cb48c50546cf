"""The ledger (``ablo_idempotency``) and the outbox (``ablo_outbox``), as
``ablo-connector migrate`` creates them on the same database."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import migrations

from connector.adapters.django.operations import CreateLedgerAndOutbox


class Migration(migrations.Migration):  # type: ignore[misc]  # Django ships no types
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []
    operations: ClassVar[list[Any]] = [CreateLedgerAndOutbox()]
