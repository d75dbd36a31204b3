"""Statements of a hot path compiled once per dialect and run on the driver's cursor.

SQLAlchemy Core's work per execution (the compiled cache's key, an execution context, the events, bind
processing through the compiled object, a result object) costs more than SQLite's own work for a short
statement: in the group commit of one message it was about half the CPU of the commit (docs/performance.md
17). A ``Prepared`` statement does the compiling once, keeps the SQL text in the dialect's paramstyle and the
bind processors of its parameters (the same ones Core applies, so the database sees the same values), and
runs on the DBAPI cursor of a Connection inside the caller's transaction: Core still begins, commits and
rolls back, and the pool still owns the connection.

What this path leaves out, on purpose: Core's engine events (``before_cursor_execute``, and with them the
statement spans of OpenTelemetry's SQLAlchemy instrumentation; the caller traces the work as a whole) and
result processing (rows come back as the driver's tuples, so only statements whose columns need no
conversion belong here). A driver error is raised as Core raises it (``IntegrityError``, ``OperationalError``
... with ``orig``), and a connection the driver reports lost is not used again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Row = tuple[Any, ...]


class Prepared:
    """One statement compiled for one dialect; its parameters are given by bind name."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, *, columns: Sequence[str] | None = None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(columns) if columns is not None else None)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a statement with parameters: {compiled}")
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("a statement with expanding or literal parameters changes at each execution")
        self.sql = compiled.string
        self._dialect = dialect
        names = compiled.positiontup if compiled.positional else list(compiled.bind_names.values())
        self._positional = compiled.positional
        self._binds: list[tuple[str, Callable[[Any], Any] | None, Any]] = [
            (name, _processor(compiled.binds[name].type, dialect), compiled.binds[name].effective_value)
            for name in names or ()
        ]

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The driver's parameters for ``values`` (a bind not given takes the statement's own value)."""
        bound = []
        for name, process, default in self._binds:
            value = values.get(name, default)
            bound.append(value if process is None else process(value))
        if self._positional:
            return tuple(bound)
        return dict(zip((name for name, _, _ in self._binds), bound, strict=True))

    def rows(self, conn: Connection, values: Mapping[str, Any]) -> list[Row]:
        """Run once and return the rows (the driver's tuples)."""
        with self._cursor(conn, many=False) as cursor:
            cursor.execute(self.sql, self.parameters(values))
            return [tuple(row) for row in cursor.fetchall()]

    def run(self, conn: Connection, values: Mapping[str, Any]) -> None:
        with self._cursor(conn, many=False) as cursor:
            cursor.execute(self.sql, self.parameters(values))

    def run_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row (the driver's executemany)."""
        with self._cursor(conn, many=True) as cursor:
            cursor.executemany(self.sql, [self.parameters(row) for row in rows])

    @contextmanager
    def _cursor(self, conn: Connection, *, many: bool) -> Iterator[Any]:
        dbapi_connection = conn.connection.dbapi_connection
        if dbapi_connection is None:
            raise sa_exc.ResourceClosedError("the connection is closed")
        cursor = dbapi_connection.cursor()
        dbapi = self._dialect.loaded_dbapi
        try:
            yield cursor
        except dbapi.Error as error:
            # A lost connection is said so; the rollback of the failed transaction then fails on it too and
            # Core invalidates it there, so the pool does not hand it out again.
            lost = self._dialect.is_disconnect(error, dbapi_connection, cursor)
            raise sa_exc.DBAPIError.instance(
                self.sql,
                None,
                error,
                dbapi.Error,
                hide_parameters=True,
                connection_invalidated=lost,
                dialect=self._dialect,
                ismulti=many,
            ) from error
        finally:
            with contextlib.suppress(dbapi.Error):  # a cursor of a lost connection may not close
                cursor.close()


def _processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """The bind processor Core applies to a parameter of this type on this dialect."""
    process: Callable[[Any], Any] | None = type_.dialect_impl(dialect).bind_processor(dialect)
    return process
