"""The outbox hand-over rule is written once (``ports.holds_back``, which the memory store applies) and
asked by the SQL store's seq read as an ``EXISTS``: the two agree on every kind of waiting row, on SQLite,
MariaDB and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from services.message.adapters.sql import _heads, outbox_rows
from services.message.ports import holds_back
from tests.integration.test_sql_support import SQL_BACKENDS, clean_engine, migrated_database

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
MINE, OTHER = "a" * 32, "b" * 32
TOKENS = (MINE, OTHER, None)
UNTIL = (NOW - timedelta(seconds=5), NOW, NOW + timedelta(seconds=5))


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("hand-over")) as url:
        yield url


async def test_the_seq_read_holds_back_exactly_the_conversations_the_rule_names(url: str) -> None:
    # One conversation per kind of waiting row (each token, lease ended, ending now or live), one with two
    # rows (one held live, one not), and one with no row waiting.
    cases: dict[str, list[tuple[str | None, datetime]]] = {
        f"c-{i}-{j}": [(token, until)] for i, token in enumerate(TOKENS) for j, until in enumerate(UNTIL)
    }
    cases["c-mixed"] = [(MINE, UNTIL[2]), (OTHER, UNTIL[2])]
    cases["c-empty"] = []
    async with clean_engine(url) as engine:
        async with engine.begin() as conn:
            rows = [
                {
                    "conversation_id": cid,
                    "payload": b"{}",
                    "created_at": NOW,
                    "leased_until": until,
                    "lease_token": token,
                }
                for cid, waiting in cases.items()
                for token, until in waiting
            ]
            await conn.execute(outbox_rows.insert(), rows)
        async with engine.connect() as conn:
            _, blocked = await conn.run_sync(_heads, list(cases), lease=(MINE, NOW))
    expected = {
        cid
        for cid, waiting in cases.items()
        if any(holds_back(token, until, token=MINE, now=NOW) for token, until in waiting)
    }
    assert blocked == expected
    assert expected == {cid for cid in cases if cid not in ("c-0-2", "c-empty")}  # only a live lease of mine passes
