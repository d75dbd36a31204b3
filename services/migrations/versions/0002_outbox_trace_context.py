"""Outbox trace context: the sender's W3C trace context on each outbox row, so the relay's publish joins
the trace of the send.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A database made by ``create_all`` and adopted as 0001 (services.migrate) has the column already.
    if not context.is_offline_mode():
        columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("message_outbox")}
        if "trace_context" in columns:
            return
    # Nullable, no default: rows written before the upgrade (and with tracing off) simply have none.
    with op.batch_alter_table("message_outbox") as batch:
        batch.add_column(sa.Column("trace_context", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message_outbox") as batch:
        batch.drop_column("trace_context")
