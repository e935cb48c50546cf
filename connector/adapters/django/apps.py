"""The Django app: ``"connector.adapters.django"`` in ``INSTALLED_APPS``.

It has no models: its one migration creates the ledger and the outbox under
the engine's names, with the SQL adapter's own statements for the database
(see :mod:`.operations`), so ``python manage.py migrate`` prepares them with
the rest of the project.
"""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["AbloConnectorConfig"]


class AbloConnectorConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    name = "connector.adapters.django"
    label = "ablo_connector"
    verbose_name = "Ablo connector"
