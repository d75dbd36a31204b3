"""Validation rules of identity's domain: usernames, passwords, display names, devices."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidRequest
from services.identity.domain import (
    check_device_id,
    check_password,
    normalize_device_name,
    normalize_display_name,
    normalize_username,
    refresh_token_hash,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("alice", "alice"), ("Alice", "alice"), ("a.b-c_9", "a.b-c_9"), ("abc", "abc"), ("a" * 32, "a" * 32)],
)
def test_valid_usernames_are_lowercased(raw: str, expected: str) -> None:
    assert normalize_username(raw) == expected


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("ab", "3-32 characters"),
        ("a" * 33, "3-32 characters"),
        ("9lives", "start with a letter"),
        ("_alice", "start with a letter"),
        ("al ice", "only letters"),
        ("al@ice", "only letters"),
        ("ålice", "only letters"),
        ("\u212aelvin", "only letters"),  # the Kelvin sign lowercases to an ASCII k
    ],
)
def test_invalid_usernames_name_the_broken_rule(raw: str, rule: str) -> None:
    with pytest.raises(InvalidRequest, match=rule):
        normalize_username(raw)


def test_password_length_bounds_are_inclusive() -> None:
    check_password("x" * 8, "alice")
    check_password("x" * 128, "alice")
    with pytest.raises(InvalidRequest, match="8-128 characters"):
        check_password("x" * 7, "alice")
    with pytest.raises(InvalidRequest, match="8-128 characters"):
        check_password("x" * 129, "alice")


def test_password_equal_to_username_in_any_case_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="must not be the username"):
        check_password("AliceBob", "alicebob")


def test_display_name_defaults_to_username_and_is_trimmed() -> None:
    assert normalize_display_name(None, "alice") == "alice"
    assert normalize_display_name("  Alice L.  ", "alice") == "Alice L."
    assert normalize_display_name("é" * 64, "alice") == "é" * 64


@pytest.mark.parametrize(("raw", "rule"), [("   ", "blank"), ("x" * 65, "at most 64"), ("a\nb", "control")])
def test_invalid_display_names_are_refused(raw: str, rule: str) -> None:
    with pytest.raises(InvalidRequest, match=rule):
        normalize_display_name(raw, "alice")


@pytest.mark.parametrize("device_id", ["d", "web-1", "Phone_2.a:b", "x" * 64])
def test_valid_device_ids_pass(device_id: str) -> None:
    check_device_id(device_id)


@pytest.mark.parametrize("device_id", ["", "x" * 65, "has space", "slash/no", "ü"])
def test_invalid_device_ids_are_refused(device_id: str) -> None:
    with pytest.raises(InvalidRequest, match="device_id"):
        check_device_id(device_id)


def test_device_name_is_optional_trimmed_and_bounded() -> None:
    assert normalize_device_name(None) is None
    assert normalize_device_name("  ") is None
    assert normalize_device_name(" Pixel 9 ") == "Pixel 9"
    with pytest.raises(InvalidRequest, match="at most 64"):
        normalize_device_name("x" * 65)


def test_refresh_token_hash_is_hex_sha256_and_not_the_token() -> None:
    digest = refresh_token_hash("token")
    assert len(digest) == 64
    assert digest != "token"
    assert digest == refresh_token_hash("token")
