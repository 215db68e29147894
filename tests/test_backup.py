# ruff: noqa: F811 - pytest fixtures imported from dmp_support and test_publication_e2e
"""Backup and restore (the continuity plan, PRA), on both index back-ends.

The drill: a real gateway receives a study over storescu, publishes it to ``drimbox
dmp-sim``, a share link is made and opened; ``drimbox backup create`` runs while the
gateway serves and receives another study; the data directory and the index are destroyed;
``drimbox backup restore`` brings them back and ``drimbox serve`` starts on them: every
instance is byte-identical over WADO-RS, the manifests, outbox, publication history, audit
trail and share links are the same rows, and the share link still opens its study.

Then the operator's checks: the second backup copies only the new files (the others are hard
links to the first), ``drimbox backup verify`` names a damaged and a missing file, a restore
onto a data directory or an index that is not empty is refused (exit status 2), a damaged
index copy stops a restore before anything is written, a damaged file is left out and named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import launcher
import psycopg
import pytest
from conftest import PG_ADMIN
from dimse_client import open_index, snapshot
from dmp_support import pki, sim  # noqa: F401
from peers import require_tool, storescu
from sqlalchemy import select
from sqlalchemy.engine import make_url
from test_manifest_e2e import write_study
from test_publication_e2e import IndexView, dmp_entries, of_study, start_gateway, view  # noqa: F401
from test_wado import split

from gateway.index.engine import create_index_engine, current_revision, head_revision
from gateway.index.models import (
    AuditEvent,
    Instance,
    Manifest,
    ManifestInstance,
    OutboxItem,
    PublicationEvent,
    ShareLink,
    ViewerSession,
)
from gateway.ingest.storage import FileStore

#: The tables a restore must give back row for row (rows that existed at the backup).
KEPT = (Manifest, ManifestInstance, OutboxItem, PublicationEvent, AuditEvent, ShareLink)
BIRTH = "01/01/1948"  # tests/dicom_factory.py's PatientBirthDate


def drimbox(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return launcher.run(args, env=env, timeout=300)


def needs_pg_client(database_url: str) -> None:
    if not database_url.startswith("sqlite"):
        require_tool("pg_dump")
        require_tool("pg_restore")


def reset_index(database_url: str) -> None:
    """Destroy the test's index: the SQLite files, or the PostgreSQL database (then created
    again, empty, under the same name: conftest drops it at the end)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
        return
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{url.database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{url.database}"')


def rows_of(database_url: str) -> dict[str, dict]:
    """Table -> primary key -> the row's values, for the tables a restore must keep."""
    index = open_index(database_url)
    try:
        with index.read() as s:
            out = {}
            for model in KEPT:
                cols = list(model.__table__.columns)
                pk = model.__table__.primary_key.columns[0].name
                out[model.__tablename__] = {
                    r._mapping[pk]: tuple(r) for r in s.execute(select(*cols))}
            return out
    finally:
        index.engine.dispose()


def wado_hashes(gw, study: str, instances: list[tuple[str, str]]) -> dict[str, str]:  # noqa: ANN001
    """SOP Instance UID -> SHA-256 of the instance as WADO-RS serves it (as stored)."""
    out = {}
    for series, sop in instances:
        r = httpx.get(f"{gw.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                      headers={"Accept": 'multipart/related; type="application/dicom"; '
                                         "transfer-syntax=*"}, timeout=60)
        assert r.status_code == 200, r.text
        (part,) = split(r)
        out[sop] = hashlib.sha256(part.body).hexdigest()
    return out


def set_files(set_dir: Path) -> dict[str, Path]:
    return {p.relative_to(set_dir).as_posix(): p for p in set_dir.rglob("*") if p.is_file()}


# -------------------------------------------------------------------------------- the drill

