"""Studies sent with storescu to ``drimbox serve``, then the
manifests shown by ``drimbox kos`` / ``drimbox manifest`` and the study state by ``drimbox study
show`` (R3, R4, R19), and study stability (item 5). Both index back-ends."""

from __future__ import annotations

import email
import json
import subprocess
import time
from pathlib import Path

import httpx
import launcher
import pytest
from dicom_factory import make_instance
from fhir.resources.R4B.bundle import Bundle
from peers import require_tool, storescu
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from gateway.index.engine import create_index_engine
from gateway.index.facts import PublicationPolicy, study_state
from gateway.index.store import InstanceIndex
from gateway.manifest.kos import KOS_SOP_CLASS_UID, referenced_instances, series_retrieve_urls

INS = "279035121518989"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
ROOT = "1.2.826.0.1.3680043.10.1257."


def write_study(folder: Path, *, patient_id: str = INS, ins_oid: str | None = INS_TEST_OID,
                issuer: str = "ASIP-SANTE-INS-NIR", per_series: int = 3) -> tuple[str, list[Path]]:
    """A study of three series (CT, MR in RLE, a PDF) with the INS as the samples carry it."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid(ROOT)
    paths = []
    kinds = [(CTImageStorage, ExplicitVRLittleEndian), (MRImageStorage, RLELossless),
             (EncapsulatedPDFStorage, ExplicitVRLittleEndian)]
    for s, (sop_class, ts) in enumerate(kinds):
        series = generate_uid(ROOT)
        for i in range(per_series if sop_class != EncapsulatedPDFStorage else 1):
            ds = make_instance(sop_class=sop_class, transfer_syntax=ts, study_uid=study,
                               series_uid=series, patient_id=patient_id, ins_oid=ins_oid, issuer=issuer,
                               accession="ACN108", instance_number=i + 1, series_number=s + 1,
                               seed=100 * s + i)
            accession_issuer = Dataset()
            accession_issuer.UniversalEntityID = "1.2.250.1.213.4.5.2.5"
            accession_issuer.UniversalEntityIDType = "ISO"
            ds.IssuerOfAccessionNumberSequence = [accession_issuer]
            path = folder / f"S{s}I{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return study, paths


def cli(gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return launcher.run(args, env=gateway.env, timeout=120)


@pytest.fixture
def publishing_gateway(gateway_factory):  # noqa: ANN001, ANN201
    gw = gateway_factory(
        DRIMBOX_REPOSITORY_OID="1.2.250.1.999.1.1",
        DRIMBOX_INSTITUTION_NAME="CENTRE IMAGERIE TEST",
        DRIMBOX_STRUCTURE_ID="300017985",
        DRIMBOX_HEALTHCARE_FACILITY_TYPE="SA07",
        DRIMBOX_STUDY_STABLE_SECONDS="1",
    )
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    return gw.start()


def stored_instances(gateway, study: str) -> set[str]:  # noqa: ANN001
    index = InstanceIndex(create_index_engine(gateway.database_url))
    try:
        return {r.sop_instance_uid for r in index.all_instances() if r.study_instance_uid == study}
    finally:
        index.engine.dispose()


def test_kos_of_a_stored_study(publishing_gateway, tmp_path: Path) -> None:
    gw = publishing_gateway
    study, files = write_study(tmp_path / "study")
    storescu(files, gw.dicom_port)

    out = tmp_path / "kos.dcm"
    proc = cli(gw, "kos", study, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    kos = dcmread(out)  # round-trips through pydicom
    assert kos.SOPClassUID == KOS_SOP_CLASS_UID and kos.StudyInstanceUID == study
    assert kos.PatientID == INS
    assert kos.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == INS_TEST_OID
    stored = stored_instances(gw, study)
    assert len(stored) == 7
    assert referenced_instances(kos) == stored  # exactly every stored instance

    report = subprocess.run([require_tool("dciodvfy"), str(out)], capture_output=True, text=True,
                            timeout=60)
    errors = [line for line in (report.stdout + report.stderr).splitlines()
              if line.startswith("Error")]
    assert not errors, report.stdout + report.stderr

    # Each RetrieveURL answers on our own WADO-RS with that series' instances.
    for series_uid, url in series_retrieve_urls(kos).items():
        assert url == f"{gw.url}/dicom-web/studies/{study}/series/{series_uid}"
        r = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                              "transfer-syntax=*"}, timeout=60)
        assert r.status_code == 200
        msg = email.message_from_bytes(
            b"Content-Type: " + r.headers["content-type"].encode() + b"\r\n\r\n" + r.content)
        parts = [p for p in msg.walk() if p.get_content_type() == "application/dicom"]
        expected = {str(ref.ReferencedSOPInstanceUID)
                    for item in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
                    if item.SeriesInstanceUID == series_uid for ref in item.ReferencedSOPSequence}
        assert len(parts) == len(expected)


def test_xds_metadata_and_fhir_twin(publishing_gateway, tmp_path: Path) -> None:
    gw = publishing_gateway
    study, files = write_study(tmp_path / "study")
    storescu(files, gw.dicom_port)

    proc = cli(gw, "manifest", study)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout)
    assert entry["class_code"]["code"] == "31" and entry["type_code"]["code"] == "IMG-KOS"
    assert entry["patient_id"] == f"{INS}^^^&{INS_TEST_OID}&ISO^NH"
    assert sorted(c["code"] for c in entry["event_codes"]) == ["CT", "DOC", "MR"]
    assert entry["reference_ids"][0]["value"] == "ACN108"

    out = tmp_path / "twin.json"
    proc = cli(gw, "manifest", study, "--fhir", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    bundle = Bundle.model_validate_json(out.read_text())
    imaging = next(e.resource for e in bundle.entry if e.resource.get_resource_type() == "ImagingStudy")
    assert {i.uid for s in imaging.series for i in s.instance} == stored_instances(gw, study)


def test_study_without_a_usable_ins_is_not_publishable(publishing_gateway, tmp_path: Path) -> None:
    """R19: no INS, or an INS that fails its key, marks the study not publishable, with the
    reason in the index and the CLI."""
    gw = publishing_gateway
    local, files_local = write_study(tmp_path / "local", patient_id="IPP101", ins_oid=None,
                                     issuer="AUT-AFFECTATION", per_series=1)
    bad_key, files_bad = write_study(tmp_path / "badkey", patient_id="279035121518988",
                                     per_series=1)
    storescu(files_local + files_bad, gw.dicom_port)

    for study, reason in ((local, "absent"), (bad_key, "key")):
        proc = cli(gw, "kos", study)
        assert proc.returncode == 1
        assert "not publishable" in proc.stderr and reason in proc.stderr
        shown = cli(gw, "study", "show", study, "--json")
        assert shown.returncode == 0, shown.stderr
        state = json.loads(shown.stdout)
        assert state["publishable"] is False and reason in state["reason"]
        assert state["ins_matricule"] == "" and state["ins_refusal"].startswith(reason)
    assert cli(gw, "kos", "1.2.3.4.5").returncode == 1  # unknown study


def _state(gw, study: str) -> dict:  # noqa: ANN001
    proc = cli(gw, "study", "show", study, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _wait_stable(gw, study: str, timeout: float = 30) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(gw, study)
        if state["stable"]:
            return state
        time.sleep(0.5)
    raise AssertionError(f"study {study} never became stable")


def test_study_becomes_stable_and_a_new_instance_reopens_it(gateway_factory,
                                                            tmp_path: Path) -> None:
    # Publishable needs what a publication needs: our repository OID and the facility type.
    gw = gateway_factory(DRIMBOX_STUDY_STABLE_SECONDS="4",
                         DRIMBOX_REPOSITORY_OID="1.2.250.1.999.1.1",
                         DRIMBOX_HEALTHCARE_FACILITY_TYPE="SA07").start()
    study, files = write_study(tmp_path / "study", per_series=1)
    storescu(files, gw.dicom_port)
    index = InstanceIndex(create_index_engine(gw.database_url))
    try:
        assert not study_state(index, study, PublicationPolicy()).stable  # still receiving
        first = _wait_stable(gw, study)
        assert first["publishable"] is True

        extra = make_instance(study_uid=study, patient_id=INS, ins_oid=INS_TEST_OID, seed=999,
                              instance_number=50)
        path = tmp_path / "extra.dcm"
        extra.save_as(path, enforce_file_format=True)
        storescu([path], gw.dicom_port)
        # Read at once, in process (well within the 4 s quiet period): reopened.
        assert not study_state(index, study, PublicationPolicy()).stable
    finally:
        index.engine.dispose()
    again = _wait_stable(gw, study)
    assert again["stable_at"] > first["stable_at"]
    assert again["instance_count"] == first["instance_count"] + 1
