"""The Django app: ``"connector.adapters.django"`` in ``INSTALLED_APPS``.

It has no models: its one migration creates the ledger and the outbox under
the engine's names, with the SQL adapter's own statements for the database
(see :mod:`.operations`), so ``python manage.py migrate`` prepares them with
the rest of the project.

Once the apps are ready it connects the outbox to the models that
``settings.ABLO`` serves, in every process the project runs (web server,
admin, management commands), not only in the connector's: an application
write then reaches ``events`` without the application calling anything.
"""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["AbloConnectorConfig"]


class AbloConnectorConfig(AppConfig):  # type: ignore[misc]  # Django ships no types
    name = "connector.adapters.django"
    label = "ablo_connector"
    verbose_name = "Ablo connector"

    def ready(self) -> None:
        from django.conf import settings

        if not hasattr(settings, "ABLO"):
            return  # nothing served yet: the connector says so when it starts
        from .outbox import capture_writes
        from .settings import served_models

        capture_writes(served_models().values())
