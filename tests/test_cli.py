"""The ``drimbox`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect

from gateway.index.engine import create_index_engine, head_revision


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=120, cwd=cwd)


def test_db_upgrade_creates_the_schema(database_url: str, tmp_path: Path) -> None:
    env = {"DRIMBOX_DATA_DIR": str(tmp_path / "data"), "DRIMBOX_DATABASE_URL": database_url}
    first = run_cli("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert f"index at revision {head_revision()}" in first.stdout
    engine = create_index_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"patients", "studies", "series", "instances", "alembic_version"} <= tables
    again = run_cli("db", "upgrade", env=env)  # idempotent
    assert again.returncode == 0 and f"index at revision {head_revision()}" in again.stdout


def test_default_index_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    proc = run_cli("db", "upgrade", env={}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "index.sqlite").is_file()


def test_version_and_help() -> None:
    assert run_cli("--version", env={}).returncode == 0
    helptext = run_cli("--help", env={}).stdout
    for command in ("serve", "db", "import"):
        assert command in helptext
