"""Domain metadata → ebRIM 3.0 (ITI TF-3 4.2): the ITI-41 ProvideAndRegisterDocumentSetRequest
(R4, R5, R8), the ITI-57 availability update and the ITI-62 removal.

The submission holds, with the symbolic ids of the ANS sample:

* ``SubmissionSet01`` — the ``rim:RegistryPackage`` (submissionTime, author, contentTypeCode,
  the SubmissionSet classification node, patientId / sourceId / uniqueId);
* ``DocumentKOS`` — the KOS ``rim:ExtrinsicObject`` (every slot, classification and external
  identifier of the R4 table; hash and size of the bytes sent);
* ``Signature01`` — the IHE DSG document (:mod:`adapters.dmp.dsg`) with the DSG codes of
  SPEC 2.2;
* associations: ``HasMember`` SubmissionSet → each document with ``SubmissionSetStatus=Original``,
  ``signs`` Signature01 → SubmissionSet, and ``RPLC`` DocumentKOS → the replaced entryUUID when
  the KOS replaces an earlier one (R8).

Children are written in the order of the ebRIM schema (Slot*, Name, Description,
Classification*, ExternalIdentifier*); the ANS sample puts the referenceIdList slot after the
classifications, which the schema does not allow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass

from lxml import etree

from adapters.dmp import dsg
from adapters.dmp import ns as N
from adapters.dmp.ns import LCM, RIM, XDSB, q
from adapters.dmp.soap import xop_include
from gateway.manifest.xds_metadata import (
    SCHEME_CONFIDENTIALITY_DMP,
    SCHEME_CONFIDENTIALITY_HL7,
    Author,
    Code,
    DocumentEntry,
    SubmissionSet,
)

SS_ID = "SubmissionSet01"
KOS_ID = "DocumentKOS"
SIG_ID = "Signature01"


def slot(parent: etree._Element, name: str, *values: str) -> etree._Element:
    s = etree.SubElement(parent, q(RIM, "Slot"), name=name)
    vl = etree.SubElement(s, q(RIM, "ValueList"))
    for v in values:
        etree.SubElement(vl, q(RIM, "Value")).text = v
    return s


def _localized(parent: etree._Element, tag: str, text: str) -> None:
    el = etree.SubElement(parent, q(RIM, tag))
    ls = etree.SubElement(el, q(RIM, "LocalizedString"), charset="UTF-8", value=text)
    ls.set("{http://www.w3.org/XML/1998/namespace}lang", "fr-FR")


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"


def classification(parent: etree._Element, scheme: str, obj: str, cid: str,
                   code: Code | None = None) -> etree._Element:
    c = etree.SubElement(parent, q(RIM, "Classification"), classificationScheme=scheme,
                         classifiedObject=obj, id=cid, nodeRepresentation=code.code if code else "")
    if code:
        slot(c, "codingScheme", code.scheme)
        # ITI TF-3 4.2.3.1.2: the display name is required; the code stands in for a missing one.
        _localized(c, "Name", code.display or code.code)
    return c


def author_classification(parent: etree._Element, scheme: str, obj: str, cid: str,
                          author: Author) -> None:
    c = classification(parent, scheme, obj, cid)
    for name, value in (("authorPerson", author.person), ("authorInstitution", author.institution),
                        ("authorRole", author.role), ("authorSpecialty", author.specialty)):
        if value:
            slot(c, name, value)


def external_id(parent: etree._Element, scheme: str, obj: str, eid: str, value: str,
                name: str) -> None:
    e = etree.SubElement(parent, q(RIM, "ExternalIdentifier"), id=eid,
                         identificationScheme=scheme, registryObject=obj, value=value)
    _localized(e, "Name", name)


def association(parent: etree._Element, kind: str, source: str, target: str,
                **slots: str) -> etree._Element:
    a = etree.SubElement(parent, q(RIM, "Association"), associationType=kind,
                         id=f"urn:uuid:{uuid.uuid4()}", sourceObject=source, targetObject=target)
    for k, v in slots.items():
        slot(a, k, v)
    return a


def registry_package(parent: etree._Element, ss: SubmissionSet, ids: _Ids) -> etree._Element:
    rp = etree.SubElement(parent, q(RIM, "RegistryPackage"), id=SS_ID)
    slot(rp, "submissionTime", ss.submission_time)
    _localized(rp, "Name", ss.title)
    author_classification(rp, N.SS_AUTHOR, SS_ID, ids("cl"), ss.author)
    classification(rp, N.SS_CONTENT_TYPE, SS_ID, ids("cl"), ss.content_type)
    etree.SubElement(rp, q(RIM, "Classification"), classificationNode=N.SUBMISSION_SET_NODE,
                     classifiedObject=SS_ID, id=ids("cl"))
    external_id(rp, N.SS_PATIENT_ID, SS_ID, ids("ei"), ss.patient_id, "XDSSubmissionSet.patientId")
    external_id(rp, N.SS_SOURCE_ID, SS_ID, ids("ei"), ss.source_id, "XDSSubmissionSet.sourceId")
    external_id(rp, N.SS_UNIQUE_ID, SS_ID, ids("ei"), ss.unique_id, "XDSSubmissionSet.uniqueId")
    return rp


def _extrinsic(parent: etree._Element, oid: str, e: DocumentEntry, ids: _Ids) -> etree._Element:
    eo = etree.SubElement(parent, q(RIM, "ExtrinsicObject"), id=oid, mimeType=e.mime_type,
                          objectType=N.STABLE_DOCUMENT_ENTRY)
    slot(eo, "creationTime", e.creation_time)
    slot(eo, "hash", e.hash_sha1)
    slot(eo, "languageCode", e.language)
    if e.legal_authenticator:
        slot(eo, "legalAuthenticator", e.legal_authenticator)
    if e.service_start:
        slot(eo, "serviceStartTime", e.service_start)
    if e.service_stop:
        slot(eo, "serviceStopTime", e.service_stop)
    slot(eo, "size", str(e.size))
    slot(eo, "sourcePatientId", e.source_patient_id)
    if e.source_patient_info:
        slot(eo, "sourcePatientInfo", *e.source_patient_info)
    if e.reference_ids:
        slot(eo, "urn:ihe:iti:xds:2013:referenceIdList", *(r.cxi() for r in e.reference_ids))
    _localized(eo, "Name", e.title)
    if e.comments:
        _localized(eo, "Description", e.comments)
    author_classification(eo, N.DE_AUTHOR, oid, ids("cl"), e.author)
    classification(eo, N.DE_CLASS, oid, ids("cl"), e.class_code)
    for c in e.confidentiality:
        classification(eo, N.DE_CONFIDENTIALITY, oid, ids("cl"), c)
    for c in e.event_codes:
        classification(eo, N.DE_EVENT, oid, ids("cl"), c)
    classification(eo, N.DE_FORMAT, oid, ids("cl"), e.format_code)
    classification(eo, N.DE_FACILITY, oid, ids("cl"), e.healthcare_facility_type)
    classification(eo, N.DE_PRACTICE, oid, ids("cl"), e.practice_setting)
    classification(eo, N.DE_TYPE, oid, ids("cl"), e.type_code)
    external_id(eo, N.DE_PATIENT_ID, oid, ids("ei"), e.patient_id, "XDSDocumentEntry.patientId")
    external_id(eo, N.DE_UNIQUE_ID, oid, ids("ei"), e.unique_id, "XDSDocumentEntry.uniqueId")
    return eo


def signature_entry(kos: DocumentEntry, unique_id: str, submitted: str, data: bytes) -> DocumentEntry:
    """The DocumentEntry of Signature01 (SPEC 2.2): DSG codes, hidden from PS and patient."""
    return DocumentEntry(
        unique_id=unique_id, patient_id=kos.patient_id, source_patient_id=kos.source_patient_id,
        source_patient_info=(), mime_type="text/xml",
        class_code=Code(N.DSG_CLASS, "URN", "Digital Signature"),
        type_code=Code(N.DSG_TYPE, "ASTM", "Full Document"),
        format_code=Code(N.DSG_FORMAT, "URN", "Default Signature Style"),
        confidentiality=(Code("N", SCHEME_CONFIDENTIALITY_HL7, "Normal"),
                         Code("MASQUE_PS", SCHEME_CONFIDENTIALITY_DMP,
                              "Masqué aux professionnels de santé"),
                         Code("INVISIBLE_PATIENT", SCHEME_CONFIDENTIALITY_DMP,
                              "Non visible par le patient")),
        event_codes=(Code(N.DSG_PURPOSE_SOURCE, N.DSG_PURPOSE_SCHEME, "Source"),),
        healthcare_facility_type=kos.healthcare_facility_type,
        practice_setting=kos.practice_setting, language="art", creation_time=submitted,
        service_start=submitted, service_stop=submitted, title="Source", comments="",
        author=kos.author, legal_authenticator=kos.legal_authenticator, reference_ids=(),
        hash_sha1=hashlib.sha1(data).hexdigest(),  # noqa: S324 - XDS mandates SHA-1
        size=len(data),
    )


@dataclass(frozen=True, slots=True)
class Submission:
    """An ITI-41 body and the MTOM parts it refers to."""

    body: etree._Element
    attachments: dict[str, bytes]
    signature_unique_id: str


@dataclass(frozen=True, slots=True)
class ExtraDocument:
    """Another document of the submission (the CR in an XDM export): its symbolic id, its
    DocumentEntry and its bytes; it is a member of the submission set and signed too."""

    symbolic_id: str
    entry: DocumentEntry
    data: bytes


@dataclass(frozen=True, slots=True)
class SignedObjects:
    """The ``lcm:SubmitObjectsRequest`` of a submission and the Signature01 bytes it lists."""

    request: etree._Element
    signature: bytes


def submit_objects(entry: DocumentEntry, ss: SubmissionSet, kos_bytes: bytes,
                   sign_key_pem: bytes, sign_cert_pem: bytes, signature_unique_id: str,
                   replaces_entry_uuid: str | None = None, now: dt.datetime | None = None,
                   extra: tuple[ExtraDocument, ...] = ()) -> SignedObjects:
    """The registry objects of a KOS submission (R4, R5; RPLC with ``replaces_entry_uuid``,
    R8): SubmissionSet01, DocumentKOS, the ``extra`` documents, Signature01 over all of them.
    ITI-41 sends it in a ProvideAndRegisterDocumentSetRequest; ITI-32 (XDM) writes it as
    METADATA.XML."""
    if entry.patient_id != ss.patient_id:
        raise ValueError("the submission set and the document are for different patients")
    ids = _Ids()
    sor = etree.Element(q(LCM, "SubmitObjectsRequest"), nsmap={"lcm": LCM, "rim": RIM})
    rol = etree.SubElement(sor, q(RIM, "RegistryObjectList"))
    rp = registry_package(rol, ss, ids)
    _extrinsic(rol, KOS_ID, entry, ids)
    for doc in extra:
        if doc.entry.patient_id != ss.patient_id:
            raise ValueError(f"{doc.symbolic_id} is for another patient")
        _extrinsic(rol, doc.symbolic_id, doc.entry, ids)
    signed = {entry.unique_id: kos_bytes} | {d.entry.unique_id: d.data for d in extra}
    sig_bytes = dsg.sign_submission(ss.unique_id, rp, signed, sign_key_pem, sign_cert_pem, now)
    _extrinsic(rol, SIG_ID, signature_entry(entry, signature_unique_id, ss.submission_time,
                                            sig_bytes), ids)
    for member in (KOS_ID, *(d.symbolic_id for d in extra), SIG_ID):
        association(rol, N.HAS_MEMBER, SS_ID, member, SubmissionSetStatus="Original")
    association(rol, N.SIGNS, SIG_ID, SS_ID)
    if replaces_entry_uuid:
        association(rol, N.RPLC, KOS_ID, replaces_entry_uuid)
    return SignedObjects(sor, sig_bytes)


def provide_and_register(entry: DocumentEntry, ss: SubmissionSet, kos_bytes: bytes,
                         sign_key_pem: bytes, sign_cert_pem: bytes, signature_unique_id: str,
                         replaces_entry_uuid: str | None = None,
                         now: dt.datetime | None = None) -> Submission:
    """The ProvideAndRegisterDocumentSetRequest of a KOS publication (R4, R5), or of its
    replacement (``replaces_entry_uuid``: RPLC, R8)."""
    objects = submit_objects(entry, ss, kos_bytes, sign_key_pem, sign_cert_pem,
                             signature_unique_id, replaces_entry_uuid, now)
    req = etree.Element(q(XDSB, "ProvideAndRegisterDocumentSetRequest"),
                        nsmap={"xdsb": XDSB, "lcm": LCM, "rim": RIM})
    req.append(objects.request)
    attachments = {}
    for doc_id, data in ((KOS_ID, kos_bytes), (SIG_ID, objects.signature)):
        cid = f"{doc_id}.{uuid.uuid4().hex}@drimbox"
        xop_include(etree.SubElement(req, q(XDSB, "Document"), id=doc_id), cid)
        attachments[cid] = data
    return Submission(req, attachments, signature_unique_id)


def update_availability(ss: SubmissionSet, entry_uuid: str, original: str, new: str) -> etree._Element:
    """ITI-57 SubmitObjectsRequest changing a DocumentEntry's availabilityStatus (SPEC 2.6)."""
    ids = _Ids()
    sor = etree.Element(q(LCM, "SubmitObjectsRequest"), nsmap={"lcm": LCM, "rim": RIM})
    rol = etree.SubElement(sor, q(RIM, "RegistryObjectList"))
    registry_package(rol, ss, ids)
    association(rol, N.UPDATE_AVAILABILITY, SS_ID, entry_uuid, OriginalStatus=original,
                NewStatus=new)
    return sor


