"""The adapter's own two tables as SQLAlchemy sees them: the idempotency
ledger and the outbox.

Names and columns are the engine's (``ablo_idempotency`` keyed by
``client_tx_id``, ``ablo_outbox`` ordered by ``cursor``), so a database the
engine's tooling already prepared is served unchanged. How each database
creates them is its dialect's (``dialects/``); these definitions are what
every statement the adapter runs against them is built from.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .models import LEDGER_TABLE, OUTBOX_TABLE

__all__ = ["LEDGER_TABLE", "OUTBOX_TABLE", "ledger", "outbox"]

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

_metadata = sa.MetaData()

ledger: Final = sa.Table(
    LEDGER_TABLE,
    _metadata,
    sa.Column("client_tx_id", sa.Text, primary_key=True),
    sa.Column("response", _JSON, nullable=False),
    sa.Column("request_hash", sa.Text),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)

outbox: Final = sa.Table(
    OUTBOX_TABLE,
    _metadata,
    sa.Column("cursor", sa.BigInteger, primary_key=True),
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("entity_id", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("data", _JSON),
    sa.Column("organization_id", sa.Text),
    sa.Column("client_tx_id", sa.Text),
    sa.Column("correlation_id", sa.Text),
    sa.Column("transaction_id", sa.Text),
    sa.Column("occurred_at", sa.BigInteger),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)

# The highest cursor still in the outbox (NULL when it is empty): each
# dialect combines it with where its database keeps the last one issued.
HIGHEST_CURSOR: Final = sa.select(sa.func.max(outbox.c.cursor)).scalar_subquery()
