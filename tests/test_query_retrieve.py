"""The Query/Retrieve SCP end to end (PS3.4 Annex C): dcmtk ``findscu``, ``movescu`` (to a
dcmtk ``storescp`` and to a private Orthanc), ``getscu``, and an Orthanc that knows the gateway
as a modality and queries and retrieves from it through its REST API. One gateway per index
back-end for the module; every answer is checked for its counts and contents.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import BACKENDS, Gateway, module_gateway
from dicom_factory import make_instance
from orthanc import Orthanc
from peers import free_port, require_tool, storescu
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, MRImageStorage

ROOT = "1.2.826.0.1.3680043.10.1257.77."
OID = "1.2.250.1.213.1.4.8"


def uid(*parts: int) -> str:
    return ROOT + ".".join(map(str, parts))


# patient id, name, study, date, accession, [(series, modality, sop class, n instances)]
STUDIES = [
    ("111111111111111", "DUPONT^JEAN", uid(1), "20260115", "ACC1",
     [(uid(1, 1), "CT", CTImageStorage, 2), (uid(1, 2), "MR", MRImageStorage, 1)]),
    ("111111111111111", "DUPONT^JEAN", uid(2), "20250610", "ACC2",
     [(uid(2, 1), "CT", CTImageStorage, 1)]),
    ("222222222222222", "MARTIN^LUC", uid(3), "20261231", "ACC3",
     [(uid(3, 1), "CT", CTImageStorage, 1)]),
]
EVICTED_STUDY = uid(3)  # the evicted test takes its file away: nobody else retrieves it


@dataclass
class Peers:
    gw: Gateway
    files: dict[str, Path]  # SOP Instance UID -> the file sent
    storescp_dir: Path
    storescp_port: int
    orthanc: Orthanc
    backend: str
    tmp: Path


def _write(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    files = {}
    for st, (pid, name, study, day, acc, series_list) in enumerate(STUDIES):
        for se, (series, modality, sop_class, count) in enumerate(series_list):
            for i in range(count):
                sop = uid(st + 1, se + 1, i + 1, 9)
                ds = make_instance(sop_class=sop_class, study_uid=study, series_uid=series,
                                   sop_uid=sop, patient_id=pid, issuer=OID, patient_name=name,
                                   accession=acc, modality=modality, series_number=se + 1,
                                   instance_number=i + 1, rows=16, cols=16,
                                   transfer_syntax=ImplicitVRLittleEndian)
                ds.StudyDate = day
                path = folder / f"{st}-{se}-{i}.dcm"
                ds.save_as(path, enforce_file_format=True)
                files[sop] = path
    return files


def _dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's dataset, without preamble and file meta."""
    raw = path.read_bytes()
    meta_len = int.from_bytes(raw[140:144], "little")  # (0002,0000) comes first
    return raw[144 + meta_len:]


