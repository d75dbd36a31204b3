"""Database errors: which are deadlocks (safe to rerun), and what of them may reach a log."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from services.common.db import create_engine, is_deadlock, outage_is_unavailable
from services.common.errors import Unavailable


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def operational(orig: Exception) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("UPDATE t SET n = 1", {}, orig)


@pytest.mark.parametrize(
    ("orig", "expected"),
    [
        (Exception(1213, "Deadlock found when trying to get lock; try restarting transaction"), True),
        (Exception(1205, "Lock wait timeout exceeded; try restarting transaction"), True),
        (PgError("40P01"), True),
        (PgError("40001"), True),
        (Exception(2003, "Can't connect to MySQL server"), False),
        (PgError("08006"), False),
    ],
)
def test_deadlocks_and_lock_timeouts_are_told_from_outages(orig: Exception, expected: bool) -> None:
    assert is_deadlock(operational(orig)) is expected


async def test_a_deadlock_reported_as_unavailable_is_still_recognised() -> None:
    with pytest.raises(Unavailable) as raised:
        async with outage_is_unavailable("test"):
            raise operational(Exception(1213, "Deadlock found"))

    assert is_deadlock(raised.value)
    assert not is_deadlock(Unavailable("no database error behind it"))


async def test_a_postgresql_deadlock_raised_as_a_plain_driver_error_is_unavailable_too() -> None:
    # asyncpg's deadlock reaches Core as the driver's base Error, so as a plain DBAPIError, not an OperationalError.
    with pytest.raises(Unavailable) as raised:
        async with outage_is_unavailable("test"):
            raise sa_exc.DBAPIError("INSERT INTO t VALUES (1)", {}, PgError("40P01"))
    assert is_deadlock(raised.value)

    # Any other driver error is the caller's to see, as it was.
    with pytest.raises(sa_exc.DBAPIError):
        async with outage_is_unavailable("test"):
            raise sa_exc.DBAPIError("INSERT INTO t VALUES (1)", {}, PgError("22001"))


async def test_a_database_error_never_carries_the_statement_parameters(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'hidden.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (secret TEXT UNIQUE)"))
            await conn.execute(text("INSERT INTO t (secret) VALUES (:s)"), {"s": "hunter2-message-body"})
        with pytest.raises(sa_exc.IntegrityError) as raised:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (secret) VALUES (:s)"), {"s": "hunter2-message-body"})
        assert "hunter2" not in str(raised.value)
    finally:
        await engine.dispose()
