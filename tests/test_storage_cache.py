"""Storage as a cache of the PACS: the retention task evicts instance files (rows kept), and
WADO-RS fetches an evicted study back from the centre's PACS by C-MOVE before answering.

Real peers: the gateway (``drimbox serve``) receives the study from dcmtk ``storescu``; a
private Orthanc on loopback (``tests/orthanc.py``) plays the centre's PACS, holds the same
study and knows the gateway as a C-MOVE destination; ``drimbox store evict`` / ``check`` /
``purge`` run as the real CLI; WADO-RS, QIDO-RS and metadata over real HTTP. Both index
back-ends. The in-process tests of what may be evicted and of the purges use the same
eviction and purge code the CLI and the serving process run.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import launcher
import pytest
from hl7_support import STUDY_G, study_g_images
from peers import free_port, storescu
from pydicom import dcmread
from sqlalchemy import select
from test_pacs_retrieve import centre_pacs

from gateway.config import load_settings
from gateway.index.engine import create_index_engine
from gateway.index.models import AuditEvent, Instance, Manifest, OutboxItem, Series, Study
from gateway.index.store import InstanceIndex
from gateway.ingest.ingestor import Incoming
from gateway.ingest.part10 import split_part10
from gateway.ingest.retention import evict, purge
from gateway.runtime import Runtime

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# -- helpers ---------------------------------------------------------------------------------


def _index(gw) -> InstanceIndex:  # noqa: ANN001
    return InstanceIndex(create_index_engine(gw.database_url))


def wait_stable(gw, study: str, timeout: float = 30) -> None:  # noqa: ANN001
    index = _index(gw)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with index.read() as s:
                row = s.execute(select(Study.stable_at, Study.updated_at)
                                .where(Study.study_instance_uid == study)).one_or_none()
            if row and row[0] is not None and row[0] >= row[1]:
                return
            time.sleep(0.2)
        raise AssertionError(f"study {study} not stable within {timeout} s")
    finally:
        index.engine.dispose()


def evicted_sops(gw, study: str) -> set[str]:  # noqa: ANN001
    index = _index(gw)
    try:
        with index.read() as s:
            return set(s.scalars(
                select(Instance.sop_instance_uid).join(Series).join(Study)
                .where(Study.study_instance_uid == study, Instance.evicted_at.is_not(None))))
    finally:
        index.engine.dispose()


def audit_rows(gw, action: str) -> list[tuple[str, str]]:  # noqa: ANN001
    index = _index(gw)
    try:
        with index.read() as s:
            return [tuple(r) for r in s.execute(
                select(AuditEvent.outcome, AuditEvent.reason)
                .where(AuditEvent.action == action).order_by(AuditEvent.id))]
    finally:
        index.engine.dispose()


def cli(gw, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    return launcher.run(args, env=gw.env, timeout=300)


def cli_json(gw, *args: str) -> tuple[int, dict]:  # noqa: ANN001
    proc = cli(gw, *args, "--json")
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def get(gw, path: str, accept: str = DICOM_ANY, timeout: float = 120) -> httpx.Response:  # noqa: ANN001
    return httpx.get(f"{gw.url}/dicom-web{path}", headers={"Accept": accept}, timeout=timeout)


def parts(response: httpx.Response) -> list[bytes]:
    ctype = response.headers["content-type"]
    raw = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + response.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert msg.is_multipart() and response.content.endswith(b"--\r\n")
    return [p.get_payload(decode=True) for p in msg.iter_parts()]


def hashes(response: httpx.Response) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of the Part 10 file WADO-RS sent."""
    assert response.status_code == 200, response.text[:500]
    return {str(dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID):
            hashlib.sha256(b).hexdigest() for b in parts(response)}


def stored_files(gw, study: str) -> list[Path]:  # noqa: ANN001
    return sorted((gw.data_dir / "storage" / study).rglob("*.dcm"))


@pytest.fixture
def cache(gateway_factory, tmp_path: Path) -> Iterator[tuple]:
    """A gateway that evicts everything settled (``storage_max_bytes`` = 1) and an Orthanc
    as its PACS, both holding exam G (4 instances, sent by storescu to the gateway)."""
    gw = gateway_factory(DRIMBOX_STUDY_STABLE_SECONDS="1", DRIMBOX_STORAGE_MAX_BYTES="1",
                         DRIMBOX_PACS_RESTORE_RETRY_AFTER="7")
    pacs = centre_pacs(gw, tmp_path / "orthanc")
    pacs.start()
    try:
        gw.start()
        files = study_g_images(tmp_path / "g", n=4)
        storescu(files, gw.dicom_port)
        ids = {str(dcmread(p).SOPInstanceUID): pacs.upload(p.read_bytes()) for p in files}
        wait_stable(gw, STUDY_G)
        yield gw, pacs, files, ids
    finally:
        pacs.stop()


