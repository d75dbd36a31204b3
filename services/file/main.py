"""Composition of the file service: settings, a metadata catalog and the local object store, wired into
its routers, the shares other services call, and garbage collection of abandoned uploads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.settings import Settings
from services.common.web import Authenticate
from services.file.adapters.local import LocalObjectStore, UrlSigner
from services.file.adapters.local_http import blob_router
from services.file.adapters.memory import MemoryFileCatalog
from services.file.adapters.s3 import S3ObjectStore
from services.file.adapters.sql import SqlFileCatalog
from services.file.api import files_router
from services.file.app import FileShares, collect_garbage, upload_layout
from services.file.domain import PartLayout
from services.file.ports import ConversationMembership, FileCatalog, ObjectStore

log = logging.getLogger("courier.file")


@dataclass(frozen=True)
class Files:
    router: APIRouter
    """``/v1/files/*``, including the local object store's blob endpoints."""
    shares: FileShares
    collect_garbage: Callable[[datetime], Awaitable[int]]
    """Forget uploads expired at the given time (not completed within a day); returns how many."""
    start: Callable[[], Awaitable[None]]
    """Prepare the object store (the S3 bucket) before serving."""
    close: Callable[[], Awaitable[None]]


def build_files(
    settings: Settings,
    *,
    sessions: async_sessionmaker[AsyncSession] | None,
    auth: Authenticate,
    membership: ConversationMembership,
    clock: Callable[[], float] = time.time,
) -> Files:
    """The file service; metadata in SQL through ``sessions``, or in memory when it is ``None``."""
    catalog: FileCatalog = MemoryFileCatalog() if sessions is None else SqlFileCatalog(sessions)
    store: ObjectStore
    router = APIRouter()
    if settings.s3.endpoint:
        # S3 serves parts and downloads itself and checks URL expiry against real time.
        s3 = S3ObjectStore(settings.s3)
        store, start, close = s3, s3.start, s3.close
    else:
        local = LocalObjectStore(settings.data_dir / "objects", UrlSigner(settings.secret, clock))
        store, start, close = local, _nothing, _nothing
        router.include_router(blob_router(local, layout_of=lambda upload_id: layout_of(upload_id)))

    def now() -> datetime:
        return datetime.fromtimestamp(clock(), UTC)

    async def layout_of(store_upload_id: str) -> PartLayout:
        return await upload_layout(store_upload_id, catalog=catalog, now=now())

    async def collect(at: datetime) -> int:
        return await collect_garbage(at, catalog=catalog, store=store)

    router.include_router(
        files_router(catalog=catalog, store=store, membership=membership, limits=settings.file, auth=auth, now=now)
    )
    return Files(
        router=router,
        shares=FileShares(catalog=catalog, membership=membership, now=now),
        collect_garbage=collect,
        start=start,
        close=close,
    )


async def _nothing() -> None:
    return None


async def collect_garbage_forever(files: Files, *, every_s: float = 3600.0) -> None:
    """Uploads never completed expire; their parts are removed from the object store."""
    while True:
        await asyncio.sleep(every_s)
        try:
            removed = await files.collect_garbage(datetime.now(UTC))
        except Exception:  # the next round retries; one failure must not stop the loop
            log.exception("file garbage collection failed")
            continue
        if removed:
            log.info("removed %d expired uploads", removed)
