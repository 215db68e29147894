"""R17, the import side: a retrieved study exported into the centre's PACS, a real private
Orthanc on loopback (tests/orthanc.py), by C-STORE, by STOW-RS (its DICOMweb plugin) and by its
REST API (pyorthanc). The study is a folder of Part 10 files made here, of several SOP classes
and transfer syntaxes (explicit and implicit VR, RLE, deflated, an encapsulated PDF); the
route reads it from the retrieval cache (a retrieval row of the session and its series
folders, as :mod:`gateway.consumer.retrieve` leaves them; the whole path from a real Source
is tests/test_consumer_end_to_end.py).

What is shown: every instance arrives; fetched back from Orthanc (``/instances/{id}/file``) each
is the one sent apart from the coerced identifiers (datasets equal without them, pixel data
bytes equal, and every other top-level element byte-identical); the INS stays in Other
Patient IDs Sequence with its OID; a PACS that refuses some instances gets a per-instance
report naming them, and a re-run completes the export without duplicates.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import launcher
import pytest
from dicom_factory import make_instance
from orthanc import Orthanc
from peers import free_port, require_tool
from psc_support import STAFF, PscSim, psc_env
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from adapters.pacs.export import (
    CStoreDestination,
    OrthancDestination,
    StowDestination,
    _Guarded,
)
from dicomweb.session_cookies import SESSION
from gateway.consumer.export import (
    COERCED_TAGS,
    COMPLETE,
    FAILED,
    NOT_SENT,
    PARTIAL,
    PRESENT,
    REFUSED,
    SENT,
    CachedInstance,
    ExportError,
    InstanceOutcome,
    LocalIdentity,
    Outgoing,
    coerce_dataset,
    element_spans,
    run_export,
)
from gateway.ingest.part10 import split_part10

INS, INS_OID = "279035121518989", "1.2.250.1.213.1.4.10"  # the ANS test INS (SPEC section 4)
OTHER_INS = "248092700000067"
IPP, IPP_ISSUER = "IPP-000123", "CHU-TEST&1.2.250.1.999.1.1.1&ISO"
IDENTITY = LocalIdentity(IPP, IPP_ISSUER, INS, INS_OID)
KOS_UID = "1.2.250.1.999.7.1"  # the KOS document unique id the cache files the study under
KINDS = [(CTImageStorage, ExplicitVRLittleEndian), (CTImageStorage, ImplicitVRLittleEndian),
         (MRImageStorage, RLELossless),
         (SecondaryCaptureImageStorage, DeflatedExplicitVRLittleEndian),
         (EncapsulatedPDFStorage, ExplicitVRLittleEndian)]


def write_study(folder: Path, ins: str = INS,
                kinds: list[tuple[str, str]] = KINDS) -> tuple[str, list[Path]]:
    """A cached study as the Source sent it: the INS as PatientID with its OID (R3)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    paths = []
    for n, (sop_class, ts) in enumerate(kinds, start=1):
        ds = make_instance(sop_class=sop_class, transfer_syntax=ts, study_uid=study,
                           series_uid=generate_uid(), patient_id=ins, ins_oid=INS_OID,
                           instance_number=n, series_number=n, seed=n)
        ds.add_new(0x00091010, "LO", "PRIVATE VALUE")  # a private element goes through untouched
        ds.add_new(0x00090010, "LO", "DRIMBOX TEST")
        path = folder / f"IM{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


def dataset_part(data: bytes) -> tuple[bytes, str]:
    part = split_part10(data)
    return data[part.dataset_offset:], part.transfer_syntax_uid


def without_coerced(ds: Dataset) -> Dataset:
    for tag in COERCED_TAGS:
        if tag in ds:
            del ds[tag]
    return ds