def test_drill_backup_while_serving_destroy_restore_serve(gateway_factory, sim,
                                                          view: IndexView, database_url: str,
                                                          tmp_path: Path) -> None:
    needs_pg_client(database_url)
    extra = {}
    if not database_url.startswith("sqlite"):  # trust auth: the password is accepted, unused
        extra["DRIMBOX_DATABASE_URL"] = database_url.replace("postgres@", "postgres:drill-pw@")
    gw = start_gateway(gateway_factory, sim, **extra)
    study, files = write_study(tmp_path / "study")
    storescu(files, gw.dicom_port)
    (row,) = view.wait_done(study)
    made = drimbox(gw.env, "share", study, "--days", "7", "--qr-dir", str(tmp_path / "qr"))
    assert made.returncode == 0, made.stderr
    link = made.stdout.strip()
    with httpx.Client(timeout=30) as patient:
        assert patient.post(link, data={"birth_date": BIRTH}).status_code == 303
    ins = view.index.all_instances()
    instances = [(r.series_instance_uid, r.sop_instance_uid) for r in ins
                 if r.study_instance_uid == study]
    before_wado = wado_hashes(gw, study, instances)
    before_store = snapshot(gw.data_dir, database_url).storage
    before_rows = rows_of(database_url)
    assert before_rows["share_links"] and before_rows["audit_events"]
    assert len(view.index.all_instances()) == len(files)

    # The backup, while the gateway serves and receives another study (no INS: not published).
    other, other_files = write_study(tmp_path / "other", patient_id="IPP202", ins_oid=None,
                                     issuer="AUT-AFFECTATION", per_series=2)
    sender = threading.Thread(target=storescu, args=(other_files, gw.dicom_port))
    sender.start()
    dest = tmp_path / "backups"
    made = drimbox(gw.env, "backup", "create", str(dest), "--json")
    sender.join()
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    set_dir = Path(report["path"])
    assert report["instances"] >= len(files) and report["linked"] == 0
    assert report["backend"] == ("sqlite" if database_url.startswith("sqlite") else "postgresql")
    checked = drimbox(gw.env, "backup", "verify", str(dest))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1].startswith("sound:")
    # No secret in the backup's own files; no session row (PSC tokens, share sessions).
    for own in ("backup.json", "SHA256SUMS", "sources.tsv"):
        body = (set_dir / own).read_text()
        assert "drill-pw" not in body and "://" not in body and "127.0.0.1" not in body, own
    meta = json.loads((set_dir / "backup.json").read_text())
    assert meta["index"]["alembic_revision"] == head_revision()
    assert "viewer_sessions" in meta["index"]["rows_left_out"]
    gw.stop()

    # The disaster: the data directory and the index are gone.
    view.index.engine.dispose()
    shutil.rmtree(gw.data_dir)
    reset_index(database_url)

    restored = drimbox(gw.env, "backup", "restore", str(dest))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert restored.stdout.splitlines()[-1] == "done"
    engine = create_index_engine(database_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    check = drimbox(gw.env, "store", "check", "--verify", "--min-age", "0")
    assert check.returncode == 0 and "orphan" not in check.stdout, check.stdout

    gw.start()
    assert wado_hashes(gw, study, instances) == before_wado
    after_store = snapshot(gw.data_dir, database_url).storage
    assert {k: v for k, v in after_store.items() if k in before_store} == before_store
    after_rows = rows_of(database_url)
    for table, kept in before_rows.items():
        assert {pk: after_rows[table].get(pk) for pk in kept} == kept, table
    index = open_index(database_url)
    try:
        with index.read() as s:
            assert list(s.scalars(select(ViewerSession))) == []  # sessions: not backed up
    finally:
        index.engine.dispose()
    assert [r.id for r in view.rows(study)] == [row.id]
    shown = json.loads(drimbox(gw.env, "study", "show", study, "--json").stdout)
    assert shown["publication"]["state"] == "published"
    assert shown["publication"]["current_kos_uid"] == row.kos_uid
    assert [e.unique_id for e in of_study(dmp_entries(sim, ("Approved",)), study)] == [
        row.kos_uid]

    # The share link made before the backup opens its study, and only it.
    with httpx.Client(timeout=30) as patient:
        opened = patient.post(link, data={"birth_date": BIRTH})
        assert opened.status_code == 303
        assert opened.headers["location"].endswith(f"/viewer?StudyInstanceUIDs={study}")
        found = patient.get(f"{gw.url}/dicom-web/studies")
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [study]

    # Restoring again, onto what is now in use, is refused.
    again = drimbox(gw.env, "backup", "restore", str(set_dir))
    assert again.returncode == 2
    assert "is not empty" in again.stderr and str(gw.data_dir.resolve()) in again.stderr


# ------------------------------------------------------------- incremental, verify, refusals

def test_incremental_backup_verify_and_refused_restores(gateway_factory, database_url: str,
                                                        tmp_path: Path) -> None:
    needs_pg_client(database_url)
    gw = gateway_factory().start()
    _, first = write_study(tmp_path / "a", per_series=1)
    storescu(first, gw.dicom_port)
    dest = tmp_path / "backups"
    one = drimbox(gw.env, "backup", "create", str(dest), "--json")
    assert one.returncode == 0, one.stderr
    one = json.loads(one.stdout)
    assert (one["instances"], one["files"], one["copied"], one["linked"], one["base"]) == (
        3, 3, 3, 0, None)

    _, second = write_study(tmp_path / "b", per_series=1)
    storescu(second, gw.dicom_port)
    two = drimbox(gw.env, "backup", "create", str(dest), "--json")
    assert two.returncode == 0, two.stderr
    two = json.loads(two.stdout)
    assert (two["instances"], two["files"], two["copied"], two["linked"], two["base"]) == (
        6, 6, 3, 3, one["name"])
    set1, set2 = Path(one["path"]), Path(two["path"])
    files1, files2 = set_files(set1), set_files(set2)
    old = [r for r in files1 if r.startswith("files/storage/")]
    new = sorted(r for r in files2 if r.startswith("files/storage/") and r not in files1)
    assert len(old) == 3 and len(new) == 3
    for rel in old:  # unchanged files are the earlier backup's, not copies
        assert os.stat(files1[rel]).st_ino == os.stat(files2[rel]).st_ino
    listed = drimbox(gw.env, "backup", "list", str(dest)).stdout.splitlines()
    assert [line.split()[0] for line in listed] == [one["name"], two["name"]]
    assert drimbox(gw.env, "backup", "verify", str(dest), "--all").returncode == 0

    # verify names a damaged file and a missing one (both new in the second backup).
    damaged, missing = new[0], new[1]
    data = bytearray(files2[damaged].read_bytes())
    data[-1] ^= 0xFF
    files2[damaged].write_bytes(bytes(data))
    files2[missing].unlink()
    checked = drimbox(gw.env, "backup", "verify", str(set2))
    assert checked.returncode == 1
    problems = [line for line in checked.stdout.splitlines()
                if line.startswith(("damaged", "missing", "index"))]
    assert len(problems) == 2, checked.stdout
    assert problems[0].startswith(f"damaged  {damaged}: sha256 ")
    assert problems[1] == f"missing  {missing}"
    assert checked.stdout.splitlines()[-1].startswith("PROBLEMS: 2")
    assert drimbox(gw.env, "backup", "verify", str(set1)).returncode == 0

    # Refused, nothing written: the data directory in use; an empty one with the index in use.
    busy = drimbox(gw.env, "backup", "restore", str(set1))
    assert busy.returncode == 2 and "is not empty" in busy.stderr
    fresh = tmp_path / "fresh"
    env = dict(gw.env, DRIMBOX_DATA_DIR=str(fresh))
    busy = drimbox(env, "backup", "restore", str(set1))
    assert busy.returncode == 2, busy.stderr
    assert "not empty" in busy.stderr or "exists" in busy.stderr
    assert not fresh.exists()
    # A backup of a newer drimbox (an index revision this code does not know).
    future = tmp_path / "future"
    shutil.copytree(set1, future)
    meta = json.loads((future / "backup.json").read_text())
    meta["index"]["alembic_revision"] = "9999"
    (future / "backup.json").write_text(json.dumps(meta))
    newer = drimbox(env, "backup", "restore", str(future))
    assert newer.returncode == 2 and "newer drimbox" in newer.stderr
    gw.stop()

    # Into an empty directory and index: a damaged index copy stops the restore at once.
    reset_index(database_url)
    dump = future / json.loads((set1 / "backup.json").read_text())["index"]["file"]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    meta["index"]["alembic_revision"] = one["revision"]
    (future / "backup.json").write_text(json.dumps(meta))
    stopped = drimbox(env, "backup", "restore", str(future))
    assert stopped.returncode == 1 and "is damaged" in stopped.stderr, stopped.stderr
    assert not fresh.exists() or not any(fresh.iterdir())
    if database_url.startswith("sqlite"):
        assert not Path(make_url(database_url).database).exists()
    else:
        with psycopg.connect(make_url(database_url).set(drivername="postgresql")
                             .render_as_string(hide_password=False)) as c:
            assert c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                             ).fetchone() == (0,)

    # The damaged second backup: restored but for the two files, each named.
    partial = drimbox(env, "backup", "restore", str(set2))
    assert partial.returncode == 1
    assert f"damaged  {damaged}: sha256 " in partial.stdout
    assert f"missing  {missing}: not in the backup" in partial.stdout
    restored = sorted(p.relative_to(fresh).as_posix() for p in (fresh / "storage").rglob("*.dcm"))
    assert restored == sorted(r.removeprefix("files/") for r in files2
                              if r.startswith("files/storage/") and r not in (damaged, missing))
    check = drimbox(env, "store", "check")
    assert check.returncode == 1
    assert len([line for line in check.stdout.splitlines() if line.startswith("missing")]) == 2



