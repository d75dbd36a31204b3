"""Wire shapes and id checks of presence, without any I/O."""

from __future__ import annotations

import pytest
from presence_support import T0

from services.common.errors import InvalidRequest
from services.presence.domain import PresenceStatus, check_user_ids, parse_user_ids


def test_status_wire_has_rfc3339_last_seen() -> None:
    status = PresenceStatus(user_id="u1", online=True, last_seen=T0 + 0.25)

    assert status.wire() == {"user_id": "u1", "online": True, "last_seen": "2026-09-21T14:13:20.250Z"}
    assert status.frame() == {"type": "presence", **status.wire()}


def test_never_seen_user_has_null_last_seen() -> None:
    assert PresenceStatus(user_id="u1", online=False, last_seen=None).wire()["last_seen"] is None


def test_ids_are_deduplicated_in_order() -> None:
    assert check_user_ids(["b", "a", "b"]) == ["b", "a"]


@pytest.mark.parametrize("ids", [[], [f"u{i}" for i in range(201)], [""], ["x" * 65]])
def test_bad_id_lists_are_invalid(ids: list[str]) -> None:
    with pytest.raises(InvalidRequest):
        check_user_ids(ids)


def test_two_hundred_distinct_ids_are_accepted() -> None:
    assert len(check_user_ids([f"u{i}" for i in range(200)] + ["u0"])) == 200


def test_query_string_ids_ignore_blanks() -> None:
    assert parse_user_ids(" a, b,,a ,") == ["a", "b"]


@pytest.mark.parametrize("raw", ["", ",", " , "])
def test_query_string_without_ids_is_invalid(raw: str) -> None:
    with pytest.raises(InvalidRequest, match="1 to 200"):
        parse_user_ids(raw)
