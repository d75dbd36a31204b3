"""``services.migrate`` on SQLite, MariaDB and PostgreSQL: the revisions build exactly the adapters' schema,
upgrades are idempotent and safe to run concurrently, and a database made by ``create_all`` is adopted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.clock import utcnow
from services.common.db import create_all, create_engine
from services.common.ids import new_id
from services.common.settings import Settings
from services.identity.adapters.sql import users_table
from services.migrate import (
    BASELINE,
    BASELINE_TABLES,
    MigrationError,
    current_revision,
    downgrade,
    head_revision,
    migrate,
    schema,
    unsupported_server,
    upgrade,
)
from tests.integration.test_sql_support import SQL_BACKENDS, empty_database, table_names

each_backend = pytest.mark.parametrize("backend", SQL_BACKENDS)


async def differences(engine: AsyncEngine) -> list[Any]:
    """What autogenerate would still change: nothing, when the revisions match the adapters' tables."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), schema())
        )


async def indexes(engine: AsyncEngine, table: str) -> dict[str, tuple[list[str], bool]]:
    """Every index and unique constraint of ``table``: name -> (columns, unique)."""

    def read(sync: Any) -> dict[str, tuple[list[str], bool]]:
        inspector = inspect(sync)
        found = {ix["name"]: (list(ix["column_names"]), bool(ix["unique"])) for ix in inspector.get_indexes(table)}
        for uq in inspector.get_unique_constraints(table):
            found[uq["name"]] = (list(uq["column_names"]), True)
        return found

    async with engine.connect() as conn:
        return await conn.run_sync(read)


@each_backend
async def test_upgrade_builds_exactly_the_schema_the_adapters_declare(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            assert await current_revision(engine) is None

            await upgrade(engine)

            assert await current_revision(engine) == head_revision()
            assert await differences(engine) == []
            messages = await indexes(engine, "message_messages")
            assert messages["uq_message_messages_conversation_id_seq"] == (["conversation_id", "seq"], True)
            assert messages["uq_message_messages_sender_id_client_msg_id"] == (["sender_id", "client_msg_id"], True)
            cursors = await indexes(engine, "message_read_cursors")
            assert cursors["ix_message_read_cursors_user"] == (["user_id"], False)
            outbox = await indexes(engine, "message_outbox")
            assert outbox["ix_message_outbox_leased_until"] == (["leased_until"], False)
            members = await indexes(engine, "conversation_members")
            assert members["ix_conversation_members_user_id"] == (["user_id"], False)
        finally:
            await engine.dispose()


@each_backend
async def test_upgrading_an_up_to_date_database_changes_nothing(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            await upgrade(engine)
            async with engine.begin() as conn:
                await conn.execute(users_table.insert().values(_user()))

            await upgrade(engine)

            assert await current_revision(engine) == head_revision()
            async with engine.connect() as conn:
                assert len((await conn.execute(users_table.select())).all()) == 1
        finally:
            await engine.dispose()


@each_backend
async def test_concurrent_upgrades_of_an_empty_database_all_succeed(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        engines = [create_engine(url) for _ in range(3)]
        try:
            await asyncio.gather(*(upgrade(engine) for engine in engines))

            assert await current_revision(engines[0]) == head_revision()
            assert await differences(engines[0]) == []
        finally:
            for engine in engines:
                await engine.dispose()


@each_backend
async def test_a_database_made_by_create_all_is_adopted_with_its_rows(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            await create_all(engine)
            user = _user()
            async with engine.begin() as conn:
                await conn.execute(users_table.insert().values(user))

            await upgrade(engine)

            assert await current_revision(engine) == head_revision()
            async with engine.connect() as conn:
                assert (await conn.execute(users_table.select())).one().user_id == user["user_id"]
        finally:
            await engine.dispose()


@each_backend
async def test_a_database_holding_only_some_of_the_tables_is_refused(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: users_table.create(sync))

            with pytest.raises(MigrationError, match="alembic_version"):
                await upgrade(engine)

            assert await current_revision(engine) is None
        finally:
            await engine.dispose()


@each_backend
async def test_downgrade_to_base_drops_every_table_and_upgrade_restores_them(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            await upgrade(engine)

            await downgrade(engine, "base")
            assert await table_names(url) <= {"alembic_version"}
            assert await current_revision(engine) is None

            await upgrade(engine)
            assert await differences(engine) == []
        finally:
            await engine.dispose()


@each_backend
async def test_the_baseline_revision_creates_the_baseline_tables(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            await upgrade(engine, BASELINE)

            assert await table_names(url) == {*BASELINE_TABLES, "alembic_version"}
        finally:
            await engine.dispose()


@each_backend
async def test_migrate_upgrades_the_database_of_the_settings(backend: str, tmp_path: Path) -> None:
    with empty_database(backend, tmp_path) as url:
        # SQLite: the default file under data_dir, whose directory does not exist yet.
        settings = Settings(data_dir=tmp_path / "data") if backend == "sqlite" else Settings(database_url=url)

        await migrate(settings)

        engine = create_engine(settings.sqlalchemy_url)
        try:
            assert await current_revision(engine) == head_revision()
        finally:
            await engine.dispose()


async def test_mysql_tables_compare_strings_byte_wise(tmp_path: Path) -> None:
    # Only MySQL/MariaDB default to case-insensitive collations; the others compare bytes already.
    with empty_database("mariadb", tmp_path) as url:
        engine = create_engine(url)
        try:
            await upgrade(engine)
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT table_name, table_collation FROM information_schema.tables"
                        " WHERE table_schema = DATABASE() AND table_name <> 'alembic_version'"
                    )
                )
                collations: dict[str, str] = dict(rows.tuples().all())
            assert set(collations) == {table.name for table in schema().sorted_tables}
            assert set(collations.values()) == {"utf8mb4_bin"}
        finally:
            await engine.dispose()


@pytest.mark.parametrize(
    ("dialect", "mariadb", "version", "refused"),
    [
        ("mysql", True, (10, 5, 25), True),
        ("mysql", True, (10, 6, 0), False),
        ("mysql", True, (11, 8, 2), False),
        ("mysql", False, (5, 7, 44), True),
        ("mysql", False, (8, 0, 1), False),
        ("postgresql", False, (9, 4), True),
        ("postgresql", False, (15, 18), False),
        ("sqlite", False, (3, 23, 1), True),
        ("sqlite", False, (3, 40, 1), False),
    ],
)
def test_servers_lacking_skip_locked_or_upserts_are_refused(
    dialect: str, mariadb: bool, version: tuple[int, ...], refused: bool
) -> None:
    reason = unsupported_server(dialect, mariadb=mariadb, version=version)

    assert (reason is not None) == refused
    assert reason is None or "Courier needs" in reason


def _user() -> dict[str, Any]:
    return {
        "user_id": new_id(),
        "username": f"u{new_id()[-12:]}",
        "display_name": "Migrated",
        "password_hash": "x",
        "created_at": utcnow(),
    }
