"""DICOMweb interoperability with a real Orthanc (its DICOMweb plugin as the client), against
a ``drimbox serve`` child process configured in Orthanc as the DICOMweb server ``drimbox``.

* Orthanc sends instances to us with STOW-RS (``/dicom-web/servers/drimbox/stow``).
* Orthanc lists our studies (QIDO-RS through ``/qido`` and ``/get``) and retrieves one into
  itself (WADO-RS through ``/retrieve``); its own REST API then has the instances.

SQLite only: Orthanc is the subject here, the index back-ends are covered elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dicom_factory import make_instance, to_bytes
from orthanc import Orthanc
from pydicom.uid import generate_uid

from gateway.index.engine import create_index_engine
from gateway.index.store import InstanceIndex


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # overrides conftest's two back-ends
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


@pytest.fixture
def orthanc(gateway, tmp_path: Path) -> Iterator[Orthanc]:
    pacs = Orthanc(tmp_path / "orthanc", dicomweb_servers={"drimbox": f"{gateway.url}/dicom-web/"})
    pacs.start()
    yield pacs
    pacs.stop()


def dataset_of(part10: bytes) -> bytes:
    group_len = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_len :]


def study_files(n: int = 3) -> tuple[str, list[bytes]]:
    study, series = generate_uid(), generate_uid()
    return study, [to_bytes(make_instance(study_uid=study, series_uid=series, instance_number=i,
                                          seed=i)) for i in range(1, n + 1)]


def stow_to_gateway(gateway, files: list[bytes]) -> None:
    body = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
                    for f in files) + b"--b--\r\n"
    r = httpx.post(f"{gateway.url}/dicom-web/studies", content=body, timeout=60,
                   headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                            "boundary=b"})
    assert r.status_code == 200, r.text


def test_private_orthanc_on_loopback_knows_drimbox(orthanc: Orthanc, tmp_path: Path) -> None:
    assert orthanc.get("/dicom-web/servers").json() == ["drimbox"]
    system = orthanc.get("/system").json()
    assert system["DicomAet"] == "ORTHANC" and system["DicomPort"] == orthanc.dicom_port
    assert orthanc.get("/plugins").json().count("dicom-web") == 1
    listening = orthanc.listening_addresses()
    assert {a.split(":")[1] for a in listening} >= {str(orthanc.http_port),
                                                    str(orthanc.dicom_port)}
    loopback = {"0100007F", "00000000000000000000000001000000"}
    assert {a.split(":")[0] for a in listening} <= loopback, listening
    assert (tmp_path / "orthanc" / "db").is_dir()  # its storage is the test's, not the system's


def test_orthanc_stows_to_drimbox(orthanc: Orthanc, gateway) -> None:
    study, files = study_files(4)
    ids = [orthanc.upload(f) for f in files]
    r = orthanc.post("/dicom-web/servers/drimbox/stow",
                     json={"Resources": ids, "Synchronous": True})
    assert r.status_code == 200, r.text

    index = InstanceIndex(create_index_engine(gateway.database_url))
    rows = {row.sop_instance_uid: row for row in index.all_instances()}
    assert len(rows) == len(files)
    for orthanc_id in ids:
        held = orthanc.get(f"/instances/{orthanc_id}/file").content
        uid = orthanc.get(f"/instances/{orthanc_id}/simplified-tags").json()["SOPInstanceUID"]
        row = rows[uid]
        assert row.study_instance_uid == study
        assert row.sha256 == hashlib.sha256(dataset_of(held)).hexdigest()
        stored = (gateway.data_dir / "storage" / row.storage_key).read_bytes()
        assert dataset_of(stored) == dataset_of(held)


def test_orthanc_lists_and_retrieves_from_drimbox(orthanc: Orthanc, gateway) -> None:
    study, files = study_files(3)
    stow_to_gateway(gateway, files)

    # QIDO-RS forwarded by Orthanc: our study is listed.
    r = orthanc.post("/dicom-web/servers/drimbox/qido", json={"Uri": "/studies"})
    assert r.status_code == 200, r.text
    # Orthanc's /qido answers in its own JSON flavour: each tag with Name, vr and a bare Value.
    listed = [s["0020000D"]["Value"] for s in r.json()]
    assert study in listed
    r = orthanc.post("/dicom-web/servers/drimbox/get",
                     json={"Uri": f"/studies/{study}/series"})
    assert r.status_code == 200, r.text
    assert len(r.json()) == 1

    # WADO-RS retrieve into Orthanc.
    r = orthanc.post("/dicom-web/servers/drimbox/retrieve",
                     json={"Resources": [{"Study": study}], "Synchronous": True})
    assert r.status_code == 200, r.text
    assert int(r.json()["ReceivedInstancesCount"]) == len(files)
    found = orthanc.post("/tools/find", json={"Level": "Instance", "Expand": False,
                                              "Query": {"StudyInstanceUID": study}}).json()
    assert len(found) == len(files)
    sent = {hashlib.sha256(dataset_of(f)).hexdigest() for f in files}
    held = {hashlib.sha256(dataset_of(orthanc.get(f"/instances/{i}/file").content)).hexdigest()
            for i in found}
    assert held == sent  # explicit VR little endian: nothing to transcode, same bytes
