"""The relational store shared by the services: one SQLAlchemy ``MetaData`` and engine creation.

Each service declares its own tables on ``metadata`` in its ``adapters/sql.py``. The embedded mode
uses SQLite (the aiosqlite dialect over ``inline_sqlite``, and for ``write_sync`` a synchronous engine on
the same file); the distributed mode MySQL/MariaDB or PostgreSQL through the same tables.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, closing, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from sqlalchemy import DateTime, MetaData, event, text
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
from sqlalchemy.pool import PoolResetState, QueuePool
from sqlalchemy.types import TypeDecorator

from services.common import inline_sqlite
from services.common.errors import Unavailable
from services.common.prepared import Prepared

log = logging.getLogger("courier.db")

T = TypeVar("T")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored without zone and always read back as aware UTC (SQLite drops zones)."""

    # MySQL's DATETIME drops fractions unless asked for microseconds.
    impl = DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


SQLITE_POOL_SIZE = 16
SQLITE_BUSY_TIMEOUT_S = 30


def create_engine(url: str) -> AsyncEngine:
    """An async engine; for SQLite, WAL journal and a busy timeout so readers never block writers.

    Statement parameters are kept out of error messages: they carry message texts, password and token
    hashes, and database errors are logged."""
    if url.startswith("sqlite"):
        _use_wal(make_url(url).database)
        # Statements run on the loop's thread (inline_sqlite: a thread round trip cost more than they do).
        # Connections stay open: the default pool's overflow opened and closed one (a file open, the
        # pragmas) for every burst above five.
        database = make_url(url).database or ""
        engine = create_async_engine(
            url,
            async_creator=inline_sqlite.creator(database, timeout_s=SQLITE_BUSY_TIMEOUT_S),
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=0,
            pool_timeout=60,
            hide_parameters=True,
        )
        _configure_sqlite(engine.sync_engine)
        if database and database != ":memory:" and not database.startswith("file:"):
            _add_sync_twin(engine, database)
        return engine
    # READ COMMITTED, as PostgreSQL has by default: MySQL's REPEATABLE READ takes gap locks on every
    # search of an index, and two logins deleting a missing row then inserting into the same gap deadlock.
    # Nothing here relies on repeatable reads: unique keys and SKIP LOCKED carry the guarantees.
    engine = create_async_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_reset_on_return=None,  # _server_pool_events: a rollback only for a connection still in a transaction
        isolation_level="READ COMMITTED",
        hide_parameters=True,
    )
    _server_pool_events(engine.sync_engine)
    return engine


# A pooled server connection idle for longer than this is pinged before it is handed out. One used more recently
# is not: a busy process would otherwise pay a round trip per checkout (on MariaDB a group commit's seventh).
PING_AFTER_IDLE_S = 1.0
_IDLE_SINCE = "courier_idle_since"


