"""Which database errors are a deadlock the server resolved by rolling one transaction back (safe to rerun)."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from services.common.db import is_deadlock, outage_is_unavailable
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
