"""Serve a Django project's models through its own ORM.

Add ``"connector.adapters.django"`` to ``INSTALLED_APPS`` (its migration
creates the ledger and the outbox under the engine's names), declare the
served models in ``settings.ABLO``, and run ``ablo-connector run --django
mysite.settings``. Writes go through ``Model.save()``/``delete()`` inside
``transaction.atomic()``, so overrides, signals, defaults and validators run
for the engine's writes as for the application's.
"""
