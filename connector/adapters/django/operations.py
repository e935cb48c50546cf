"""The migration operation that creates the ledger and the outbox.

Django's ``RunSQL`` runs the same SQL on every database; the two tables are
written differently on each (types, the outbox cursor), so this operation
runs the SQL adapter's own statements for the database it migrates: the ones
``ablo-connector migrate`` runs there, and which its check
(``verify_tables``) accepts. A database ``ablo-connector migrate`` already
prepared is left as it is (the statements create only what is missing).
``sqlmigrate`` prints the statements for the database it is pointed at.
"""

from __future__ import annotations

from typing import Any, Final

from django.db import migrations

from ...errors import ConfigError
from ..sql.models import LEDGER_TABLE, OUTBOX_TABLE
from ..sql.schema import LEDGER_EXPIRY_INDEX, migration_statements
from ..sql.tables import ledger, outbox

__all__ = ["CreateLedgerAndOutbox"]

#: The tables the reverse migration drops, the outbox first.
DROP_STATEMENTS: Final = (
    f"DROP TABLE IF EXISTS {OUTBOX_TABLE}",
    f"DROP TABLE IF EXISTS {LEDGER_TABLE}",
)


class CreateLedgerAndOutbox(migrations.operations.base.Operation):  # type: ignore[misc]
    """``CREATE TABLE`` of the ledger and the outbox, and the ledger's expiry
    index, as the SQL adapter writes them for this database (reversible:
    the reverse drops both tables)."""

    reversible = True
    reduces_to_sql = True

    def state_forwards(self, app_label: str, state: Any) -> None:
        """No model state: the tables are the connector's, not the project's models."""

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        connection = schema_editor.connection
        try:
            statements = migration_statements(connection.vendor)
        except ConfigError as error:
            raise ConfigError(f"the connector's Django app cannot migrate: {error}") from None
        collecting = schema_editor.collect_sql
        tables = [statement for statement in statements if statement != LEDGER_EXPIRY_INDEX]
        for statement in tables:
            schema_editor.execute(statement, params=None)
        if collecting:
            schema_editor.execute(LEDGER_EXPIRY_INDEX, params=None)
            return
        _check_columns(connection)  # before the index, which needs expires_at
        if not _has_expiry_index(connection):  # `ablo-connector migrate` may have made it
            schema_editor.execute(LEDGER_EXPIRY_INDEX, params=None)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        for statement in DROP_STATEMENTS:
            schema_editor.execute(statement, params=None)

    def describe(self) -> str:
        return f"Create the connector's ledger ({LEDGER_TABLE}) and outbox ({OUTBOX_TABLE})"

    @property
    def migration_name_fragment(self) -> str:
        return "ledger_and_outbox"


def _has_expiry_index(connection: Any) -> bool:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, LEDGER_TABLE)
    return any(
        found.get("index") and list(found.get("columns") or []) == ["expires_at"]
        for found in constraints.values()
    )


def _check_columns(connection: Any) -> None:
    """An older ledger or outbox, left by an older connector, lacks columns
    that ``CREATE TABLE IF NOT EXISTS`` does not add: say how to upgrade it."""
    with connection.cursor() as cursor:
        for table in (ledger, outbox):
            present = {
                column.name
                for column in connection.introspection.get_table_description(cursor, table.name)
            }
            missing = [column.name for column in table.columns if column.name not in present]
            if missing:
                raise ConfigError(
                    f"{table.name} lacks columns {missing}: run `ablo-connector migrate "
                    "--database-url ...` once to upgrade it, then `python manage.py migrate` again"
                )
