"""The DRIM-M KOS (R3): content, INS, retrieve locations, dciodvfy, pydicom round trip."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
from pathlib import Path

import pytest
from peers import require_tool
from pydicom import dcmread

from gateway.identity.ins import OID_NIR_TEST, Ins
from gateway.manifest.facts import InstanceRef, PatientFacts, Publisher, SeriesFacts, StudyFacts
from gateway.manifest.kos import (
    KOS_SOP_CLASS_UID,
    ManifestError,
    build_kos,
    referenced_instances,
    series_retrieve_urls,
)

STUDY = "1.2.250.1.213.4.5.2.1.108"
PUBLISHER = Publisher(
    public_url="https://drimbox.example.fr",
    ae_title="DRIMBOX",
    repository_oid="1.2.250.1.999.1.1",
    institution_name="CENTRE IMAGERIE TEST",
    structure_id="300017985",
)


def facts(series_count: int = 3, per_series: int = 4) -> StudyFacts:
    series = []
    for s in range(series_count):
        modality = "CT" if s < 2 else "DOC"
        instances = tuple(
            InstanceRef(
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2" if modality == "CT"
                else "1.2.840.10008.5.1.4.1.1.104.1",
                sop_instance_uid=f"{STUDY}.{s + 1}.{i + 1}",
                instance_number=i + 1,
                rows=512 if modality == "CT" else None,
                columns=512 if modality == "CT" else None,
            )
            for i in range(per_series)
        )
        series.append(SeriesFacts(f"{STUDY}.{s + 1}", modality, s + 1, instances=instances))
    return StudyFacts(
        study_instance_uid=STUDY,
        patient=PatientFacts(Ins("279035121518989", OID_NIR_TEST), "PAT-TROIS^DOMINIQUE",
                             "19790328", "F", ipp="IPP101", ipp_issuer="1.2.250.1.213.4.5.2.4"),
        series=tuple(series),
        study_date="20261120",
        study_time="101500",
        study_description="SCANNER THORAX",
        study_id="1",
        referring_physician_name="MARTIN^CLAIRE",
        accession_number="ACN108",
        accession_number_issuer="1.2.250.1.213.4.5.2.5",
        placer_order_number="CMD108",
        placer_order_issuer="1.2.250.1.213.4.5.2.6",
    )


CREATED = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def build(**kw):  # noqa: ANN003, ANN201
    return build_kos(facts(**kw), PUBLISHER, sop_instance_uid="2.25.1", series_instance_uid="2.25.2",
                     created=CREATED)


def test_kos_references_exactly_every_instance() -> None:
    kos = build()
    expected = {i.sop_instance_uid for s in facts().series for i in s.instances}
    assert referenced_instances(kos) == expected
    content_refs = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                    for item in kos.ContentSequence if "ReferencedSOPSequence" in item}
    assert content_refs == expected
    kinds = {str(item.ValueType) for item in kos.ContentSequence}
    assert {"IMAGE", "COMPOSITE", "TEXT"} == kinds  # CT images, a PDF, the description


def test_kos_header_and_patient_ins() -> None:
    kos = build()
    assert kos.SOPClassUID == KOS_SOP_CLASS_UID and kos.Modality == "KO"
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113030"
    assert kos.ValueType == "CONTAINER"
    assert (kos.SeriesNumber, kos.InstanceNumber) == (59, 1)
    assert kos.PatientID == "279035121518989"
    assert kos.IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    assert kos.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == OID_NIR_TEST
    assert kos.OtherPatientIDsSequence[0].PatientID == "279035121518989"
    assert kos.InstitutionName == "CENTRE IMAGERIE TEST^^^^^^^^^300017985"
    assert kos.TimezoneOffsetFromUTC == "+0100"
    req = kos.ReferencedRequestSequence[0]
    assert req.AccessionNumber == "ACN108"
    assert req.IssuerOfAccessionNumberSequence[0].UniversalEntityID == "1.2.250.1.213.4.5.2.5"
    assert req.StudyInstanceUID == STUDY
    assert req.PlacerOrderNumberImagingServiceRequest == "CMD108"


def test_retrieve_locations_per_series() -> None:
    kos = build()
    urls = series_retrieve_urls(kos)
    assert urls == {f"{STUDY}.{s}": f"https://drimbox.example.fr/dicom-web/studies/{STUDY}/series/{STUDY}.{s}"
                    for s in (1, 2, 3)}
    for item in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence:
        assert item.RetrieveAETitle == "DRIMBOX"
        assert item.RetrieveLocationUID == "1.2.250.1.999.1.1"


def test_deterministic_except_uids_and_time() -> None:
    a, b = build(), build()
    buf_a, buf_b = io.BytesIO(), io.BytesIO()
    a.save_as(buf_a, enforce_file_format=True)
    b.save_as(buf_b, enforce_file_format=True)
    assert buf_a.getvalue() == buf_b.getvalue()


def test_round_trip_through_pydicom(tmp_path: Path) -> None:
    path = tmp_path / "kos.dcm"
    build().save_as(path, enforce_file_format=True)
    back = dcmread(path)
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert referenced_instances(back) == referenced_instances(build())


def test_dciodvfy_reports_no_error(tmp_path: Path) -> None:
    exe = require_tool("dciodvfy")
    path = tmp_path / "kos.dcm"
    build().save_as(path, enforce_file_format=True)
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert "KeyObjectSelectionDocument" in report
    assert not errors, report


def test_empty_study_is_refused() -> None:
    with pytest.raises(ManifestError):
        build(series_count=0)