def _server_pool_events(engine: Engine) -> None:
    """What SQLAlchemy's ``pool_pre_ping`` and rollback-on-return do, without their round trips where they
    answer nothing: the ping only after ``PING_AFTER_IDLE_S`` in the pool, the rollback only when the driver
    says the connection is in a transaction. A transaction run through a ``Connection`` has always been
    committed or rolled back before its connection returns, yet the pool rolled back again (for asyncmy a
    ``ROLLBACK`` sent; asyncpg's adapter knows and skips it)."""
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _alive(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)
        if idle_since is None or time.monotonic() - idle_since <= PING_AFTER_IDLE_S:
            return  # new, or in use a moment ago: a connection lost since fails its statement (Unavailable)
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as err:
            if not dialect.is_disconnect(err, dbapi_connection, None):
                raise
            # As a failed pre-ping: every connection pooled before now is replaced, this one at once.
            raise sa_exc.InvalidatePoolError() from err

    # asyncpg's "another operation is in progress": a server that ended the connection (a restart, a kill) while
    # it sat in the pool, noticed only once the next statement was under way. Its protocol state is lost: a
    # disconnect, so the connection and those pooled with it are replaced (and the caller gets Unavailable).
    lost_midway = getattr(dialect.loaded_dbapi, "InternalClientError", None)
    if lost_midway is not None:

        @event.listens_for(engine, "handle_error")
        def _lost_midway(context: Any) -> None:
            if isinstance(context.original_exception, lost_midway):
                context.is_disconnect = True

    @event.listens_for(engine, "reset")
    def _end_transaction(dbapi_connection: Any, _record: Any, state: PoolResetState) -> None:
        if not state.asyncio_safe or state.transaction_was_reset:
            return  # garbage collected (no loop to talk on), or rolled back by Connection.close already
        in_transaction = getattr(dbapi_connection.driver_connection, "get_transaction_status", None)
        if in_transaction is not None and not in_transaction():
            return
        dbapi_connection.rollback()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # Autocommit as the driver sees it (connections are opened so): the "begin" listener below says how.

    # On the driver's cursor: through Core, the BEGIN cost as much CPU as the rest of the transaction's start.
    begin_reading = Prepared(text("BEGIN"), engine.dialect)
    begin_writing = Prepared(text("BEGIN IMMEDIATE"), engine.dialect)

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # A transaction that may write takes the write lock when it starts: a deferred one that
        # reads and then writes fails at once with SQLITE_BUSY when another one did the same. A
        # read-only one (``reading``) runs deferred: in WAL mode it neither waits for nor holds it.
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        (begin_reading if read_only else begin_writing).run(conn, {})


# A synchronous engine on the same SQLite file as an async one, for ``write_sync``.
_SYNC_TWINS: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _add_sync_twin(engine: AsyncEngine, database: str) -> None:
    """SQLAlchemy's asyncio layer costs most of a short statement's CPU even when the driver answers
    at once (inline_sqlite): a greenlet per ``execute`` and a switch per driver call. A hot path of
    several statements runs through this engine instead, on the loop's thread like the async one.
    It is disposed of with the async engine."""
    twin = sa_create_engine(
        f"sqlite:///{database}",
        poolclass=QueuePool,
        creator=lambda: sqlite3.connect(
            database, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        ),
        pool_size=2,
        max_overflow=0,
        pool_timeout=60,
        hide_parameters=True,
    )
    _configure_sqlite(twin)
    _SYNC_TWINS[engine.sync_engine] = twin

    @event.listens_for(engine.sync_engine, "engine_disposed")
    def _dispose_twin(_engine: Any) -> None:
        twin.dispose()


def statement_engines(engine: AsyncEngine) -> list[Engine]:
    """The engines whose connections run ``engine``'s statements (for event listeners): its own, and on
    a SQLite file the synchronous twin ``write_sync`` uses."""
    twin = _SYNC_TWINS.get(engine.sync_engine)
    return [engine.sync_engine] if twin is None else [engine.sync_engine, twin]


def is_deadlock(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or the database error behind an ``Unavailable``) is a deadlock or lock timeout the
    server chose a victim for: the transaction rolled back and may simply be run again."""
    while exc is not None and not isinstance(exc, sa_exc.DBAPIError):
        exc = exc.__cause__
    if exc is None:
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40P01", "40001") or getattr(orig, "pgcode", None) in ("40P01", "40001"):
        return True
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and args[0] in (1213, 1205)  # MySQL: deadlock found, lock wait timeout


def _use_wal(database: str | None, wait_s: float = 30.0) -> None:
    """Put a SQLite file in WAL mode before any pooled connection opens it. The mode is stored in
    the file, and switching it needs an exclusive lock that SQLite refuses at once (no busy wait)
    while another connection holds one, so it is done here, once, and retried."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    if not Path(database).parent.is_dir():
        return  # the first connection reports the missing directory
    deadline = time.monotonic() + wait_s
    with closing(sqlite3.connect(database, timeout=wait_s)) as conn:
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def create_all(engine: AsyncEngine) -> None:
    """Create every declared table (embedded mode and tests; the distributed mode migrates)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


@asynccontextmanager
async def outage_is_unavailable(what: str) -> AsyncIterator[None]:
    """A database that cannot be reached is ``Unavailable`` (503, retry), never an internal error.
    Constraint violations (``IntegrityError``) pass through for the caller to interpret."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, OSError) as exc:
        _unavailable(what, exc)
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:  # the connection was lost, whatever class the driver gave the error
            _unavailable(what, exc)
        # PostgreSQL's deadlock comes through asyncpg as the driver's base Error, so as Core's plain DBAPIError: the
        # transaction was rolled back and may run again, as MySQL's OperationalError deadlock says.
        if not is_deadlock(exc):
            raise
        _unavailable(what, exc)


