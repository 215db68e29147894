"""The FHIR twin: validates with fhir.resources (R4B) and references the same
instances as the KOS."""

from __future__ import annotations

import datetime as dt
import json

from fhir.resources.R4B.bundle import Bundle
from test_kos import CREATED, PUBLISHER, facts
from test_xds_metadata import CTX, kos_and_bytes

from gateway.manifest.fhir_twin import build_fhir_twin
from gateway.manifest.kos import referenced_instances
from gateway.manifest.xds_metadata import kos_document_entry


def twin() -> tuple[Bundle, set[str]]:
    kos, data = kos_and_bytes()
    entry = kos_document_entry(facts(), data, str(kos.SOPInstanceUID), CREATED, CTX)
    bundle = build_fhir_twin(facts(), PUBLISHER, str(kos.SOPInstanceUID), entry,
                             created=dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC))
    return bundle, referenced_instances(kos)


def test_bundle_validates_and_round_trips() -> None:
    bundle, _ = twin()
    again = Bundle.model_validate_json(bundle.model_dump_json())
    assert [e.resource.get_resource_type() for e in again.entry] == [
        "Patient", "Endpoint", "ImagingStudy", "DocumentReference"]


def test_imaging_study_references_the_kos_instances() -> None:
    bundle, kos_refs = twin()
    study = bundle.entry[2].resource
    fhir_refs = {i.uid for s in study.series for i in s.instance}
    assert fhir_refs == kos_refs
    assert study.numberOfInstances == len(kos_refs)
    endpoint = bundle.entry[1].resource
    assert endpoint.address == (f"https://drimbox.example.fr/dicom-web/studies/"
                                f"{facts().study_instance_uid}")
    assert study.endpoint[0].reference == bundle.entry[1].fullUrl


def test_patient_carries_the_ins_and_docref_the_kos() -> None:
    bundle, _ = twin()
    patient = bundle.entry[0].resource
    ins = patient.identifier[0]
    assert (ins.system, ins.value) == ("urn:oid:1.2.250.1.213.1.4.10", "279035121518989")
    assert patient.gender == "female" and str(patient.birthDate) == "1979-03-28"
    docref = bundle.entry[3].resource
    assert docref.masterIdentifier.value == "urn:oid:2.25.1"
    assert docref.content[0].format.code == "1.2.840.10008.5.1.4.1.1.88.59"
    assert {c.coding[0].code for c in docref.securityLabel} == {"N", "INVISIBLE_PATIENT"}


def test_deterministic() -> None:
    a, _ = twin()
    b, _ = twin()
    assert json.loads(a.model_dump_json()) == json.loads(b.model_dump_json())
