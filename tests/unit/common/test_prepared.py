"""Statements run prepared on the driver's cursor write what Core would write, and fail as Core fails."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from services.common.db import UtcDateTime
from services.common.prepared import Prepared

meta = MetaData()
notes = Table(
    "notes",
    meta,
    Column("note_id", Integer, primary_key=True),
    Column("body", String(40), nullable=False, unique=True),
    Column("at", UtcDateTime, nullable=False),
    Column("pinned", Boolean, nullable=False),
)
COLUMNS = ("note_id", "body", "at", "pinned")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'notes.db'}")
    meta.create_all(engine)
    yield engine
    engine.dispose()


def test_rows_written_prepared_read_back_through_core_as_written(engine: Engine) -> None:
    at = datetime(2026, 12, 3, 11, 30, 15, 123456, tzinfo=UTC)
    with engine.begin() as conn:
        insert = Prepared(notes.insert(), conn.dialect, columns=COLUMNS)
        insert.run_many(conn, [{"note_id": 1, "body": "one", "at": at, "pinned": True}])
        insert.run(conn, {"note_id": 2, "body": "two", "at": at, "pinned": False})
    with engine.connect() as conn:
        rows = conn.execute(select(notes).order_by(notes.c.note_id)).all()
    assert [tuple(row) for row in rows] == [(1, "one", at, True), (2, "two", at, False)]


def test_a_select_returns_the_drivers_rows_and_repeats_its_binds(engine: Engine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(notes.insert(), [{"note_id": 7, "body": "seven", "at": at, "pinned": True}])
        query = select(notes.c.note_id, notes.c.body).where(notes.c.body.in_(["seven", "eight"]))
        with pytest.raises(ValueError, match="expanding"):
            Prepared(query, conn.dialect)
        same = select(notes.c.note_id).where(notes.c.note_id == 7, notes.c.body == "seven")
        assert Prepared(same, conn.dialect).rows(conn, {}) == [(7,)]  # binds not given keep their own values


def test_a_constraint_violation_is_cores_integrity_error_and_the_transaction_rolls_back(engine: Engine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def twice() -> None:
        with engine.begin() as conn:
            insert = Prepared(notes.insert(), conn.dialect, columns=COLUMNS)
            insert.run(conn, {"note_id": 1, "body": "same", "at": at, "pinned": False})
            insert.run(conn, {"note_id": 2, "body": "same", "at": at, "pinned": False})

    with pytest.raises(IntegrityError) as refused:
        twice()
    assert "UNIQUE" in str(refused.value.orig)
    assert "same" not in str(refused.value)  # parameters are kept out of the message
    with engine.connect() as conn:
        assert conn.execute(select(notes)).all() == []


def test_a_connection_the_driver_reports_lost_is_invalidated_and_not_handed_out_again(engine: Engine) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    insert = Prepared(notes.insert(), engine.dialect, columns=COLUMNS)

    def on_a_closed_connection() -> None:
        with engine.begin() as conn:
            conn.connection.dbapi_connection.close()  # type: ignore[union-attr]  # as a server going away would
            insert.run(conn, {"note_id": 1, "body": "lost", "at": at, "pinned": False})

    with pytest.raises(DBAPIError) as lost:
        on_a_closed_connection()
    assert lost.value.connection_invalidated
    with engine.begin() as conn:  # the pool opens a new connection
        insert.run(conn, {"note_id": 2, "body": "kept", "at": at, "pinned": False})
    with engine.connect() as conn:
        assert conn.execute(select(notes.c.body)).scalars().all() == ["kept"]