def remove_objects(entry_uuids: list[str]) -> etree._Element:
    """ITI-62 RemoveObjectsRequest (deletion)."""
    req = etree.Element(q(LCM, "RemoveObjectsRequest"), nsmap={"lcm": LCM, "rim": RIM})
    lst = etree.SubElement(req, q(RIM, "ObjectRefList"))
    for u in entry_uuids:
        etree.SubElement(lst, q(RIM, "ObjectRef"), id=u)
    return req


# ------------------------------------------------------ DocumentEntry ↔ ExtrinsicObject (MHD)

IdSequence = _Ids
"""Symbolic ids (``cl1``, ``ei2``...) unique within one submission."""


def extrinsic_object(parent: etree._Element, oid: str, entry: DocumentEntry,
                     ids: _Ids | None = None) -> etree._Element:
    """The ``rim:ExtrinsicObject`` of ``entry`` under ``parent`` (the DMP simulator's FHIR
    face stores MHD submissions in this form, so that ITI-18 finds them). Pass the
    submission's ``ids`` when it holds other objects."""
    return _extrinsic(parent, oid, entry, ids or _Ids())


def _slot_values(el: etree._Element, name: str) -> list[str]:
    s = el.find(f"{q(RIM, 'Slot')}[@name='{name}']")
    return [] if s is None else [(v.text or "") for v in s.iter(q(RIM, "Value"))]


