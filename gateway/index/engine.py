"""Create the index engine and bring its schema up to date.

SQLite runs in WAL mode with ``synchronous=FULL`` (a commit is on disk before it returns,
which the C-STORE acknowledgement relies on) and writers take the lock up front
(``BEGIN IMMEDIATE``) so that concurrent associations queue on the busy timeout instead of
failing on a lock upgrade. PostgreSQL: JIT compilation off (see :func:`_postgres_setup`).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        options = conn.get_execution_options()
        if options.get("writer"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get("single_statement"):
            conn.exec_driver_sql("BEGIN")
        # single_statement: one SELECT, its own snapshot in autocommit (gateway.index.prepared)


def create_index_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite the parent directory is created."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, pool_size=16
        )
        _sqlite_setup(engine)
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
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
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
