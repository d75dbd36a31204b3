"""S3 object store of the distributed mode: multipart uploads whose parts clients ``PUT`` straight to
presigned S3 URLs, and downloads S3 serves itself (MinIO on-premises and in the integration tests)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Final, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import MinioException, S3Error
from minio.helpers import DictType

from services.common.errors import Conflict, CourierError, InvalidRequest, NotFound, Unavailable
from services.common.settings import S3Settings
from services.file.domain import content_disposition

CHUNK: Final = 1 << 20
"""Bytes read per step when hashing an object: bounds memory whatever the object size."""

CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 60.0
"""Short enough that an outage surfaces as ``Unavailable`` within seconds, not minio's default 5 minutes."""

POOL_SIZE: Final = 32
"""Connections kept per host: as many as the default thread pool runs blocking calls at once."""

MAX_URL_TTL_S: Final = 7 * 24 * 3600
"""The longest a SigV4 presigned URL may live."""

_KEY = re.compile(r"[a-z0-9][a-z0-9._-]*(?:/[a-z0-9][a-z0-9._-]*)*")
_LIST_PAGE = 1000
_T = TypeVar("_T")

# Error codes S3 answers about what the caller asked for; any other code is the store failing or being
# misconfigured (credentials, a bucket someone removed), which a caller can only wait out: Unavailable.
_NOT_FOUND: Final = frozenset({"NoSuchUpload", "NoSuchKey"})
_INVALID: Final = frozenset({"EntityTooSmall", "EntityTooLarge", "InvalidPartOrder", "MalformedXML"})
_CONFLICT: Final = frozenset({"InvalidPart"})