def _name_of(el: etree._Element, tag: str = "Name") -> str:
    ls = el.find(f"{q(RIM, tag)}/{q(RIM, 'LocalizedString')}")
    return ls.get("value", "") if ls is not None else ""


def entry_from_extrinsic(eo: etree._Element) -> DocumentEntry:
    """The inverse of :func:`extrinsic_object`: a registered ExtrinsicObject as a DocumentEntry
    (the simulator answers ITI-67 with it, whichever transaction registered the document)."""
    from gateway.manifest.xds_metadata import ReferenceId

    codes: dict[str, list[Code]] = {}
    author = Author()
    for c in eo.findall(q(RIM, "Classification")):
        scheme = c.get("classificationScheme", "")
        if scheme == N.DE_AUTHOR:
            author = Author(*(next(iter(_slot_values(c, n)), "") for n in
                              ("authorPerson", "authorInstitution", "authorRole",
                               "authorSpecialty")))
            continue
        codes.setdefault(scheme, []).append(
            Code(c.get("nodeRepresentation", ""), next(iter(_slot_values(c, "codingScheme")), ""),
                 _name_of(c)))
    ext = {e.get("identificationScheme"): e.get("value", "")
           for e in eo.findall(q(RIM, "ExternalIdentifier"))}
    refs = []
    for cxi in _slot_values(eo, "urn:ihe:iti:xds:2013:referenceIdList"):
        comps = cxi.split("^")
        authority = comps[3].split("&")[1] if len(comps) > 4 and "&" in comps[3] else ""
        refs.append(ReferenceId(comps[0], authority, comps[4] if len(comps) > 4 else ""))

    def one(name: str) -> str:
        return next(iter(_slot_values(eo, name)), "")

    def code(scheme: str) -> Code:
        return (codes.get(scheme) or [Code("", "", "")])[0]

    size = one("size")
    return DocumentEntry(
        unique_id=ext.get(N.DE_UNIQUE_ID, ""), patient_id=ext.get(N.DE_PATIENT_ID, ""),
        source_patient_id=one("sourcePatientId"),
        source_patient_info=tuple(_slot_values(eo, "sourcePatientInfo")),
        mime_type=eo.get("mimeType", ""), class_code=code(N.DE_CLASS),
        type_code=code(N.DE_TYPE), format_code=code(N.DE_FORMAT),
        confidentiality=tuple(codes.get(N.DE_CONFIDENTIALITY, [])),
        event_codes=tuple(codes.get(N.DE_EVENT, [])),
        healthcare_facility_type=code(N.DE_FACILITY), practice_setting=code(N.DE_PRACTICE),
        language=one("languageCode"), creation_time=one("creationTime"),
        service_start=one("serviceStartTime"), service_stop=one("serviceStopTime"),
        title=_name_of(eo), comments=_name_of(eo, "Description"), author=author,
        legal_authenticator=one("legalAuthenticator"), reference_ids=tuple(refs),
        hash_sha1=one("hash"), size=int(size) if size.isdigit() else 0,
    )