# -- acceptance ------------------------------------------------------------------------------


def test_evicted_study_comes_back_byte_identical_from_the_pacs(cache) -> None:
    gw, pacs, files, ids = cache
    sops = set(ids)
    before = hashes(get(gw, f"/studies/{STUDY_G}"))
    assert set(before) == sops
    metadata_before = get(gw, f"/studies/{STUDY_G}/metadata", "application/dicom+json").json()

    # Dry run: names the study, changes nothing.
    code, dry = cli_json(gw, "store", "evict", "--dry-run")
    assert code == 0 and [e["study"] for e in dry["evicted"]] == [STUDY_G], dry
    assert len(stored_files(gw, STUDY_G)) == 4 and not evicted_sops(gw, STUDY_G)

    code, report = cli_json(gw, "store", "evict")
    assert code == 0, report
    assert [(e["study"], e["instances"]) for e in report["evicted"]] == [(STUDY_G, 4)]
    assert report["stored_bytes_after"] == 0
    assert stored_files(gw, STUDY_G) == [] and evicted_sops(gw, STUDY_G) == sops

    # `store check`: evicted, not missing; clean.
    code, check = cli_json(gw, "store", "check")
    assert code == 0 and check["clean"] and check["missing"] == [], check
    assert {e.split()[0] for e in check["evicted"]} == sops
    text = cli(gw, "store", "check").stdout
    assert "evicted" in text and "missing" not in text and "clean" in text

    # QIDO-RS and metadata need no file: answered from the index and the metadata cache.
    found = get(gw, f"/studies?StudyInstanceUID={STUDY_G}", "application/dicom+json").json()
    assert [s["0020000D"]["Value"][0] for s in found] == [STUDY_G]
    assert len(get(gw, f"/studies/{STUDY_G}/instances", "application/dicom+json").json()) == 4
    meta = get(gw, f"/studies/{STUDY_G}/metadata", "application/dicom+json")
    assert meta.status_code == 200 and meta.json() == metadata_before
    one = sorted(sops)[0]
    series = str(dcmread(files[0]).SeriesInstanceUID)
    inst_meta = get(gw, f"/studies/{STUDY_G}/series/{series}/instances/{one}/metadata",
                    "application/dicom+json")
    assert inst_meta.status_code == 200
    assert inst_meta.json() == [m for m in metadata_before
                                if m["00080018"]["Value"][0] == one]
    assert stored_files(gw, STUDY_G) == []  # none of that fetched anything back

    # The PACS down: a clear 503 with Retry-After, audited; nothing half-sent, nothing changed.
    pacs.stop()
    down = get(gw, f"/studies/{STUDY_G}")
    assert down.status_code == 503, down.text
    assert down.headers["retry-after"] == "7"
    assert "PACS" in down.json()["detail"] and "retry later" in down.json()["detail"]
    assert audit_rows(gw, "pacs_restore")[-1][0] == "failed"
    assert ("failed" in {o for o, _ in audit_rows(gw, "wado")})
    assert evicted_sops(gw, STUDY_G) == sops and stored_files(gw, STUDY_G) == []
    code, check = cli_json(gw, "store", "check")
    assert code == 0 and check["clean"] and len(check["evicted"]) == 4

    # The PACS back: the study comes back by C-MOVE, byte for byte what was sent before.
    pacs.start()
    after = hashes(get(gw, f"/studies/{STUDY_G}"))
    assert after == before
    assert evicted_sops(gw, STUDY_G) == set() and len(stored_files(gw, STUDY_G)) == 4
    assert audit_rows(gw, "pacs_restore")[-1] == ("allowed", "C-MOVE: 4 instance(s) restored")
    code, check = cli_json(gw, "store", "check", "--verify")
    assert code == 0 and check["clean"] and check["evicted"] == [], check
    index = _index(gw)
    try:
        with index.read() as s:  # rows kept as they were: source of the first copy, not the PACS
            assert set(s.scalars(select(Instance.source))) == {"STORESCU"}
            assert s.scalar(select(Study.restored_at)) is not None
    finally:
        index.engine.dispose()

    # The PACS now holds another object under one of the UIDs: refused, reported (502), the
    # instance stays evicted; the others come back.
    cli_json(gw, "store", "evict")
    victim = files[1]
    sop = str(dcmread(victim).SOPInstanceUID)
    assert pacs.get(f"/instances/{ids[sop]}").status_code == 200
    httpx.delete(f"{pacs.url}/instances/{ids[sop]}", timeout=30).raise_for_status()
    changed = dcmread(victim)
    changed.InstitutionName = "SOMEWHERE ELSE"
    buf = io.BytesIO()
    changed.save_as(buf, enforce_file_format=True)
    pacs.upload(buf.getvalue())
    bad = get(gw, f"/studies/{STUDY_G}")
    assert bad.status_code == 502, bad.text
    assert "did not come back from the PACS as the index recorded them" in bad.json()["detail"]
    assert "retry-after" not in bad.headers  # asking again would fetch the same object
    assert sop in evicted_sops(gw, STUDY_G)  # Orthanc may stop the move at the refused one
    assert audit_rows(gw, "pacs_restore")[-1][0] == "failed"
    code, check = cli_json(gw, "store", "check", "--verify")
    assert code == 0 and check["clean"] and check["missing"] == [], check
    assert sop in {e.split()[0] for e in check["evicted"]}
    assert "other content than the index recorded: refused" in gw.log()