def assert_same_apart_from_identifiers(source: bytes, held: bytes) -> Dataset:
    """``held`` is ``source`` with the local identifiers: datasets equal without the coerced
    elements, pixel data bytes equal, other top-level elements byte-identical."""
    a, b = dcmread(io.BytesIO(source)), dcmread(io.BytesIO(held))
    assert b.SOPInstanceUID == a.SOPInstanceUID and b.StudyInstanceUID == a.StudyInstanceUID
    assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID
    for keyword in ("PixelData", "EncapsulatedDocument"):
        if keyword in a:
            assert b[keyword].value == a[keyword].value
    coerced = dcmread(io.BytesIO(held))
    assert without_coerced(b) == without_coerced(a)
    (raw_a, ts), (raw_b, _) = dataset_part(source), dataset_part(held)
    if ts != DeflatedExplicitVRLittleEndian:
        implicit = ts == ImplicitVRLittleEndian
        spans_a = [(t, raw_a[s:e]) for t, s, e in element_spans(raw_a, implicit, True)
                   if t not in COERCED_TAGS]
        spans_b = [(t, raw_b[s:e]) for t, s, e in element_spans(raw_b, implicit, True)
                   if t not in COERCED_TAGS]
        assert spans_a == spans_b
    return coerced


def assert_local_identity(ds: Dataset) -> None:
    assert ds.PatientID == IPP
    assert ds.IssuerOfPatientID == "CHU-TEST"
    (qualifier,) = ds.IssuerOfPatientIDQualifiersSequence
    assert (qualifier.UniversalEntityID, qualifier.UniversalEntityIDType) == (
        "1.2.250.1.999.1.1.1", "ISO")
    ins = [i for i in ds.OtherPatientIDsSequence if i.PatientID == INS]
    assert len(ins) == 1
    assert ins[0].IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    assert ins[0].IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == INS_OID
    assert ins[0].IssuerOfPatientIDQualifiersSequence[0].UniversalEntityIDType == "ISO"


# --- Without a peer: the coercion and the job's checks. ---


@pytest.mark.parametrize(("sop_class", "ts"), KINDS, ids=lambda v: str(v).rsplit(".", 2)[-1])
def test_coercion_changes_only_the_identifiers(tmp_path: Path, sop_class: str, ts: str) -> None:
    _study, (path,) = write_study(tmp_path, kinds=[(sop_class, ts)])
    source = path.read_bytes()
    raw, _ = dataset_part(source)
    held = source[: split_part10(source).dataset_offset] + coerce_dataset(raw, ts, IDENTITY)
    assert_local_identity(assert_same_apart_from_identifiers(source, held))


def test_coercion_keeps_the_sources_other_ids(tmp_path: Path) -> None:
    """The Source's own IPP (PatientID when the INS is elsewhere) moves to the other ids."""
    ds = make_instance(patient_id="SRC-42", issuer="CENTRE-SOURCE")
    item = Dataset()
    item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID = INS, "ASIP-SANTE-INS-NIR", "TEXT"
    q = Dataset()
    q.UniversalEntityID, q.UniversalEntityIDType = INS_OID, "ISO"
    item.IssuerOfPatientIDQualifiersSequence = [q]
    ds.OtherPatientIDsSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw, ts = dataset_part(buf.getvalue())
    held = buf.getvalue()[: split_part10(buf.getvalue()).dataset_offset] + coerce_dataset(
        raw, ts, LocalIdentity(IPP, "CHU-TEST", INS, INS_OID))
    out = dcmread(io.BytesIO(held))
    assert (out.PatientID, out.IssuerOfPatientID) == (IPP, "CHU-TEST")
    assert "IssuerOfPatientIDQualifiersSequence" not in out  # the INS OID is not the IPP's
    assert [(i.PatientID, i.get("IssuerOfPatientID")) for i in out.OtherPatientIDsSequence] == [
        (INS, "ASIP-SANTE-INS-NIR"), ("SRC-42", "CENTRE-SOURCE")]


class Recorder:
    """A destination that keeps what it is given (for the checks made before sending)."""

    name = "recorder"

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    def present(self, instances: list[CachedInstance]) -> set[str] | None:
        return None

    def send(self, instances, load):  # noqa: ANN001, ANN201
        for i in instances:
            self.sent.append(load(i))
            yield InstanceOutcome(i.sop_instance_uid, i.sop_class_uid, SENT)


