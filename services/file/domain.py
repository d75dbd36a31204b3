"""The file service's rules: what an acceptable file is, how it splits into upload parts, and how a
download names it. Pure: no I/O, no framework."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from services.common import wire
from services.common.errors import InvalidRequest, PayloadTooLarge

UPLOAD_TTL = timedelta(days=1)
"""An upload not completed within this long may be garbage collected."""

MAX_PARTS = 10_000
"""S3's limit on the parts of one multipart upload; every object store must accept the layout."""

MAX_NAME_LENGTH = 255
MAX_CONTENT_TYPE_LENGTH = 255

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TCHARS = r"[a-z0-9!#$&^_.+-]+"
_MEDIA_TYPE = re.compile(rf"{_TCHARS}/{_TCHARS}")
_PARAMETER = re.compile(rf"({_TCHARS})=([A-Za-z0-9!#$&^_.+-]+|\"[^\"\\\x00-\x1f\x7f]*\")")
# RFC 5987 attr-char beyond what urllib.parse.quote always keeps.
_ATTR_CHARS = "!#$&+-.^_`|~"


@dataclass(frozen=True)
class FileSpec:
    """What an uploader declares about a file before sending any byte."""

    name: str
    size: int
    content_type: str
    sha256: str

    @classmethod
    def parse(
        cls,
        *,
        name: str,
        size: int,
        content_type: str,
        sha256: str,
        max_size: int,
        allowed_content_types: Iterable[str],
    ) -> FileSpec:
        """Validate a declaration; raises ``InvalidRequest`` or ``PayloadTooLarge`` (above ``max_size``)."""
        check_name(name)
        if size < 1:
            raise InvalidRequest("size must be at least 1 byte")
        if size > max_size:
            raise PayloadTooLarge(f"file of {size} bytes exceeds the limit of {max_size} bytes")
        if not _SHA256.fullmatch(sha256):
            raise InvalidRequest("sha256 must be 64 lowercase hexadecimal characters")
        return cls(name, size, normalize_content_type(content_type, allowed_content_types), sha256)


def check_name(name: str) -> None:
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise InvalidRequest(f"name must be 1 to {MAX_NAME_LENGTH} characters")
    if "/" in name or "\\" in name:
        raise InvalidRequest("name must not contain path separators")
    if name in (".", ".."):
        raise InvalidRequest("name must not be . or ..")
    wire.check_name(name, "name")


def normalize_content_type(value: str, allowed: Iterable[str]) -> str:
    """``type/subtype[; name=value...]`` with the media type lowercased, if the media type is allowed.

    A pattern ending in ``/*`` allows a whole family (``image/*``); ``*/*`` allows everything.
    """
    if len(value) > MAX_CONTENT_TYPE_LENGTH:
        raise InvalidRequest(f"content_type must be at most {MAX_CONTENT_TYPE_LENGTH} characters")
    essence, *raw_parameters = value.split(";")
    media_type = essence.strip().lower()
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidRequest(f"content_type {value!r} is not a media type like type/subtype")
    parameters = []
    for raw in raw_parameters:
        match = _PARAMETER.fullmatch(raw.strip())
        if match is None:
            raise InvalidRequest(f"content_type parameter {raw.strip()!r} is malformed")
        parameters.append(f"{match[1]}={match[2]}")
    if not any(_media_type_matches(media_type, pattern) for pattern in allowed):
        raise InvalidRequest(f"content_type {media_type} is not allowed")
    return "; ".join([media_type, *parameters])


def _media_type_matches(media_type: str, pattern: str) -> bool:
    pattern = pattern.strip().lower()
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return media_type.startswith(pattern[:-1])
    return media_type == pattern


@dataclass(frozen=True)
class PartLayout:
    """How ``size`` bytes split into parts: every part is ``part_size`` bytes except the last."""

    size: int
    part_size: int

    def __post_init__(self) -> None:
        if self.size < 1 or self.part_size < 1:
            raise InvalidRequest("size and part size must be positive")
        if self.count > MAX_PARTS:
            raise InvalidRequest(f"a file of {self.size} bytes would need more than {MAX_PARTS} parts")

    @property
    def count(self) -> int:
        return -(-self.size // self.part_size)

    @property
    def numbers(self) -> range:
        return range(1, self.count + 1)

    def size_of(self, part_number: int) -> int:
        if part_number not in self.numbers:
            raise InvalidRequest(f"part_number must be between 1 and {self.count}")
        if part_number < self.count:
            return self.part_size
        return self.size - self.part_size * (self.count - 1)

    def problems(self, uploaded: dict[int, int]) -> str | None:
        """Why the uploaded parts (``{part_number: size}``) do not make up the file, or ``None``."""
        missing = [n for n in self.numbers if n not in uploaded]
        if missing:
            return "missing parts: " + ", ".join(map(str, missing))
        wrong = [n for n in self.numbers if uploaded[n] != self.size_of(n)]
        if wrong:
            return "parts of the wrong size: " + ", ".join(map(str, wrong))
        return None


@dataclass(frozen=True)
class Upload:
    """A multipart upload in progress (``file_id`` is set once it completed)."""

    upload_id: str
    owner_id: str
    name: str
    size: int
    content_type: str
    sha256: str
    part_size: int
    object_key: str
    store_upload_id: str
    created_at: datetime
    expires_at: datetime
    file_id: str | None = None

    @property
    def spec(self) -> FileSpec:
        return FileSpec(self.name, self.size, self.content_type, self.sha256)

    @property
    def layout(self) -> PartLayout:
        return PartLayout(self.size, self.part_size)

    def is_open(self, now: datetime) -> bool:
        """Still accepting parts: neither completed nor expired."""
        return self.file_id is None and now < self.expires_at


@dataclass(frozen=True)
class StoredFile:
    """A completed file as one user uploaded it; several may share one stored object (dedup)."""

    file_id: str
    owner_id: str
    name: str
    size: int
    content_type: str
    sha256: str
    object_key: str
    created_at: datetime


@dataclass(frozen=True)
class ContentMatch:
    """A file with the bytes an uploader declared, and why the uploader might already see it: they own
    it (``conversation_id`` is ``None``), or it was shared in ``conversation_id``, if they are a member."""

    file: StoredFile
    conversation_id: str | None


def object_key(sha256: str, upload_id: str) -> str:
    """Where an upload's bytes are stored: under their hash, made unique by the upload.

    The key is unique so an upload that lies about its hash can never overwrite the verified object of
    another upload with the same declared hash; dedup then shares one object between file records.
    """
    return f"{sha256}/{upload_id}"


def content_disposition(filename: str) -> str:
    """An RFC 6266 ``attachment`` header: an ASCII fallback, then the exact name as ``filename*``."""
    fallback = "".join(ch if " " <= ch <= "~" and ch not in '"\\' else "_" for ch in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe=_ATTR_CHARS)}"