def _unavailable(what: str, exc: BaseException) -> NoReturn:
    # The client gets a 503 without the cause; the operator needs it.
    log.warning("the %s database is unavailable: %s", what, exc.__class__.__name__, exc_info=exc)
    raise Unavailable(f"the {what} database is unavailable; try again") from exc


_READ_ONLY = "courier_read_only"
# SQLite has one write lock per file, and a writer that finds it taken sleeps in SQLite's busy
# handler (polling at up to 100 ms). This process's writers queue on an asyncio lock instead, so
# the next one starts the moment the last one commits; the busy timeout is left for other processes.
_WRITERS: weakref.WeakKeyDictionary[Engine, asyncio.Lock] = weakref.WeakKeyDictionary()


def _writer_turn(engine: AsyncEngine) -> AbstractAsyncContextManager[Any]:
    if engine.dialect.name != "sqlite":
        return nullcontext()
    return _WRITERS.setdefault(engine.sync_engine, asyncio.Lock())


@asynccontextmanager
async def reading(engine: AsyncEngine, what: str) -> AsyncIterator[AsyncConnection]:
    """A connection for reads only (SQLite: a deferred transaction that never blocks a writer)."""
    async with outage_is_unavailable(what), engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execution_options(**{_READ_ONLY: True})
        yield conn


@asynccontextmanager
async def writing(engine: AsyncEngine, what: str) -> AsyncIterator[AsyncConnection]:
    """A transaction that may write, committed on success; an outage is ``Unavailable``."""
    async with outage_is_unavailable(what), _writer_turn(engine), engine.begin() as conn:
        yield conn


async def write_sync(engine: AsyncEngine, what: str, work: Callable[[Connection], T]) -> T:
    """``work`` in a transaction that may write, committed when it returns (as ``writing``), on a
    synchronous connection: for paths of several statements, which then pay SQLAlchemy's asyncio
    adaptation once, or on a SQLite file not at all (its synchronous twin, on the loop's thread, in
    this process's turn of writers). On a server ``work`` runs through ``run_sync``."""
    twin = _SYNC_TWINS.get(engine.sync_engine)
    if twin is None:
        async with writing(engine, what) as conn:
            return await conn.run_sync(work)
    async with outage_is_unavailable(what), _writer_turn(engine):
        with twin.begin() as conn:
            return work(conn)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession], what: str) -> AsyncIterator[AsyncSession]:
    """One ORM-session transaction that may write, committed on success; an outage is ``Unavailable``."""
    engine = sessions.kw["bind"]
    async with outage_is_unavailable(what), _writer_turn(engine), sessions.begin() as session:
        yield session


@asynccontextmanager
async def read_session(sessions: async_sessionmaker[AsyncSession], what: str) -> AsyncIterator[AsyncSession]:
    """An ORM session for reads only, rolled back at the end (see ``reading``)."""
    async with outage_is_unavailable(what), sessions() as session:
        if session.bind is not None and session.bind.dialect.name == "sqlite":
            read_only: dict[str, Any] = {_READ_ONLY: True}
            await session.connection(execution_options=read_only)
        yield session
