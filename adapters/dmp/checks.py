"""Strict checks of an ITI-41 submission, as the DMP applies them (R4, R5; ITI TF-3 4.2, 4.3).

No package ships the ebRIM 3.0 / XDS.b XSDs, so :func:`check_structure` encodes the parts of the
schema and of ITI TF-3 that matter (element order, id references, one value where one is
allowed); :func:`check_submission` adds the XDS metadata rules and the DRIM-M values of the R4
table. Both return a list of :class:`XdsError` whose ``context`` names the object and the slot or
classification at fault; an empty list means accepted. Used by the simulator and the tests.

Error codes (ITI TF-3 Table 4.2.4.1-2):

==============================  ===========================================================
XDSRegistryMetadataError        structure, a missing or wrong slot / classification /
                                external identifier, a value outside the R4 table, a bad
                                Signature01 or ``signs`` association
XDSPatientIdDoesNotMatch        a document's patientId differs from the submission set's
XDSUnknownPatientId             the patientId is not ``INS^^^&OID&ISO^NH`` with a valid INS
                                (key check, INS OID)
XDSMissingDocument              an ExtrinsicObject without its ``xdsb:Document``
XDSMissingDocumentMetadata      an ``xdsb:Document`` without its ExtrinsicObject
XDSNonIdenticalHash /           hash / size slot differs from the attached bytes, or a
XDSNonIdenticalSize             known uniqueId arrives with another hash
XDSRegistryDuplicateUniqueIdInMessage  two objects with one uniqueId
==============================  ===========================================================

Children out of the rim.xsd order are reported with severity *Warning* (the submission is
accepted): the ANS validator's own sample does it, so the DMP evidently tolerates it.

Schema and ITI TF-3 rules checked besides the DRIM-M values (all ``XDSRegistryMetadataError``):

* rim.xsd: every registry object, Classification, ExternalIdentifier and Association has an
  ``id``, unique in the submission; a Slot has a ``name``, a ``ValueList`` and at least one
  ``Value`` of at most 256 characters (``LongName``); a ``Name`` / ``Description`` holds a
  ``LocalizedString`` with a ``value``; a Classification has a ``classifiedObject`` and a
  ``classificationScheme`` or a ``classificationNode``; an ``objectType``, when given, is the
  one of the element (ExtrinsicObject: the stable DocumentEntry type);
* ITI TF-3 4.2.3.1.2 (coded metadata): ``nodeRepresentation``, a non-empty ``Name`` and a
  ``codingScheme`` Slot with exactly one value;
* ITI TF-3 4.2.3.1.4 (author): ``nodeRepresentation`` empty (absent is tolerated, as in the
  ANS sample), at least one of authorPerson /
  authorInstitution / authorTelecommunication, authorPerson at most once;
* ITI TF-3 4.2.3.3 (SubmissionSet): one ``submissionTime``, exactly one patientId / sourceId /
  uniqueId ExternalIdentifier;
* ITI TF-3 4.2.2 (associations): HasMember comes from the SubmissionSet and points at an object
  of the submission, with exactly one SubmissionSetStatus (``Original``); ``signs`` comes from a
  signature document; every source / target exists.

No package (PyPI or Debian) ships the ebRIM 3.0 / ebRS 3.0 / XDS.b XSDs (rim.xsd, rs.xsd,
lcm.xsd, query.xsd, XDS.b_DocumentRepository.xsd): checked in 2026-11 with the package
registries' lists and by opening the only candidates (``oru2xds``, ``pyregrep``), hence these
hand-written rules instead of ``lxml.etree.XMLSchema``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field

from lxml import etree

from adapters.dmp import ns as N
from adapters.dmp.errors import XdsError
from adapters.dmp.ns import LCM, RIM, XDSB, q
from gateway.identity import ins as insmod
from gateway.manifest.xds_metadata import (
    KOS_FORMAT_CODE,
    MASKING_FLAGS,
    SCHEME_CLASS,
    SCHEME_CONFIDENTIALITY_DMP,
    SCHEME_CONFIDENTIALITY_HL7,
    SCHEME_FACILITY_TYPE,
    SCHEME_FORMAT,
    SCHEME_MODALITY,
    SCHEME_PRACTICE_SETTING,
    SCHEME_TYPE,
)

META = "XDSRegistryMetadataError"
DTM14 = re.compile(r"^\d{14}$")
OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")
PATIENT_ID = re.compile(r"^([^^&]+)\^\^\^&([0-9.]+)&ISO\^NH$")
CXI = re.compile(r"^[^^]+\^\^\^&[0-9.]+&ISO\^urn:ihe:iti:xds:20\d\d:[A-Za-z]+$")
INS_OIDS = {insmod.OID_NIR, insmod.OID_NIA, insmod.OID_NIR_TEST, insmod.OID_NIR_DEMO}

# ebRIM 3.0 content models (rim.xsd): the order children must follow.
_ORDER = {
    "RegistryPackage": ["Slot", "Name", "Description", "VersionInfo", "Classification",
                        "ExternalIdentifier"],
    "ExtrinsicObject": ["Slot", "Name", "Description", "VersionInfo", "Classification",
                        "ExternalIdentifier", "ContentVersionInfo"],
    "Classification": ["Slot", "Name", "Description", "VersionInfo", "Classification",
                       "ExternalIdentifier"],
    "ExternalIdentifier": ["Slot", "Name", "Description", "VersionInfo", "Classification",
                           "ExternalIdentifier"],
    "Association": ["Slot", "Name", "Description", "VersionInfo", "Classification",
                    "ExternalIdentifier"],
}
_SINGLE = {"Name", "Description", "VersionInfo", "ContentVersionInfo"}
# rim.xsd objectType of each registry object, when the attribute is given.
_OBJECT_TYPES = {
    "RegistryPackage": "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage",
    "Association": "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association",
    "Classification": "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification",
}
_LONG_NAME = 256  # rim.xsd LongName: a Slot Value
AUTHOR_SLOTS = ("authorPerson", "authorInstitution", "authorTelecommunication")
# DocumentEntry slots that take exactly one value (ITI TF-3 Table 4.3.1-3).
_SINGLE_VALUED = {"creationTime", "hash", "size", "languageCode", "legalAuthenticator",
                  "serviceStartTime", "serviceStopTime", "sourcePatientId", "repositoryUniqueId",
                  "URI"}


@dataclass
class ParsedEntry:
    id: str
    el: etree._Element
    unique_id: str = ""
    patient_id: str = ""
    mime_type: str = ""
    slots: dict[str, list[str]] = field(default_factory=dict)
    codes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def is_signature(self) -> bool:
        return (N.DSG_CLASS, "URN") in self.codes.get(N.DE_CLASS, [])


@dataclass
class ParsedSubmission:
    ss: etree._Element | None = None
    ss_id: str = ""
    ss_unique_id: str = ""
    ss_source_id: str = ""
    ss_patient_id: str = ""
    entries: list[ParsedEntry] = field(default_factory=list)
    associations: list[etree._Element] = field(default_factory=list)
    documents: dict[str, bytes] = field(default_factory=dict)
    """ExtrinsicObject id → attached bytes."""

    def assoc(self, kind: str) -> list[etree._Element]:
        return [a for a in self.associations if a.get("associationType") == kind]


def local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def slots(el: etree._Element) -> dict[str, list[str]]:
    return {s.get("name", ""): [(v.text or "") for v in s.iter(q(RIM, "Value"))]
            for s in el.findall(q(RIM, "Slot"))}


def valid_dtm(value: str) -> bool:
    if not DTM14.match(value):
        return False
    try:
        dt.datetime.strptime(value, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


def check_patient_id(value: str, where: str) -> list[XdsError]:
    """``<INS>^^^&<INS OID>&ISO^NH`` with a valid INS (key check, gateway.identity.ins; R4, R19)."""
    m = PATIENT_ID.match(value)
    if not m:
        return [XdsError("XDSUnknownPatientId",
                         f"{where}: patientId {value!r} is not <INS>^^^&<OID>&ISO^NH")]
    matricule, oid = m.groups()
    if oid not in INS_OIDS:
        return [XdsError("XDSUnknownPatientId",
                         f"{where}: patientId assigning authority {oid} is not an INS OID")]
    try:
        insmod.validate_matricule(matricule)
    except insmod.InsError as exc:
        return [XdsError("XDSUnknownPatientId", f"{where}: patientId INS {matricule}: {exc}")]
    return []


def check_structure(req: etree._Element) -> tuple[list[XdsError], ParsedSubmission]:
    """Schema-level checks of a ProvideAndRegisterDocumentSetRequest (or a bare
    SubmitObjectsRequest for ITI-57)."""
    errors: list[XdsError] = []
    sub = ParsedSubmission()
    if req.tag == q(XDSB, "ProvideAndRegisterDocumentSetRequest"):
        sors = req.findall(q(LCM, "SubmitObjectsRequest"))
        if len(sors) != 1:
            return [XdsError(META, "ProvideAndRegisterDocumentSetRequest must hold exactly one "
                                   "lcm:SubmitObjectsRequest")], sub
        sor = sors[0]
        others = [c for c in req if isinstance(c.tag, str)
                  and c.tag not in (q(LCM, "SubmitObjectsRequest"), q(XDSB, "Document"))]
        if others:
            errors.append(XdsError(META, f"unexpected element {others[0].tag} in the request"))
    elif req.tag == q(LCM, "SubmitObjectsRequest"):
        sor = req
    else:
        return [XdsError(META, f"{req.tag} is not a SubmitObjectsRequest")], sub
    rol = sor.find(q(RIM, "RegistryObjectList"))
    if rol is None:
        return [XdsError(META, "SubmitObjectsRequest has no rim:RegistryObjectList")], sub
    ids: set[str] = set()
    for obj in rol:
        if not isinstance(obj.tag, str):
            continue
        kind = local(obj)
        oid = obj.get("id", "")
        if obj.tag not in (q(RIM, "RegistryPackage"), q(RIM, "ExtrinsicObject"),
                           q(RIM, "Association"), q(RIM, "Classification")):
            errors.append(XdsError(META, f"unexpected {obj.tag} in RegistryObjectList"))
            continue
        if not oid:
            errors.append(XdsError(META, f"a {kind} has no id"))
        elif oid in ids:
            errors.append(XdsError(META, f"id {oid!r} is used twice"))
        ids.add(oid)
        errors += _check_order(obj, oid)
        errors += _check_elements(obj, oid or kind)
        for c in obj.findall(q(RIM, "Classification")):
            errors += _check_order(c, c.get("id", ""))
            if not c.get("id"):
                errors.append(XdsError(META, f"{oid}: a Classification has no id"))
            if c.get("classifiedObject") != oid:
                errors.append(XdsError(META, f"{oid}: Classification {c.get('id')} classifies "
                                             f"{c.get('classifiedObject')!r}, not its parent"))
            if c.get("id") in ids:
                errors.append(XdsError(META, f"id {c.get('id')!r} is used twice"))
            ids.add(c.get("id", ""))
        for e in obj.findall(q(RIM, "ExternalIdentifier")):
            if not e.get("id"):
                errors.append(XdsError(META, f"{oid}: an ExternalIdentifier has no id"))
            elif e.get("id") in ids:
                errors.append(XdsError(META, f"id {e.get('id')!r} is used twice"))
            ids.add(e.get("id", ""))
            if e.get("registryObject") != oid:
                errors.append(XdsError(META, f"{oid}: ExternalIdentifier {e.get('id')} names "
                                             f"{e.get('registryObject')!r}, not its parent"))
            if not e.get("identificationScheme") or e.get("value") is None:
                errors.append(XdsError(META, f"{oid}: ExternalIdentifier {e.get('id')} lacks "
                                             "identificationScheme or value"))
        names = [s.get("name") for s in obj.findall(q(RIM, "Slot"))]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            errors.append(XdsError(META, f"{oid}: slot {sorted(dup)[0]} appears twice"))
        if kind == "Association":
            if not obj.get("associationType") or not obj.get("sourceObject") \
                    or not obj.get("targetObject"):
                errors.append(XdsError(META, f"association {oid} lacks type, source or target"))
            sub.associations.append(obj)
        elif kind == "RegistryPackage":
            is_ss = any(c.get("classificationNode") == N.SUBMISSION_SET_NODE
                        for c in obj.findall(q(RIM, "Classification")))
            is_ss = is_ss or any(c.get("classificationNode") == N.SUBMISSION_SET_NODE
                                 and c.get("classifiedObject") == oid
                                 for c in rol.findall(q(RIM, "Classification")))
            if not is_ss:
                errors.append(XdsError(META, f"RegistryPackage {oid} is not classified as a "
                                             f"SubmissionSet ({N.SUBMISSION_SET_NODE})"))
                continue
            if sub.ss is not None:
                errors.append(XdsError(META, "more than one SubmissionSet"))
                continue
            ext = {}
            for e in obj.findall(q(RIM, "ExternalIdentifier")):
                scheme = e.get("identificationScheme")
                if scheme in ext:
                    errors.append(XdsError(META, f"{oid}: ExternalIdentifier {scheme} appears "
                                                 "twice (ITI TF-3 4.2.3.3)"))
                ext[scheme] = e.get("value", "")
            sub.ss, sub.ss_id = obj, oid
            sub.ss_unique_id = ext.get(N.SS_UNIQUE_ID, "")
            sub.ss_source_id = ext.get(N.SS_SOURCE_ID, "")
            sub.ss_patient_id = ext.get(N.SS_PATIENT_ID, "")
        elif kind == "ExtrinsicObject":
            ext = {}
            for e in obj.findall(q(RIM, "ExternalIdentifier")):
                ext.setdefault(e.get("identificationScheme"), []).append(e.get("value", ""))
            entry = ParsedEntry(oid, obj, mime_type=obj.get("mimeType", ""), slots=slots(obj))
            for scheme, label in ((N.DE_UNIQUE_ID, "uniqueId"), (N.DE_PATIENT_ID, "patientId")):
                vals = ext.get(scheme, [])
                if len(vals) > 1:
                    errors.append(XdsError(META, f"{oid}: {label} ExternalIdentifier appears "
                                                 f"{len(vals)} times"))
            entry.unique_id = (ext.get(N.DE_UNIQUE_ID) or [""])[0]
            entry.patient_id = (ext.get(N.DE_PATIENT_ID) or [""])[0]
            for c in obj.findall(q(RIM, "Classification")):
                scheme_slot = slots(c).get("codingScheme", [])
                entry.codes.setdefault(c.get("classificationScheme", ""), []).append(
                    (c.get("nodeRepresentation", ""), scheme_slot[0] if scheme_slot else ""))
            for name, values in entry.slots.items():
                if name in _SINGLE_VALUED and len(values) != 1:
                    errors.append(XdsError(META, f"{oid}: slot {name} must have exactly one "
                                                 f"value, has {len(values)}"))
            sub.entries.append(entry)
    if sub.ss is None:
        errors.append(XdsError(META, "the submission has no SubmissionSet RegistryPackage"))
    for a in sub.associations:
        for end in ("sourceObject", "targetObject"):
            ref = a.get(end, "")
            if ref not in ids and not ref.startswith("urn:uuid:"):
                errors.append(XdsError(META, f"association {a.get('id')}: {end} {ref!r} is "
                                             "neither in the submission nor an entryUUID"))
    return errors, sub


def _check_order(el: etree._Element, oid: str) -> list[XdsError]:
    order = _ORDER.get(local(el))
    if order is None:
        return []
    last, seen = -1, set()
    for c in el:
        name = local(c)
        if not name:
            continue
        if name not in order:
            return [XdsError(META, f"{oid}: unexpected child rim:{name} in {local(el)}")]
        i = order.index(name)
        if i < last:
            # A warning, not an error: the ANS validator's own sample (XDS.xml) puts its
            # referenceIdList slot after the classifications, so the DMP tolerates it.
            return [XdsError(META, f"{oid}: rim:{name} after rim:{order[last]} breaks the ebRIM "
                                   f"order ({', '.join(order)})", severity=N.SEVERITY_WARNING)]
        if name in _SINGLE and name in seen:
            return [XdsError(META, f"{oid}: more than one rim:{name}")]
        seen.add(name)
        last = i
    return []


def _check_elements(obj: etree._Element, oid: str) -> list[XdsError]:
    """rim.xsd rules on one registry object and its nested Slots, Names, Classifications."""
    err: list[XdsError] = []
    kind = local(obj)
    expected = _OBJECT_TYPES.get(kind)
    if expected and obj.get("objectType") not in (None, expected):
        err.append(XdsError(META, f"{oid}: objectType {obj.get('objectType')!r} is not {expected}"))
    for el in obj.iter(q(RIM, "Slot")):
        name = el.get("name")
        if not name:
            err.append(XdsError(META, f"{oid}: a Slot has no name"))
            continue
        vl = el.find(q(RIM, "ValueList"))
        values = [] if vl is None else vl.findall(q(RIM, "Value"))
        if vl is None or not values:
            err.append(XdsError(META, f"{oid}: slot {name} has no rim:ValueList/rim:Value"))
        for v in values:
            if len(v.text or "") > _LONG_NAME:
                err.append(XdsError(META, f"{oid}: slot {name} value longer than {_LONG_NAME} "
                                          "characters (rim.xsd LongName)"))
    for tag in ("Name", "Description"):
        for el in obj.iter(q(RIM, tag)):
            ls = el.find(q(RIM, "LocalizedString"))
            if ls is None or ls.get("value") is None:
                err.append(XdsError(META, f"{oid}: rim:{tag} without a LocalizedString value"))
    for c in obj.iter(q(RIM, "Classification")):
        if not c.get("classifiedObject"):
            err.append(XdsError(META, f"{oid}: Classification {c.get('id')} has no "
                                      "classifiedObject"))
        if not c.get("classificationScheme") and not c.get("classificationNode"):
            err.append(XdsError(META, f"{oid}: Classification {c.get('id')} has neither "
                                      "classificationScheme nor classificationNode"))
    return err


def _classification_errors(obj: etree._Element, oid: str, author_scheme: str) -> list[XdsError]:
    """ITI TF-3 4.2.3.1.2 (coded values) and 4.2.3.1.4 (author) on the Classifications of a
    DocumentEntry or SubmissionSet."""
    err: list[XdsError] = []
    for c in obj.findall(q(RIM, "Classification")):
        scheme, cid = c.get("classificationScheme"), c.get("id")
        if not scheme:
            continue
        sl = slots(c)
        if scheme == author_scheme:
            where = f"{oid}: author ({author_scheme}) {cid}"
            if c.get("nodeRepresentation") not in (None, ""):
                # ITI TF-3 4.2.3.1.4 wants it present and empty; the ANS sample omits it.
                err.append(XdsError(META, f"{where}: nodeRepresentation must be empty, is "
                                          f"{c.get('nodeRepresentation')!r} (ITI TF-3 4.2.3.1.4)"))
            if not any(sl.get(n) for n in AUTHOR_SLOTS):
                err.append(XdsError(META, f"{where} has none of {', '.join(AUTHOR_SLOTS)}"))
            if len(sl.get("authorPerson", [])) > 1:
                err.append(XdsError(META, f"{where}: authorPerson has "
                                          f"{len(sl['authorPerson'])} values, at most one"))
            continue
        where = f"{oid}: {_LABELS.get(scheme, 'classification')} ({scheme}) {cid}"
        if c.get("nodeRepresentation") is None:
            err.append(XdsError(META, f"{where}: nodeRepresentation is missing"))
        coding = sl.get("codingScheme", [])
        if len(coding) != 1:
            err.append(XdsError(META, f"{where}: slot codingScheme must have exactly one value, "
                                      f"has {len(coding)} (ITI TF-3 4.2.3.1.2)"))
        name = c.find(f"{q(RIM, 'Name')}/{q(RIM, 'LocalizedString')}")
        if name is None or not name.get("value"):
            err.append(XdsError(META, f"{where}: the code's display Name is missing "
                                      "(ITI TF-3 4.2.3.1.2)"))
    return err


_LABELS = {
    N.DE_CLASS: "classCode", N.DE_TYPE: "typeCode", N.DE_FORMAT: "formatCode",
    N.DE_CONFIDENTIALITY: "confidentialityCode", N.DE_EVENT: "eventCodeList",
    N.DE_FACILITY: "healthcareFacilityTypeCode", N.DE_PRACTICE: "practiceSettingCode",
    N.SS_CONTENT_TYPE: "contentTypeCode",
}


def _code_errors(e: ParsedEntry, scheme_uuid: str, label: str, allowed: set[tuple[str, str]] | None,
                 many: bool = False) -> list[XdsError]:
    codes = e.codes.get(scheme_uuid, [])
    where = f"{e.id}: {label} ({scheme_uuid})"
    if not codes:
        return [XdsError(META, f"{where} is missing")]
    if not many and len(codes) > 1:
        return [XdsError(META, f"{where} appears {len(codes)} times")]
    out = []
    for code, scheme in codes:
        if not code or not scheme:
            out.append(XdsError(META, f"{where}: nodeRepresentation and codingScheme are required"))
        elif allowed is not None and (code, scheme) not in allowed:
            out.append(XdsError(META, f"{where}: {code!r} in scheme {scheme!r} is not allowed "
                                      f"(expected {' or '.join(f'{c}/{s}' for c, s in sorted(allowed))})"))
    return out


def check_entry(e: ParsedEntry, ss_patient_id: str) -> list[XdsError]:
    """DocumentEntry rules (ITI TF-3 4.3.1 + the R4 table for the KOS, SPEC 2.2 for Signature01)."""
    err: list[XdsError] = []
    if e.el.get("objectType") != N.STABLE_DOCUMENT_ENTRY:
        err.append(XdsError(META, f"{e.id}: objectType must be {N.STABLE_DOCUMENT_ENTRY}"))
    if not e.mime_type:
        err.append(XdsError(META, f"{e.id}: mimeType is missing"))
    for name in ("creationTime", "hash", "size", "languageCode", "sourcePatientId"):
        if not e.slots.get(name) or not e.slots[name][0]:
            err.append(XdsError(META, f"{e.id}: slot {name} is missing"))
    ct = (e.slots.get("creationTime") or [""])[0]
    if ct and not valid_dtm(ct):
        err.append(XdsError(META, f"{e.id}: creationTime {ct!r} is not YYYYMMDDhhmmss"))
    for name in ("serviceStartTime", "serviceStopTime"):
        v = (e.slots.get(name) or [""])[0]
        if v and not valid_dtm(v):
            err.append(XdsError(META, f"{e.id}: {name} {v!r} is not YYYYMMDDhhmmss"))
    h = (e.slots.get("hash") or [""])[0]
    if h and not HEX40.match(h):
        err.append(XdsError(META, f"{e.id}: hash {h!r} is not 40 hexadecimal digits (SHA-1)"))
    size = (e.slots.get("size") or [""])[0]
    if size and not size.isdigit():
        err.append(XdsError(META, f"{e.id}: size {size!r} is not an integer"))
    if not e.unique_id:
        err.append(XdsError(META, f"{e.id}: XDSDocumentEntry.uniqueId ({N.DE_UNIQUE_ID}) is missing"))
    elif not OID.match(e.unique_id) or len(e.unique_id) > 64:
        err.append(XdsError(META, f"{e.id}: uniqueId {e.unique_id!r} is not an OID of at most "
                                  "64 characters"))
    if not e.patient_id:
        err.append(XdsError(META, f"{e.id}: XDSDocumentEntry.patientId ({N.DE_PATIENT_ID}) "
                                  "is missing"))
    else:
        err += check_patient_id(e.patient_id, e.id)
        if ss_patient_id and e.patient_id != ss_patient_id:
            err.append(XdsError("XDSPatientIdDoesNotMatch",
                                f"{e.id}: patientId {e.patient_id!r} differs from the "
                                f"SubmissionSet's {ss_patient_id!r}"))
    if not e.el.findall(f"{q(RIM, 'Classification')}[@classificationScheme='{N.DE_AUTHOR}']"):
        err.append(XdsError(META, f"{e.id}: author ({N.DE_AUTHOR}) is missing"))
    err += _classification_errors(e.el, e.id, N.DE_AUTHOR)
    if e.is_signature:
        err += _code_errors(e, N.DE_TYPE, "typeCode", {(N.DSG_TYPE, "ASTM")})
        err += _code_errors(e, N.DE_FORMAT, "formatCode", {(N.DSG_FORMAT, "URN")})
        err += _code_errors(e, N.DE_EVENT, "eventCodeList",
                            {(N.DSG_PURPOSE_SOURCE, N.DSG_PURPOSE_SCHEME)}, many=True)
        if e.mime_type != "text/xml":
            err.append(XdsError(META, f"{e.id}: the signature document's mimeType must be text/xml"))
    else:
        err += _code_errors(e, N.DE_CLASS, "classCode", {("31", SCHEME_CLASS)})
        err += _code_errors(e, N.DE_TYPE, "typeCode", {("IMG-KOS", SCHEME_TYPE)})
        err += _code_errors(e, N.DE_FORMAT, "formatCode", {(KOS_FORMAT_CODE, SCHEME_FORMAT)})
        err += _code_errors(e, N.DE_EVENT, "eventCodeList", None, many=True)
        if e.codes.get(N.DE_EVENT) and not any(s == SCHEME_MODALITY
                                               for _, s in e.codes[N.DE_EVENT]):
            err.append(XdsError(META, f"{e.id}: eventCodeList ({N.DE_EVENT}) has no acquisition "
                                      f"modality code (scheme {SCHEME_MODALITY})"))
        if e.mime_type and e.mime_type != "application/dicom":
            err.append(XdsError(META, f"{e.id}: mimeType {e.mime_type!r} is not application/dicom"))
        lang = (e.slots.get("languageCode") or [""])[0]
        if lang and lang != "fr-FR":
            err.append(XdsError(META, f"{e.id}: languageCode {lang!r} is not fr-FR"))
        refs = e.slots.get("urn:ihe:iti:xds:2013:referenceIdList", [])
        bad = [r for r in refs if not CXI.match(r)]
        if bad:
            err.append(XdsError(META, f"{e.id}: referenceIdList value {bad[0]!r} is not a CXi"))
        if not any(r.endswith("^urn:ihe:iti:xds:2013:accession") for r in refs):
            err.append(XdsError(META, f"{e.id}: referenceIdList (urn:ihe:iti:xds:2013:"
                                      "referenceIdList) has no accession number"))
    confidentiality = {("N", SCHEME_CONFIDENTIALITY_HL7)} | {
        (flag, SCHEME_CONFIDENTIALITY_DMP) for flag in MASKING_FLAGS}
    err += _code_errors(e, N.DE_CONFIDENTIALITY, "confidentialityCode", confidentiality, many=True)
    if ("N", SCHEME_CONFIDENTIALITY_HL7) not in e.codes.get(N.DE_CONFIDENTIALITY, [("", "")]) \
            and e.codes.get(N.DE_CONFIDENTIALITY):
        err.append(XdsError(META, f"{e.id}: confidentialityCode ({N.DE_CONFIDENTIALITY}) lacks "
                                  f"N / {SCHEME_CONFIDENTIALITY_HL7}"))
    if e.is_signature:
        err += _code_errors(e, N.DE_CLASS, "classCode", {(N.DSG_CLASS, "URN")})
    err += _code_errors(e, N.DE_FACILITY, "healthcareFacilityTypeCode", None)
    err += _scheme_only(e, N.DE_FACILITY, "healthcareFacilityTypeCode", SCHEME_FACILITY_TYPE)
    err += _code_errors(e, N.DE_PRACTICE, "practiceSettingCode", None)
    err += _scheme_only(e, N.DE_PRACTICE, "practiceSettingCode", SCHEME_PRACTICE_SETTING)
    return err


def _scheme_only(e: ParsedEntry, scheme_uuid: str, label: str, scheme: str) -> list[XdsError]:
    return [XdsError(META, f"{e.id}: {label} ({scheme_uuid}) {c!r} has codingScheme {s!r}, "
                           f"expected {scheme}")
            for c, s in e.codes.get(scheme_uuid, []) if s and s != scheme]


def check_submission_set(sub: ParsedSubmission) -> list[XdsError]:
    err: list[XdsError] = []
    ss = sub.ss
    if ss is None:
        return err
    sid = sub.ss_id
    st = slots(ss).get("submissionTime", [""])
    if not st or not valid_dtm(st[0]):
        err.append(XdsError(META, f"{sid}: submissionTime is missing or not YYYYMMDDhhmmss"))
    elif len(st) != 1:
        err.append(XdsError(META, f"{sid}: slot submissionTime must have exactly one value"))
    err += _classification_errors(ss, sid, N.SS_AUTHOR)
    for value, scheme, label in ((sub.ss_unique_id, N.SS_UNIQUE_ID, "uniqueId"),
                                 (sub.ss_source_id, N.SS_SOURCE_ID, "sourceId")):
        if not value:
            err.append(XdsError(META, f"{sid}: XDSSubmissionSet.{label} ({scheme}) is missing"))
        elif not OID.match(value):
            err.append(XdsError(META, f"{sid}: XDSSubmissionSet.{label} {value!r} is not an OID"))
    if not sub.ss_patient_id:
        err.append(XdsError(META, f"{sid}: XDSSubmissionSet.patientId ({N.SS_PATIENT_ID}) is missing"))
    else:
        err += check_patient_id(sub.ss_patient_id, sid)
    cls = {c.get("classificationScheme") for c in ss.findall(q(RIM, "Classification"))}
    if N.SS_AUTHOR not in cls:
        err.append(XdsError(META, f"{sid}: author ({N.SS_AUTHOR}) is missing"))
    if N.SS_CONTENT_TYPE not in cls:
        err.append(XdsError(META, f"{sid}: contentTypeCode ({N.SS_CONTENT_TYPE}) is missing"))
    return err


def check_hash_and_size(e: ParsedEntry, data: bytes) -> list[XdsError]:
    err = []
    h = (e.slots.get("hash") or [""])[0]
    if h and HEX40.match(h) and h.lower() != hashlib.sha1(data).hexdigest():  # noqa: S324
        err.append(XdsError("XDSNonIdenticalHash", f"{e.id}: hash {h} is not the SHA-1 of the "
                                                   "attached document"))
    size = (e.slots.get("size") or [""])[0]
    if size.isdigit() and int(size) != len(data):
        err.append(XdsError("XDSNonIdenticalSize", f"{e.id}: size {size} but the attached "
                                                   f"document has {len(data)} bytes"))
    return err


def check_submission(req: etree._Element, attachments_by_doc: dict[str, bytes],
                     require_signature: bool = True) -> tuple[list[XdsError], ParsedSubmission]:
    """Every metadata rule of an ITI-41 request; ``attachments_by_doc``: xdsb:Document id →
    bytes. The Signature01 cryptographic check is :mod:`adapters.dmp.dsg`'s (the simulator calls
    it once this passes)."""
    errors, sub = check_structure(req)
    if any(e.context.startswith("ProvideAndRegister") and not e.is_warning for e in errors):
        return errors, sub
    errors += check_submission_set(sub)
    ids = {e.id for e in sub.entries}
    for doc_id in attachments_by_doc:
        if doc_id not in ids:
            errors.append(XdsError("XDSMissingDocumentMetadata",
                                   f"xdsb:Document {doc_id} has no ExtrinsicObject"))
    uids = [e.unique_id for e in sub.entries if e.unique_id] + (
        [sub.ss_unique_id] if sub.ss_unique_id else [])
    dups = {u for u in uids if uids.count(u) > 1}
    if dups:
        errors.append(XdsError("XDSRegistryDuplicateUniqueIdInMessage",
                               f"uniqueId {sorted(dups)[0]} is used twice in the submission"))
    members = {a.get("targetObject") for a in sub.assoc(N.HAS_MEMBER)
               if a.get("sourceObject") == sub.ss_id}
    for e in sub.entries:
        errors += check_entry(e, sub.ss_patient_id)
        if e.id not in attachments_by_doc:
            errors.append(XdsError("XDSMissingDocument", f"{e.id}: no xdsb:Document attached"))
        else:
            sub.documents[e.id] = attachments_by_doc[e.id]
            errors += check_hash_and_size(e, attachments_by_doc[e.id])
        if e.id not in members:
            errors.append(XdsError(META, f"{e.id}: no HasMember association from the "
                                         "SubmissionSet"))
    for a in sub.assoc(N.HAS_MEMBER):
        aid = a.get("id")
        if a.get("sourceObject") != sub.ss_id:
            errors.append(XdsError(META, f"association {aid}: HasMember source "
                                         f"{a.get('sourceObject')!r} is not the SubmissionSet "
                                         f"{sub.ss_id} (ITI TF-3 4.2.2.1)"))
        elif slots(a).get("SubmissionSetStatus") != ["Original"]:
            errors.append(XdsError(META, f"association {aid}: HasMember needs "
                                         "SubmissionSetStatus=Original"))
        elif a.get("targetObject") not in ids:
            errors.append(XdsError(META, f"association {aid}: HasMember target "
                                         f"{a.get('targetObject')!r} is not a DocumentEntry of "
                                         "the submission (SubmissionSetStatus=Original)"))
    for a in sub.assoc(N.SIGNS):
        src = next((e for e in sub.entries if e.id == a.get("sourceObject")), None)
        if src is None or not src.is_signature:
            errors.append(XdsError(META, f"association {a.get('id')}: signs source "
                                         f"{a.get('sourceObject')!r} is not a signature document"))
    if require_signature:
        sigs = [e for e in sub.entries if e.is_signature]
        if len(sigs) != 1:
            errors.append(XdsError(META, f"the submission must carry one signature document "
                                         f"(classCode {N.DSG_CLASS}), found {len(sigs)}"))
        elif not any(a.get("sourceObject") == sigs[0].id and a.get("targetObject") == sub.ss_id
                     for a in sub.assoc(N.SIGNS)):
            errors.append(XdsError(META, f"{sigs[0].id}: no 'signs' association "
                                         f"({N.SIGNS}) to the SubmissionSet"))
        if not [e for e in sub.entries if not e.is_signature]:
            errors.append(XdsError(META, "the submission carries no document besides the signature"))
    for a in sub.assoc(N.RPLC):
        if a.get("sourceObject") not in ids:
            errors.append(XdsError(META, f"RPLC {a.get('id')}: sourceObject is not a document "
                                         "of this submission"))
        if not a.get("targetObject", "").startswith("urn:uuid:"):
            errors.append(XdsError(META, f"RPLC {a.get('id')}: targetObject must be an entryUUID"))
    known = {N.HAS_MEMBER, N.SIGNS, N.RPLC}
    for a in sub.associations:
        if a.get("associationType") not in known:
            errors.append(XdsError(META, f"association type {a.get('associationType')} is not "
                                         "accepted in ITI-41"))
    return errors, sub