@pytest.fixture(scope="module", params=BACKENDS)
def qr(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[Peers]:
    for tool in ("findscu", "movescu", "getscu", "storescp"):
        require_tool(tool)
    tmp = tmp_path_factory.mktemp(f"qr-{request.param}")
    files = _write(tmp / "in")
    orthanc = Orthanc(tmp / "orthanc")
    storescp_port = free_port()
    peers = [
        {"ae_title": "FINDSCU", "host": "127.0.0.1", "port": 104},
        {"ae_title": "GETSCU", "host": "127.0.0.1", "port": 104},
        {"ae_title": "STORESCP", "host": "127.0.0.1", "port": storescp_port},
        {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
        # Listed, but configured elsewhere: its AE title from loopback is refused.
        {"ae_title": "FARAWAY", "host": "192.0.2.1", "port": 104},
    ]
    with module_gateway(request.param, tmp, DRIMBOX_PEERS=json.dumps(peers)) as gw:
        storescu(list(files.values()), gw.dicom_port, aet="MODALITY", workdir=tmp)
        out = tmp / "storescp"
        out.mkdir()
        scp = subprocess.Popen(
            [require_tool("storescp"), "-aet", "STORESCP", "+B", "-od", str(out),
             "-dhl", str(storescp_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        orthanc.modalities = {"drimbox": ("DRIMBOX", "127.0.0.1", gw.dicom_port)}
        if request.param == "sqlite":  # Orthanc's side once is enough
            orthanc.start()
        try:
            yield Peers(gw, files, out, storescp_port, orthanc, request.param, tmp)
        finally:
            if orthanc.proc is not None:
                orthanc.stop()
            scp.terminate()
            scp.wait(10)


def _run(tool: str, args: list[str], port: int) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool(tool), "-d", "-to", "20", "-ta", "20", "-td", "20", *args,
           "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def find(qr: Peers, model: str, keys: dict[str, str], aet: str = "FINDSCU",
         ) -> tuple[list, str]:
    """findscu: the matches (datasets) and its log."""
    out = qr.tmp / f"find-{free_port()}"
    out.mkdir()
    args = [model, "-aet", aet, "-aec", "DRIMBOX", "-X", "-od", str(out)]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v else k]
    proc = _run("findscu", args, qr.gw.dicom_port)
    log = proc.stdout + proc.stderr
    matches = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return matches, log


def status_code(log: str) -> str:
    codes = re.findall(r"DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})", log)
    return codes[-1].upper() if codes else ""


# -- C-FIND ------------------------------------------------------------------------------


def test_find_study_root_each_level(qr: Peers) -> None:
    studies, log = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "PatientID": "1111*",
                                   "StudyInstanceUID": "", "StudyDate": "",
                                   "NumberOfStudyRelatedInstances": ""})
    assert status_code(log) == "0000", log
    got = {m.StudyInstanceUID: (m.StudyDate, int(m.NumberOfStudyRelatedInstances))
           for m in studies}
    assert got == {uid(1): ("20260115", 3), uid(2): ("20250610", 1)}
    first = studies[0]
    # Only the keys asked for, plus what PS3.4 requires in every response.
    assert {e.keyword for e in first} == {
        "SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle", "PatientID",
        "StudyInstanceUID", "StudyDate", "NumberOfStudyRelatedInstances"}
    assert first.RetrieveAETitle == "DRIMBOX" and first.QueryRetrieveLevel == "STUDY"

    series, log = find(qr, "-S", {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": uid(1),
                                  "SeriesInstanceUID": "", "Modality": "",
                                  "NumberOfSeriesRelatedInstances": ""})
    assert status_code(log) == "0000", log
    assert sorted((m.SeriesInstanceUID, m.Modality, int(m.NumberOfSeriesRelatedInstances))
                  for m in series) == [(uid(1, 1), "CT", 2), (uid(1, 2), "MR", 1)]

    images, log = find(qr, "-S", {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": uid(1),
                                  "SeriesInstanceUID": uid(1, 1), "SOPInstanceUID": "",
                                  "InstanceNumber": ""})
    assert status_code(log) == "0000", log
    assert [(m.SOPInstanceUID, int(m.InstanceNumber)) for m in images] == [
        (uid(1, 1, 1, 9), 1), (uid(1, 1, 2, 9), 2)]


def test_find_patient_root_each_level(qr: Peers) -> None:
    patients, log = find(qr, "-P", {"QueryRetrieveLevel": "PATIENT", "PatientName": "",
                                    "PatientID": "", "NumberOfPatientRelatedStudies": ""})
    assert status_code(log) == "0000", log
    assert sorted((str(m.PatientName), m.PatientID, int(m.NumberOfPatientRelatedStudies))
                  for m in patients) == [("DUPONT^JEAN", "111111111111111", 2),
                                         ("MARTIN^LUC", "222222222222222", 1)]
    studies, log = find(qr, "-P", {"QueryRetrieveLevel": "STUDY",
                                   "PatientID": "222222222222222", "StudyInstanceUID": ""})
    assert [m.StudyInstanceUID for m in studies] == [uid(3)], log
    series, log = find(qr, "-P", {"QueryRetrieveLevel": "SERIES",
                                  "PatientID": "111111111111111", "StudyInstanceUID": uid(2),
                                  "SeriesInstanceUID": ""})
    assert [m.SeriesInstanceUID for m in series] == [uid(2, 1)], log
    images, log = find(qr, "-P", {"QueryRetrieveLevel": "IMAGE",
                                  "PatientID": "111111111111111", "StudyInstanceUID": uid(1),
                                  "SeriesInstanceUID": uid(1, 2), "SOPInstanceUID": ""})
    assert [m.SOPInstanceUID for m in images] == [uid(1, 2, 1, 9)], log


def test_find_matching_rules(qr: Peers) -> None:
    # wildcard (PN, case-insensitive), date range, UID list, ModalitiesInStudy
    by_name, _ = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "PatientName": "dup?nt*",
                                 "StudyInstanceUID": ""})
    assert {m.StudyInstanceUID for m in by_name} == {uid(1), uid(2)}
    in_2026, _ = find(qr, "-S", {"QueryRetrieveLevel": "STUDY",
                                 "StudyDate": "20260101-20261231", "StudyInstanceUID": ""})
    assert {m.StudyInstanceUID for m in in_2026} == {uid(1), uid(3)}
    listed, _ = find(qr, "-S", {"QueryRetrieveLevel": "STUDY",
                                "StudyInstanceUID": f"{uid(2)}\\{uid(3)}"})
    assert {m.StudyInstanceUID for m in listed} == {uid(2), uid(3)}
    with_mr, _ = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "ModalitiesInStudy": "MR",
                                 "StudyInstanceUID": ""})
    assert [m.StudyInstanceUID for m in with_mr] == [uid(1)]
    # A key the index does not hold is returned zero-length, a sequence as an empty one.
    unindexed, log = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": uid(3),
                                     "PatientComments": "", "OtherPatientIDsSequence": ""})
    assert len(unindexed) == 1, log
    assert unindexed[0].PatientComments in ("", None)
    assert len(unindexed[0].OtherPatientIDsSequence) == 0