def test_an_instance_of_another_patient_stops_the_job_before_anything_is_sent(
        tmp_path: Path) -> None:
    study, paths = write_study(tmp_path / "study")
    intruder = make_instance(study_uid=study, patient_id=OTHER_INS, ins_oid=INS_OID)
    intruder.save_as(tmp_path / "study" / "ZZ.dcm", enforce_file_format=True)
    dest = Recorder()
    report = run_export(sorted((tmp_path / "study").iterdir()), dest, IDENTITY)
    assert report.outcome == REFUSED and dest.sent == []
    assert "another patient's INS" in report.refused
    assert str(intruder.SOPInstanceUID) in report.refused
    assert OTHER_INS not in report.summary() and INS not in report.summary()
    # Without coercion nothing is asserted about the patient: all go as retrieved.
    report = run_export(sorted((tmp_path / "study").iterdir()), Recorder())
    assert report.outcome == COMPLETE and report.counts[SENT] == len(paths) + 1


def test_a_damaged_cached_file_stops_the_job_naming_it(tmp_path: Path) -> None:
    study, paths = write_study(tmp_path / "study")
    cut = paths[1].read_bytes()
    paths[1].write_bytes(cut[:200])  # cut inside the dataset
    (tmp_path / "study" / "notes.txt").write_bytes(b"not DICOM")
    dest = Recorder()
    report = run_export(sorted((tmp_path / "study").iterdir()), dest, IDENTITY, study)
    assert report.outcome == REFUSED and dest.sent == []
    assert report.refused.startswith(paths[1].name + ": "), report.refused  # the first bad one
    paths[1].write_bytes(cut)
    report = run_export(sorted((tmp_path / "study").iterdir()), dest, IDENTITY, study)
    assert report.refused.startswith("notes.txt: not a readable DICOM Part 10 file")


def test_the_local_identifier_must_be_dicom_text() -> None:
    with pytest.raises(ExportError, match="default repertoire"):
        LocalIdentity("IPP\\1", "X", INS, INS_OID)
    with pytest.raises(ExportError, match="default repertoire"):
        LocalIdentity("IPPé", "X", INS, INS_OID)
    with pytest.raises(ExportError, match="no INS"):
        LocalIdentity("IPP", "X", "", INS_OID)


# --- Against a real Orthanc. ---


class Pacs(Orthanc):
    """The test Orthanc, optionally refusing MR images (a Lua ReceivedInstanceFilter)."""

    refuse_mr = False
    extra: dict = {}

    def config(self) -> dict:
        config = {**super().config(), **self.extra}
        if self.refuse_mr:
            # REST and STOW-RS: a Lua filter refuses MR images (Orthanc answers "FilteredOut"
            # and a Failed SOP Sequence item). Its C-STORE SCP answers success to a filtered
            # instance, so over DIMSE the refusal is the one a PACS admin makes there: no RLE
            # transfer syntax (the MR image is stored in RLE and is never decompressed).
            script = self.workdir / "refuse-mr.lua"
            script.write_text("function ReceivedInstanceFilter(dicom, origin, info)\n"
                              "  return dicom.Modality ~= 'MR'\nend\n")
            config["LuaScripts"] = [str(script)]
            config["RleTransferSyntaxAccepted"] = False
        return config

    def instance_ids(self) -> list[str]:
        return self.get("/instances").json()

    def file_of(self, sop_uid: str) -> bytes:
        (found,) = self.post("/tools/lookup", content=sop_uid).json()
        return self.get(f"/instances/{found['ID']}/file").content


#: The PACS knows us (its admin listed our AE title): it answers our C-FIND.
US = {"drimbox": ("DRIMBOX", "127.0.0.1", 104)}


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    orthanc = Pacs(tmp_path / "orthanc", aet="PACS", modalities=US)
    orthanc.start()
    yield orthanc
    orthanc.stop()


def make_destination(kind: str, pacs: Orthanc) -> _Guarded:
    if kind == "cstore":
        return _Guarded(CStoreDestination(our_ae_title="DRIMBOX", ae_title="PACS",
                                          host="127.0.0.1", port=pacs.dicom_port, timeout=30))
    if kind == "stow":
        return _Guarded(StowDestination(f"{pacs.url}/dicom-web", timeout=30, batch_count=2))
    return _Guarded(OrthancDestination(pacs.url, timeout=30))


DESTINATIONS = ["cstore", "stow", "orthanc"]