# ------------------------------------------------------------ consistency under a live store

def test_a_file_replaced_during_the_backup_is_taken_from_a_new_index_copy(
        gateway_factory, database_url: str, tmp_path: Path, monkeypatch) -> None:
    """Files are copied after the index, as that copy names them. An instance replaced
    between the two (its old file removed, as a corrected re-send does) makes the backup copy
    the index again and take the new file; a file that stays gone fails the backup and
    leaves nothing behind."""
    from gateway.backup import create as create_module
    from gateway.backup.create import create_backup
    from gateway.backup.layout import BackupFailed
    from gateway.config import Settings
    from gateway.index.models import Instance

    needs_pg_client(database_url)
    gw = gateway_factory().start()
    _, sent = write_study(tmp_path / "a", per_series=1)
    storescu(sent, gw.dicom_port)
    gw.stop()
    settings = Settings(data_dir=gw.data_dir, database_url=database_url)
    index = open_index(database_url)
    with index.read() as s:
        victim = s.scalars(select(Instance).order_by(Instance.id)).first()
        old_key = victim.storage_key
    new_key = old_key.replace(".dcm", ".new.dcm")
    storage = gw.data_dir / "storage"
    real_take_copy = create_module.take_copy
    copies = []

    def replace_after_first_copy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        copy = real_take_copy(*args, **kwargs)
        copies.append(copy)
        if len(copies) == 1:  # the replacement commits, then the old file goes
            shutil.copyfile(storage / old_key, storage / new_key)
            with index.write() as s:
                s.get(Instance, victim.id).storage_key = new_key
            (storage / old_key).unlink()
        return copy

    monkeypatch.setattr(create_module, "take_copy", replace_after_first_copy)
    report = create_backup(settings, tmp_path / "backups")
    assert report.attempts == 2 and len(copies) == 2
    assert old_key in copies[0].storage_keys and new_key in copies[1].storage_keys
    names = set_files(Path(report.path))
    assert f"files/storage/{new_key}" in names and f"files/storage/{old_key}" not in names
    assert drimbox(gw.env, "backup", "verify", report.path).returncode == 0

    (storage / new_key).unlink()  # now a file the index names is gone for good
    monkeypatch.setattr(create_module, "take_copy", real_take_copy)
    with pytest.raises(BackupFailed, match="vanished"):
        create_backup(settings, tmp_path / "backups")
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == [".lock", report.name]
    index.engine.dispose()


