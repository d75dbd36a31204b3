"""Schema migrations: upgrade the SQL database (SQLite, MySQL/MariaDB, PostgreSQL) to the newest Alembic revision.

The revisions live in ``services/migrations`` and ship in the wheel; there is no ``alembic.ini``: the Alembic
``Config`` is built here. To write a new revision against a scratch database at head::

    from alembic import command
    command.revision(alembic_config("sqlite+aiosqlite:///scratch.db"), message="...", autogenerate=True)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import db
from services.common.errors import Unavailable
from services.common.settings import Settings

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
# The revision whose schema ``create_all`` produced before migrations existed (see ``_stamp_unversioned``),
# and the tables it creates.
BASELINE = "0001"
BASELINE_TABLES = frozenset(
    {
        "identity_users",
        "identity_sessions",
        "identity_rotated_tokens",
        "conversation_conversations",
        "conversation_members",
        "message_messages",
        "message_read_cursors",
        "message_outbox",
        "file_uploads",
        "file_files",
        "file_shares",
    }
)
# Wait this long for another process's migration before giving up (MySQL GET_LOCK; PostgreSQL waits freely).
LOCK_TIMEOUT_S = 300
_LOCK_NAME = "courier_migrate"
_LOCK_KEY = 0x636F7572  # "cour": the PostgreSQL advisory lock key of migrations


class MigrationError(RuntimeError):
    """The database cannot be migrated as it is: a server too old, or tables Courier did not make."""


def schema() -> MetaData:
    """The one schema: every table the SQL adapters declare on ``services.common.db.metadata``."""
    # Imported for their side effect: each adapter module declares its tables on the shared metadata.
    import services.conversation.adapters.sql
    import services.file.adapters.sql
    import services.identity.adapters.sql
    import services.message.adapters.sql  # noqa: F401

    return db.metadata


def alembic_config(url: str | None = None) -> Config:
    """The Alembic configuration, built in code; ``url`` is only needed for commands run without ``migrate``."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        # ConfigParser interpolation would read a %-escaped password as a reference.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "services/migrations has no revision"
    return head


async def migrate(settings: Settings) -> None:
    """Upgrade the database at ``settings.sqlalchemy_url`` to the newest revision (creating it if empty)."""
    if settings.sqlalchemy_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = db.create_engine(settings.sqlalchemy_url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade through ``engine`` to ``revision``; safe when several processes migrate at once."""
    async with db.outage_is_unavailable("migrations"), engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Step back to ``revision`` (``"base"`` drops every table): for tests and rollbacks by hand."""
    async with db.outage_is_unavailable("migrations"), engine.begin() as conn:
        await conn.run_sync(_run, lambda config: command.downgrade(config, revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or ``None`` when it was never migrated."""
    async with db.outage_is_unavailable("migrations"), engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


def unsupported_server(dialect: str, *, mariadb: bool, version: tuple[int, ...]) -> str | None:
    """Why Courier cannot run on this database server, or ``None``: the outbox relay claims rows with
    ``FOR UPDATE SKIP LOCKED`` and read cursors move by upsert."""
    if dialect in ("mysql", "mariadb"):
        if mariadb and version < (10, 6):
            return f"MariaDB {'.'.join(map(str, version))} lacks SKIP LOCKED; Courier needs MariaDB 10.6 or later"
        if not mariadb and version < (8, 0, 1):
            return f"MySQL {'.'.join(map(str, version))} lacks SKIP LOCKED; Courier needs MySQL 8.0.1 or later"
    if dialect == "postgresql" and version < (9, 5):
        return f"PostgreSQL {'.'.join(map(str, version))} lacks SKIP LOCKED; Courier needs 9.5 or later"
    if dialect == "sqlite" and version < (3, 24):
        return f"SQLite {'.'.join(map(str, version))} lacks upserts; Courier needs 3.24 or later"
    return None


def _upgrade(connection: Connection, revision: str) -> None:
    dialect = connection.dialect
    reason = unsupported_server(
        dialect.name,
        mariadb=bool(getattr(dialect, "is_mariadb", False)),
        version=tuple(v for v in dialect.server_version_info or () if isinstance(v, int)),
    )
    if reason is not None:
        raise MigrationError(reason)

    def run(config: Config) -> None:
        _stamp_unversioned(connection, config)
        command.upgrade(config, revision)

    _run(connection, run)


def _run(connection: Connection, step: Callable[[Config], None]) -> None:
    """Run an Alembic command on ``connection`` (inside its transaction) while holding the migration lock."""
    config = alembic_config()
    # env.py runs on this connection instead of opening its own (Alembic's connection-sharing recipe).
    config.attributes["connection"] = connection
    dialect = connection.dialect.name
    held: str | None = None
    # Two processes starting together must not both create the tables. SQLite's BEGIN IMMEDIATE
    # already holds the write lock; PostgreSQL's transaction-scoped lock is released by the commit.
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    elif dialect in ("mysql", "mariadb"):
        # MySQL's named locks span the server: take this database's.
        held = f"{_LOCK_NAME}:{connection.execute(text('SELECT DATABASE()')).scalar()}"[:64]
        got = connection.execute(text("SELECT GET_LOCK(:name, :timeout)"), {"name": held, "timeout": LOCK_TIMEOUT_S})
        if got.scalar() != 1:
            raise Unavailable("another process has been migrating the database for too long; try again")
    try:
        step(config)
    finally:
        if held is not None:
            connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": held})


def _stamp_unversioned(connection: Connection, config: Config) -> None:
    """A database made by ``create_all`` before migrations existed holds the baseline schema but no
    ``alembic_version``: record it as the baseline so the upgrade does not create its tables again."""
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables:
        return
    if not tables & BASELINE_TABLES:
        return  # an empty database: the upgrade creates everything
    missing = BASELINE_TABLES - tables
    if missing:
        raise MigrationError(
            f"the database holds some of Courier's tables but not {sorted(missing)} and no alembic_version: "
            "it was not made by Courier; migrate an empty database instead"
        )
    command.stamp(config, BASELINE)
