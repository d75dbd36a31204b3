"""Identity rules without I/O: users, device sessions, and the validation of what clients send.

Usernames are case-insensitive: the letters a client sends are lowercased before they are stored or
looked up, so ``Alice`` registers (and logs in as) ``alice``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from services.common.errors import InvalidRequest
from services.common.wire import check_name

USERNAME_MIN, USERNAME_MAX = 3, 32
PASSWORD_MIN, PASSWORD_MAX = 8, 128
DISPLAY_NAME_MAX = 64
DEVICE_ID_MAX = 64
DEVICE_NAME_MAX = 64

# Checked before lowercasing, so non-ASCII letters that lowercase to ASCII (the Kelvin sign) are refused.
_USERNAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]*")
_DEVICE_ID = re.compile(r"[A-Za-z0-9_.:\-]+")


@dataclass(frozen=True)
class User:
    user_id: str
    username: str
    display_name: str
    password_hash: str
    created_at: datetime


@dataclass(frozen=True)
class Session:
    """One logged-in device of a user; it holds the hash of the device's only valid refresh token."""

    session_id: str
    user_id: str
    device_id: str
    device_name: str | None
    refresh_hash: str
    refresh_expires_at: datetime
    created_at: datetime

    def expired(self, now: datetime) -> bool:
        return now >= self.refresh_expires_at


def wire_user(user: User) -> dict[str, str]:
    """The public view of a user, as every endpoint and other service sees it."""
    return {"user_id": user.user_id, "username": user.username, "display_name": user.display_name}


def normalize_username(raw: str) -> str:
    if not USERNAME_MIN <= len(raw) <= USERNAME_MAX:
        raise InvalidRequest(f"username must be {USERNAME_MIN}-{USERNAME_MAX} characters long")
    if not _USERNAME_CHARS.fullmatch(raw):
        raise InvalidRequest("username may contain only letters a-z, digits and the characters _ . -")
    if not raw[0].isalpha():
        raise InvalidRequest("username must start with a letter")
    return raw.lower()


def check_password(password: str, username: str) -> None:
    """``username`` is the normalized one; a password equal to it in any case is refused."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise InvalidRequest(f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters long")
    if password.lower() == username:
        raise InvalidRequest("password must not be the username")


def normalize_display_name(raw: str | None, username: str) -> str:
    """Surrounding whitespace is dropped; absent means the username."""
    if raw is None:
        return username
    name = raw.strip()
    if not name:
        raise InvalidRequest("display_name must not be blank")
    if len(name) > DISPLAY_NAME_MAX:
        raise InvalidRequest(f"display_name must be at most {DISPLAY_NAME_MAX} characters long")
    check_name(name, "display_name")
    return name


def check_device_id(device_id: str) -> None:
    if not 1 <= len(device_id) <= DEVICE_ID_MAX or not _DEVICE_ID.fullmatch(device_id):
        raise InvalidRequest(
            f"device_id must be 1-{DEVICE_ID_MAX} characters of letters, digits and the characters _ . : -"
        )


def normalize_device_name(raw: str | None) -> str | None:
    if raw is None:
        return None
    name = raw.strip()
    if len(name) > DEVICE_NAME_MAX:
        raise InvalidRequest(f"device_name must be at most {DEVICE_NAME_MAX} characters long")
    check_name(name, "device_name")
    return name or None


def refresh_token_hash(token: str) -> str:
    """Refresh tokens are stored only as this hash: a leaked table cannot be replayed."""
    return hashlib.sha256(token.encode()).hexdigest()
