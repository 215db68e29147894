"""The DMP simulator's FHIR face: IHE MHD Document Recipient and Responder on ``/fhir`` (R4-R8).

``drimbox dmp-sim`` serves it next to the XDS.b endpoints, behind the same mutual TLS, over the
same store: a document published with ITI-65 is found by ITI-18 and retrieved by ITI-43, and one
published with ITI-41 is found by ITI-67 and read as a Binary.

======================================  ===================================================
POST /fhir                              ITI-65 Provide Document Bundle (``transaction``)
GET  /fhir/DocumentReference?...        ITI-67 Find Document References: ``patient.identifier``
                                        (required, ``urn:oid:<INS OID>|<INS>``), ``status``
                                        (``current``, ``superseded``), ``identifier``
                                        (``[system|]urn:oid:<uniqueId>`` or the entryUUID)
GET  /fhir/DocumentReference/{id}       read (``id`` = the entryUUID without ``urn:uuid:``)
GET  /fhir/Binary/{uniqueId}            ITI-68: the document's bytes (``Accept:
                                        application/fhir+json`` gives the Binary resource)
PATCH /fhir/DocumentReference?identifier=...  PDSm flux 03: FHIRPath Patch of ``status``
PATCH /fhir/DocumentReference/{id}      (``superseded`` = XDS Deprecated, ``current`` = Approved)
======================================  ===================================================

Validation is the XDS one. The Bundle is first read by ``fhir.resources`` (R4B): not JSON, not
a valid resource, not a ``transaction``, entries other than the SubmissionSet ``List``,
DocumentReference, Binary and the replacement's ``PATCH`` → **400**. The List and each
DocumentReference are then read back into the domain types (:mod:`adapters.mhd.resources`),
written as the ebRIM submission they stand for, and run through
:func:`adapters.dmp.checks.check_submission` (R4 codes, INS key, hash and size of the Binary,
submission set, associations), plus what the PDSm DocumentReference profile adds
(:func:`pdsm_issues`: custodian, date, title, act start, one v3-Confidentiality label), and the
registry rules of ITI-41 (duplicate uniqueId, the
replaced entry must exist, be Approved and be the same patient's). A refusal is **422** (404
when the replaced document is unknown) with an ``OperationOutcome``: one issue per XDS error,
``details.text`` = the XDS error code (as eHealth Suisse's MHD OperationOutcomes do),
``diagnostics`` = its codeContext, ``expression`` = the FHIR element at fault. PATCH: 415 not
``application/fhir+json``, 405 anything but ``DocumentReference.status``, 404 no such document,
412 several, 422 no change of status.

A replacement must carry, as MHD 4.2 requires (ITI-65 §2:3.65.4.1.2.3), both ``relatesTo``
(``replaces``) on the new DocumentReference and a ``PATCH`` of the replaced one to
``superseded``. Authentication is the TLS client certificate only (no VIHF on this face:
whether the DMP's FHIR API will want one, or a bearer token, is not published yet).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from fhir.resources.R4B.bundle import Bundle
from lxml import etree
from pydantic import ValidationError

from adapters.dmp import checks, ebrim
from adapters.dmp import ns as N
from adapters.dmp.errors import XdsError
from adapters.dmp.ns import LCM, RIM, XDSB, q
from adapters.dmp.sim_store import SimStore, StoredEntry
from adapters.mhd.resources import (
    MHD_LIST_TYPES,
    STATUS_FROM_FHIR,
    STATUS_TO_FHIR,
    document_reference,
    entry_from_document_reference,
    entry_uuid_from,
    scheme_of,
    submission_set_from_list,
)
from gateway.manifest.xds_metadata import DocumentEntry

log = logging.getLogger("drimbox.dmp_sim.fhir")

FHIR_JSON = "application/fhir+json"

#: XDS metadata name (as the checks write it) → the FHIR element it came from.
_DR_PATHS = [
    ("classCode", "DocumentReference.category"),
    ("typeCode", "DocumentReference.type"),
    ("formatCode", "DocumentReference.content.format"),
    ("confidentialityCode", "DocumentReference.securityLabel"),
    ("eventCodeList", "DocumentReference.context.event"),
    ("healthcareFacilityTypeCode", "DocumentReference.context.facilityType"),
    ("practiceSettingCode", "DocumentReference.context.practiceSetting"),
    ("referenceIdList", "DocumentReference.context.related"),
    ("sourcePatientId", "DocumentReference.context.sourcePatientInfo"),
    ("patientId", "DocumentReference.subject"),
    ("hash", "DocumentReference.content.attachment.hash"),
    ("size", "DocumentReference.content.attachment.size"),
    ("mimeType", "DocumentReference.content.attachment.contentType"),
    ("languageCode", "DocumentReference.content.attachment.language"),
    ("creationTime", "DocumentReference.content.attachment.creation"),
    ("serviceStartTime", "DocumentReference.context.period.start"),
    ("serviceStopTime", "DocumentReference.context.period.end"),
    ("uniqueId", "DocumentReference.masterIdentifier"),
    ("author", "DocumentReference.author"),
    ("HasMember", "List.entry"),
    ("RPLC", "DocumentReference.relatesTo"),
]
_SS_PATHS = [
    ("uniqueId", "List.identifier"),
    ("sourceId", "List.extension"),
    ("contentTypeCode", "List.extension"),
    ("patientId", "List.subject"),
    ("submissionTime", "List.date"),
    ("author", "List.source"),
]
_ISSUE_TYPE = {
    "XDSUnknownPatientId": "value", "XDSPatientIdDoesNotMatch": "value",
    "XDSNonIdenticalHash": "value", "XDSNonIdenticalSize": "value",
    "XDSDuplicateUniqueIdInRegistry": "duplicate",
    "XDSRegistryDuplicateUniqueIdInMessage": "duplicate",
    "XDSMissingDocument": "required", "XDSMissingDocumentMetadata": "required",
    "XDSRegistryDeprecatedDocumentError": "business-rule", "XDSMetadataUpdateError":
        "business-rule", "XDSRegistryError": "not-found",
}


@dataclass
class Issue:
    code: str
    diagnostics: str
    xds_code: str = ""
    expression: str = ""
    severity: str = "error"


@dataclass
class Refusal(Exception):  # noqa: N818 - an answer, not a bug
    status: int
    issues: list[Issue] = field(default_factory=list)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    out = []
    for i in issues:
        item: dict[str, Any] = {"severity": i.severity, "code": i.code,
                                "diagnostics": i.diagnostics}
        if i.xds_code:
            item["details"] = {"text": i.xds_code}
        if i.expression:
            item["expression"] = [i.expression]
        out.append(item)
    return {"resourceType": "OperationOutcome", "issue": out}


def _issue(err: XdsError, ss_id: str) -> Issue:
    ctx = err.context
    paths = _SS_PATHS if ctx.startswith(ss_id) else _DR_PATHS
    expression = next((p for label, p in paths if re.search(rf"\b{label}\b", ctx)), "")
    kind = _ISSUE_TYPE.get(err.code, "required" if "missing" in ctx else "value")
    return Issue(kind, ctx, err.code, expression,
                 "warning" if err.is_warning else "error")


V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"


def pdsm_issues(eid: str, dr: dict[str, Any]) -> list[Issue]:
    """What PDSm_ComprehensiveDocumentReference requires beyond the XDS metadata: a custodian,
    ``date``, ``content.attachment.title``, ``context.period.start``, exactly one
    ``securityLabel`` in v3-Confidentiality (its *confidentiality* slice, 1..1); and, MHD, a
    submitted DocumentReference is ``current``."""
    att = ((dr.get("content") or [{}])[0]).get("attachment") or {}
    period = (dr.get("context") or {}).get("period") or {}
    out = [Issue("required", f"{eid}: {what} is required by PDSm", checks.META, path)
           for present, what, path in (
               (dr.get("custodian"), "custodian", "DocumentReference.custodian"),
               (dr.get("date"), "date", "DocumentReference.date"),
               (att.get("title"), "the document title",
                "DocumentReference.content.attachment.title"),
               (period.get("start"), "the act's start", "DocumentReference.context.period.start"),
           ) if not present]
    if dr.get("status") != "current":
        out.append(Issue("value", f"{eid}: a submitted DocumentReference is current, not "
                                  f"{dr.get('status')!r}", checks.META, "DocumentReference.status"))
    hl7 = [c for label in dr.get("securityLabel") or [] for c in label.get("coding") or []
           if c.get("system") == V3_CONFIDENTIALITY]
    if len(hl7) != 1:
        out.append(Issue("value", f"{eid}: securityLabel needs exactly one {V3_CONFIDENTIALITY} "
                                  f"code (PDSm confidentiality slice), has {len(hl7)}",
                         checks.META, "DocumentReference.securityLabel"))
    return out


def _refuse(status: int, code: str, text: str, xds_code: str = "", expression: str = "") -> Refusal:
    return Refusal(status, [Issue(code, text, xds_code, expression)])


@dataclass
class _Doc:
    index: int
    full_url: str
    resource: dict[str, Any]
    entry: DocumentEntry
    eid: str
    data: bytes = b""
    replaces: list[StoredEntry] = field(default_factory=list)


class FhirFace:
    """``/fhir`` of the DMP simulator (see the module docstring)."""

    def __init__(self, store: SimStore) -> None:
        self.store = store

    def handle(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
               base: str) -> tuple[int, str, bytes]:
        try:
            status, ctype, out = self._route(method, path, query, headers, body, base)
        except Refusal as r:
            # Codes and elements only: diagnostics may quote an INS (never logged).
            log.info("FHIR refusal %d: %s", r.status, "; ".join(
                f"{i.xds_code or i.code} {i.expression}" for i in r.issues))
            status, ctype = r.status, FHIR_JSON
            out = json.dumps(operation_outcome(r.issues)).encode()
        return status, ctype, out

    def _route(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
               base: str) -> tuple[int, str, bytes]:
        parts = [p for p in path.split("/") if p][1:]  # after "fhir"
        if not parts:
            if method != "POST":
                raise _refuse(405, "not-supported", "the base URL takes POST (ITI-65) only")
            ctype = headers.get("content-type", "")
            if "xml" in ctype:
                raise _refuse(415, "not-supported", "this simulator reads FHIR JSON only "
                              f"({FHIR_JSON}); MHD recipients also take XML")
            return self._json(200, self.transaction(body, base))
        if parts[0] == "DocumentReference":
            if method == "GET" and len(parts) == 1:
                return self._json(200, self.search(query, base))
            if method == "GET" and len(parts) == 2:
                found = self.store.by_entry_uuid(f"urn:uuid:{parts[1]}")
                if found is None:
                    raise _refuse(404, "not-found", f"DocumentReference/{parts[1]} is unknown")
                return self._json(200, self._document_reference(found, base))
            if method == "PATCH" and len(parts) <= 2:
                return self._json(200, self.patch(parts[1] if len(parts) == 2 else None, query,
                                                  headers, body, base))
        if parts[0] == "Binary" and method == "GET" and len(parts) == 2:
            return self.binary(parts[1], headers)
        raise _refuse(404 if method in ("GET", "PATCH") else 405, "not-supported",
                      f"{method} {path} is not served (ITI-65, ITI-67, ITI-68, PATCH of status)")

    @staticmethod
    def _json(status: int, doc: dict[str, Any]) -> tuple[int, str, bytes]:
        return status, FHIR_JSON, json.dumps(doc).encode()

    # ---------------------------------------------------------------------------- ITI-65

    def transaction(self, body: bytes, base: str) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _refuse(400, "structure", f"the body is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
            raise _refuse(400, "structure", "ITI-65 posts a Bundle")
        try:
            Bundle.model_validate(data)
        except ValidationError as exc:
            raise _refuse(400, "structure", f"not a valid FHIR R4 Bundle: {exc}"[:2000]) from exc
        if data.get("type") != "transaction":
            raise _refuse(400, "invalid", f"Bundle.type is {data.get('type')!r}, ITI-65 needs "
                                          "'transaction'", expression="Bundle.type")
        lists, docs, binaries, patches = [], [], {}, []
        for i, e in enumerate(data.get("entry") or []):
            res, req = e.get("resource") or {}, e.get("request") or {}
            rt, method, url = res.get("resourceType"), req.get("method"), str(req.get("url", ""))
            if rt == "List" and method == "POST":
                lists.append((i, e))
            elif rt == "DocumentReference" and method == "POST":
                docs.append((i, e))
            elif rt == "Binary" and method == "POST":
                binaries[e.get("fullUrl", "")] = (i, res)
            elif rt == "Parameters" and method == "PATCH" and url.startswith("DocumentReference"):
                patches.append((i, url, res))
            else:
                raise _refuse(400, "not-supported", f"entry {i}: {method} {rt} is not part of "
                              "ITI-65 (List, DocumentReference, Binary, PATCH of a replaced "
                              "DocumentReference)", expression=f"Bundle.entry[{i}]")
        subs = [(i, e) for i, e in lists
                if any(c.get("code") == "submissionset" and c.get("system") == MHD_LIST_TYPES
                       for c in ((e["resource"].get("code") or {}).get("coding") or []))]
        if len(subs) != 1 or len(lists) != 1:
            raise _refuse(400, "invalid", f"ITI-65 carries exactly one SubmissionSet List "
                          f"(code {MHD_LIST_TYPES}#submissionset); found {len(subs)} of "
                          f"{len(lists)} List", expression="Bundle.entry")
        if not docs:
            raise _refuse(400, "invalid", "the Bundle carries no DocumentReference",
                          expression="Bundle.entry")
        ss_index, ss_entry = subs[0]
        ss = submission_set_from_list(ss_entry["resource"])
        ss_uuid = entry_uuid_from(ss_entry["resource"]) or f"urn:uuid:{uuid.uuid4()}"
        parsed = [self._read_document(i, e, binaries) for i, e in docs]
        used = {p.resource["content"][0]["attachment"].get("url") for p in parsed
                if p.resource.get("content")}
        issues = [Issue("required", f"Binary {u} is referenced by no DocumentReference",
                        "XDSMissingDocumentMetadata", f"Bundle.entry[{i}]")
                  for u, (i, _) in binaries.items() if u not in used]
        by_url = {p.full_url: p.eid for p in parsed}
        members = [by_url.get(str((it.get("item") or {}).get("reference", "")),
                              str((it.get("item") or {}).get("reference", "")))
                   for it in ss_entry["resource"].get("entry") or []]
        self._resolve_replacements(parsed, patches)
        req = self._ebrim(ss, parsed, members)
        errors, sub = checks.check_submission(req, {p.eid: p.data for p in parsed if p.data},
                                              require_signature=False)
        issues += [_issue(e, ebrim.SS_ID) for e in errors if not e.is_warning]
        for p in parsed:
            issues += pdsm_issues(p.eid, p.resource)
        if issues:
            raise Refusal(422, issues)
        self._registry_rules(ss.unique_id, parsed)
        self._store(sub, ss_uuid, parsed)
        log.info("ITI-65 stored submission set %s (%d documents)", ss.unique_id, len(parsed))
        out: list[dict[str, Any]] = [{} for _ in data["entry"]]
        out[ss_index] = {"response": {"status": "201 Created",
                                      "location": f"List/{ss_uuid.removeprefix('urn:uuid:')}"}}
        for p in parsed:
            out[p.index] = {"response": {"status": "201 Created", "location":
                                         f"DocumentReference/{p.eid.removeprefix('urn:uuid:')}"}}
            out[binaries[p.resource['content'][0]['attachment']['url']][0]] = {
                "response": {"status": "201 Created", "location": f"Binary/{p.entry.unique_id}"}}
        for i, _, _ in patches:
            out[i] = {"response": {"status": "200 OK"}}
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}

    def _read_document(self, i: int, e: dict[str, Any], binaries: dict) -> _Doc:
        res = e["resource"]
        entry = entry_from_document_reference(res)
        eid = entry_uuid_from(res)
        if not eid or self.store.by_entry_uuid(eid) is not None:
            eid = f"urn:uuid:{uuid.uuid4()}"
        doc = _Doc(i, str(e.get("fullUrl", "")), res, entry, eid)
        contents = res.get("content") or []
        url = ((contents[0] if contents else {}).get("attachment") or {}).get("url", "")
        if url not in binaries:
            raise _refuse(422, "required", f"{eid}: content.attachment.url {url!r} is not a "
                          "Binary of this Bundle", "XDSMissingDocument",
                          "DocumentReference.content.attachment.url")
        binary = binaries[url][1]
        try:
            doc.data = base64.b64decode(binary.get("data") or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _refuse(400, "structure", f"Binary {url}: data is not base64") from exc
        if binary.get("contentType") != entry.mime_type:
            raise _refuse(422, "value", f"{eid}: Binary contentType {binary.get('contentType')!r}"
                          f" differs from the attachment's {entry.mime_type!r}",
                          checks.META, "DocumentReference.content.attachment.contentType")
        return doc

    def _resolve(self, reference: str, identifier: dict[str, Any] | None) -> list[StoredEntry]:
        m = re.match(r"^DocumentReference\?identifier=(?:[^|]*\|)?(.+)$", reference)
        if m:
            return self._by_token(m.group(1))
        m = re.match(r"^DocumentReference/([A-Za-z0-9.\-]+)$", reference)
        if m:
            e = self.store.by_entry_uuid(f"urn:uuid:{m.group(1)}")
            return [e] if e else []
        if identifier and identifier.get("value"):
            return self._by_token(str(identifier["value"]))
        return []

    def _by_token(self, value: str) -> list[StoredEntry]:
        if value.startswith("urn:uuid:"):
            e = self.store.by_entry_uuid(value)
            return [e] if e else []
        return self.store.by_unique_id(value.removeprefix("urn:oid:"))

    def _resolve_replacements(self, parsed: list[_Doc], patches: list) -> None:
        patched: dict[str, int] = {}
        for i, url, params in patches:
            targets = self._resolve(url, None)
            ops = _patch_operations(params)
            if ops != [("replace", "DocumentReference.status", "superseded")]:
                raise _refuse(422, "business-rule", f"entry {i}: in ITI-65 a PATCH only sets a "
                              "replaced DocumentReference's status to superseded",
                              checks.META, f"Bundle.entry[{i}]")
            if len(targets) != 1:
                raise _refuse(404 if not targets else 412, "not-found",
                              f"entry {i}: {url} matches {len(targets)} DocumentReference",
                              "XDSRegistryError", f"Bundle.entry[{i}].request.url")
            patched[targets[0].entry_uuid] = i
        for p in parsed:
            for rel in p.resource.get("relatesTo") or []:
                if rel.get("code") != "replaces":
                    raise _refuse(422, "not-supported", f"{p.eid}: relatesTo {rel.get('code')!r}"
                                  " is not accepted (only replaces)", checks.META,
                                  "DocumentReference.relatesTo")
                target = rel.get("target") or {}
                found = self._resolve(str(target.get("reference", "")), target.get("identifier"))
                if len(found) != 1:
                    raise _refuse(404, "not-found", f"{p.eid}: the replaced document "
                                  f"{target.get('reference') or target.get('identifier')} is "
                                  "not registered", "XDSRegistryError",
                                  "DocumentReference.relatesTo.target")
                if found[0].entry_uuid not in patched:
                    raise _refuse(422, "business-rule", f"{p.eid}: the replaced DocumentReference"
                                  f" {found[0].entry_uuid} must be set to superseded by a PATCH in"
                                  " the same Bundle (MHD ITI-65 2:3.65.4.1.2.3)", checks.META,
                                  "DocumentReference.relatesTo")
                p.replaces.append(found[0])
        replaced = {t.entry_uuid for p in parsed for t in p.replaces}
        for target, i in patched.items():
            if target not in replaced:
                raise _refuse(422, "business-rule", f"entry {i}: PATCH of {target}, which no "
                              "DocumentReference of the Bundle replaces", checks.META,
                              f"Bundle.entry[{i}]")

    @staticmethod
    def _ebrim(ss, parsed: list[_Doc], members: list[str]) -> etree._Element:  # noqa: ANN001
        """The ITI-41 request this submission stands for (without the signature document)."""
        req = etree.Element(q(XDSB, "ProvideAndRegisterDocumentSetRequest"),
                            nsmap={"xdsb": XDSB, "lcm": LCM, "rim": RIM})
        rol = etree.SubElement(etree.SubElement(req, q(LCM, "SubmitObjectsRequest")),
                               q(RIM, "RegistryObjectList"))
        ids = ebrim.IdSequence()
        ebrim.registry_package(rol, ss, ids)
        for p in parsed:
            eo = ebrim.extrinsic_object(rol, p.eid, p.entry, ids)
            for c in eo.findall(q(RIM, "Classification")):  # absent codes: let the checks say so
                if c.get("classificationScheme") != N.DE_AUTHOR and not c.get("nodeRepresentation"):
                    eo.remove(c)
        for m in members:
            ebrim.association(rol, N.HAS_MEMBER, ebrim.SS_ID, m, SubmissionSetStatus="Original")
        for p in parsed:
            for t in p.replaces:
                ebrim.association(rol, N.RPLC, p.eid, t.entry_uuid)
        for p in parsed:
            etree.SubElement(req, q(XDSB, "Document"), id=p.eid)
        return req

    def _registry_rules(self, ss_unique_id: str, parsed: list[_Doc]) -> None:
        issues = []
        if self.store.submission_set_exists(ss_unique_id):
            issues.append(Issue("duplicate", f"SubmissionSet uniqueId {ss_unique_id} is already "
                                "registered", "XDSDuplicateUniqueIdInRegistry", "List.identifier"))
        for p in parsed:
            for old in self.store.by_unique_id(p.entry.unique_id):
                same = old.hash.lower() == p.entry.hash_sha1.lower()
                issues.append(Issue(
                    "duplicate" if same else "value",
                    f"{p.eid}: uniqueId {p.entry.unique_id} is already registered as "
                    f"{old.entry_uuid}" + ("" if same else " with another hash"),
                    "XDSDuplicateUniqueIdInRegistry" if same else "XDSNonIdenticalHash",
                    "DocumentReference.masterIdentifier"))
            for t in p.replaces:
                if t.status != "Approved":
                    issues.append(Issue("business-rule", f"{p.eid}: the replaced {t.entry_uuid} "
                                        f"is {t.status}", "XDSRegistryDeprecatedDocumentError",
                                        "DocumentReference.relatesTo"))
                elif t.patient_id != p.entry.patient_id:
                    issues.append(Issue("value", f"{p.eid}: the replaced {t.entry_uuid} belongs "
                                        "to another patient", "XDSPatientIdDoesNotMatch",
                                        "DocumentReference.relatesTo"))
        if issues:
            raise Refusal(422, issues)

    def _store(self, sub: checks.ParsedSubmission, ss_uuid: str, parsed: list[_Doc]) -> None:
        def stable_ids(el: etree._Element) -> etree._Element:
            el = copy.deepcopy(el)
            for node in el.iter():
                if node is not el and node.get("id") and not node.get("id").startswith("urn:uuid:"):
                    node.set("id", f"urn:uuid:{uuid.uuid4()}")
                for attr in ("classifiedObject", "registryObject", "sourceObject"):
                    if node.get(attr) == ebrim.SS_ID:
                        node.set(attr, ss_uuid)
            if el.get("id") == ebrim.SS_ID:
                el.set("id", ss_uuid)
            return el

        entries = []
        by_id = {e.id: e for e in sub.entries}
        for p in parsed:
            e = p.entry
            entries.append(StoredEntry(
                p.eid, e.unique_id, e.patient_id, "Approved", e.mime_type, e.hash_sha1.lower(),
                e.size, e.creation_time, e.service_start, e.service_stop,
                [f"{c.code}^^{c.scheme}" for c in e.event_codes],
                [r.cxi() for r in e.reference_ids],
                etree.tostring(stable_ids(by_id[p.eid].el), encoding="unicode")))
        assocs = []
        for a in sub.associations:
            ra = stable_ids(a)
            ra.set("id", f"urn:uuid:{uuid.uuid4()}")
            assocs.append((ra.get("id"), ra.get("associationType"), ra.get("sourceObject"),
                           ra.get("targetObject"), etree.tostring(ra, encoding="unicode")))
        self.store.commit_submission(
            (sub.ss_unique_id, ss_uuid, sub.ss_patient_id, sub.ss_source_id,
             etree.tostring(stable_ids(sub.ss), encoding="unicode")),
            entries, sub.ss_unique_id,
            [(p.entry.unique_id, p.entry.mime_type, p.data) for p in parsed], assocs,
            [t.entry_uuid for p in parsed for t in p.replaces])

    # ---------------------------------------------------------------------- ITI-67 / 68

    def _document_reference(self, e: StoredEntry, base: str) -> dict[str, Any]:
        entry = ebrim.entry_from_extrinsic(etree.fromstring(e.xml))
        dr = document_reference(entry, entry_uuid=e.entry_uuid,
                                attachment_url=f"{base}/Binary/{e.unique_id}",
                                status=STATUS_TO_FHIR.get(e.status, "current"),
                                resource_id=e.entry_uuid.removeprefix("urn:uuid:"))
        replaced = self.store.association_targets(e.entry_uuid, N.RPLC)
        if replaced:
            dr["relatesTo"] = [{"code": "replaces", "target": {
                "reference": f"DocumentReference/{t.removeprefix('urn:uuid:')}"}} for t in replaced]
        return dr

    def search(self, query: str, base: str) -> dict[str, Any]:
        params: dict[str, list[str]] = {}
        for k, v in parse_qsl(query, keep_blank_values=True):
            params.setdefault(k, []).append(v)
        unknown = sorted(set(params) - {"patient.identifier", "status", "identifier", "_format"})
        if unknown:
            raise _refuse(400, "not-supported", f"search parameter {unknown[0]!r} is not "
                          "supported (patient.identifier, status, identifier)")
        if len(params.get("patient.identifier", [])) != 1:
            raise _refuse(400, "required", "ITI-67 needs one patient.identifier "
                          "(urn:oid:<INS OID>|<INS>)", "XDSStoredQueryMissingParam")
        system, _, value = params["patient.identifier"][0].partition("|")
        pid = f"{value}^^^&{scheme_of(system)}&ISO^NH"
        errs = checks.check_patient_id(pid, "patient.identifier")
        if errs:
            raise Refusal(400, [Issue("value", e.context, e.code, "patient.identifier")
                                for e in errs])
        statuses = {STATUS_FROM_FHIR.get(s) for v in params.get("status", [])
                    for s in v.split(",")}
        if None in statuses:
            raise _refuse(400, "value", f"status {params['status']} is not current / superseded")
        tokens = {v.split("|", 1)[-1] for v in params.get("identifier", [])}
        found = []
        for e in self.store.by_patient(pid):
            if statuses and e.status not in statuses:
                continue
            if tokens and not tokens & {f"urn:oid:{e.unique_id}", e.unique_id, e.entry_uuid}:
                continue
            found.append(e)
        return {"resourceType": "Bundle", "type": "searchset", "total": len(found),
                "entry": [{"fullUrl": f"{base}/DocumentReference/"
                                      f"{e.entry_uuid.removeprefix('urn:uuid:')}",
                           "resource": self._document_reference(e, base),
                           "search": {"mode": "match"}} for e in found]}

    def binary(self, unique_id: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        doc = self.store.document(unique_id)
        if doc is None:
            raise _refuse(404, "not-found", f"Binary/{unique_id} is unknown")
        if FHIR_JSON in headers.get("accept", ""):
            return self._json(200, {"resourceType": "Binary", "id": unique_id,
                                    "contentType": doc[0],
                                    "data": base64.b64encode(doc[1]).decode()})
        return 200, doc[0], doc[1]

    # --------------------------------------------------------------------------- PATCH

    def patch(self, rid: str | None, query: str, headers: dict[str, str], body: bytes,
              base: str) -> dict[str, Any]:
        if FHIR_JSON not in headers.get("content-type", ""):
            raise _refuse(415, "not-supported", "PATCH takes a FHIRPath Patch Parameters as "
                          f"{FHIR_JSON}")
        try:
            params = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _refuse(400, "structure", f"the body is not JSON: {exc}") from exc
        if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
            raise _refuse(400, "structure", "a FHIRPath Patch is a Parameters resource")
        ops = _patch_operations(params)
        if not ops or any(op[:2] != ("replace", "DocumentReference.status") for op in ops):
            raise _refuse(405, "not-supported", "only 'replace DocumentReference.status' is "
                          "accepted", expression="Parameters.parameter")
        new = STATUS_FROM_FHIR.get(ops[-1][2])
        if new is None:
            raise _refuse(400, "value", f"status {ops[-1][2]!r} is not current / superseded")
        if rid is not None:
            target = self.store.by_entry_uuid(f"urn:uuid:{rid}")
            matches = [target] if target else []
        else:
            q_ = dict(parse_qsl(query))
            if "identifier" not in q_:
                raise _refuse(400, "required", "a conditional PATCH needs identifier=")
            matches = self._by_token(q_["identifier"].split("|", 1)[-1])
        if not matches:
            raise _refuse(404, "not-found", "no DocumentReference matches",
                          "XDSMetadataUpdateError")
        if len(matches) > 1:
            raise _refuse(412, "multiple-matches", f"{len(matches)} DocumentReference match")
        target = matches[0]
        if target.status == new:
            raise _refuse(422, "business-rule", f"{target.entry_uuid} is already "
                          f"{STATUS_TO_FHIR[new]}", "XDSMetadataUpdateError",
                          "DocumentReference.status")
        self.store.set_status(target.entry_uuid, new)
        log.info("PATCH %s: %s → %s", target.entry_uuid, target.status, new)
        return self._document_reference(self.store.by_entry_uuid(target.entry_uuid), base)


def _patch_operations(params: dict[str, Any]) -> list[tuple[str, str, str]]:
    ops = []
    for p in params.get("parameter") or []:
        if p.get("name") != "operation":
            continue
        parts = {x.get("name"): x for x in p.get("part") or []}
        value = parts.get("value") or {}
        ops.append((str((parts.get("type") or {}).get("valueCode", "")),
                    str((parts.get("path") or {}).get("valueString", "")),
                    str(value.get("valueCode") or value.get("valueString") or "")))
    return ops