class S3ObjectStore:
    """Objects in one S3 bucket, written through S3's own multipart uploads.

    The ``minio`` client is synchronous, so every call runs in a worker thread. Presigned URLs are
    signed for ``settings.public_endpoint`` when set (the host clients reach), else for the endpoint;
    ``clock`` gives their signing time. Call ``start`` before use and ``close`` on shutdown.
    """

    def __init__(self, settings: S3Settings, *, clock: Callable[[], float] = time.time) -> None:
        endpoint, secure = _endpoint(settings.endpoint, settings.secure)
        self._endpoint = endpoint
        self._bucket = settings.bucket
        self._region = settings.region
        self._clock = clock
        # Our own pool, so that timeouts are short and ``close`` can release its sockets.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
            maxsize=POOL_SIZE,
            cert_reqs="CERT_REQUIRED",
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client = self._minio(settings, endpoint, secure)
        if settings.public_endpoint:
            # Only signs: with the region given, presigning never sends a request.
            self._signer = self._minio(settings, *_endpoint(settings.public_endpoint, settings.secure))
        else:
            self._signer = self._client

    def _minio(self, settings: S3Settings, endpoint: str, secure: bool) -> Minio:
        return Minio(
            endpoint,
            access_key=settings.access_key or None,
            secret_key=settings.secret_key or None,
            secure=secure,
            region=settings.region,
            http_client=self._http,
        )

    async def start(self) -> None:
        """Create the bucket unless it exists (``Unavailable`` when the store cannot be reached)."""
        await self._run(self._ensure_bucket, missing="bucket not found")

    async def close(self) -> None:
        self._http.clear()

    def _ensure_bucket(self) -> None:
        if self._client.bucket_exists(self._bucket):
            return
        try:
            self._client.make_bucket(self._bucket, location=self._region)
        except S3Error as exc:
            if exc.code != "BucketAlreadyOwnedByYou":  # another replica created it meanwhile
                raise

    async def create_multipart(self, key: str) -> str:
        # minio 7.2 keeps the multipart calls private (its put_object drives them); they are the plain
        # S3 API calls with typed results, which is what a presigned-part upload needs.
        create = self._client._create_multipart_upload
        return await self._run(partial(create, self._bucket, _checked(key), {}), missing="object not found")

    async def presign_part(self, key: str, upload_id: str, part_number: int, expires_s: int) -> str:
        params = {"uploadId": upload_id, "partNumber": str(part_number)}
        return self._presign("PUT", _checked(key), expires_s, extra_query_params=params)

    async def list_parts(self, key: str, upload_id: str) -> dict[int, int]:
        parts = await self._run(partial(self._parts, _checked(key), upload_id), missing="upload not found")
        return {part.part_number: part.size or 0 for part in sorted(parts, key=lambda part: part.part_number)}

    async def complete(self, key: str, upload_id: str, part_numbers: Sequence[int]) -> None:
        if not part_numbers:
            raise InvalidRequest("an upload completes with at least one part")
        assemble = partial(self._complete, _checked(key), upload_id, list(part_numbers))
        await self._run(assemble, missing="upload not found")

    def _complete(self, key: str, upload_id: str, part_numbers: list[int]) -> None:
        etags = {part.part_number: part.etag for part in self._parts(key, upload_id)}
        for number in part_numbers:
            if number not in etags:
                raise InvalidRequest(f"part {number} was not uploaded")
        parts = [Part(part_number=number, etag=etags[number]) for number in part_numbers]
        self._client._complete_multipart_upload(self._bucket, key, upload_id, parts)

    def _parts(self, key: str, upload_id: str) -> list[Part]:
        parts: list[Part] = []
        marker: str | None = None
        while True:
            page = self._client._list_parts(
                self._bucket, key, upload_id, max_parts=_LIST_PAGE, part_number_marker=marker
            )
            parts.extend(page.parts)
            if not page.is_truncated or not page.next_part_number_marker:
                return parts
            marker = page.next_part_number_marker

    async def abort(self, key: str, upload_id: str) -> None:
        try:
            abort = self._client._abort_multipart_upload
            await self._run(partial(abort, self._bucket, _checked(key), upload_id), missing="upload not found")
        except NotFound:
            pass  # already aborted or completed: nothing left to remove

    async def sha256(self, key: str) -> str:
        return await self._run(partial(self._sha256, _checked(key)), missing="object not found")

    def _sha256(self, key: str) -> str:
        response = self._client.get_object(self._bucket, key)
        try:
            digest = hashlib.sha256()
            for chunk in response.stream(CHUNK):
                digest.update(chunk)
            return digest.hexdigest()
        finally:
            response.close()
            response.release_conn()

    async def presign_get(self, key: str, expires_s: int, filename: str, content_type: str) -> str:
        # S3 answers with these headers in place of the stored ones, and they are part of the signature.
        headers = {
            "response-content-type": content_type,
            "response-content-disposition": content_disposition(filename),
        }
        return self._presign("GET", _checked(key), expires_s, response_headers=headers)

    def _presign(
        self,
        method: str,
        key: str,
        expires_s: int,
        *,
        extra_query_params: Mapping[str, str] | None = None,
        response_headers: Mapping[str, str] | None = None,
    ) -> str:
        # SigV4 refuses lifetimes outside 1 s .. 7 days; a shorter-lived URL is the safe side of a bad config.
        expires = timedelta(seconds=min(max(expires_s, 1), MAX_URL_TTL_S))
        try:
            return self._signer.get_presigned_url(
                method,
                self._bucket,
                key,
                expires=expires,
                request_date=datetime.fromtimestamp(self._clock(), UTC),
                # Fresh dicts: minio adds its own parameters to the one it is given.
                extra_query_params=_query(extra_query_params),
                response_headers=_query(response_headers),
            )
        except MinioException as exc:  # only credential providers that fetch keys can fail here
            raise Unavailable(f"the object store failed: {exc}") from exc

    async def exists(self, key: str) -> bool:
        return await self._run(partial(self._exists, _checked(key)), missing="object not found")

    def _exists(self, key: str) -> bool:
        # A HEAD answer has no body, so minio reads every 404 as NoSuchKey: a bucket removed under us
        # reads as a missing object here, while every other call reports it as Unavailable.
        try:
            self._client.stat_object(self._bucket, key)
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                return False
            raise
        return True

    async def delete(self, key: str) -> None:
        # S3 deletes are idempotent: removing a missing key succeeds.
        await self._run(partial(self._client.remove_object, self._bucket, _checked(key)), missing="object not found")

    async def _run(self, call: Callable[[], _T], *, missing: str) -> _T:
        """Run a blocking client call in a thread, translating its failures into ours."""
        try:
            return await asyncio.to_thread(call)
        except S3Error as exc:
            raise _translate(exc, missing) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            raise Unavailable(f"the object store at {self._endpoint} is unreachable: {exc.reason}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"the object store at {self._endpoint} failed: {exc}") from exc


def _translate(exc: S3Error, missing: str) -> CourierError:
    if exc.code in _NOT_FOUND:
        return NotFound(missing)
    if exc.code in _INVALID:
        return InvalidRequest(f"the object store refused the upload: {exc.message or exc.code}")
    if exc.code in _CONFLICT:
        return Conflict("a part changed while the upload was being completed; try again")
    return Unavailable(f"the object store failed: {exc.code}: {exc.message or ''}".rstrip(": "))


def _query(params: Mapping[str, str] | None) -> DictType | None:
    return None if params is None else dict(params)


def _checked(key: str) -> str:
    """The same key namespace as the local store, so objects move between stores unchanged."""
    if len(key) > 255 or not _KEY.fullmatch(key):
        raise InvalidRequest("invalid object key")
    return key


def _endpoint(value: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` and whether to use HTTPS, from ``host:port`` or a URL whose scheme decides."""
    if "://" not in value:
        if not value:
            raise ValueError("the S3 endpoint is empty; set COURIER_S3__ENDPOINT to host:port")
        return value, secure
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.netloc or url.path not in ("", "/") or url.query:
        raise ValueError(f"the S3 endpoint {value!r} must be host:port or http(s)://host:port")
    return url.netloc, url.scheme == "https"
