"""The index's copy in a backup: taken while the gateway serves, read back, restored.

* **SQLite**: the online backup API (:meth:`sqlite3.Connection.backup`, in one step: a
  consistent read of the database, which in WAL mode never blocks the gateway's writers),
  into ``index.sqlite``; then, in the copy only, the rows of :data:`~gateway.backup.layout.
  EXCLUDED_TABLES` are deleted with ``secure_delete`` and the file is vacuumed (nothing of
  them is left in free pages) and set to the rollback journal (one self-contained file).
* **PostgreSQL**: ``pg_dump --format=custom`` into ``index.pgdump``, inside a snapshot this
  module exports (``pg_export_snapshot()`` in a REPEATABLE READ transaction kept open while
  ``pg_dump --snapshot`` runs), so the storage keys read here and the dump are the same
  instant. The rows of the excluded tables are left out (``--exclude-table-data``). The
  client's major version must be at least the server's (checked first; ``pg_bin_dir``
  names another client). The password, when the URL has one, goes to the programs in their
  environment (``PGPASSWORD``), never on a command line or into the backup.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from gateway.backup.layout import (
    EXCLUDED_TABLES,
    PG_DUMP,
    SQLITE_DUMP,
    BackupFailed,
    BackupRefused,
)

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


@dataclass
class IndexCopy:
    backend: str
    file: str
    revision: str | None
    storage_keys: list[str]
    details: dict = field(default_factory=dict)


def backend_of(url: str) -> str:
    return SQLITE if make_url(url).get_backend_name() == "sqlite" else POSTGRESQL


def shown_url(url: str) -> str:
    """The URL as it may be printed: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupRefused("the index is an in-memory SQLite database: nothing to back up")
    return Path(database)


def take_copy(url: str, out_dir: Path, pg_bin_dir: Path | None) -> IndexCopy:
    """Copy the index into ``out_dir`` and read the storage keys of that very copy."""
    if backend_of(url) == SQLITE:
        return _sqlite_copy(sqlite_path(url), out_dir / SQLITE_DUMP)
    return _pg_copy(url, out_dir / PG_DUMP, pg_bin_dir)


def read_copy(path: Path, backend: str, pg_bin_dir: Path | None,
              dump_major: int | None = None) -> tuple[str | None, list[str]]:
    """(Alembic revision, storage keys) of an index copy, reading all of it; ``ValueError``
    saying what is wrong when it cannot be read."""
    if backend == SQLITE:
        return _sqlite_read(path)
    return _pg_read(path, pg_bin_dir, dump_major)


