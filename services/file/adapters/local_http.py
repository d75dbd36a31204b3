"""HTTP endpoints of the local object store, the embedded stand-in for S3 presigned URLs: part uploads
and object downloads, authorized by the URL signature alone (no bearer token)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, ORJSONResponse
from starlette.requests import ClientDisconnect

from services.common.errors import InvalidRequest, PayloadTooLarge
from services.file.adapters.local import BLOB_PREFIX, LocalObjectStore, object_url_path, part_url_path
from services.file.domain import PartLayout, content_disposition

PartLayouts = Callable[[str], Awaitable[PartLayout]]
"""The part layout of an open upload, by the store's upload id (``NotFound`` if there is none)."""


def blob_router(store: LocalObjectStore, *, layout_of: PartLayouts) -> APIRouter:
    router = APIRouter(prefix=BLOB_PREFIX, tags=["file blobs"])

    @router.put("/uploads/{upload_id}/parts/{part_number}")
    async def put_part(
        upload_id: str,
        part_number: int,
        request: Request,
        expires: str | None = None,
        signature: str | None = None,
    ) -> ORJSONResponse:
        """Store one part, streamed; every part is ``part_size`` bytes but the last, the remainder."""
        store.signer.verify("PUT", part_url_path(upload_id, part_number), expires=expires, signature=signature)
        layout = await layout_of(upload_id)
        expected = layout.size_of(part_number)
        declared = request.headers.get("content-length", "")
        # Refuse an oversized part before reading it; a chunked body is counted as it streams in.
        if declared.isdigit() and int(declared) > layout.part_size:
            raise PayloadTooLarge(f"part {part_number} exceeds {layout.part_size} bytes")
        try:
            etag = await store.write_part(
                upload_id, part_number, request.stream(), max_size=layout.part_size, expected_size=expected
            )
        except ClientDisconnect as exc:
            raise InvalidRequest(f"part {part_number} was interrupted") from exc
        return ORJSONResponse({"part_number": part_number, "etag": etag}, headers={"ETag": f'"{etag}"'})

    @router.get("/objects/{key:path}")
    async def get_object(
        key: str,
        expires: str | None = None,
        signature: str | None = None,
        filename: str = "",
        content_type: str = "",
    ) -> FileResponse:
        """The object's bytes as an attachment (ranges supported), under the signed name and type."""
        params = {"filename": filename, "content_type": content_type}
        store.signer.verify("GET", object_url_path(key), expires=expires, signature=signature, params=params)
        path, stat = await store.stat(key)
        headers = {
            "Content-Disposition": content_disposition(filename),
            "Cache-Control": "private, no-cache",
            # User content on our own origin: never sniffed into HTML, never run as a page if opened.
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
        }
        return FileResponse(path, stat_result=stat, media_type=content_type, headers=headers)

    return router