@pytest.mark.peer
@pytest.mark.parametrize("kind", DESTINATIONS)
def test_export_arrives_whole_with_the_local_identifiers(pacs: Pacs, tmp_path: Path,
                                                         kind: str) -> None:
    study, paths = write_study(tmp_path / "cache" / KOS_UID)
    dest = make_destination(kind, pacs)
    report = run_export(paths, dest, IDENTITY, study)
    assert report.outcome == COMPLETE, report.to_json()
    assert report.counts == {SENT: len(paths), PRESENT: 0, FAILED: 0, NOT_SENT: 0}
    assert len(pacs.instance_ids()) == len(paths)
    for path in paths:
        source = path.read_bytes()
        held = pacs.file_of(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        assert_local_identity(assert_same_apart_from_identifiers(source, held))
    # The same export again: everything is already there, nothing is sent twice.
    again = run_export(paths, dest, IDENTITY, study)
    assert again.outcome == COMPLETE and again.counts[PRESENT] == len(paths), again.to_json()
    assert len(pacs.instance_ids()) == len(paths)
    dest.close()


@pytest.mark.peer
@pytest.mark.parametrize("kind", DESTINATIONS)
def test_a_pacs_refusing_some_instances_then_the_rerun_completes(tmp_path: Path,
                                                                 kind: str) -> None:
    study, paths = write_study(tmp_path / "cache" / KOS_UID)
    mr = str(dcmread(paths[2], stop_before_pixels=True).SOPInstanceUID)
    pacs = Pacs(tmp_path / "orthanc", aet="PACS", modalities=US)
    pacs.refuse_mr = True
    pacs.start()
    try:
        report = run_export(paths, make_destination(kind, pacs), IDENTITY, study)
        assert report.outcome == PARTIAL, report.to_json()
        assert [(o.sop_instance_uid, o.outcome) for o in report.failures] == [(mr, FAILED)]
        assert report.failures[0].reason  # the PACS's status or HTTP answer, named
        assert report.counts[SENT] == len(paths) - 1
        assert len(pacs.instance_ids()) == len(paths) - 1
        pacs.stop()
        pacs.refuse_mr = False  # the PACS admin lets MR in; same storage, same ports
        pacs.start()
        again = run_export(paths, make_destination(kind, pacs), IDENTITY, study)
        assert again.outcome == COMPLETE, again.to_json()
        assert again.counts == {SENT: 1, PRESENT: len(paths) - 1, FAILED: 0, NOT_SENT: 0}
        assert len(pacs.instance_ids()) == len(paths)  # no duplicates
        assert_local_identity(assert_same_apart_from_identifiers(paths[2].read_bytes(),
                                                                 pacs.file_of(mr)))
    finally:
        pacs.stop()


@pytest.mark.parametrize("kind", DESTINATIONS)
def test_an_unreachable_pacs_is_reported_and_nothing_is_half_done(tmp_path: Path,
                                                                  kind: str) -> None:
    study, paths = write_study(tmp_path / "cache" / KOS_UID)
    closed = Orthanc(tmp_path / "none")  # never started: its ports refuse connections
    closed.dicom_port = closed.http_port = free_port()
    report = run_export(paths, make_destination(kind, closed), IDENTITY, study)
    assert report.outcome in (REFUSED, PARTIAL)
    assert report.counts[SENT] == 0
    assert report.refused or report.stopped
    if report.outcome == PARTIAL:  # C-STORE: the query found nothing, the association failed
        assert report.counts[NOT_SENT] == len(paths)


# --- The route (a real ``drimbox serve`` with the consumer role, a real psc-sim) and the CLI. ---


@pytest.fixture
def consumer_with_pacs(tmp_path: Path, gateway_factory) -> Iterator[tuple]:  # noqa: ANN001
    pacs = Pacs(tmp_path / "orthanc", aet="PACS", modalities=US)
    pacs.start()
    sim = PscSim(tmp_path)
    gw = gateway_factory(**psc_env(sim, DRIMBOX_ROLES="consumer",
                                   DRIMBOX_EXPORT_DESTINATION="orthanc",
                                   DRIMBOX_EXPORT_ORTHANC_URL=pacs.url))
    sim.start(gw.url)
    gw.start()
    try:
        yield gw, pacs
    finally:
        sim.stop()
        pacs.stop()


PARTIAL_RETRIEVAL = "partial"


def cache_retrieval(gw, session: str, study: str, paths: list[Path],  # noqa: ANN001
                    state: str) -> int:
    """A retrieval of ``KOS_UID`` by the session whose cookie is ``session``, in the gateway's
    index and cache folder as the retriever leaves one (``<id>/<series>/<sop>.dcm``)."""
    from datetime import UTC, datetime

    from gateway.access.sessions import digest
    from gateway.consumer.cache import cache_root
    from gateway.index.engine import create_index_engine
    from gateway.index.models import ConsumerRetrieval
    from gateway.index.store import InstanceIndex

    index = InstanceIndex(create_index_engine(gw.database_url))
    now = datetime.now(UTC)
    try:
        with index.write() as s:
            row = ConsumerRetrieval(session_sha256=digest(session), subject=STAFF,
                                    kos_uid=KOS_UID, study_instance_uid=study,
                                    patient_ins=INS, state=state, series="[]",
                                    bytes=sum(p.stat().st_size for p in paths),
                                    created_at=now, updated_at=now, last_used_at=now)
            s.add(row)
            s.flush()
            rid = row.id
    finally:
        index.engine.dispose()
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        target = cache_root(gw.data_dir) / str(rid) / ds.SeriesInstanceUID
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{ds.SOPInstanceUID}.dcm").write_bytes(path.read_bytes())
    return rid


def _token(page: str) -> str:
    (token,) = re.findall(r"name=csrf value='([0-9a-f]{64})'", page)
    return token


@pytest.mark.peer
def test_route_exports_the_cached_study_with_the_contexts_ipp(consumer_with_pacs) -> None:
    from test_consumer_context import GOOD
    from test_consumer_entry import HOSPITAL, Browser, audit, login_through_psc

    gw, pacs = consumer_with_pacs
    study, paths = write_study(gw.data_dir / "made")
    url = f"{gw.url}/consumer/studies/{KOS_UID}/export"
    # No PSC session: nothing happens.
    assert httpx.post(url, data={"csrf": "x"}, timeout=30).status_code == 401
    r = httpx.get(url, timeout=30)
    assert r.status_code == 302 and r.headers["location"].startswith(f"{gw.url}/auth/login?next=")
    browser = Browser()
    try:
        assert browser.send("POST", f"{gw.url}/consumer/context",
                            data={**GOOD, "Situation": HOSPITAL}).status_code == 303
        login_through_psc(browser, gw, STAFF)
        assert browser.send("GET", f"{gw.url}/consumer").status_code == 200  # claims the context
        page = browser.send("GET", url)
        assert page.status_code == 200, page.text
        token = _token(page.text)
        # Without the session's token (a form on another site): refused, nothing sent.
        r = browser.send("POST", url, data={"csrf": "0" * 64})
        assert r.status_code == 403 and pacs.instance_ids() == []
        # Not retrieved by this session.
        r = browser.send("POST", url, data={"csrf": token},
                         headers={"Accept": "application/json"})
        assert r.status_code == 404
        # Retrieved, but a series is missing: nothing is sent (never half imported).
        session = browser.client.cookies.get(SESSION)
        partial = cache_retrieval(gw, session, study, paths[:2], PARTIAL_RETRIEVAL)
        r = browser.send("POST", url, data={"csrf": token},
                         headers={"Accept": "application/json"})
        assert r.status_code == 409 and "partial" in r.json()["refused"]
        assert pacs.instance_ids() == []
        # Retrieved whole (a later retrieval of the same KOS, as after a new attempt).
        cache_retrieval(gw, session, study, paths, COMPLETE)
        assert partial  # the earlier, partial one stays as it was
        # The export: every instance, the appel contextuel's IPP and issuer, the INS kept.
        r = browser.send("POST", url, data={"csrf": token}, headers={"Accept": "application/json"})
        assert r.status_code == 200, r.text
        report = r.json()
        assert (report["outcome"], report["destination"], report["study_uid"]) == (
            COMPLETE, "orthanc", study)
        assert report["counts"][SENT] == len(paths) and report["coerced"]
        held = dcmread(io.BytesIO(pacs.file_of(str(dcmread(paths[0]).SOPInstanceUID))))
        assert (held.PatientID, held.IssuerOfPatientID) == ("IPP-000123", "CH TEST")
        assert held.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.250.1.999.1.1"
        assert [i.PatientID for i in held.OtherPatientIDsSequence] == [INS]
        # Again, as an HTML page: everything already there, nothing twice.
        r = browser.send("POST", url, data={"csrf": token})
        assert r.status_code == 200 and "data-outcome='complete'" in r.text
        assert r.text.count("<tr data-outcome='already_present'>") == len(paths)
        assert len(pacs.instance_ids()) == len(paths)
    finally:
        browser.close()
    rows = audit(gw, "consumer_export")
    assert [(row.outcome, row.reason.split(";")[0]) for row in rows] == [
        ("denied", "csrf_token_mismatch"), ("denied", "not_cached"),
        ("denied", "retrieval_partial"),
        ("allowed", "orthanc: complete"), ("allowed", "orthanc: complete")]
    assert rows[3].patient_ins == INS and rows[3].kos_uid == KOS_UID
    assert rows[3].study_instance_uid == study and rows[3].subject == STAFF
    assert f"sent {len(paths)}" in rows[3].reason
    assert all("IPP-000123" not in row.reason for row in rows)


@pytest.mark.peer
def test_cli_exports_and_reports_by_exit_status(pacs: Pacs, tmp_path: Path) -> None:
    study, paths = write_study(tmp_path / "study")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(DRIMBOX_DATA_DIR=str(tmp_path / "data"),
               DRIMBOX_EXPORT_STOW_URL=f"{pacs.url}/dicom-web",
               DRIMBOX_EXPORT_AE_TITLE="PACS", DRIMBOX_EXPORT_HOST="127.0.0.1",
               DRIMBOX_EXPORT_PORT=str(pacs.dicom_port))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return launcher.run(["consumer", "export", study,
                               *args], env=env, timeout=120)

    wrong = run("--to", "stow", "--from", str(tmp_path / "study"), "--patient-id", IPP,
                "--ins", OTHER_INS)
    assert wrong.returncode == 1 and "another patient's INS" in wrong.stdout, wrong.stderr
    assert pacs.instance_ids() == []
    done = run("--to", "cstore", "--from", str(tmp_path / "study"), "--patient-id", IPP,
               "--issuer", IPP_ISSUER, "--ins", INS, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["counts"][SENT] == len(paths)
    again = run("--to", "stow", "--from", str(tmp_path / "study"), "--patient-id", IPP,
                "--issuer", IPP_ISSUER, "--ins", INS)
    assert again.returncode == 0 and f"already present {len(paths)}" in again.stdout
    assert len(pacs.instance_ids()) == len(paths)
    assert run("--to", "orthanc", "--from", str(tmp_path / "study")).returncode == 2  # no URL
    # Without --from: the latest complete retrieval in the cache, named by its KOS or study.
    missing = run("--to", "stow")
    assert missing.returncode == 1 and "no complete retrieval" in missing.stderr
    gw = SimpleNamespace(data_dir=tmp_path / "data",
                         database_url=f"sqlite:///{(tmp_path / 'data' / 'index.sqlite')}")
    cache_retrieval(gw, "a-session", study, paths, PARTIAL_RETRIEVAL)
    assert run("--to", "stow").returncode == 1  # a partial retrieval is never exported
    cache_retrieval(gw, "a-session", study, paths, COMPLETE)
    cached = launcher.run(["consumer", "export", KOS_UID,
                             "--to", "stow", "--json"], env=env,
                            timeout=120)
    assert cached.returncode == 0, cached.stdout + cached.stderr
    report = json.loads(cached.stdout)
    assert report["study_uid"] == study and report["counts"][PRESENT] == len(paths)


@pytest.mark.peer
def test_a_pacs_that_dies_mid_way_then_the_rerun_completes(tmp_path: Path) -> None:
    """dcmtk storescp as the PACS, killed (by the command it runs on each reception) once it
    has two files: the report says which instances are in, which one is unknown and which were
    not sent. storescp answers no C-FIND, so the re-run sends everything again, harmlessly
    (the same files, named by SOP Instance UID): no duplicate."""
    exe = require_tool("storescp")
    study, paths = write_study(tmp_path / "study")
    out = tmp_path / "pacs"
    out.mkdir()
    port = free_port()

    def storescp(*extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([exe, "-od", str(out), "-aet", "PACS", "+xa", *extra, str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):  # listening?
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc
            time.sleep(0.05)
        proc.kill()
        raise AssertionError("storescp did not listen")

    dest = _Guarded(CStoreDestination(our_ae_title="DRIMBOX", ae_title="PACS",
                                      host="127.0.0.1", port=port, timeout=20))
    dying = storescp("-xcr", 'n=$(ls #p | wc -l); if [ "$n" -ge 2 ]; then kill -9 $PPID; fi')
    try:
        report = run_export(paths, dest, IDENTITY, study)
        assert dying.wait(20) != 0
    finally:
        if dying.poll() is None:
            dying.kill()
    assert report.outcome == PARTIAL and report.stopped, report.to_json()
    counts = report.counts
    assert counts[SENT] >= 1 and counts[NOT_SENT] >= 1
    assert sum(counts.values()) == len(paths) and counts[PRESENT] == 0
    assert [o.outcome for o in report.outcomes] == sorted(
        (o.outcome for o in report.outcomes), key=[SENT, FAILED, NOT_SENT].index)
    assert len(list(out.iterdir())) < len(paths)
    healthy = storescp()
    try:
        again = run_export(paths, dest, IDENTITY, study)
    finally:
        healthy.terminate()
        healthy.wait(20)
    assert again.outcome == COMPLETE and again.counts[SENT] == len(paths), again.to_json()
    held = sorted(out.iterdir())
    assert len(held) == len(paths)  # one file per instance
    by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
    for f in held:
        source = by_uid.pop(f.name.split(".", 1)[1])
        assert_local_identity(assert_same_apart_from_identifiers(source.read_bytes(),
                                                                 f.read_bytes()))
    assert by_uid == {}


@pytest.mark.peer
def test_cstore_falls_back_to_little_endian_for_a_native_syntax_the_pacs_refuses(
        tmp_path: Path) -> None:
    """The PACS takes no deflated syntax: the deflated instance goes in Explicit VR Little
    Endian (same dataset, same pixel bytes); the others go as stored."""
    study, paths = write_study(tmp_path / "study")
    pacs = Pacs(tmp_path / "orthanc", aet="PACS", modalities=US)
    pacs.extra = {"DeflatedTransferSyntaxAccepted": False}
    pacs.start()
    try:
        report = run_export(paths, make_destination("cstore", pacs), IDENTITY, study)
        assert report.outcome == COMPLETE, report.to_json()
        deflated = str(dcmread(paths[3], stop_before_pixels=True).SOPInstanceUID)
        assert {o.sop_instance_uid: o.reason for o in report.outcomes}[deflated] == (
            "sent as Explicit VR Little Endian")
        held = dcmread(io.BytesIO(pacs.file_of(deflated)))
        source = dcmread(paths[3])
        assert held.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert held.PixelData == source.PixelData
        assert without_coerced(held) == without_coerced(source)
        assert_local_identity(dcmread(io.BytesIO(pacs.file_of(deflated))))
    finally:
        pacs.stop()


@pytest.mark.peer
def test_each_cstore_status_is_read(gateway, tmp_path: Path) -> None:  # noqa: ANN001
    """A real C-STORE SCP that refuses one instance with a status (our own gateway: Pixel Data
    cut short is 0xC004): that instance is failed with the status and the SCP's comment, the
    others are sent on the same association."""
    study, paths = write_study(tmp_path / "study", kinds=KINDS[:3])
    whole = paths[1].read_bytes()
    paths[1].write_bytes(whole[:-100])  # Pixel Data cut short (its header still says all)
    dest = _Guarded(CStoreDestination(our_ae_title="EXPORTER", ae_title=gateway.ae_title,
                                      host="127.0.0.1", port=gateway.dicom_port, timeout=30))
    report = run_export(paths, dest, None, study)  # as retrieved: no coercion
    assert report.outcome == PARTIAL, report.to_json()
    (failure,) = report.failures
    assert failure.sop_instance_uid == str(
        dcmread(io.BytesIO(whole), stop_before_pixels=True).SOPInstanceUID)
    assert failure.reason.startswith("C-STORE status 0xC004"), failure.reason
    assert report.counts[SENT] == 2