def test_postgresql_client_is_checked_sqlite_needs_none(database_url: str,
                                                        tmp_path: Path) -> None:
    """pg_dump older than the server, or missing, is refused with what to do (exit status
    2); a SQLite index is copied without any PostgreSQL client."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(DRIMBOX_DATA_DIR=str(tmp_path / "data"), DRIMBOX_DATABASE_URL=database_url)
    assert drimbox(env, "db", "upgrade").returncode == 0
    (tmp_path / "data").mkdir(exist_ok=True)
    old = tmp_path / "old-client"
    old.mkdir()
    (old / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    (old / "pg_dump").chmod(0o755)
    made = drimbox(dict(env, DRIMBOX_PG_BIN_DIR=str(old)), "backup", "create",
                   str(tmp_path / "b1"))
    missing = drimbox(dict(env, DRIMBOX_PG_BIN_DIR=str(tmp_path / "nowhere")), "backup",
                      "create", str(tmp_path / "b2"))
    if database_url.startswith("sqlite"):
        assert made.returncode == 0 and missing.returncode == 0, made.stderr + missing.stderr
        return
    assert made.returncode == 2
    assert "pg_dump 9.6.24" in made.stderr and "older than the PostgreSQL" in made.stderr
    assert missing.returncode == 2 and "pg_dump not found in" in missing.stderr
    assert not list((tmp_path / "b1").glob("drimbox-*"))


def test_instances_evicted_to_the_pacs_are_backed_up_as_rows_only(
        gateway_factory, database_url: str, tmp_path: Path) -> None:
    """An instance whose file was evicted to the PACS (``evicted_at``; storage as a cache of
    the PACS) has a row and no file: the backup copies the row and none of its file, verify
    and restore find nothing missing, and the restored row is still evicted (the PACS gives
    the file back on the first read)."""
    needs_pg_client(database_url)
    gw = gateway_factory().start()
    _, files = write_study(tmp_path / "a", per_series=1)
    storescu(files, gw.dicom_port)
    gw.stop()
    index = open_index(gw.database_url)
    try:
        with index.write() as s:
            (evicted,) = s.scalars(select(Instance).limit(1)).all()
            evicted.evicted_at = datetime.now(UTC)
            key = evicted.storage_key
    finally:
        index.engine.dispose()
    FileStore(gw.data_dir).path_of(key).unlink()
    made = drimbox(gw.env, "backup", "create", str(tmp_path / "backups"), "--json")
    assert made.returncode == 0, made.stderr
    made = json.loads(made.stdout)
    assert made["instances"] == 2  # the files to copy: the evicted one has none
    assert drimbox(gw.env, "backup", "verify", made["path"]).returncode == 0
    shutil.rmtree(gw.data_dir)
    reset_index(gw.database_url)
    restored = drimbox(gw.env, "backup", "restore", made["path"])
    assert restored.returncode == 0, restored.stdout + restored.stderr
    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            states = {i.storage_key: i.evicted_at is not None for i in s.scalars(select(Instance))}
    finally:
        index.engine.dispose()
    assert len(states) == 3 and [k for k, evicted in states.items() if evicted] == [key]