def test_find_refuses_bad_identifiers(qr: Peers) -> None:
    _, log = find(qr, "-S", {"QueryRetrieveLevel": "PATIENT", "PatientID": ""})
    assert status_code(log) == "A900", log  # no PATIENT level in Study Root
    _, log = find(qr, "-S", {"QueryRetrieveLevel": "FOO", "PatientID": ""})
    assert status_code(log) == "A900", log
    # Patient Root, hierarchical: STUDY level needs the patient's unique key.
    _, log = find(qr, "-P", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
    assert status_code(log) == "A900", log
    _, log = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "StudyDate": "2026-13-45"})
    assert status_code(log).startswith("C"), log


def test_a_caller_not_allowed_is_refused_and_audited(qr: Peers) -> None:
    matches, log = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
    assert matches and status_code(log) == "0000", log  # FINDSCU, from its host: allowed
    matches, log = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
                        aet="STRANGER")
    assert matches == [] and status_code(log) == "0124", log
    # An allowed AE title from an address not configured for it: refused too.
    matches, log = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
                        aet="FARAWAY")
    assert matches == [] and status_code(log) == "0124", log
    rows = _audit(qr, "dicom_find")
    assert ("STRANGER", "denied") in {(r[0], r[1]) for r in rows}
    assert ("FARAWAY", "denied") in {(r[0], r[1]) for r in rows}
    allowed = [r for r in rows if r[0] == "FINDSCU" and r[1] == "allowed"]
    assert allowed and all(r[3] == "127.0.0.1" for r in allowed)
    # Never a patient's identity in the trail.
    assert not any("DUPONT" in r[2] or "111111111111111" in r[2] for r in rows)


def _audit(qr: Peers, action: str) -> list[tuple[str, str, str, str]]:
    sql = ("SELECT subject, outcome, reason, client_address FROM audit_events "
           f"WHERE action = '{action}'")
    url = qr.gw.database_url
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return list(db.execute(sql))
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as db:
        return list(db.execute(sql))


# -- C-MOVE and C-GET --------------------------------------------------------------------


def test_move_to_storescp_sends_files_as_stored(qr: Peers) -> None:
    proc = _run("movescu", ["-S", "-aet", "FINDSCU", "-aec", "DRIMBOX", "-aem", "STORESCP",
                            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid(1)}"],
                qr.gw.dicom_port)
    log = proc.stdout + proc.stderr
    assert status_code(log) == "0000", log
    assert re.search(r"Completed Suboperations\s*:\s*3", log), log
    sent = {uid(1, 1, 1, 9), uid(1, 1, 2, 9), uid(1, 2, 1, 9)}
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
                for p in qr.storescp_dir.iterdir()}
    assert sent <= set(received)
    for sop in sent:
        assert _dataset_bytes(received[sop]) == _dataset_bytes(qr.files[sop])


def test_move_refuses_an_unknown_destination(qr: Peers) -> None:
    proc = _run("movescu", ["-S", "-aet", "FINDSCU", "-aec", "DRIMBOX", "-aem", "NOWHERE",
                            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid(2)}"],
                qr.gw.dicom_port)
    assert status_code(proc.stdout + proc.stderr) == "A801", proc.stderr


