"""XDS metadata ↔ FHIR R4 resources, as IHE MHD 4.2 and the ANS PDSm guide map them (R4).

One mapping, used in both directions: :func:`document_reference` writes the
``DocumentReference`` of a :class:`~gateway.manifest.xds_metadata.DocumentEntry`, and
:func:`entry_from_document_reference` reads one back (the DMP simulator's FHIR face validates an
MHD submission by reading it into the same domain type and running the XDS checks on it).
:func:`submission_set_list` and :func:`submission_set_from_list` do the same for the
SubmissionSet ``List``. Resources are plain dicts here; :mod:`adapters.mhd.bundle` validates the
assembled Bundle with ``fhir.resources`` (R4B, identical to R4 for these resources).

=========================  ===============================================================
XDS DocumentEntry          DocumentReference (MHD Comprehensive / PDSm)
=========================  ===============================================================
uniqueId                   ``masterIdentifier`` = ``urn:ietf:rfc:3986`` | ``urn:oid:<uid>``
entryUUID                  ``identifier`` (use ``official``) = ``urn:uuid:...``
availabilityStatus         ``status``: Approved ``current``, Deprecated ``superseded``
patientId (INS^^^&OID^NH)  ``subject`` = ``Patient?identifier=urn:oid:<OID>|<INS>`` plus
                           ``subject.identifier`` (system ``urn:oid:1.2.250.1.213.1.4.8``,
                           ``.10`` / ``.11`` for test / demo INS)
classCode                  ``category``
typeCode                   ``type``
formatCode                 ``content.format``
confidentialityCode        ``securityLabel`` (``N`` in v3-Confidentiality, the DMP masking
                           flags in ``urn:oid:1.2.250.1.213.1.1.4.13``)
eventCodeList              ``context.event``
healthcareFacilityType     ``context.facilityType``
practiceSetting            ``context.practiceSetting``
serviceStart/StopTime      ``context.period``
referenceIdList (CXi)      ``context.related[].identifier``: ``type`` = the CXi.5 kind
                           (``urn:ihe:iti:xds:2016:studyInstanceUID``, ``...:2013:accession``,
                           ``...:2013:order``), ``system`` = ``urn:oid:<CXi.4>``
author (XCN / XON)         ``author`` → contained PractitionerRole (+ Practitioner,
                           Organization); the Organization is also the ``custodian`` (PDSm 1..1)
legalAuthenticator         ``authenticator`` → contained Practitioner
sourcePatientId / Info     ``context.sourcePatientInfo`` → contained Patient
mimeType, languageCode     ``content.attachment.contentType`` / ``.language``
creationTime, title        ``content.attachment.creation`` / ``.title``
hash (hex SHA-1), size     ``content.attachment.hash`` (base64 of the same digest), ``.size``
comments                   ``description``
=========================  ===============================================================

Code systems: a coding scheme OID becomes ``urn:oid:<OID>`` except where FHIR has a canonical
URL (:data:`SYSTEM_BY_OID`); reading accepts both. Not confirmed (the PDSm pages were read in
the search corpus, not the DMP's own FHIR guide): whether the DMP wants the ANS terminology
canonical URLs (``https://mos.esante.gouv.fr/NOS/...``) instead of ``urn:oid:`` (ANS examples use
both), and the exact PDSm profile URLs (:data:`PROFILE_DOCUMENT_REFERENCE` etc.).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from typing import Any

from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import (
    SCHEME_CONFIDENTIALITY_HL7,
    Author,
    Code,
    DocumentEntry,
    ReferenceId,
    SubmissionSet,
)

RFC3986 = "urn:ietf:rfc:3986"
PDSM = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition"
PROFILE_BUNDLE = f"{PDSM}/pdsm-comprehensive-provide-document-bundle"
PROFILE_DOCUMENT_REFERENCE = f"{PDSM}/pdsm-comprehensive-document-reference"
PROFILE_SUBMISSION_SET = f"{PDSM}/pdsm-submissionset-comprehensive"
MHD_EXT = "https://profiles.ihe.net/ITI/MHD/StructureDefinition"
EXT_DESIGNATION_TYPE = f"{MHD_EXT}/ihe-designationType"
EXT_SOURCE_ID = f"{MHD_EXT}/ihe-sourceId"
MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

#: Coding schemes that have a canonical FHIR system URL.
SYSTEM_BY_OID = {
    SCHEME_CONFIDENTIALITY_HL7: "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
    "2.16.840.1.113883.6.1": "http://loinc.org",
    "1.2.840.10008.2.16.4": "http://dicom.nema.org/resources/ontology/DCM",
}
#: Read side only: canonical URLs seen in the ANS examples for the schemes we use.
OID_BY_SYSTEM = {v: k for k, v in SYSTEM_BY_OID.items()} | {
    "https://mos.esante.gouv.fr/NOS/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument":
        "1.2.250.1.213.1.1.4.1",
    "https://mos.esante.gouv.fr/NOS/TRE_A05-TypeDocComplementaire/FHIR/TRE-A05-TypeDocComplementaire":
        "1.2.250.1.213.1.1.4.12",
}

STATUS_TO_FHIR = {"Approved": "current", "Deprecated": "superseded"}
STATUS_FROM_FHIR = {v: k for k, v in STATUS_TO_FHIR.items()}

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


# ------------------------------------------------------------------------------------ codes

def system_of(scheme: str) -> str:
    if scheme in SYSTEM_BY_OID:
        return SYSTEM_BY_OID[scheme]
    return f"urn:oid:{scheme}" if _OID.match(scheme) else scheme


def scheme_of(system: str) -> str:
    if system in OID_BY_SYSTEM:
        return OID_BY_SYSTEM[system]
    return system[len("urn:oid:"):] if system.startswith("urn:oid:") else system


def coding(code: Code) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system_of(code.scheme), "code": code.code}
    if code.display:
        out["display"] = code.display
    return out


def concept(code: Code) -> dict[str, Any]:
    return {"coding": [coding(code)]}


def code_from(value: dict[str, Any] | None) -> Code:
    """The first coding of a CodeableConcept (or a Coding) as a domain :class:`Code`; an empty
    Code when there is none (the checks then report the metadata as missing)."""
    if not value:
        return Code("", "", "")
    c = (value.get("coding") or [{}])[0] if "coding" in value else value
    return Code(str(c.get("code") or ""), scheme_of(str(c.get("system") or "")),
                str(c.get("display") or ""))


# ------------------------------------------------------------------------------------ times

def fhir_time(dtm: str) -> str | None:
    """XDS DTM (UTC, 4 to 14 digits) → FHIR date / dateTime."""
    if not dtm or not dtm.isdigit():
        return None
    if len(dtm) == 4:
        return dtm
    if len(dtm) == 6:
        return f"{dtm[:4]}-{dtm[4:6]}"
    if len(dtm) == 8:
        return f"{dtm[:4]}-{dtm[4:6]}-{dtm[6:8]}"
    d = (dtm + "00000000000000")[:14]
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}T{d[8:10]}:{d[10:12]}:{d[12:14]}Z"


def xds_time(value: str | None) -> str:
    """FHIR date / dateTime → XDS DTM (UTC); an unreadable value is returned unchanged so that
    the XDS check names it."""
    if not value:
        return ""
    v = str(value)
    if re.fullmatch(r"\d{4}(-\d{2}(-\d{2})?)?", v):
        return v.replace("-", "")
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return v
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S")


def hash_to_fhir(hex_sha1: str) -> str:
    """XDS hash (hex) → FHIR ``Attachment.hash`` (base64 of the same digest; MHD 4.2 §32)."""
    return base64.b64encode(bytes.fromhex(hex_sha1)).decode()


def hash_from_fhir(b64: str | None) -> str:
    if not b64:
        return ""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return str(b64)
    return raw.hex() if len(raw) == 20 else str(b64)


# ------------------------------------------------------------------- HL7 v2 names (XCN, XON)

def _authority(component: str) -> str:
    parts = component.split("&")
    return parts[1] if len(parts) > 1 else ""


#: XCN.10 name type code ↔ HumanName.use (the codes XDS authors use; others read as U).
_NAME_USE = {"D": "usual", "L": "official"}
_NAME_TYPE = {v: k for k, v in _NAME_USE.items()}


def _practitioner(rid: str, xcn: str) -> dict[str, Any]:
    """An XCN ``id^FAMILY^GIVEN^^^^^^&oid&ISO^D^^^IDNPS`` as a Practitioner."""
    c = (xcn.split("^") + [""] * 13)[:13]
    res: dict[str, Any] = {"resourceType": "Practitioner", "id": rid}
    if c[0]:
        ident: dict[str, Any] = {"value": c[0]}
        if _authority(c[8]):
            ident["system"] = f"urn:oid:{_authority(c[8])}"
        if c[12]:
            ident["type"] = {"coding": [{"system": V2_0203, "code": c[12]}]}
        res["identifier"] = [ident]
    name: dict[str, Any] = {}
    if c[9] in _NAME_USE:
        name["use"] = _NAME_USE[c[9]]
    if c[1]:
        name["family"] = c[1]
    if c[2]:
        name["given"] = [c[2]]
    if not c[0] and not c[1]:
        name["text"] = xcn
    if name:
        res["name"] = [name]
    return res


def _xcn(res: dict[str, Any]) -> str:
    ident = (res.get("identifier") or [{}])[0]
    name = (res.get("name") or [{}])[0]
    if name.get("text") and not ident.get("value"):
        return str(name["text"])
    oid = scheme_of(str(ident.get("system") or ""))
    kind = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code", "")
    given = (name.get("given") or [""])[0]
    aa = f"&{oid}&ISO" if oid else ""
    use = _NAME_TYPE.get(str(name.get("use", "")), "U")
    return f"{ident.get('value', '')}^{name.get('family', '')}^{given}^^^^^^{aa}^{use}^^^{kind}"


def _organization(rid: str, xon: str) -> dict[str, Any]:
    """An XON ``NAME^^^^^&oid&ISO^IDNST^^^id`` as an Organization."""
    c = (xon.split("^") + [""] * 10)[:10]
    res: dict[str, Any] = {"resourceType": "Organization", "id": rid}
    if c[0]:
        res["name"] = c[0]
    if c[9]:
        ident: dict[str, Any] = {"value": c[9]}
        if _authority(c[5]):
            ident["system"] = f"urn:oid:{_authority(c[5])}"
        if c[6]:
            ident["type"] = {"coding": [{"system": V2_0203, "code": c[6]}]}
        res["identifier"] = [ident]
    return res


def _xon(res: dict[str, Any]) -> str:
    name = str(res.get("name") or "")
    ident = (res.get("identifier") or [None])[0]
    if not ident:
        return name
    oid = scheme_of(str(ident.get("system") or ""))
    kind = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code", "")
    aa = f"&{oid}&ISO" if oid else ""
    return f"{name}^^^^^{aa}^{kind}^^^{ident.get('value', '')}"


def author_resources(author: Author, prefix: str = "author") -> list[dict[str, Any]]:
    """Contained resources for an XDS author: a PractitionerRole ``#<prefix>`` pointing at a
    Practitioner (authorPerson) and an Organization (authorInstitution)."""
    role: dict[str, Any] = {"resourceType": "PractitionerRole", "id": prefix}
    out = [role]
    if author.person:
        out.append(_practitioner(f"{prefix}-person", author.person))
        role["practitioner"] = {"reference": f"#{prefix}-person"}
    if author.institution:
        out.append(_organization(f"{prefix}-org", author.institution))
        role["organization"] = {"reference": f"#{prefix}-org"}
    if author.role:
        role["code"] = [{"text": author.role}]
    if author.specialty:
        role["specialty"] = [{"text": author.specialty}]
    return out


def _contained(resource: dict[str, Any], ref: dict[str, Any] | None) -> dict[str, Any] | None:
    r = (ref or {}).get("reference", "")
    if not r.startswith("#"):
        return None
    return next((c for c in resource.get("contained") or [] if c.get("id") == r[1:]), None)


def author_from(resource: dict[str, Any], ref: dict[str, Any] | None) -> Author:
    role = _contained(resource, ref)
    if role is None:
        return Author()
    if role.get("resourceType") == "Practitioner":
        return Author(person=_xcn(role))
    if role.get("resourceType") == "Organization":
        return Author(institution=_xon(role))
    person = _contained(resource, role.get("practitioner"))
    org = _contained(resource, role.get("organization"))
    return Author(person=_xcn(person) if person else "", institution=_xon(org) if org else "",
                  role=str(((role.get("code") or [{}])[0]).get("text") or ""),
                  specialty=str(((role.get("specialty") or [{}])[0]).get("text") or ""))


# ---------------------------------------------------------------------------------- patient

def patient_reference(patient_id: str) -> dict[str, Any]:
    """``subject`` for an XDS ``<INS>^^^&<OID>&ISO^NH``: a conditional reference by identifier
    plus the identifier itself."""
    value, _, rest = patient_id.partition("^^^&")
    oid = rest.split("&", 1)[0]
    system = f"urn:oid:{oid}"
    return {"reference": f"Patient?identifier={system}|{value}",
            "identifier": {"system": system, "value": value}}


def patient_id_from(resource: dict[str, Any], subject: dict[str, Any] | None) -> str:
    """``subject`` → ``<value>^^^&<OID>&ISO^NH`` (whatever the OID: the checks judge it)."""
    if not subject:
        return ""
    ident = subject.get("identifier")
    if not ident:
        contained = _contained(resource, subject)
        if contained is not None:
            ident = next((i for i in contained.get("identifier") or []
                          if str(i.get("system", "")).startswith("urn:oid:")), None)
    if not ident:
        m = re.match(r"^Patient\?identifier=([^|]+)\|(.+)$", subject.get("reference", ""))
        ident = {"system": m.group(1), "value": m.group(2)} if m else None
    if not ident or not ident.get("value"):
        return ""
    return f"{ident['value']}^^^&{scheme_of(str(ident.get('system') or ''))}&ISO^NH"


def ins_identifier(ins: Ins) -> dict[str, Any]:
    return {"system": f"urn:oid:{ins.oid}", "value": ins.matricule}


def _source_patient(entry: DocumentEntry) -> dict[str, Any]:
    pat: dict[str, Any] = {"resourceType": "Patient", "id": "patient"}
    value, _, rest = entry.source_patient_id.partition("^^^&")
    oid = rest.split("&", 1)[0]
    kind = rest.rsplit("^", 1)[-1] if "^" in rest else ""
    ident: dict[str, Any] = {"system": f"urn:oid:{oid}", "value": value}
    if kind:
        ident["type"] = {"coding": [{"system": V2_0203, "code": kind}]}
    pat["identifier"] = [ident]
    for item in entry.source_patient_info:
        field, _, v = item.partition("|")
        if field == "PID-5":
            parts = v.split("^")
            name: dict[str, Any] = {"text": v}
            if parts[0]:
                name["family"] = parts[0]
            if len(parts) > 1 and parts[1]:
                name["given"] = [parts[1]]
            pat["name"] = [name]
        elif field == "PID-7" and fhir_time(v[:8]):
            pat["birthDate"] = fhir_time(v[:8])
        elif field == "PID-8":
            pat["gender"] = {"M": "male", "F": "female", "O": "other"}.get(v, "unknown")
    return pat


def _source_patient_from(pat: dict[str, Any] | None) -> tuple[str, tuple[str, ...]]:
    if pat is None:
        return "", ()
    ident = (pat.get("identifier") or [{}])[0]
    kind = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code", "")
    oid = scheme_of(str(ident.get("system") or ""))
    spid = f"{ident.get('value', '')}^^^&{oid}&ISO^{kind}" if ident.get("value") else ""
    info = []
    name = (pat.get("name") or [None])[0]
    if name:
        info.append("PID-5|" + (name.get("text") or
                                f"{name.get('family', '')}^{(name.get('given') or [''])[0]}^^^^^L"))
    if pat.get("birthDate"):
        info.append("PID-7|" + str(pat["birthDate"]).replace("-", ""))
    if pat.get("gender"):
        info.append("PID-8|" + {"male": "M", "female": "F", "other": "O"}.get(pat["gender"], "U"))
    return spid, tuple(info)


# ------------------------------------------------------------------------ DocumentReference

def document_reference(entry: DocumentEntry, *, entry_uuid: str, attachment_url: str,
                       status: str = "current", indexed: str | None = None,
                       resource_id: str | None = None) -> dict[str, Any]:
    """The PDSm Comprehensive ``DocumentReference`` of ``entry``."""
    contained = [_source_patient(entry), *author_resources(entry.author)]
    dr: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "meta": {"profile": [PROFILE_DOCUMENT_REFERENCE]},
        "contained": contained,
        "masterIdentifier": {"use": "usual", "system": RFC3986,
                             "value": f"urn:oid:{entry.unique_id}"},
        "identifier": [{"use": "official", "system": RFC3986, "value": entry_uuid}],
        "status": status,
        "type": concept(entry.type_code),
        "category": [concept(entry.class_code)],
        "subject": patient_reference(entry.patient_id),
        "date": indexed or fhir_time(entry.creation_time),
        "author": [{"reference": "#author"}],
        "securityLabel": [concept(c) for c in entry.confidentiality],
        "content": [{
            "attachment": {
                "contentType": entry.mime_type,
                "language": entry.language,
                "url": attachment_url,
                "size": entry.size,
                "hash": hash_to_fhir(entry.hash_sha1),
                "title": entry.title,
                "creation": fhir_time(entry.creation_time),
            },
            "format": coding(entry.format_code),
        }],
        "context": {
            "event": [concept(c) for c in entry.event_codes],
            "facilityType": concept(entry.healthcare_facility_type),
            "practiceSetting": concept(entry.practice_setting),
            "sourcePatientInfo": {"reference": "#patient"},
            "related": [{"identifier": {
                "type": {"coding": [{"system": RFC3986, "code": r.kind}]},
                "system": f"urn:oid:{r.assigning_authority}",
                "value": r.value,
            }} for r in entry.reference_ids],
        },
    }
    if resource_id:
        dr["id"] = resource_id
    if entry.author.institution:
        dr["custodian"] = {"reference": "#author-org"}
    if entry.legal_authenticator:
        contained.append(_practitioner("legal-authenticator", entry.legal_authenticator))
        dr["authenticator"] = {"reference": "#legal-authenticator"}
    if entry.comments:
        dr["description"] = entry.comments
    period = {k: fhir_time(v) for k, v in (("start", entry.service_start),
                                           ("end", entry.service_stop)) if fhir_time(v)}
    if period:
        dr["context"]["period"] = period
    for key in ("event", "related"):
        if not dr["context"][key]:
            del dr["context"][key]
    return dr


def unique_id_from(identifier: dict[str, Any] | None) -> str:
    value = str((identifier or {}).get("value") or "")
    return value[len("urn:oid:"):] if value.startswith("urn:oid:") else value


def entry_uuid_from(resource: dict[str, Any]) -> str:
    for ident in resource.get("identifier") or []:
        if str(ident.get("value", "")).startswith("urn:uuid:") and ident.get("use") == "official":
            return str(ident["value"])
    return ""


def entry_from_document_reference(dr: dict[str, Any]) -> DocumentEntry:
    """The DocumentEntry a DocumentReference describes. Nothing is judged here: absent
    metadata comes back empty and :mod:`adapters.dmp.checks` says what is wrong with it."""
    content = (dr.get("content") or [{}])[0]
    att = content.get("attachment") or {}
    ctx = dr.get("context") or {}
    period = ctx.get("period") or {}
    spid, info = _source_patient_from(_contained(dr, ctx.get("sourcePatientInfo")))
    refs = []
    for rel in ctx.get("related") or []:
        ident = rel.get("identifier") or {}
        kind = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code", "")
        refs.append(ReferenceId(str(ident.get("value") or ""),
                                scheme_of(str(ident.get("system") or "")), str(kind)))
    auth = _contained(dr, dr.get("authenticator"))
    size = att.get("size")
    return DocumentEntry(
        unique_id=unique_id_from(dr.get("masterIdentifier")),
        patient_id=patient_id_from(dr, dr.get("subject")),
        source_patient_id=spid,
        source_patient_info=info,
        mime_type=str(att.get("contentType") or ""),
        class_code=code_from((dr.get("category") or [None])[0]),
        type_code=code_from(dr.get("type")),
        format_code=code_from(content.get("format")),
        confidentiality=tuple(code_from(c) for c in dr.get("securityLabel") or []),
        event_codes=tuple(code_from(c) for c in ctx.get("event") or []),
        healthcare_facility_type=code_from(ctx.get("facilityType")),
        practice_setting=code_from(ctx.get("practiceSetting")),
        language=str(att.get("language") or ""),
        creation_time=xds_time(att.get("creation")),
        service_start=xds_time(period.get("start")),
        service_stop=xds_time(period.get("end")),
        title=str(att.get("title") or ""),
        comments=str(dr.get("description") or ""),
        author=author_from(dr, (dr.get("author") or [None])[0]),
        legal_authenticator=_xcn(auth) if auth else "",
        reference_ids=tuple(refs),
        hash_sha1=hash_from_fhir(att.get("hash")),
        size=int(size) if isinstance(size, int) or str(size).isdigit() else -1,
    )


# ---------------------------------------------------------------------------- SubmissionSet

def submission_set_list(ss: SubmissionSet, patient: Ins, *, entry_uuid: str,
                        members: list[str]) -> dict[str, Any]:
    """The PDSm SubmissionSet ``List``: the patient (INS) and the author contained, the
    contentTypeCode as ``ihe-designationType``, sourceId as ``ihe-sourceId``."""
    patient_res = {"resourceType": "Patient", "id": "patient",
                   "identifier": [ins_identifier(patient)]}
    return {
        "resourceType": "List",
        "meta": {"profile": [PROFILE_SUBMISSION_SET]},
        "contained": [patient_res, *author_resources(ss.author)],
        "extension": [
            {"url": EXT_DESIGNATION_TYPE, "valueCodeableConcept": concept(ss.content_type)},
            {"url": EXT_SOURCE_ID,
             "valueIdentifier": {"system": RFC3986, "value": f"urn:oid:{ss.source_id}"}},
        ],
        "identifier": [
            {"use": "usual", "system": RFC3986, "value": f"urn:oid:{ss.unique_id}"},
            {"use": "official", "system": RFC3986, "value": entry_uuid},
        ],
        "status": "current",
        "mode": "working",
        "title": ss.title,
        "code": {"coding": [{"system": MHD_LIST_TYPES, "code": "submissionset"}]},
        "subject": {"reference": "#patient"},
        "date": fhir_time(ss.submission_time),
        "source": {"reference": "#author"},
        "entry": [{"item": {"reference": m}} for m in members],
    }


def submission_set_from_list(lst: dict[str, Any]) -> SubmissionSet:
    ext = {e.get("url"): e for e in lst.get("extension") or []}
    unique = next((i for i in lst.get("identifier") or [] if i.get("use") == "usual"), None)
    source = (ext.get(EXT_SOURCE_ID) or {}).get("valueIdentifier")
    return SubmissionSet(
        unique_id=unique_id_from(unique),
        source_id=unique_id_from(source),
        patient_id=patient_id_from(lst, lst.get("subject")),
        submission_time=xds_time(lst.get("date")),
        content_type=code_from((ext.get(EXT_DESIGNATION_TYPE) or {}).get("valueCodeableConcept")),
        author=author_from(lst, lst.get("source")),
        title=str(lst.get("title") or ""),
    )