def test_concurrent_requests_of_every_kind_share_one_c_move(cache) -> None:
    gw, _pacs, files, ids = cache
    series = str(dcmread(files[0]).SeriesInstanceUID)
    sop = str(dcmread(files[0]).SOPInstanceUID)
    before = hashes(get(gw, f"/studies/{STUDY_G}/series/{series}/instances/{sop}"))
    code, report = cli_json(gw, "store", "evict")
    assert code == 0 and evicted_sops(gw, STUDY_G) == set(ids)

    inst = f"/studies/{STUDY_G}/series/{series}/instances/{sop}"
    requests = [
        (f"/studies/{STUDY_G}", DICOM_ANY),
        (f"/studies/{STUDY_G}/series/{series}", DICOM_ANY),
        (inst, DICOM_ANY),
        (f"{inst}/frames/1", 'multipart/related; type="application/octet-stream"'),
        (f"{inst}/rendered", "image/png"),
        (f"/studies/{STUDY_G}/series/{series}/thumbnail", "image/jpeg"),
        (f"/studies/{STUDY_G}/rendered", 'multipart/related; type="image/png"'),
    ]
    answers: dict[str, httpx.Response] = {}
    start = threading.Barrier(len(requests))

    def ask(path: str, accept: str) -> None:
        start.wait()
        answers[path + accept] = get(gw, path, accept)

    threads = [threading.Thread(target=ask, args=r) for r in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for path, accept in requests:
        r = answers[path + accept]
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert r.content
    assert audit_rows(gw, "pacs_restore") == [("allowed", "C-MOVE: 4 instance(s) restored")]
    assert evicted_sops(gw, STUDY_G) == set()
    assert hashes(get(gw, inst)) == before


# -- what may be evicted; the purges (in process, the same code) ------------------------------


@pytest.fixture
def runtime(tmp_path: Path, database_url: str) -> Iterator[Runtime]:
    settings = load_settings(
        data_dir=tmp_path / "data", database_url=database_url, storage_max_bytes=1,
        pacs_ae_title="PACS", pacs_host="127.0.0.1", pacs_port=free_port(),
        dmp_registry_url="https://dmp.invalid/registry",
        dmp_repository_url="https://dmp.invalid/repository")
    rt = Runtime.build(settings)
    try:
        yield rt
    finally:
        rt.close()


def _ingest(rt: Runtime, files: list[Path]) -> None:
    for path in files:
        data = path.read_bytes()
        p10 = split_part10(data)
        rt.ingestor.ingest(Incoming(memoryview(data)[p10.dataset_offset:], p10.transfer_syntax_uid,
                                    "STORESCU"))


def test_only_settled_studies_are_evicted(runtime: Runtime, tmp_path: Path) -> None:
    """Never a study in flight (not stable), nor, with a DMP configured, one never published
    or whose publication waits in the outbox."""
    rt = runtime
    _ingest(rt, study_g_images(tmp_path / "g", n=2))

    def run() -> dict[str, str]:
        report = evict(rt.store, rt.index, rt.settings, keep_metadata=rt.metadata.study)
        assert not report.evicted or [e["study"] for e in report.evicted] == [STUDY_G]
        return {k["study"]: k["reason"] for k in report.kept} | {
            e["study"]: "evicted" for e in report.evicted}

    assert run() == {STUDY_G: "not stable (receiving)"}
    rt.index.mark_stable(0.0)
    assert run() == {STUDY_G: "publication pending or not yet published"}
    now = datetime.now(UTC)
    with rt.index.write() as s:
        s.add(Manifest(kos_uid="1.2.3.4.5", study_instance_uid=STUDY_G, created_at=now,
                       published_at=now))
        s.add(OutboxItem(kind="replace", study_instance_uid=STUDY_G, kos_uid="1.2.3.4.6",
                         ins_matricule="", ins_oid="", state="pending", created_at=now,
                         next_attempt_at=now))
    assert run() == {STUDY_G: "publication pending or not yet published"}
    with rt.index.write() as s:
        s.query(OutboxItem).update({"state": "done"})
    assert run() == {STUDY_G: "evicted"}
    assert not list((rt.store.storage_dir / STUDY_G).rglob("*.dcm"))
    # A new instance of the evicted study reopens it: its file is kept until it is settled.
    more = study_g_images(tmp_path / "g2", n=1)
    _ingest(rt, more)
    assert run() == {STUDY_G: "not stable (receiving)"}
    assert len(list((rt.store.storage_dir / STUDY_G).rglob("*.dcm"))) == 1


def test_eviction_needs_a_pacs(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match="pacs_ae_title"):
        load_settings(data_dir=tmp_path, storage_max_age_days=30)


def test_audit_and_rejected_purges_respect_their_retention(runtime: Runtime,
                                                           tmp_path: Path) -> None:
    rt = runtime
    settings = rt.settings.model_copy(update={"audit_retention_days": 30,
                                              "rejected_retention_days": 10})
    now = datetime.now(UTC)
    ages = {"old": timedelta(days=30, seconds=5), "edge": timedelta(days=30) - timedelta(
        minutes=1), "young": timedelta(days=2)}
    with rt.index.write() as s:
        for reason, age in ages.items():
            s.add(AuditEvent(recorded_at=now - age, principal_kind="staff", action="wado",
                             outcome="allowed", reason=reason))
    rejected = rt.store.root / "rejected"
    for name, age in (("1.2.3.1", timedelta(days=11)), ("1.2.3.2", timedelta(days=9))):
        folder = rejected / STUDY_G / name
        folder.mkdir(parents=True)
        for f in ("rejection-note.dcm", "1.2.3.9.dcm"):
            (folder / f).write_bytes(b"x")
            when = (now - age).timestamp()
            os.utime(folder / f, (when, when))

    dry = purge(rt.store, rt.index, settings, dry_run=True, now=now)
    assert (dry.audit_rows, dry.rejected_notes, dry.rejected_files) == (1, 1, 2)
    report = purge(rt.store, rt.index, settings, now=now)
    assert (report.audit_rows, report.rejected_notes, report.rejected_files) == (1, 1, 2)
    with rt.index.read() as s:
        left = set(s.scalars(select(AuditEvent.reason).where(AuditEvent.action == "wado")))
        purge_rows = list(s.scalars(select(AuditEvent.reason)
                                    .where(AuditEvent.action == "retention_purge")))
    assert left == {"edge", "young"}  # nothing younger than the retention is touched
    assert len(purge_rows) == 1 and purge_rows[0].startswith("1 audit rows")
    assert not (rejected / STUDY_G / "1.2.3.1").exists()
    assert (rejected / STUDY_G / "1.2.3.2" / "rejection-note.dcm").exists()
    # Again: nothing left to purge, nothing audited.
    again = purge(rt.store, rt.index, settings, now=now)
    assert (again.audit_rows, again.rejected_notes) == (0, 0)


def test_store_purge_command(gateway_factory) -> None:
    gw = gateway_factory(DRIMBOX_AUDIT_RETENTION_DAYS="30")
    proc = cli(gw, "store", "purge", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "would delete 0 audit rows" in proc.stdout
    code, report = cli_json(gw, "store", "purge")
    assert code == 0 and report["audit_rows"] == 0 and not report["dry_run"]
    proc = cli(gw, "store", "evict")
    assert proc.returncode == 0 and "eviction is off" in proc.stdout


def test_retention_task_of_the_serving_process_evicts(gateway_factory, tmp_path: Path) -> None:
    """Without the command: the periodic task of ``drimbox serve`` evicts a settled study."""
    gw = gateway_factory(DRIMBOX_STUDY_STABLE_SECONDS="1", DRIMBOX_STORAGE_MAX_BYTES="1",
                         DRIMBOX_RETENTION_INTERVAL="1")
    gw.extra_env.update(DRIMBOX_PACS_AE_TITLE="PACS", DRIMBOX_PACS_HOST="127.0.0.1",
                        DRIMBOX_PACS_PORT=str(free_port()))
    gw.start()
    files = study_g_images(tmp_path / "g", n=2)
    storescu(files, gw.dicom_port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(evicted_sops(gw, STUDY_G)) < 2:
        time.sleep(0.3)
    assert len(evicted_sops(gw, STUDY_G)) == 2, gw.log()
    assert stored_files(gw, STUDY_G) == []
