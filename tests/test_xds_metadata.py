"""XDS-I.b metadata of the KOS (R4): codes and values of the SPEC table, as domain objects."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace

import pytest
from test_kos import CREATED, PUBLISHER, facts

from gateway.manifest.facts import accession_issuer
from gateway.manifest.kos import build_kos
from gateway.manifest.xds_metadata import (
    Author,
    Code,
    MetadataError,
    PublicationContext,
    kos_document_entry,
    submission_set,
)

CTX = PublicationContext(
    healthcare_facility_type=Code("SA07", "1.2.250.1.71.4.2.4", "Cabinet individuel"),
    practice_setting=Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire"),
    author=Author(institution="CENTRE IMAGERIE TEST^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^300017985"),
    masking_flags=("INVISIBLE_PATIENT",),
    study_uid_authority="1.2.250.1.999.1.1",
)


def kos_and_bytes():  # noqa: ANN201
    kos = build_kos(facts(), PUBLISHER, sop_instance_uid="2.25.1", series_instance_uid="2.25.2",
                    created=CREATED)
    buf = io.BytesIO()
    kos.save_as(buf, enforce_file_format=True)
    return kos, buf.getvalue()


def test_document_entry_codes_of_the_r4_table() -> None:
    kos, data = kos_and_bytes()
    entry = kos_document_entry(facts(), data, str(kos.SOPInstanceUID), CREATED, CTX)
    assert entry.unique_id == "2.25.1"
    assert entry.mime_type == "application/dicom"
    assert (entry.class_code.code, entry.class_code.scheme) == ("31", "1.2.250.1.213.1.1.4.1")
    assert (entry.type_code.code, entry.type_code.scheme) == ("IMG-KOS", "1.2.250.1.213.1.1.4.12")
    assert (entry.format_code.code, entry.format_code.scheme) == (
        "1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1")
    assert [c.code for c in entry.confidentiality] == ["N", "INVISIBLE_PATIENT"]
    assert [c.code for c in entry.event_codes] == ["CT", "DOC"]
    assert entry.patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert entry.source_patient_id == "IPP101^^^&1.2.250.1.213.4.5.2.4&ISO^PI"
    assert entry.hash_sha1 == hashlib.sha1(data).hexdigest() and entry.size == len(data)
    assert [r.cxi() for r in entry.reference_ids] == [
        "ACN108^^^&1.2.250.1.213.4.5.2.5&ISO^urn:ihe:iti:xds:2013:accession",
        f"{facts().study_instance_uid}^^^&1.2.250.1.999.1.1&ISO^urn:ihe:iti:xds:2016:studyInstanceUID",
        "CMD108^^^&1.2.250.1.213.4.5.2.6&ISO^urn:ihe:iti:xds:2013:order",
    ]
    assert entry.creation_time == "20261123090000"  # UTC
    assert entry.service_start == "20261120101500"
    assert entry.language == "fr-FR"


def test_submission_set_carries_the_patient() -> None:
    kos, data = kos_and_bytes()
    entry = kos_document_entry(facts(), data, "2.25.1", CREATED, CTX)
    ss = submission_set(entry, "2.25.3", "1.2.250.1.999.1", CREATED,
                        Code("04", "1.2.250.1.213.2.2", "Hospitalisation de jour"))
    assert ss.patient_id == entry.patient_id and ss.submission_time == "20261123090000"


def test_missing_values_are_named() -> None:
    _, data = kos_and_bytes()
    with pytest.raises(MetadataError, match="accession"):
        kos_document_entry(replace(facts(), accession_number=""), data, "2.25.1", CREATED, CTX)
    with pytest.raises(MetadataError, match="masking flag"):
        kos_document_entry(facts(), data, "2.25.1", CREATED, replace(CTX, masking_flags=("X",)))


def test_accession_issuer_default_applies_only_when_the_instances_carry_none() -> None:
    """``accession_issuer_oid``: the centre's issuer for a study whose instances carry none
    (modalities rarely fill (0008,0051)); an issuer in the instances always wins, and a study
    without an accession number gets no issuer."""
    centre = "1.2.250.1.999.2"
    assert accession_issuer("ACN1", "", centre) == centre
    assert accession_issuer("ACN1", "1.2.250.1.213.4.5.2.5", centre) == "1.2.250.1.213.4.5.2.5"
    assert accession_issuer("", "", centre) == ""
    assert accession_issuer("ACN1", "", "") == ""  # no default: the publication refuses it
    _, data = kos_and_bytes()
    with pytest.raises(MetadataError, match="no issuer OID"):
        kos_document_entry(replace(facts(), accession_number_issuer=""), data, "2.25.1",
                           CREATED, CTX)
