"""Precompiled SELECTs for the hottest reads (QIDO-RS by PatientID, WADO-RS of one instance).

SQLAlchemy compiles a Core statement once per shape and caches it, but it still builds the
statement object and computes its cache key on every execution, and a Session adds its own
bookkeeping: ~0.4-0.5 ms per request where the SQL itself takes ~10-50 us on SQLite
(bench/RESULTS.md). :class:`Prepared` compiles a statement written with named
:func:`~sqlalchemy.bindparam`\\ s once per dialect and runs it on a pooled DBAPI connection
with plain values on the DBAPI cursor (:func:`fetch_all`): no statement object, no cache
key, no ORM, rows as tuples. Only for
SELECTs whose columns need no result processing (text and integers).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Select
from sqlalchemy.exc import DBAPIError


@dataclass(frozen=True)
class Compiled:
    sql: str
    order: tuple[str, ...] | None
    """Bind names in positional order (SQLite's ``?``), None for named parameters."""
    keys: tuple[str, ...]
    """The result columns' keys (labels), in order."""
    constants: dict[str, Any]
    """Values bound by the statement itself (literals such as ``modality != ''``)."""

    def arguments(self, params: dict[str, Any]) -> Any:
        if self.constants:
            params = {**self.constants, **params}
        return params if self.order is None else tuple(params[n] for n in self.order)


def compile_select(stmt: Select, engine: Engine) -> Compiled:
    compiled = stmt.compile(dialect=engine.dialect)
    order = tuple(compiled.positiontup) if compiled.positional else None
    constants = {name: bp.effective_value for name, bp in compiled.binds.items()
                 if not bp.required}
    return Compiled(compiled.string, order, tuple(c.key for c in stmt.selected_columns),
                    constants)


def fetch_all(engine: Engine, compiled: Compiled, params: dict[str, Any]) -> list[tuple]:
    """Run ``compiled`` with ``params`` on a pooled connection (SQLite: no ``BEGIN``, the one
    statement is its own snapshot; PostgreSQL: the pool rolls the read back).

    On the bare DBAPI cursor: SQLAlchemy's Connection costs three times SQLite's own lookup
    (55 against 17 us for one instance, bench/RESULTS.md "The hot read path"). When someone
    listens to the engine's statements (statement logging, the tests' statement counts),
    through the Connection's ``exec_driver_sql``, so that they still see it."""
    if statements_watched(engine):
        with engine.connect().execution_options(single_statement=True) as conn:
            return conn.exec_driver_sql(compiled.sql, compiled.arguments(params)).all()
    return fetch_raw(engine, compiled, params)


def fetch_raw(engine: Engine, compiled: Compiled, params: dict[str, Any]) -> list[tuple]:
    """As :func:`fetch_all`, always on the bare cursor (no engine events, watched or not)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(compiled.sql, compiled.arguments(params))
            return cursor.fetchall()
        finally:
            cursor.close()
    except engine.dialect.loaded_dbapi.Error as exc:
        raise as_sqlalchemy_error(engine, exc) from None
    finally:
        raw.close()  # back to the pool, which rolls back (PostgreSQL's implicit BEGIN)


def statements_watched(engine: Engine) -> bool:
    """Whether a ``before_cursor_execute`` or ``after_cursor_execute`` listener is set."""
    dispatch = engine.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)


def as_sqlalchemy_error(engine: Engine, exc: Exception) -> Exception:
    """A DBAPI error raised on a bare cursor, as SQLAlchemy would have raised it
    (``IntegrityError``, ``OperationalError``...), for callers that catch those."""
    return DBAPIError.instance(None, None, exc, engine.dialect.loaded_dbapi.Error)


class Prepared:
    """One SELECT with named bind parameters, compiled once per dialect."""

    def __init__(self, stmt: Select) -> None:
        self._stmt = stmt
        self._by_dialect: dict[str, Compiled] = {}
        self._lock = threading.Lock()

    def compiled(self, engine: Engine) -> Compiled:
        name = engine.dialect.name
        c = self._by_dialect.get(name)
        if c is None:
            with self._lock:
                c = self._by_dialect.get(name) or compile_select(self._stmt, engine)
                self._by_dialect[name] = c
        return c

    def rows(self, engine: Engine, **params: Any) -> list[tuple]:
        return fetch_all(engine, self.compiled(engine), params)

    def rows_raw(self, engine: Engine, **params: Any) -> list[tuple]:
        """On the bare DBAPI cursor, watched or not (:func:`fetch_raw`): for the ingest's
        one lookup per instance."""
        return fetch_raw(engine, self.compiled(engine), params)

    def rows_on_cursor(self, engine: Engine, cursor: Any, **params: Any) -> list[tuple]:
        """On the caller's DBAPI cursor (and transaction)."""
        c = self.compiled(engine)
        cursor.execute(c.sql, c.arguments(params))
        return cursor.fetchall()


class PreparedWrite:
    """One INSERT or UPDATE with named bind parameters, compiled once per dialect and run on
    the caller's Connection with plain values (the ingest's per-instance row: SQLAlchemy's
    statement building and cache key cost more than SQLite's insert, bench/RESULTS.md).
    Values go through each column type's bind processor, as SQLAlchemy would apply them
    (datetimes as SQLite stores them); every column the statement names must be given."""

    def __init__(self, stmt: Any) -> None:
        self._stmt = stmt
        self._by_dialect: dict[str, tuple[Compiled, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _compiled(self, engine: Engine) -> tuple[Compiled, dict[str, Any]]:
        name = engine.dialect.name
        found = self._by_dialect.get(name)
        if found is None:
            with self._lock:
                found = self._by_dialect.get(name)
                if found is None:
                    compiled = self._stmt.compile(dialect=engine.dialect)
                    order = tuple(compiled.positiontup) if compiled.positional else None
                    processors = {}
                    for bind_name, bind in compiled.binds.items():
                        processor = bind.type.dialect_impl(engine.dialect).bind_processor(
                            engine.dialect)
                        if processor is not None:
                            processors[bind_name] = processor
                    found = (Compiled(compiled.string, order, (), {}), processors)
                    self._by_dialect[name] = found
        return found

    def execute(self, conn: Any, **params: Any) -> Any:
        """Run on ``conn`` (a Connection, in its transaction); returns its result."""
        compiled, processors = self._compiled(conn.engine)
        return conn.exec_driver_sql(compiled.sql, compiled.arguments(
            self._processed(processors, params)))

    def execute_on_cursor(self, engine: Engine, cursor: Any, **params: Any) -> Any:
        """Run on a DBAPI cursor, in the caller's transaction (the ingest's commit: the
        Connection's per-statement machinery cost more than SQLite's insert); returns the
        cursor (``fetchone()`` for RETURNING)."""
        compiled, processors = self._compiled(engine)
        cursor.execute(compiled.sql, compiled.arguments(self._processed(processors, params)))
        return cursor

    @staticmethod
    def _processed(processors: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        for name, processor in processors.items():
            value = params[name]
            if value is not None:
                params[name] = processor(value)
        return params
