"""Outbox order index: the relay checks, before it claims a conversation's rows, that no earlier row of that
conversation is held by another relay, so each conversation's events are published in seq order.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_message_outbox_conversation"


def upgrade() -> None:
    # A database made by ``create_all`` and adopted as 0001 (services.migrate) has the index already.
    if not context.is_offline_mode():
        indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("message_outbox")}
        if INDEX in indexes:
            return
    op.create_index(INDEX, "message_outbox", ["conversation_id", "outbox_id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="message_outbox")
