"""Local-disk object store of the embedded mode: S3-shaped multipart uploads under ``data_dir/objects``,
with HMAC-signed URLs that this service's own blob endpoints serve (``adapters/local_http.py``)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Final, ParamSpec, TypeVar
from urllib.parse import urlencode

from services.common.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge, Unavailable

BLOB_PREFIX: Final = "/v1/files/blobs"
CHUNK: Final = 1 << 20
"""Bytes buffered per disk write or read: bounds memory whatever the file size."""

_KEY = re.compile(r"[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_PART_FILE = re.compile(r"([0-9]+)\.part")
_NO_PARAMS: Mapping[str, str] = {}
_P = ParamSpec("_P")
_T = TypeVar("_T")


class UrlSigner:
    """Presigned URLs: HMAC-SHA256 over method, path, expiry and any signed query parameters."""

    def __init__(self, secret: str, clock: Callable[[], float]) -> None:
        # A key of its own, so a URL signature can never stand in for another use of the secret.
        self._key = hmac.new(secret.encode(), b"courier file URLs v1", hashlib.sha256).digest()
        self._clock = clock

    def _digest(self, method: str, path: str, expires: str, params: Mapping[str, str]) -> str:
        # urlencode escapes separators, so distinct inputs never give the same message.
        message = "\n".join([method, path, expires, urlencode(sorted(params.items()))])
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def sign(self, method: str, path: str, expires_s: int, params: Mapping[str, str] = _NO_PARAMS) -> str:
        """``path`` with a query carrying ``params``, the expiry (unix seconds) and the signature."""
        expires = str(int(self._clock()) + expires_s)
        query = {**params, "expires": expires, "signature": self._digest(method, path, expires, params)}
        return f"{path}?{urlencode(query)}"

    def verify(
        self,
        method: str,
        path: str,
        *,
        expires: str | None,
        signature: str | None,
        params: Mapping[str, str] = _NO_PARAMS,
    ) -> None:
        """Raise ``Forbidden`` unless the signature matches and the URL has not expired."""
        if not expires or not signature:
            raise Forbidden("the URL is not signed")
        expected = self._digest(method, path, expires, params)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise Forbidden("the URL signature is invalid")
        if not (expires.isascii() and expires.isdigit()) or int(expires) < self._clock():
            raise Forbidden("the URL has expired")


def part_url_path(upload_id: str, part_number: int) -> str:
    return f"{BLOB_PREFIX}/uploads/{upload_id}/parts/{part_number}"


def object_url_path(key: str) -> str:
    return f"{BLOB_PREFIX}/objects/{key}"


class LocalObjectStore:
    """Objects as files under ``root``; each multipart upload a directory of part files.

    Every disk operation runs in a worker thread and moves at most ``CHUNK`` bytes at a time. Files
    appear by an atomic rename once complete, so a reader never sees half a part or half an object.
    """

    def __init__(self, root: Path, signer: UrlSigner) -> None:
        self._root = root
        self._multipart = root / ".multipart"
        self._scratch = root / ".tmp"
        self.signer = signer

    def _object_path(self, key: str) -> Path:
        if len(key) > 255 or not _KEY.fullmatch(key):
            raise InvalidRequest("invalid object key")
        return self._root / key

    def _parts_dir(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise NotFound("upload not found")
        return self._multipart / upload_id

    async def create_multipart(self, key: str) -> str:
        self._object_path(key)
        upload_id = secrets.token_hex(16)
        await _io(self._parts_dir(upload_id).mkdir, parents=True)
        return upload_id

    async def presign_part(self, key: str, upload_id: str, part_number: int, expires_s: int) -> str:
        return self.signer.sign("PUT", part_url_path(upload_id, part_number), expires_s)

    async def write_part(
        self,
        upload_id: str,
        part_number: int,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int,
        expected_size: int,
    ) -> str:
        """Store a part streamed from ``chunks``, replacing an earlier one; returns its MD5 ETag (as S3).

        ``PayloadTooLarge`` as soon as more than ``max_size`` bytes arrive, ``InvalidRequest`` when
        the part is not ``expected_size`` bytes; the earlier part, if any, is then left untouched.
        """
        directory = self._parts_dir(upload_id)
        temp = directory / f".{part_number}.{secrets.token_hex(8)}.tmp"
        handle = await _io(_create, temp)
        digest = hashlib.md5(usedforsecurity=False)
        try:
            size = 0
            pending: list[bytes] = []
            pending_size = 0
            async for chunk in chunks:
                size += len(chunk)
                if size > max_size:
                    raise PayloadTooLarge(f"part {part_number} exceeds {max_size} bytes")
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= CHUNK:
                    await _io(_append, handle, digest, b"".join(pending))
                    pending, pending_size = [], 0
            await _io(_append, handle, digest, b"".join(pending))
            if size != expected_size:
                raise InvalidRequest(f"part {part_number} must be {expected_size} bytes, got {size}")
            await _io(_seal, handle, temp, directory / f"{part_number}.part")
        except BaseException:
            # Synchronous on purpose: it must also run when the request is cancelled mid-body.
            _discard(handle, temp)
            raise
        return digest.hexdigest()

    async def list_parts(self, key: str, upload_id: str) -> dict[int, int]:
        return await _io(_list_parts, self._parts_dir(upload_id))

    async def complete(self, key: str, upload_id: str, part_numbers: Sequence[int]) -> None:
        target = self._object_path(key)
        await _io(self._assemble, self._parts_dir(upload_id), list(part_numbers), target)

    def _assemble(self, directory: Path, part_numbers: list[int], target: Path) -> None:
        self._scratch.mkdir(parents=True, exist_ok=True)
        claimed = self._scratch / f"parts-{secrets.token_hex(8)}"
        try:
            # Claim the upload first: of two concurrent completions, the second finds nothing.
            directory.rename(claimed)
        except FileNotFoundError as exc:
            raise NotFound("upload not found") from exc
        temp = self._scratch / f"object-{secrets.token_hex(8)}"
        try:
            with temp.open("xb") as out:
                for number in part_numbers:
                    try:
                        with (claimed / f"{number}.part").open("rb") as part:
                            shutil.copyfileobj(part, out, CHUNK)
                    except FileNotFoundError as exc:
                        raise InvalidRequest(f"part {number} was not uploaded") from exc
                out.flush()
                os.fsync(out.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            temp.replace(target)
        except BaseException:
            temp.unlink(missing_ok=True)
            claimed.rename(directory)  # a failed completion leaves the upload as it was, like S3
            raise
        shutil.rmtree(claimed, ignore_errors=True)

    async def abort(self, key: str, upload_id: str) -> None:
        if _UPLOAD_ID.fullmatch(upload_id):
            await _io(shutil.rmtree, self._parts_dir(upload_id), ignore_errors=True)

    async def sha256(self, key: str) -> str:
        return await _io(_sha256, self._object_path(key))

    async def presign_get(self, key: str, expires_s: int, filename: str, content_type: str) -> str:
        self._object_path(key)
        params = {"filename": filename, "content_type": content_type}
        return self.signer.sign("GET", object_url_path(key), expires_s, params)

    async def exists(self, key: str) -> bool:
        return await _io(self._object_path(key).is_file)

    async def delete(self, key: str) -> None:
        await _io(self._object_path(key).unlink, missing_ok=True)

    async def stat(self, key: str) -> tuple[Path, os.stat_result]:
        """The object's file and its stat, for serving it; ``NotFound`` when there is none."""
        path = self._object_path(key)
        return path, await _io(path.stat)


async def _io(func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run blocking disk I/O in a thread; a missing file is ``NotFound``, other OS errors ``Unavailable``."""
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except FileNotFoundError as exc:
        raise NotFound("object not found") from exc
    except OSError as exc:
        raise Unavailable(f"the object store failed: {exc.strerror or exc}") from exc


def _create(path: Path) -> BinaryIO:
    try:
        return path.open("xb")
    except FileNotFoundError as exc:  # the upload's directory is gone
        raise NotFound("upload not found") from exc


def _append(handle: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    handle.write(data)
    digest.update(data)


def _seal(handle: BinaryIO, temp: Path, final: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    temp.replace(final)


def _discard(handle: BinaryIO, temp: Path) -> None:
    handle.close()
    temp.unlink(missing_ok=True)


def _list_parts(directory: Path) -> dict[int, int]:
    parts = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                match = _PART_FILE.fullmatch(entry.name)
                if match:
                    parts[int(match[1])] = entry.stat().st_size
    except FileNotFoundError as exc:
        raise NotFound("upload not found") from exc
    return dict(sorted(parts.items()))


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