def test_get_sends_files_as_stored(qr: Peers) -> None:
    out = qr.tmp / "get"
    out.mkdir()
    proc = _run("getscu", ["-P", "-aet", "GETSCU", "-aec", "DRIMBOX", "-od", str(out),
                           "-k", "QueryRetrieveLevel=SERIES", "-k", "PatientID=111111111111111",
                           "-k", f"StudyInstanceUID={uid(1)}",
                           "-k", f"SeriesInstanceUID={uid(1, 1)}"], qr.gw.dicom_port)
    log = proc.stdout + proc.stderr
    assert status_code(log) == "0000", log
    got = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}
    assert set(got) == {uid(1, 1, 1, 9), uid(1, 1, 2, 9)}
    for sop, path in got.items():
        assert _dataset_bytes(path) == _dataset_bytes(qr.files[sop])
    # Not allowed: refused before anything is sent.
    proc = _run("getscu", ["-S", "-aet", "STRANGER", "-aec", "DRIMBOX", "-od", str(out),
                           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid(1)}"],
                qr.gw.dicom_port)
    assert status_code(proc.stdout + proc.stderr) == "0124", proc.stderr


def test_an_evicted_instance_is_a_failed_sub_operation(qr: Peers) -> None:
    """No PACS is configured: the evicted instance cannot come back; it is reported in the
    Failed SOP Instance UID List, the association and the gateway carry on."""
    sop = uid(3, 1, 1, 9)
    sql = f"UPDATE instances SET evicted_at = CURRENT_TIMESTAMP WHERE sop_instance_uid = '{sop}'"
    url = qr.gw.database_url
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute(sql)
    else:
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as db:
            db.execute(sql)
    proc = _run("movescu", ["-S", "-aet", "FINDSCU", "-aec", "DRIMBOX", "-aem", "STORESCP",
                            "-k", "QueryRetrieveLevel=STUDY",
                            "-k", f"StudyInstanceUID={EVICTED_STUDY}"], qr.gw.dicom_port)
    log = proc.stdout + proc.stderr
    assert status_code(log) == "A702", log
    assert re.search(r"Failed Suboperations\s*:\s*1", log), log
    assert sop in log  # (0008,0058) Failed SOP Instance UID List
    _, log = find(qr, "-S", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""})
    assert status_code(log) == "0000"


# -- Orthanc as a peer -------------------------------------------------------------------


@pytest.mark.parametrize("qr", ["sqlite"], indirect=True)  # the index is exercised above
def test_orthanc_finds_and_moves_from_the_gateway(qr: Peers) -> None:
    o = qr.orthanc
    r = o.post("/modalities/drimbox/query",
               json={"Level": "Study", "Query": {"PatientID": "111111111111111",
                                                 "StudyInstanceUID": ""}})
    assert r.status_code == 200, r.text
    query = r.json()["ID"]
    answers = o.get(f"/queries/{query}/answers?expand").json()
    assert sorted(a["0020,000d"]["Value"] for a in answers) == sorted([uid(1), uid(2)])
    # C-MOVE of one study to Orthanc itself (the gateway knows it as the ORTHANC peer).
    r = o.post(f"/queries/{query}/answers/0/retrieve",
               json={"TargetAet": "ORTHANC", "Synchronous": True})
    assert r.status_code == 200, r.text
    study = answers[0]["0020,000d"]["Value"]
    expected = 3 if study == uid(1) else 1
    found = o.post("/tools/find", json={"Level": "Instance",
                                        "Query": {"StudyInstanceUID": study}}).json()
    assert len(found) == expected
    # And the gateway's own C-MOVE to Orthanc, asked by movescu.
    proc = _run("movescu", ["-S", "-aet", "FINDSCU", "-aec", "DRIMBOX", "-aem", "ORTHANC",
                            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={uid(1)}",
                            "-k", f"SeriesInstanceUID={uid(1, 2)}"], qr.gw.dicom_port)
    assert status_code(proc.stdout + proc.stderr) == "0000", proc.stderr
    found = o.post("/tools/find", json={"Level": "Instance",
                                        "Query": {"SOPInstanceUID": uid(1, 2, 1, 9)}}).json()
    assert len(found) == 1

