"""Fixtures of the file service tests: a settable clock, a membership fake, catalogs over both adapters,
and an HTTP client on a small app wired by ``build_files``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from file_support import DOWNLOAD_TTL_S, MAX_SIZE, PART_SIZE, SECRET, URL_TTL_S, FakeClock, Harness, Memberships
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db import create_all, create_engine, sessionmaker
from services.common.settings import FileSettings, Settings
from services.common.tokens import AccessTokens
from services.common.web import Authenticate, install_error_handlers
from services.file.adapters.local import LocalObjectStore, UrlSigner
from services.file.adapters.memory import MemoryFileCatalog
from services.file.adapters.sql import SqlFileCatalog
from services.file.main import build_files
from services.file.ports import FileCatalog


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def members() -> Memberships:
    return Memberships()


@pytest.fixture(params=["memory", "sql"])
async def sessions(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[async_sessionmaker[AsyncSession] | None]:
    if request.param == "memory":
        yield None
        return
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'files.db'}")
    await create_all(engine)
    yield sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def catalog(sessions: async_sessionmaker[AsyncSession] | None) -> FileCatalog:
    return MemoryFileCatalog() if sessions is None else SqlFileCatalog(sessions)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects", UrlSigner(SECRET, clock))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        secret=SECRET,
        file=FileSettings(part_size=PART_SIZE, max_size=MAX_SIZE, url_ttl_s=URL_TTL_S, download_ttl_s=DOWNLOAD_TTL_S),
    )


@pytest.fixture
async def harness(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession] | None,
    clock: FakeClock,
    members: Memberships,
) -> AsyncIterator[Harness]:
    tokens = AccessTokens(settings.jwt)
    files = build_files(settings, sessions=sessions, auth=Authenticate(tokens), membership=members, clock=clock)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(files.router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://courier.test") as client:
        yield Harness(client, files, clock, members, tokens, settings.data_dir / "objects")