def check_empty(url: str) -> None:
    """The index database to restore into must be empty; :class:`BackupRefused` otherwise."""
    if backend_of(url) == SQLITE:
        path = sqlite_path(url)
        if path.exists() and path.stat().st_size > 0:
            raise BackupRefused(f"the SQLite index {path} exists: restore only into an empty "
                                "data directory and index")
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            tables = [f"{schema}.{t}" for schema in inspect(conn).get_schema_names()
                      if schema not in ("information_schema",) and not schema.startswith("pg_")
                      for t in inspect(conn).get_table_names(schema=schema)]
    except Exception as exc:  # noqa: BLE001 - any connection failure, reported as is
        raise BackupRefused(f"cannot open the index database {shown_url(url)}: "
                            f"{str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    if tables:
        raise BackupRefused(
            f"the database {shown_url(url)} is not empty ({len(tables)} tables, e.g. "
            f"{', '.join(sorted(tables)[:3])}): restore only into an empty database "
            "(create a new one, e.g. createdb)")


def load_copy(path: Path, backend: str, url: str, pg_bin_dir: Path | None) -> None:
    """Restore an index copy into the (empty) database of ``url``."""
    if backend == SQLITE:
        target = sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".restoring")
        shutil.copyfile(path, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return
    tool = pg_tool("pg_restore", pg_bin_dir)
    conninfo, env = libpq(url)
    proc = subprocess.run(
        [tool.path, "--no-owner", "--no-acl", "--exit-on-error", "--single-transaction",
         "--no-password", f"--dbname={conninfo}", str(path)],
        env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackupFailed(f"pg_restore failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")


# -- SQLite ------------------------------------------------------------------------------------

def _sqlite_copy(source: Path, out: Path) -> IndexCopy:
    if not source.is_file():
        raise BackupRefused(f"the SQLite index {source} does not exist")
    src = sqlite3.connect(source, timeout=60)
    dst = sqlite3.connect(out, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=60000")
        src.backup(dst)  # pages=-1: the whole database in one consistent step
    finally:
        src.close()
    try:
        dst.execute("PRAGMA journal_mode=DELETE")
        dst.execute("PRAGMA secure_delete=ON")
        present = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        dst.execute("BEGIN")
        for table in EXCLUDED_TABLES:
            if table in present:
                dst.execute(f'DELETE FROM "{table}"')
        dst.execute("COMMIT")
        dst.execute("VACUUM")
        revision = _sqlite_revision(dst)
        keys = _sqlite_live_keys(dst)
    finally:
        dst.close()
    return IndexCopy(SQLITE, SQLITE_DUMP, revision, keys,
                     {"sqlite_version": sqlite3.sqlite_version})


def _sqlite_live_keys(conn: sqlite3.Connection) -> list[str]:
    """The storage keys of the instances whose file is in the store: an instance evicted to
    the PACS (``evicted_at``, revision 0012 on) keeps its row but has no file to copy."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(instances)")}
    live = " WHERE evicted_at IS NULL" if "evicted_at" in columns else ""
    return [r[0] for r in conn.execute("SELECT storage_key FROM instances" + live)]


def _sqlite_revision(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def _sqlite_read(path: Path) -> tuple[str | None, list[str]]:
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1",
                               uri=True)
    except sqlite3.Error as exc:
        raise ValueError(f"cannot open: {exc}") from None
    try:
        check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        if check != ["ok"]:
            raise ValueError("integrity_check: " + "; ".join(check[:5]))
        return _sqlite_revision(conn), _sqlite_live_keys(conn)
    except sqlite3.Error as exc:
        raise ValueError(str(exc)) from None
    finally:
        conn.close()


# -- PostgreSQL --------------------------------------------------------------------------------

@dataclass
class PgTool:
    path: str
    major: int
    version: str


def pg_tool(name: str, bin_dir: Path | None) -> PgTool:
    """A PostgreSQL client program and its version; :class:`BackupRefused` when missing."""
    path = str(bin_dir / name) if bin_dir else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        where = f"in {bin_dir} (pg_bin_dir)" if bin_dir else "on the PATH"
        raise BackupRefused(f"{name} not found {where}: install the PostgreSQL client "
                            "(Debian: postgresql-client) of the server's major version, or "
                            "set pg_bin_dir")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"PostgreSQL\)\s+((\d+)\S*)", out)
    if not m:
        raise BackupRefused(f"{path} --version says {out.strip()!r}: not a PostgreSQL client")
    return PgTool(path, int(m.group(2)), m.group(1))


def libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection URI without the password, and the environment that carries it."""
    u = make_url(url)
    env = dict(os.environ)
    if u.password is not None:
        env["PGPASSWORD"] = str(u.password)
    plain = u.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _pg_copy(url: str, out: Path, bin_dir: Path | None) -> IndexCopy:
    tool = pg_tool("pg_dump", bin_dir)
    conninfo, env = libpq(url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as probe:
            server_num = int(probe.exec_driver_sql("SHOW server_version_num").scalar_one())
            server = str(probe.exec_driver_sql("SHOW server_version").scalar_one()).split()[0]
        if tool.major < server_num // 10000:
            raise BackupRefused(
                f"pg_dump {tool.version} ({tool.path}) is older than the PostgreSQL "
                f"{server} server: install the client of major version {server_num // 10000} "
                "or newer, or set pg_bin_dir")
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
            with conn.begin():
                snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
                revision = conn.exec_driver_sql(
                    "SELECT version_num FROM alembic_version").scalar()
                keys = list(conn.exec_driver_sql(  # evicted to the PACS: no file (0012)
                    "SELECT storage_key FROM instances WHERE evicted_at IS NULL").scalars())
                cmd = [tool.path, "--format=custom", f"--snapshot={snapshot}",
                       f"--file={out}", "--no-password"]
                cmd += [f"--exclude-table-data={t}" for t in EXCLUDED_TABLES]
                proc = subprocess.run([*cmd, f"--dbname={conninfo}"], env=env,
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise BackupFailed(f"pg_dump failed (exit {proc.returncode}): "
                                       f"{proc.stderr.strip()[-2000:]}")
    except (BackupRefused, BackupFailed):
        raise
    except Exception as exc:  # noqa: BLE001 - the database refused or is unreachable
        raise BackupFailed(f"cannot read the index database {shown_url(url)}: "
                           f"{str(exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    return IndexCopy(POSTGRESQL, PG_DUMP, revision, keys,
                     {"server_version": server, "pg_dump_version": tool.version})


def _copy_value(value: str) -> str:
    if value == "\\N":
        return ""
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}.get(
        m.group(1), m.group(1)), value)


def _pg_read(path: Path, bin_dir: Path | None,
             dump_major: int | None) -> tuple[str | None, list[str]]:
    tool = pg_tool("pg_restore", bin_dir)
    if dump_major is not None and tool.major < dump_major:
        raise BackupRefused(f"pg_restore {tool.version} ({tool.path}) cannot read a dump of "
                            f"pg_dump {dump_major}: install a newer client or set pg_bin_dir")
    revision: str | None = None
    keys: list[str] = []
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen([tool.path, "--file=-", str(path)], stdout=subprocess.PIPE,
                            stderr=errors, text=True, encoding="utf-8", errors="replace")
    assert proc.stdout is not None
    table = None
    columns: list[str] | None = None
    for line in proc.stdout:  # the whole dump is read: every block must decompress
        line = line.rstrip("\n")
        if columns is None:
            m = re.match(r"^COPY (?:\S+\.)?\"?(instances|alembic_version)\"? \((.*)\) "
                         r"FROM stdin;$", line)
            if m:
                table, columns = m.group(1), [c.strip().strip('"') for c in
                                              m.group(2).split(",")]
            continue
        if line == "\\.":
            columns = None
            continue
        values = [_copy_value(v) for v in line.split("\t")]
        row = dict(zip(columns, values, strict=False))
        if table == "instances" and not row.get("evicted_at"):  # evicted: no file
            keys.append(row.get("storage_key", ""))
        else:
            revision = row.get("version_num") or revision
    proc.stdout.close()
    status = proc.wait()
    errors.seek(0)
    err = errors.read().decode("utf-8", "replace")
    errors.close()
    if status != 0:
        how = f"killed by signal {-status}" if status < 0 else f"exit {status}"
        raise ValueError(f"pg_restore cannot read it ({how})"
                         + (f": {err.strip()[-1000:]}" if err.strip() else ""))
    return revision, keys
