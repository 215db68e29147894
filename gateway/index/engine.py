"""Create the index engine and bring its schema up to date.

SQLite runs in WAL mode with ``synchronous=FULL`` (a commit is on disk before it returns; the
ingest's group commits relax it to ``NORMAL`` where the files' flush and the recovery cover
them, :mod:`gateway.ingest.recovery`) and writers take the lock up front (``BEGIN IMMEDIATE``)
so that concurrent associations queue instead of failing on a lock upgrade; they queue on a
file lock, which wakes the next at once (:func:`_sqlite_setup`; the ingest's group commit, on
a bare pooled connection, takes it too: :func:`begin_raw_write`). PostgreSQL: JIT
compilation off (see :func:`_postgres_setup`).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"


_THREAD = threading.local()


def _locks_held_by_this_thread() -> set[str | None]:
    held = getattr(_THREAD, "writer_locks", None)
    if held is None:
        held = _THREAD.writer_locks = set()
    return held


def _sqlite_setup(engine: Engine, lock_path: str | None) -> None:
    """WAL, full sync, foreign keys; and writers that take their turn without sleeping.

    SQLite makes a writer that finds the database locked sleep and retry (1, 2, 5, 10... ms):
    with two DICOM workers committing a few hundred groups a second, every collision cost a
    millisecond or more before an acknowledgement. Writers of this engine (``BEGIN
    IMMEDIATE``) first take an ``flock`` on ``<index>-writer.lock``, one open file per pooled
    connection, which wakes the next writer the moment the last one has finished (its
    connection back in the pool); SQLite's own lock then never makes them wait
    (bench/RESULTS.md "Ingest at Orthanc's rate"). Other programs writing the file still meet
    ``busy_timeout``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()
        if lock_path is not None:
            record.info["writer_lock"] = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
            record.info["writer_lock_path"] = lock_path

    @event.listens_for(engine, "close")
    def _on_close(_dbapi_conn, record) -> None:
        fd = record.info.pop("writer_lock", None)
        if fd is not None:
            os.close(fd)  # releases the lock too

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn, record) -> None:
        if record is not None and record.info.pop("writer_lock_held", False):
            fcntl.flock(record.info["writer_lock"], fcntl.LOCK_UN)
            record.info.pop("writer_lock_owner").discard(lock_path)

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        options = conn.get_execution_options()
        if options.get("writer"):
            _take_writer_lock(conn.connection.info)
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get("single_statement"):
            conn.exec_driver_sql("BEGIN")
        # single_statement: one SELECT, its own snapshot in autocommit (gateway.index.prepared)


def _take_writer_lock(info: dict) -> None:
    """The writers' file lock of a pooled SQLite connection (released when it goes back to
    the pool). A thread already writing through another connection (nested transactions)
    does not wait for itself: SQLite's lock decides, as without the file lock."""
    fd = info.get("writer_lock")
    if fd is None or info.get("writer_lock_held"):
        return
    lock_path = info["writer_lock_path"]
    held = _locks_held_by_this_thread()
    if lock_path in held:
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.add(lock_path)
    info["writer_lock_held"] = True
    info["writer_lock_owner"] = held


def begin_raw_write(engine: Engine, raw) -> None:  # noqa: ANN001 - a pool's DBAPI connection
    """Begin a write transaction on ``raw`` (``engine.raw_connection()``) as the engine's
    ``writer`` Connections begin theirs: on SQLite the writers' file lock, then ``BEGIN
    IMMEDIATE``; PostgreSQL's driver begins one with the first statement."""
    if engine.dialect.name == "sqlite":
        _take_writer_lock(raw.info)
        raw.driver_connection.execute("BEGIN IMMEDIATE")


def create_index_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite the parent directory is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, pool_size=16
        )
        file_db = parsed.database and parsed.database != ":memory:"
        _sqlite_setup(engine, f"{parsed.database}-writer.lock" if file_db else None)
        return engine
    engine = create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)
    _postgres_setup(engine)
    return engine


def _postgres_setup(engine: Engine) -> None:
    """JIT off for the index's sessions: its queries are short, and PostgreSQL compiles any
    query whose estimated cost passes ``jit_above_cost``; with stale statistics (after a bulk
    load, before autovacuum's ANALYZE) a 4-row QIDO-RS search by PatientID spent 263 ms of
    its 814 ms in JIT compilation (bench/RESULTS.md, "Scale")."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.execute("SET jit = off")
        dbapi_conn.commit()  # a SET in a transaction rolled back would be undone


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` (``drimbox db upgrade``; ``serve`` on start)."""
    command.upgrade(alembic_config(engine), revision)


def head_revision() -> str:
    """The newest migration shipped with this code."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this code's migrations (a newer code's is not)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        return ScriptDirectory.from_config(cfg).get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
