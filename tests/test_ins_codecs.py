"""The INS in DICOM, HL7 v2, CDA and FHIR (R3, R19), read from the official DRIM-M samples
and written back; pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest
from fhir.resources.patient import Patient
from lxml import etree
from pydicom.dataset import Dataset
from samples import SAMPLES

from gateway.identity.codecs import (
    CDA_NS,
    ins_from_cda,
    ins_from_dicom,
    ins_from_fhir_identifiers,
    ins_from_pid3,
    ins_to_cda_id,
    ins_to_dicom,
    ins_to_fhir_identifier,
    ins_to_pid3,
)
from gateway.identity.ins import OID_INS_C, OID_NIR, OID_NIR_TEST, IdentityStatus, Ins

TEST_INS = "279035121518989"  # PAT-TROIS DOMINIQUE, INS-NIR test


def _hl7_samples() -> list[Path]:
    return sorted((SAMPLES / "hl7v2").rglob("*.hl7"))


def test_samples_are_present() -> None:
    assert _hl7_samples(), f"no HL7 samples under {SAMPLES}"


@pytest.mark.parametrize("path", _hl7_samples(), ids=lambda p: p.name)
def test_pid3_of_every_official_hl7_sample(path: Path) -> None:
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\r")
    pid = next(seg for seg in text.split("\r") if seg.startswith("PID|"))
    fields = pid.split("|")
    ids = ins_from_pid3(fields[3], status=fields[32] if len(fields) > 32 else None)
    first = fields[3].split("~")[0].split("^")
    assert ids.ins == Ins(first[0], first[3].split("&")[1]), ids.ins_refusal
    assert ids.ins.oid == OID_NIR_TEST
    if "^PI" in fields[3]:
        assert ids.ipp == "IPP101" and ids.ipp_issuer == "1.2.250.1.213.4.5.2.4"
    if len(fields) > 32 and fields[32]:
        assert ids.status is IdentityStatus.VALI


def test_pid3_round_trip_and_refusals() -> None:
    ins = Ins(TEST_INS, OID_NIR_TEST)
    field = ins_to_pid3(ins, "IPP101", "AUT-AFFECTATION", "1.2.250.1.213.4.5.2.4")
    assert field == ("279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS"
                     "~IPP101^^^AUT-AFFECTATION&1.2.250.1.213.4.5.2.4&ISO^PI")
    back = ins_from_pid3(field)
    assert back.ins == ins and back.ipp == "IPP101"
    bad_key = ins_from_pid3("279035121518988^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS")
    assert bad_key.ins is None and bad_key.ins_refusal.startswith("key")
    ins_c = ins_from_pid3(f"{TEST_INS}^^^ASIP-SANTE-INS-C&{OID_INS_C}&ISO^INS")
    assert ins_c.ins is None and "INS-C" in ins_c.ins_refusal
    none = ins_from_pid3("IPP101^^^AUT&1.2.3&ISO^PI")
    assert none.ins is None and none.ins_refusal.startswith("absent") and none.ipp == "IPP101"


def test_cda_record_target_of_the_official_sample() -> None:
    doc = (SAMPLES / "cda" / "drimbox-poc" / "IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml").read_bytes()
    ids = ins_from_cda(doc)
    assert ids.ins == Ins(TEST_INS, OID_NIR_TEST)
    assert (ids.ipp, ids.ipp_issuer) == ("1234567890121", "1.2.3.4.567.8.9.10")


def test_cda_id_written() -> None:
    el = ins_to_cda_id(Ins(TEST_INS, OID_NIR_TEST))
    assert el.tag == f"{{{CDA_NS}}}id"
    assert (el.get("root"), el.get("extension")) == (OID_NIR_TEST, TEST_INS)


def _kos_sample_patient() -> Dataset:
    """The patient module of the official KIN/KOS sample (informatif/KIN/Manifest_KOS.xml)."""
    tree = etree.parse(str(SAMPLES / "kos" / "informatif-KIN" / "Manifest_KOS.xml"))
    ds = Dataset()
    ds.PatientID = tree.findtext(".//element[@tag='0010,0020']")
    ds.IssuerOfPatientID = tree.findtext(".//element[@tag='0010,0021']")
    oid = tree.findtext(".//sequence[@tag='0010,0024']/item/element[@tag='0040,0032']")
    q = Dataset()
    q.UniversalEntityID = oid
    q.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [q]
    return ds


def test_dicom_reading_the_official_kos_patient_module() -> None:
    ids = ins_from_dicom(_kos_sample_patient())
    assert ids.ins == Ins(TEST_INS, OID_NIR_TEST)


def test_dicom_write_then_read() -> None:
    ds = Dataset()
    ins = Ins(TEST_INS, OID_NIR_TEST)
    ins_to_dicom(ds, ins, ipp="IPP101", ipp_issuer="1.2.250.1.213.4.5.2.4")
    assert ds.PatientID == TEST_INS and ds.IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == OID_NIR_TEST
    assert ds.OtherPatientIDsSequence[0].TypeOfPatientID == "TEXT"
    assert ins_from_dicom(ds).ins == ins


def test_dicom_ipp_main_with_ins_in_other_ids() -> None:
    ds = Dataset()
    ins_to_dicom(ds, Ins(TEST_INS, OID_NIR_TEST))
    ds.PatientID = "IPP101"
    ds.IssuerOfPatientID = "AUT-AFFECTATION"
    del ds.IssuerOfPatientIDQualifiersSequence
    ids = ins_from_dicom(ds)
    assert ids.ins == Ins(TEST_INS, OID_NIR_TEST)
    assert (ids.ipp, ids.ipp_issuer) == ("IPP101", "AUT-AFFECTATION")


@pytest.mark.parametrize(
    ("patient_id", "oid", "rule"),
    [(TEST_INS, None, "oid"), ("279035121518988", OID_NIR_TEST, "key"), (TEST_INS, OID_INS_C, "oid")],
)
def test_dicom_refusals_say_why(patient_id: str, oid: str | None, rule: str) -> None:
    ds = Dataset()
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "ASIP-SANTE-INS-NIR"
    if oid:
        q = Dataset()
        q.UniversalEntityID = oid
        q.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [q]
    ids = ins_from_dicom(ds)
    assert ids.ins is None and ids.ins_refusal.startswith(rule)


def test_fhir_identifier_validates_and_reads_back() -> None:
    ins = Ins(TEST_INS, OID_NIR)
    patient = Patient.model_validate({"resourceType": "Patient", "identifier": [
        ins_to_fhir_identifier(ins),
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                              "code": "PI"}]},
         "system": "urn:oid:1.2.250.1.213.4.5.2.4", "value": "IPP101"},
    ]})
    dumped = [i.model_dump(mode="json", exclude_none=True) for i in patient.identifier]
    ids = ins_from_fhir_identifiers(dumped)
    assert ids.ins == ins and ids.ipp == "IPP101"
    assert dumped[0]["use"] == "official"
    assert dumped[0]["type"]["coding"][0]["code"] == "INS-NIR"
