"""The FHIR twin of the manifest (IHE MADO style): Patient, Endpoint, ImagingStudy and a
DocumentReference for the KOS, as one ``collection`` Bundle.

FHIR release: **R4B** models of ``fhir.resources`` (8.x ships R5 by default and R4B as a
subpackage). The French profiles (FR Core), IHE MADO and the DMP's PDSm/MHD interfaces are
all R4 (4.0.1); Patient, Endpoint, ImagingStudy and DocumentReference are unchanged between R4
and R4B, so R4B validation is R4 validation for what we emit, whereas R5 changed
DocumentReference (``content.format``, ``context``) and ImagingStudy (``modality``).

The ImagingStudy references exactly the instances the KOS references; its ``endpoint`` is our
WADO-RS (``dicom-wado-rs``) at the study's URL. Identifiers: the study is
``urn:dicom:uid`` / ``urn:oid:<StudyInstanceUID>``, the KOS document ``urn:oid:<KOS UID>``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from gateway.identity.codecs import ins_to_fhir_identifier
from gateway.imaging.locations import study_url
from gateway.manifest.facts import Publisher, StudyFacts
from gateway.manifest.xds_metadata import DocumentEntry

if TYPE_CHECKING:
    from fhir.resources.R4B.bundle import Bundle

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SEX = {"M": "male", "F": "female", "O": "other"}


def _fhir_date(da: str) -> str | None:
    if len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return None


def _fhir_datetime(da: str, tm: str, tz: str = "+00:00") -> str | None:
    date = _fhir_date(da)
    if not date:
        return None
    t = (tm.split(".")[0] + "000000")[:6] if tm else "000000"
    return f"{date}T{t[:2]}:{t[2:4]}:{t[4:6]}{tz}"


def _name(pn: str) -> list[dict[str, Any]]:
    if not pn:
        return []
    parts = pn.split("=")[0].split("^")
    name: dict[str, Any] = {"use": "official"}
    if parts[0]:
        name["family"] = parts[0]
    given = [p for p in parts[1:3] if p]
    if given:
        name["given"] = given
    return [name]


def _urn(seed: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, seed)}"


def build_fhir_twin(
    facts: StudyFacts,
    publisher: Publisher,
    kos_sop_instance_uid: str,
    entry: DocumentEntry | None = None,
    created: dt.datetime | None = None,
) -> Bundle:
    """A validated R4B Bundle with Patient, Endpoint, ImagingStudy and the KOS DocumentReference.

    Full URLs are deterministic ``urn:uuid`` values derived from the UIDs, so the same facts
    give the same Bundle.
    """
    # fhir.resources only when a twin is built: its models cost ~0.2 s to import, which
    # every ``drimbox serve`` start would pay (the publication workflow imports this module).
    from fhir.resources.R4B.bundle import Bundle

    created = created or dt.datetime.now(dt.UTC)
    p = facts.patient
    patient_url = _urn(f"patient:{p.ins.oid}:{p.ins.matricule}")
    endpoint_url = _urn(f"endpoint:{publisher.public_url}:{facts.study_instance_uid}")
    study_url_urn = _urn(f"study:{facts.study_instance_uid}")
    docref_url = _urn(f"kos:{kos_sop_instance_uid}")

    identifiers = [ins_to_fhir_identifier(p.ins)]
    if p.ipp:
        ipp_ident: dict[str, Any] = {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "PI"}]},
            "value": p.ipp,
        }
        if p.ipp_issuer and all(x.isdigit() for x in p.ipp_issuer.split(".")):
            ipp_ident["system"] = f"urn:oid:{p.ipp_issuer}"
        identifiers.append(ipp_ident)
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers,
                               "name": _name(p.name)}
    if SEX.get(p.sex):
        patient["gender"] = SEX[p.sex]
    if _fhir_date(p.birth_date):
        patient["birthDate"] = _fhir_date(p.birth_date)

    endpoint = {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": study_url(publisher.public_url, facts.study_instance_uid),
    }

    series = []
    for s in facts.series:
        item: dict[str, Any] = {
            "uid": s.series_instance_uid,
            "modality": {"system": DCM, "code": s.modality or "OT"},
            "numberOfInstances": len(s.instances),
            "instance": [
                {"uid": i.sop_instance_uid,
                 "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i.sop_class_uid}"},
                 **({"number": i.instance_number} if i.instance_number is not None else {})}
                for i in s.instances
            ],
        }
        if s.series_number is not None:
            item["number"] = s.series_number
        if s.series_description:
            item["description"] = s.series_description
        series.append(item)
    imaging_study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{facts.study_instance_uid}"}],
        "subject": {"reference": patient_url},
        "endpoint": [{"reference": endpoint_url}],
        "modality": [{"system": DCM, "code": m} for m in facts.modalities],
        "numberOfSeries": len(facts.series),
        "numberOfInstances": facts.instance_count,
        "series": series,
    }
    if facts.accession_number:
        imaging_study["identifier"].append({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                 "code": "ACSN"}]},
            **({"system": f"urn:oid:{facts.accession_number_issuer}"}
               if facts.accession_number_issuer else {}),
            "value": facts.accession_number,
        })
    if facts.study_description:
        imaging_study["description"] = facts.study_description
    started = _fhir_datetime(facts.study_date, facts.study_time)
    if started:
        imaging_study["started"] = started

    docref: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{kos_sop_instance_uid}"},
        "type": {"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.12", "code": "IMG-KOS",
                             "display": "Reference d'objets d'un examen d'imagerie"}]},
        "category": [{"coding": [{"system": "urn:oid:1.2.250.1.213.1.1.4.1", "code": "31",
                                  "display": "Imagerie médicale"}]}],
        "subject": {"reference": patient_url},
        "date": created.isoformat(),
        "content": [{
            "attachment": {
                "contentType": "application/dicom",
                "url": study_url(publisher.public_url, facts.study_instance_uid),
                "title": "KOS",
                **({"size": entry.size} if entry else {}),
            },
            "format": {"system": "urn:oid:1.2.840.10008.2.6.1",
                       "code": "1.2.840.10008.5.1.4.1.1.88.59"},
        }],
        "context": {"related": [{"reference": study_url_urn}]},
    }
    if entry is not None:
        docref["securityLabel"] = [
            {"coding": [{"system": f"urn:oid:{c.scheme}", "code": c.code}]} for c in entry.confidentiality
        ]

    return Bundle.model_validate({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": patient_url, "resource": patient},
            {"fullUrl": endpoint_url, "resource": endpoint},
            {"fullUrl": study_url_urn, "resource": imaging_study},
            {"fullUrl": docref_url, "resource": docref},
        ],
    })
