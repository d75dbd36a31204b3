"""HTTP routes of the file service (``/v1/files/*``, bearer authenticated): requests to use cases and back."""

# No ``from __future__ import annotations``: FastAPI must evaluate the route annotations, and they name
# ``auth``, a local of files_router, which postponed annotations could not resolve.

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import ORJSONResponse, RedirectResponse
from pydantic import BaseModel, StrictInt, StrictStr

from services.common.clock import rfc3339
from services.common.settings import FileSettings
from services.common.tokens import Principal
from services.common.web import Authenticate, TextRoute
from services.file.app import (
    Deduplicated,
    FileRef,
    StartUpload,
    UploadRef,
    UploadState,
    complete_upload,
    describe_upload,
    download_url,
    file_info,
    start_upload,
)
from services.file.domain import StoredFile
from services.file.ports import ConversationMembership, FileCatalog, ObjectStore


class CreateUploadBody(BaseModel):
    name: StrictStr
    size: StrictInt
    content_type: StrictStr
    sha256: StrictStr


def files_router(
    *,
    catalog: FileCatalog,
    store: ObjectStore,
    membership: ConversationMembership,
    limits: FileSettings,
    auth: Authenticate,
    now: Callable[[], datetime],
) -> APIRouter:
    router = APIRouter(prefix="/v1/files", tags=["files"], default_response_class=ORJSONResponse, route_class=TextRoute)

    @router.post("/uploads", status_code=201)
    async def create_upload(body: CreateUploadBody, principal: Annotated[Principal, Depends(auth)]) -> ORJSONResponse:
        """Start an upload (201), or 200 with a file at once when the user may already see these bytes."""
        cmd = StartUpload(principal.user_id, body.name, body.size, body.content_type, body.sha256)
        result = await start_upload(cmd, catalog=catalog, membership=membership, store=store, limits=limits, now=now())
        if isinstance(result, Deduplicated):
            return ORJSONResponse({**_file_body(result.file), "deduplicated": True}, status_code=200)
        return ORJSONResponse(_upload_body(result), status_code=201)

    @router.get("/uploads/{upload_id}")
    async def get_upload(upload_id: str, principal: Annotated[Principal, Depends(auth)]) -> dict[str, Any]:
        """The parts uploaded so far and fresh part URLs, to resume an interrupted upload."""
        cmd = UploadRef(principal.user_id, upload_id)
        state = await describe_upload(cmd, catalog=catalog, store=store, url_ttl_s=limits.url_ttl_s, now=now())
        return _upload_body(state)

    @router.post("/uploads/{upload_id}/complete")
    async def complete(upload_id: str, principal: Annotated[Principal, Depends(auth)]) -> dict[str, Any]:
        file = await complete_upload(UploadRef(principal.user_id, upload_id), catalog=catalog, store=store, now=now())
        return _file_body(file)

    @router.get("/{file_id}", status_code=302, response_class=RedirectResponse)
    async def download(file_id: str, principal: Annotated[Principal, Depends(auth)]) -> RedirectResponse:
        """Redirect to a short-lived presigned URL of the file's bytes."""
        cmd = FileRef(principal.user_id, file_id)
        url = await download_url(cmd, catalog=catalog, membership=membership, store=store, ttl_s=limits.download_ttl_s)
        return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})

    @router.get("/{file_id}/info")
    async def info(file_id: str, principal: Annotated[Principal, Depends(auth)]) -> dict[str, Any]:
        file = await file_info(FileRef(principal.user_id, file_id), catalog=catalog, membership=membership)
        return {**_file_body(file), "created_at": rfc3339(file.created_at)}

    return router


def _file_body(file: StoredFile) -> dict[str, Any]:
    return {
        "file_id": file.file_id,
        "name": file.name,
        "size": file.size,
        "content_type": file.content_type,
        "sha256": file.sha256,
    }


def _upload_body(state: UploadState) -> dict[str, Any]:
    upload = state.upload
    body: dict[str, Any] = {
        "upload_id": upload.upload_id,
        "name": upload.name,
        "size": upload.size,
        "content_type": upload.content_type,
        "sha256": upload.sha256,
        "part_size": upload.part_size,
        "uploaded_parts": state.uploaded_parts,
        "parts": [{"part_number": part.part_number, "url": part.url} for part in state.part_urls],
        "expires_at": rfc3339(upload.expires_at),
    }
    if upload.file_id is not None:
        body["file_id"] = upload.file_id
    return body
