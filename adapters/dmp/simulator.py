"""DMP simulator: the DMP's XDS.b SOAP endpoints, validating as strictly as the DMP (R4-R8).

Run it with ``drimbox dmp-sim --port 8443 --db sim.sqlite --tls-cert server.pem --tls-key
server.key --client-ca ca.pem`` (see ``drimbox dmp-sim --help``). It is a plain ASGI app served
by uvicorn; with ``--client-ca`` the TLS handshake requires a client certificate issued by that
CA (R7: uvicorn ``ssl_cert_reqs=CERT_REQUIRED``), without it a client is refused before any
HTTP. It keeps everything in its own SQLite file (``--db``).

Endpoints (SOAP 1.2; requests and answers in MTOM/XOP or plain ``application/soap+xml``):

=====================  =====================================================================
POST /repository       ITI-41 Provide and Register Document Set-b, ITI-43 Retrieve
                       Document Set (MTOM answer)
POST /registry         ITI-18 Registry Stored Query (FindDocuments,
                       FindDocumentsByReferenceId, GetDocuments), ITI-57 Update Document
                       Set (UpdateAvailabilityStatus), ITI-62 Delete Document Set
POST /patients         TD0.2, the consumer's DMP access check (HL7v3 PRPA_IN201307UV02,
                       modelled: :mod:`adapters.dmp.patients`)
/fhir                  IHE MHD / PDSm: ITI-65, ITI-67, Binary (ITI-68), status PATCH, over the
                       same store (:mod:`adapters.mhd.recipient`; mutual TLS, no VIHF)
POST /admin/patients   a patient's DMP state for TD0.2 and the queries, JSON
                       ``{"patient_id": "<INS>^^^&<OID>&ISO^NH", "state": S}``, S one of
                       ``open`` (the default of every patient), ``no_dmp``, ``closed``,
                       ``refused`` (the patient opposed access)
POST /admin/faults     fault injection, JSON ``{"mode": M, "count": N, "seconds": S}``
GET  /admin/status     JSON: row counts and the pending fault
=====================  =====================================================================

Validation of every SOAP call: WS-Addressing ``Action`` and ``MessageID`` present, action known
on that endpoint (else a ``Sender`` fault ``wsa:ActionNotSupported``); a VIHF in
``wsse:Security`` (:func:`adapters.dmp.vihf.verify_vihf`: SAML 2.0, signature valid over the
whole assertion with a certificate issued by a trusted CA, Issuer = that certificate's
subject, every VIHF 3.0 attribute of SPEC 3.4) — a failure is a ``Sender`` SOAP fault with
subcode ``wsse:InvalidSecurity`` (no VIHF), ``wsse:InvalidSecurityToken`` (malformed,
untrusted) or ``wsse:FailedCheck`` (unsigned, tampered). The VIHF ``resource-id`` must be the
patient of the submission or query (``XDSPatientIdDoesNotMatch``).

ITI-41 additionally runs :func:`adapters.dmp.checks.check_submission` (ebRIM structure, R4
slots and codes, INS patientId with key check, hash/size of each attached document, HasMember
/ ``signs`` associations), verifies Signature01 (:mod:`adapters.dmp.dsg`: XMLDSig + XAdES,
trusted certificate, IHEManifest digests of the submission set and documents), refuses a
uniqueId already in the registry (``XDSDuplicateUniqueIdInRegistry``, or
``XDSNonIdenticalHash`` when the bytes differ) and an RPLC whose target is unknown
(``XDSRegistryError``), deprecated (``XDSRegistryDeprecatedDocumentError``) or another
patient's. A replaced entry becomes Deprecated. Every refusal is a RegistryResponse
``Failure`` whose RegistryErrors name the object and slot/classification in codeContext.

The consumer's queries (R16): FindDocuments / FindDocumentsByReferenceId refuse a parameter
the stored query does not define, an eventCode that is not ``<code>^^<scheme>`` in a DRIM-M
scheme (modality JDV 1.2.250.1.213.1.1.5.618 with a known modality, region ...5.695, acts
...5.687, CCAM) and an unknown status (``XDSRegistryError`` naming the value); a missing
patientId is ``XDSStoredQueryMissingParam``; a patient with no DMP is ``XDSUnknownPatientId``,
a closed DMP or a patient's opposition ``XDSRegistryError``. A document masked to
professionals (``MASQUE_PS``) is listed (and retrieved) only for its author and for the
structure (VIHF ``Identifiant_Structure``) that published it; for anyone else it does not
exist. Several Sources may publish to one simulator: each submission is checked and stored on
its own, a query returns every Source's documents for the patient.

Fault injection (``--fault MODE --fault-count N --fault-seconds S`` or ``/admin/faults``) for
the next N SOAP calls: ``http500`` (plain HTTP 500, nothing done), ``soap_fault`` (SOAP
``Receiver`` fault, nothing done), ``timeout`` (sleep S seconds, then process normally: a
client that gave up may still find its document stored), ``drop_after_store`` (process and
commit, then close the connection in the middle of the answer).

Deliberate leniency and strictness: children out of the ebRIM order are accepted with a
*Warning* (the ANS sample does it); RSA-SHA1 VIHF signatures (the 2023 DMP samples) are refused
unless ``--allow-sha1``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import threading
import uuid
from dataclasses import dataclass, field

from cryptography import x509
from lxml import etree

from adapters.dmp import checks, dsg, patients
from adapters.dmp import ns as N
from adapters.dmp.errors import XdsError
from adapters.dmp.ns import LCM, QUERY, RIM, RS, SAML2, WSSE, XDSB, q
from adapters.dmp.query import STATUS_NAMES, STATUS_URNS
from adapters.dmp.sim_store import SimStore, StoredEntry
from adapters.dmp.soap import (
    SOAP_CONTENT_TYPE,
    SoapError,
    body_payload,
    element_bytes,
    envelope,
    fault,
    header_value,
    pack_mtom,
    unpack_mtom,
    xop_include,
)
from adapters.dmp.vihf import VerifiedVihf, VihfError, verify_vihf
from adapters.mhd.recipient import FhirFace, Issue, operation_outcome
from gateway.manifest.xds_metadata import MODALITY_NAMES, SCHEME_MODALITY

log = logging.getLogger("drimbox.dmp_sim")

ENDPOINT_ACTIONS = {
    "/repository": {N.ACTION_ITI41, N.ACTION_ITI43},
    "/registry": {N.ACTION_ITI18, N.ACTION_ITI57, N.ACTION_ITI62},
    "/patients": {N.ACTION_TD02},
}
PATIENT_STATES = {patients.OPEN, patients.NO_DMP, patients.CLOSED, patients.REFUSED}
STRUCTURE = "Identifiant_Structure"
#: Parameters each FindDocuments query accepts (ITI TF-2a 3.18.4.1.2.3.7.1 / .7.14); the
#: simulator filters on those it knows and refuses any other name.
FIND_PARAMS = {
    "$XDSDocumentEntryPatientId", "$XDSDocumentEntryClassCode", "$XDSDocumentEntryTypeCode",
    "$XDSDocumentEntryPracticeSettingCode", "$XDSDocumentEntryCreationTimeFrom",
    "$XDSDocumentEntryCreationTimeTo", "$XDSDocumentEntryServiceStartTimeFrom",
    "$XDSDocumentEntryServiceStartTimeTo", "$XDSDocumentEntryServiceStopTimeFrom",
    "$XDSDocumentEntryServiceStopTimeTo", "$XDSDocumentEntryHealthcareFacilityTypeCode",
    "$XDSDocumentEntryEventCodeList", "$XDSDocumentEntryConfidentialityCode",
    "$XDSDocumentEntryAuthorPerson", "$XDSDocumentEntryFormatCode", "$XDSDocumentEntryStatus",
    "$XDSDocumentEntryType",
}
#: eventCodeList coding schemes a DRIM-M search may filter on (SPEC 1.3 step 4, 2.1), with the
#: codes the simulator knows for each (None: any code).
EVENT_SCHEMES: dict[str, set[str] | None] = {
    SCHEME_MODALITY: set(MODALITY_NAMES),
    "1.2.250.1.213.1.1.5.695": None,  # JDV_RegionAnatomique_CISIS (SNOMED CT)
    "1.2.250.1.213.1.1.5.687": None,  # JDV_CodesDocumentImagerie_CISIS (LOINC acts)
    "1.2.250.1.213.2.5": None,  # CCAM
}
MASKED_TO_PROFESSIONALS = "MASQUE_PS"
FAULT_MODES = {"none", "http500", "soap_fault", "timeout", "drop_after_store"}
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
MAX_BODY = 256 * 1024 * 1024


@dataclass
class FaultPlan:
    mode: str = "none"
    count: int = 0
    seconds: float = 5.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, mode: str, count: int = 1, seconds: float = 5.0) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r} (one of {sorted(FAULT_MODES)})")
        with self._lock:
            self.mode, self.count, self.seconds = mode, max(0, int(count)), float(seconds)

    def take(self) -> str:
        with self._lock:
            if self.mode == "none" or self.count <= 0:
                return "none"
            self.count -= 1
            return self.mode


class _Refused(Exception):
    def __init__(self, errors: list[XdsError]) -> None:
        super().__init__("; ".join(f"{e.code}: {e.context}" for e in errors))
        self.errors = errors


class _Fault(Exception):
    def __init__(self, code: str, subcode: str, reason: str, status: int) -> None:
        super().__init__(reason)
        self.code, self.subcode, self.reason, self.status = code, subcode, reason, status


def registry_response(errors: list[XdsError] = (), status: str | None = None) -> etree._Element:
    rr = etree.Element(q(RS, "RegistryResponse"), nsmap={"rs": RS})
    rr.set("status", status or (N.RESPONSE_FAILURE if errors else N.RESPONSE_SUCCESS))
    _error_list(rr, errors)
    return rr


def _error_list(parent: etree._Element, errors: list[XdsError]) -> None:
    if not errors:
        return
    rel = etree.SubElement(parent, q(RS, "RegistryErrorList"))
    for e in errors:
        etree.SubElement(rel, q(RS, "RegistryError"), errorCode=e.code, codeContext=e.context,
                         location=e.location, severity=e.severity)


def parse_param(value: str) -> list[str]:
    """A stored-query parameter value: ``'a'``, ``('a','b')`` or a bare number."""
    v = value.strip()
    if v.startswith("(") and v.endswith(")"):
        v = v[1:-1]
    out = []
    for m in re.finditer(r"\s*('((?:[^']|'')*)'|[^,\s]+)\s*(,|$)", v):
        out.append(m.group(2).replace("''", "'") if m.group(2) is not None else m.group(1))
    return [x for x in out if x != ""]


class Simulator:
    """The ASGI application."""

    def __init__(self, store: SimStore, trusted_cas: list[x509.Certificate],
                 repository_unique_id: str = "1.2.250.1.213.1.1.9.99",
                 faults: FaultPlan | None = None, allow_sha1: bool = False) -> None:
        self.allow_sha1 = allow_sha1
        self.store = store
        self.trusted_cas = trusted_cas
        self.repository_unique_id = repository_unique_id
        self.faults = faults or FaultPlan()
        self.fhir = FhirFace(store)
        self.patient_states: dict[str, str] = {}
        """TD0.2 state by patientId (``INS^^^&OID&ISO^NH``); absent: ``open``."""

    # ------------------------------------------------------------------------------ ASGI

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        body = bytearray()
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > MAX_BODY:
                return await _send(send, 413, "text/plain", b"too large")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path == "/admin/faults" and method == "POST":
            try:
                spec = json.loads(body or b"{}")
                self.faults.set(spec.get("mode", "none"), spec.get("count", 1),
                                spec.get("seconds", 5.0))
            except (ValueError, AttributeError) as exc:
                return await _send(send, 400, "text/plain", str(exc).encode())
            return await _send(send, 204, "text/plain", b"")
        if path == "/admin/patients" and method == "POST":
            try:
                spec = json.loads(body or b"{}")
                pid, state = spec["patient_id"], spec.get("state", patients.OPEN)
                if state not in PATIENT_STATES or checks.check_patient_id(pid, "patient_id"):
                    raise ValueError(f"state one of {sorted(PATIENT_STATES)}, patient_id "
                                     "<INS>^^^&<OID>&ISO^NH")
                self.patient_states[pid] = state
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                return await _send(send, 400, "text/plain", str(exc).encode())
            return await _send(send, 204, "text/plain", b"")
        if path == "/admin/status" and method == "GET":
            data = {"counts": self.store.counts(),
                    "fault": {"mode": self.faults.mode, "count": self.faults.count}}
            return await _send(send, 200, "application/json", json.dumps(data).encode())
        if path == "/fhir" or path.startswith("/fhir/"):
            return await self._serve_fhir(scope, send, headers, bytes(body))
        if path not in ENDPOINT_ACTIONS:
            return await _send(send, 404, "text/plain", b"not found")
        if method != "POST":
            return await _send(send, 405, "text/plain", b"POST only")
        mode = self.faults.take()
        if mode == "http500":
            return await _send(send, 500, "text/plain", b"injected HTTP 500")
        if mode == "soap_fault":
            env = fault("Receiver", "wsa:EndpointUnavailable", "injected fault: service unavailable")
            return await _send(send, 500, SOAP_CONTENT_TYPE,
                               etree.tostring(env, xml_declaration=True, encoding="UTF-8"))
        if mode == "timeout":
            await asyncio.sleep(self.faults.seconds)
        status, ctype, out = self.handle(path, headers.get("content-type", ""), bytes(body))
        await _send(send, status, ctype, out, drop=mode == "drop_after_store")

    async def _serve_fhir(self, scope, send, headers: dict[str, str], body: bytes) -> None:  # noqa: ANN001
        """``/fhir`` (:mod:`adapters.mhd.recipient`), with the same fault injection as SOAP
        (``soap_fault`` becomes a 503 OperationOutcome)."""
        mode = self.faults.take()
        if mode == "http500":
            return await _send(send, 500, "text/plain", b"injected HTTP 500")
        if mode == "soap_fault":
            oo = operation_outcome([Issue("transient", "injected fault: service unavailable")])
            return await _send(send, 503, "application/fhir+json", json.dumps(oo).encode())
        if mode == "timeout":
            await asyncio.sleep(self.faults.seconds)
        base = f"{scope.get('scheme', 'https')}://{headers.get('host', 'localhost')}/fhir"
        status, ctype, out = self.fhir.handle(scope["method"], scope["path"],
                                              scope.get("query_string", b"").decode("latin-1"),
                                              headers, body, base)
        await _send(send, status, ctype, out, drop=mode == "drop_after_store")

    # ------------------------------------------------------------------------------ SOAP

    def handle(self, path: str, content_type: str, body: bytes) -> tuple[int, str, bytes]:
        """One SOAP call → (HTTP status, Content-Type, body)."""
        relates = None
        try:
            try:
                msg = unpack_mtom(content_type, body)
                payload = body_payload(msg.envelope)
            except SoapError as exc:
                raise _Fault("Sender", "", f"malformed SOAP/MTOM message: {exc}", 400) from exc
            action = header_value(msg.envelope, "Action")
            relates = header_value(msg.envelope, "MessageID")
            if not action or not relates:
                raise _Fault("Sender", "wsa:MessageAddressingHeaderRequired",
                             "wsa:Action and wsa:MessageID are required", 400)
            if action not in ENDPOINT_ACTIONS[path]:
                raise _Fault("Sender", "wsa:ActionNotSupported",
                             f"action {action} is not served at {path}", 400)
            sec = msg.envelope.find(f"{q(N.SOAP12, 'Header')}/{q(WSSE, 'Security')}")
            assertion = sec.find(q(SAML2, "Assertion")) if sec is not None else None
            try:
                vihf = verify_vihf(assertion, self.trusted_cas, allow_sha1=self.allow_sha1)
            except VihfError as exc:
                raise _Fault("Sender", exc.subcode, str(exc), 400) from exc
            handler = {
                N.ACTION_ITI41: self.iti41, N.ACTION_ITI43: self.iti43,
                N.ACTION_ITI18: self.iti18, N.ACTION_ITI57: self.iti57,
                N.ACTION_ITI62: self.iti62, N.ACTION_TD02: self.td02,
            }[action]
            result, attachments = handler(payload, msg.attachments, vihf)
        except _Fault as f:
            log.info("SOAP fault %s %s: %s", f.code, f.subcode, f.reason)
            env = fault(f.code, f.subcode, f.reason, relates_to=relates)
            return f.status, SOAP_CONTENT_TYPE, etree.tostring(env, xml_declaration=True,
                                                               encoding="UTF-8")
        except _Refused as r:
            log.info("refused %s: %s", action, r)
            result, attachments = registry_response(r.errors), None
        env = envelope(action + N.RESPONSE_SUFFIX, "", result, relates_to=relates)
        if action in (N.ACTION_ITI41, N.ACTION_ITI43):
            ctype, out = pack_mtom(env, attachments or {}, action + N.RESPONSE_SUFFIX)
            return 200, ctype, out
        return 200, SOAP_CONTENT_TYPE, etree.tostring(env, xml_declaration=True, encoding="UTF-8")

    @staticmethod
    def _check_vihf_patient(vihf: VerifiedVihf, patient_id: str) -> None:
        rid = (vihf.attributes.get(RESOURCE_ID) or [""])[0]
        if rid != patient_id:
            raise _Refused([XdsError("XDSPatientIdDoesNotMatch",
                                     f"VIHF resource-id {rid!r} is not the patient {patient_id!r} "
                                     "of the request")])

    # ------------------------------------------------------------------------------ TD0.2

    def td02(self, req, attachments, vihf):  # noqa: ANN001, ANN201, ARG002
        """TD0.2 (modelled, :mod:`adapters.dmp.patients`): the patient's DMP state for this
        professional. Errors are HL7v3 ``AE`` acknowledgements, as the query was read."""
        if req.tag != q(N.HL7, "PRPA_IN201307UV02"):
            return patients.response("AE", error_code="XDSRegistryError",
                                     error_text=f"{req.tag} is not a PRPA_IN201307UV02"), {}
        queried = patients.queried_patient(req)
        if queried is None:
            return patients.response("AE", error_code="XDSStoredQueryMissingParam",
                                     error_text="patientIdentifier/value (INS root and "
                                     "extension) is required"), {}
        pid = f"{queried[1]}^^^&{queried[0]}&ISO^NH"
        errs = checks.check_patient_id(pid, "patientIdentifier")
        if errs:
            return patients.response("AE", error_code=errs[0].code,
                                     error_text=errs[0].context), {}
        rid = (vihf.attributes.get(RESOURCE_ID) or [""])[0]
        if rid != pid:
            return patients.response("AE", error_code="XDSPatientIdDoesNotMatch",
                                     error_text=f"VIHF resource-id {rid!r} is not the patient "
                                     f"{pid!r} of the request"), {}
        state = self.patient_states.get(pid, patients.OPEN)
        if state == patients.NO_DMP:
            return patients.response("AA", found=False), {}
        return patients.response(
            "AA", found=True, ins=queried,
            status="terminated" if state == patients.CLOSED else "active",
            confidentiality="R" if state == patients.REFUSED else "N"), {}

    def _access_errors(self, pid: str) -> list[XdsError]:
        """What ITI-18 / ITI-43 answer for a patient whose DMP cannot be opened (modelled on
        TD0.2's states)."""
        state = self.patient_states.get(pid, patients.OPEN)
        if state == patients.NO_DMP:
            return [XdsError("XDSUnknownPatientId", f"{pid} has no DMP")]
        if state == patients.CLOSED:
            return [XdsError("XDSRegistryError", f"the DMP of {pid} is closed")]
        if state == patients.REFUSED:
            return [XdsError("XDSRegistryError", f"the patient {pid} refused access to this "
                             "professional (opposition)")]
        return []

    def _visible(self, e: StoredEntry, vihf: VerifiedVihf) -> bool:
        """A document masked to professionals (confidentialityCode ``MASQUE_PS``) is visible
        only to its author(s) and to the structure that published it; any other is visible to
        every professional (``INVISIBLE_PATIENT`` / ``INVISIBLE_REP_LEGAUX`` hide it from the
        patient and legal representatives, who do not query through a VIHF of a professional)."""
        eo = etree.fromstring(e.xml)
        codes = {c.get("nodeRepresentation") for c in eo.findall(
            f"{q(RIM, 'Classification')}[@classificationScheme='{N.DE_CONFIDENTIALITY}']")}
        if MASKED_TO_PROFESSIONALS not in codes:
            return True
        authors = {v.split("^")[0] for c in eo.findall(
            f"{q(RIM, 'Classification')}[@classificationScheme='{N.DE_AUTHOR}']")
            for v in checks.slots(c).get("authorPerson", [])}
        if vihf.subject_id in authors:
            return True
        publisher = self.store.publisher(e.entry_uuid)
        return publisher is not None and bool(publisher[1]) and publisher[1] == _structure(vihf)

    # ---------------------------------------------------------------------------- ITI-41

    def iti41(self, req, attachments, vihf):  # noqa: ANN001, ANN201
        if req.tag != q(XDSB, "ProvideAndRegisterDocumentSetRequest"):
            raise _Refused([XdsError("XDSRepositoryMetadataError",
                                     f"{req.tag} is not a ProvideAndRegisterDocumentSetRequest")])
        docs: dict[str, bytes] = {}
        for d in req.findall(q(XDSB, "Document")):
            did = d.get("id", "")
            if did in docs:
                raise _Refused([XdsError("XDSRepositoryMetadataError",
                                         f"xdsb:Document {did} is attached twice")])
            try:
                docs[did] = element_bytes(d, attachments)
            except SoapError as exc:
                raise _Refused([XdsError("XDSMissingDocument", f"xdsb:Document {did}: {exc}")]) \
                    from exc
        errors, sub = checks.check_submission(req, docs)
        warnings = [e for e in errors if e.is_warning]
        if len(warnings) < len(errors):
            raise _Refused(errors)
        self._check_vihf_patient(vihf, sub.ss_patient_id)
        sig = next(e for e in sub.entries if e.is_signature)
        try:
            dsg.verify_signature_document(
                docs[sig.id], sub.ss_unique_id, sub.ss,
                {e.unique_id: docs[e.id] for e in sub.entries if not e.is_signature},
                self.trusted_cas)
        except dsg.SignatureDocumentError as exc:
            raise _Refused([XdsError(checks.META, f"{sig.id}: {exc}")]) from exc
        errors = []
        if self.store.submission_set_exists(sub.ss_unique_id):
            errors.append(XdsError("XDSDuplicateUniqueIdInRegistry",
                                   f"{sub.ss_id}: SubmissionSet uniqueId {sub.ss_unique_id} is "
                                   "already registered"))
        for e in sub.entries:
            for old in self.store.by_unique_id(e.unique_id):
                if old.hash.lower() != (e.slots["hash"][0]).lower():
                    errors.append(XdsError("XDSNonIdenticalHash",
                                           f"{e.id}: uniqueId {e.unique_id} is registered with "
                                           "another hash"))
                else:
                    errors.append(XdsError("XDSDuplicateUniqueIdInRegistry",
                                           f"{e.id}: uniqueId {e.unique_id} is already "
                                           f"registered as {old.entry_uuid}"))
        deprecate = []
        for a in sub.assoc(N.RPLC):
            target = self.store.by_entry_uuid(a.get("targetObject"))
            src = next(e for e in sub.entries if e.id == a.get("sourceObject"))
            if target is None:
                errors.append(XdsError("XDSRegistryError", f"RPLC: entryUUID "
                                       f"{a.get('targetObject')} is not in the registry"))
            elif target.status != "Approved":
                errors.append(XdsError("XDSRegistryDeprecatedDocumentError",
                                       f"RPLC: {target.entry_uuid} is {target.status}"))
            elif target.patient_id != src.patient_id:
                errors.append(XdsError("XDSPatientIdDoesNotMatch",
                                       f"RPLC: {target.entry_uuid} belongs to another patient"))
            else:
                deprecate.append(target.entry_uuid)
        if errors:
            raise _Refused(errors)
        self._store_submission(sub, docs, deprecate, vihf)
        return registry_response(warnings, N.RESPONSE_SUCCESS), {}

    def _store_submission(self, sub: checks.ParsedSubmission, docs: dict[str, bytes],
                          deprecate: list[str], vihf: VerifiedVihf) -> None:
        uuids = {sub.ss_id: f"urn:uuid:{uuid.uuid4()}"}
        uuids.update({e.id: f"urn:uuid:{uuid.uuid4()}" for e in sub.entries})

        def rewrite(el: etree._Element) -> etree._Element:
            el = copy.deepcopy(el)
            for node in el.iter():
                for attr in ("id", "classifiedObject", "registryObject", "sourceObject",
                             "targetObject"):
                    v = node.get(attr)
                    if v in uuids:
                        node.set(attr, uuids[v])
                    elif attr == "id" and v and not v.startswith("urn:uuid:") and node is not el:
                        node.set(attr, f"urn:uuid:{uuid.uuid4()}")
            return el

        entries = []
        for e in sub.entries:
            s = e.slots
            entries.append(StoredEntry(
                uuids[e.id], e.unique_id, e.patient_id, "Approved", e.mime_type,
                s["hash"][0].lower(), int(s["size"][0]), s["creationTime"][0],
                (s.get("serviceStartTime") or [""])[0], (s.get("serviceStopTime") or [""])[0],
                [f"{c}^^{sch}" for c, sch in e.codes.get(N.DE_EVENT, [])],
                s.get("urn:ihe:iti:xds:2013:referenceIdList", []),
                etree.tostring(rewrite(e.el), encoding="unicode")))
        assocs = []
        for a in sub.associations:
            ra = rewrite(a)
            ra.set("id", f"urn:uuid:{uuid.uuid4()}")
            assocs.append((ra.get("id"), ra.get("associationType"), ra.get("sourceObject"),
                           ra.get("targetObject"), etree.tostring(ra, encoding="unicode")))
        self.store.commit_submission(
            (sub.ss_unique_id, uuids[sub.ss_id], sub.ss_patient_id, sub.ss_source_id,
             etree.tostring(rewrite(sub.ss), encoding="unicode")),
            entries, sub.ss_unique_id,
            [(e.unique_id, e.mime_type, docs[e.id]) for e in sub.entries], assocs, deprecate,
            (vihf.subject_id, _structure(vihf)))
        log.info("stored submission set %s (%d documents, %d replaced)", sub.ss_unique_id,
                 len(entries), len(deprecate))

    # ---------------------------------------------------------------------------- ITI-18

    def iti18(self, req, attachments, vihf):  # noqa: ANN001, ANN201, ARG002
        if req.tag != q(QUERY, "AdhocQueryRequest"):
            raise _Refused([XdsError("XDSRegistryError", f"{req.tag} is not an AdhocQueryRequest")])
        opt = req.find(q(QUERY, "ResponseOption"))
        return_type = opt.get("returnType", "ObjectRef") if opt is not None else "ObjectRef"
        if return_type not in ("LeafClass", "ObjectRef"):
            raise _Refused([XdsError("XDSRegistryError", f"returnType {return_type} unsupported")])
        aq = req.find(q(RIM, "AdhocQuery"))
        if aq is None:
            raise _Refused([XdsError("XDSRegistryError", "no rim:AdhocQuery")])
        params: dict[str, list[list[str]]] = {}
        for s in aq.findall(q(RIM, "Slot")):
            values = []
            for v in s.iter(q(RIM, "Value")):
                values += parse_param(v.text or "")
            params.setdefault(s.get("name", ""), []).append(values)
        qid = aq.get("id", "")
        if qid == N.SQ_FIND_DOCUMENTS:
            found = self._find(params, vihf, by_reference=False)
        elif qid == N.SQ_FIND_BY_REFERENCE_ID:
            found = self._find(params, vihf, by_reference=True)
        elif qid == N.SQ_GET_DOCUMENTS:
            found = self._get(params)
        else:
            raise _Refused([XdsError("XDSUnknownStoredQuery", f"stored query {qid!r} is not "
                                     "supported (FindDocuments, FindDocumentsByReferenceId, "
                                     "GetDocuments)")])
        resp = etree.Element(q(QUERY, "AdhocQueryResponse"), nsmap={"query": QUERY, "rim": RIM},
                             status=N.RESPONSE_SUCCESS)
        rol = etree.SubElement(resp, q(RIM, "RegistryObjectList"))
        for e in found:
            if return_type == "ObjectRef":
                etree.SubElement(rol, q(RIM, "ObjectRef"), id=e.entry_uuid)
                continue
            eo = etree.fromstring(e.xml)
            eo.set("status", STATUS_URNS[e.status])
            last_slot = eo.findall(q(RIM, "Slot"))[-1]
            rs = etree.Element(q(RIM, "Slot"), name="repositoryUniqueId")
            etree.SubElement(etree.SubElement(rs, q(RIM, "ValueList")),
                             q(RIM, "Value")).text = self.repository_unique_id
            last_slot.addnext(rs)
            rol.append(eo)
        return resp, {}

    @staticmethod
    def _single(params: dict[str, list[list[str]]], name: str, required: bool) -> str:
        occ = params.get(name)
        if not occ:
            if required:
                raise _Refused([XdsError("XDSStoredQueryMissingParam", f"{name} is required")])
            return ""
        if len(occ) > 1 or len(occ[0]) != 1:
            raise _Refused([XdsError("XDSStoredQueryParamNumber", f"{name} takes one value")])
        return occ[0][0]

    def _find(self, params, vihf, by_reference: bool) -> list[StoredEntry]:  # noqa: ANN001
        allowed = FIND_PARAMS | ({"$XDSDocumentEntryReferenceIdList"} if by_reference else set())
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise _Refused([XdsError("XDSRegistryError", f"{name} is not a parameter of "
                                     f"{'FindDocumentsByReferenceId' if by_reference else 'FindDocuments'}")
                            for name in unknown])
        pid = self._single(params, "$XDSDocumentEntryPatientId", True)
        errs = checks.check_patient_id(pid, "$XDSDocumentEntryPatientId")
        if errs:
            raise _Refused(errs)
        self._check_vihf_patient(vihf, pid)
        errs = self._access_errors(pid)
        if errs:
            raise _Refused(errs)
        errs = []
        for occ in params.get("$XDSDocumentEntryEventCodeList", []):
            if not occ:
                errs.append(XdsError("XDSStoredQueryParamNumber",
                                     "$XDSDocumentEntryEventCodeList has an empty value"))
            for value in occ:
                code, _, scheme = value.partition("^^")
                if not code or scheme not in EVENT_SCHEMES:
                    errs.append(XdsError("XDSRegistryError", f"$XDSDocumentEntryEventCodeList "
                                         f"{value!r}: not <code>^^<scheme> with a known "
                                         "eventCode scheme"))
                elif EVENT_SCHEMES[scheme] is not None and code not in EVENT_SCHEMES[scheme]:
                    errs.append(XdsError("XDSRegistryError", f"$XDSDocumentEntryEventCodeList "
                                         f"{value!r}: {code!r} is not in the value set "
                                         f"{scheme}"))
        for occ in params.get("$XDSDocumentEntryStatus", []):
            for value in occ:
                if value not in STATUS_NAMES:
                    errs.append(XdsError("XDSRegistryError",
                                         f"$XDSDocumentEntryStatus {value!r} is not a status"))
        if errs:
            raise _Refused(errs)
        if "$XDSDocumentEntryStatus" not in params:
            raise _Refused([XdsError("XDSStoredQueryMissingParam",
                                     "$XDSDocumentEntryStatus is required")])
        statuses = {STATUS_NAMES.get(s) for occ in params["$XDSDocumentEntryStatus"] for s in occ}
        statuses.discard(None)
        refs: set[str] = set()
        if by_reference:
            if "$XDSDocumentEntryReferenceIdList" not in params:
                raise _Refused([XdsError("XDSStoredQueryMissingParam",
                                         "$XDSDocumentEntryReferenceIdList is required")])
            refs = {r for occ in params["$XDSDocumentEntryReferenceIdList"] for r in occ}
        ranges = []
        for name, attr, lower in (
                ("$XDSDocumentEntryCreationTimeFrom", "creation_time", True),
                ("$XDSDocumentEntryCreationTimeTo", "creation_time", False),
                ("$XDSDocumentEntryServiceStartTimeFrom", "service_start", True),
                ("$XDSDocumentEntryServiceStartTimeTo", "service_start", False),
                ("$XDSDocumentEntryServiceStopTimeFrom", "service_stop", True),
                ("$XDSDocumentEntryServiceStopTimeTo", "service_stop", False)):
            v = self._single(params, name, False)
            if v:
                if not re.fullmatch(r"\d{4,14}", v):
                    raise _Refused([XdsError("XDSRegistryError", f"{name} {v!r} is not a DTM")])
                ranges.append((attr, v, lower))
        events = [set(occ) for occ in params.get("$XDSDocumentEntryEventCodeList", [])]
        out = []
        for e in self.store.by_patient(pid):
            if e.status not in statuses:
                continue
            if refs and not refs.intersection(e.reference_ids):
                continue
            ok = True
            for attr, v, lower in ranges:
                have = getattr(e, attr)[: len(v)]
                if not have or (have < v if lower else have >= v):
                    ok = False
            if ok and all(group.intersection(e.event_codes) for group in events) \
                    and self._visible(e, vihf):
                out.append(e)
        return out

    def _get(self, params) -> list[StoredEntry]:  # noqa: ANN001
        uuids = [u for occ in params.get("$XDSDocumentEntryEntryUUID", []) for u in occ]
        uids = [u for occ in params.get("$XDSDocumentEntryUniqueId", []) for u in occ]
        if bool(uuids) == bool(uids):
            raise _Refused([XdsError("XDSStoredQueryParamNumber", "GetDocuments takes "
                                     "$XDSDocumentEntryEntryUUID or $XDSDocumentEntryUniqueId")])
        found = [self.store.by_entry_uuid(u) for u in uuids]
        for u in uids:
            found += self.store.by_unique_id(u)
        return [e for e in found if e is not None]

    # ---------------------------------------------------------------------------- ITI-43

    def iti43(self, req, attachments, vihf):  # noqa: ANN001, ANN201, ARG002
        if req.tag != q(XDSB, "RetrieveDocumentSetRequest"):
            raise _Refused([XdsError("XDSRepositoryError",
                                     f"{req.tag} is not a RetrieveDocumentSetRequest")])
        resp = etree.Element(q(XDSB, "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB, "rs": RS})
        rr = etree.SubElement(resp, q(RS, "RegistryResponse"))
        errors, parts, served = [], {}, 0
        requests = req.findall(q(XDSB, "DocumentRequest"))
        if not requests:
            raise _Refused([XdsError("XDSRepositoryError", "no DocumentRequest")])
        for dr in requests:
            repo = (dr.findtext(q(XDSB, "RepositoryUniqueId")) or "").strip()
            uid = (dr.findtext(q(XDSB, "DocumentUniqueId")) or "").strip()
            if repo != self.repository_unique_id:
                errors.append(XdsError("XDSUnknownRepositoryId", f"repository {repo!r} unknown",
                                       uid))
                continue
            doc = self.store.document(uid)
            entries = self.store.by_unique_id(uid)
            if doc is None or not entries:
                errors.append(XdsError("XDSDocumentUniqueIdError", f"document {uid} unknown", uid))
                continue
            self._check_vihf_patient(vihf, entries[0].patient_id)
            if not self._visible(entries[0], vihf):
                errors.append(XdsError("XDSDocumentUniqueIdError", f"document {uid} unknown", uid))
                continue
            out = etree.SubElement(resp, q(XDSB, "DocumentResponse"))
            etree.SubElement(out, q(XDSB, "RepositoryUniqueId")).text = repo
            etree.SubElement(out, q(XDSB, "DocumentUniqueId")).text = uid
            etree.SubElement(out, q(XDSB, "mimeType")).text = doc[0]
            cid = f"doc{served}.{uuid.uuid4().hex}@dmp-sim"
            xop_include(etree.SubElement(out, q(XDSB, "Document")), cid)
            parts[cid] = doc[1]
            served += 1
        rr.set("status", N.RESPONSE_SUCCESS if not errors else
               (N.RESPONSE_PARTIAL if served else N.RESPONSE_FAILURE))
        _error_list(rr, errors)
        # RegistryErrorList must come before the DocumentResponses in the schema order.
        resp.remove(rr)
        resp.insert(0, rr)
        return resp, parts

    # ------------------------------------------------------------------------ ITI-57 / 62

    def iti57(self, req, attachments, vihf):  # noqa: ANN001, ANN201, ARG002
        errors, sub = checks.check_structure(req)
        errors = [e for e in errors if not e.is_warning] + checks.check_submission_set(sub)
        ups = sub.assoc(N.UPDATE_AVAILABILITY)
        if not ups:
            errors.append(XdsError("XDSMetadataUpdateError", "no UpdateAvailabilityStatus "
                                   "association (only availability updates are supported)"))
        if errors:
            raise _Refused(errors)
        self._check_vihf_patient(vihf, sub.ss_patient_id)
        if self.store.submission_set_exists(sub.ss_unique_id):
            raise _Refused([XdsError("XDSDuplicateUniqueIdInRegistry",
                                     f"SubmissionSet uniqueId {sub.ss_unique_id} already used")])
        changes = []
        for a in ups:
            sl = checks.slots(a)
            target = self.store.by_entry_uuid(a.get("targetObject", ""))
            orig = STATUS_NAMES.get((sl.get("OriginalStatus") or [""])[0])
            new = STATUS_NAMES.get((sl.get("NewStatus") or [""])[0])
            if target is None:
                errors.append(XdsError("XDSMetadataUpdateError",
                                       f"entryUUID {a.get('targetObject')} is not in the registry"))
            elif orig is None or new is None:
                errors.append(XdsError("XDSMetadataUpdateError",
                                       "OriginalStatus and NewStatus must be Approved/Deprecated"))
            elif target.status != orig:
                errors.append(XdsError("XDSMetadataUpdateError",
                                       f"{target.entry_uuid} is {target.status}, not {orig}"))
            elif target.patient_id != sub.ss_patient_id:
                errors.append(XdsError("XDSPatientIdDoesNotMatch",
                                       f"{target.entry_uuid} belongs to another patient"))
            else:
                changes.append((target.entry_uuid, new))
        if errors:
            raise _Refused(errors)
        ss_row = (sub.ss_unique_id, f"urn:uuid:{uuid.uuid4()}", sub.ss_patient_id,
                  sub.ss_source_id, etree.tostring(sub.ss, encoding="unicode"))
        for i, (u, new) in enumerate(changes):
            self.store.set_status(u, new, ss_row if i == 0 else None)
        return registry_response(), {}

    def iti62(self, req, attachments, vihf):  # noqa: ANN001, ANN201, ARG002
        if req.tag != q(LCM, "RemoveObjectsRequest"):
            raise _Refused([XdsError("XDSRegistryError", f"{req.tag} is not a RemoveObjectsRequest")])
        refs = [r.get("id", "") for r in req.iter(q(RIM, "ObjectRef"))]
        if not refs:
            raise _Refused([XdsError("XDSRegistryError", "ObjectRefList is empty")])
        for u in refs:
            e = self.store.by_entry_uuid(u)
            if e is None:
                raise _Refused([XdsError("UnresolvedReferenceException", f"{u} is not registered")])
            self._check_vihf_patient(vihf, e.patient_id)
        self.store.delete(refs)
        return registry_response(), {}


def _structure(vihf: VerifiedVihf) -> str:
    return (vihf.attributes.get(STRUCTURE) or [""])[0]


async def _send(send, status: int, ctype: str, body: bytes, *,  # noqa: ANN001
                drop: bool = False) -> None:
    """Answer; with ``drop`` (the ``drop_after_store`` fault) send a third of the body, then
    cut the connection: the request was carried out, the client never learns it."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype.encode()),
                            (b"content-length", str(len(body)).encode())]})
    if drop:
        await send({"type": "http.response.body", "body": body[: len(body) // 3],
                    "more_body": True})
        raise ConnectionAbortedError("injected fault: connection dropped after store")
    await send({"type": "http.response.body", "body": body})


def load_cas(path) -> list[x509.Certificate]:  # noqa: ANN001
    from pathlib import Path
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def serve(host: str, port: int, db: str, trust_ca: str, tls_cert: str | None = None,
          tls_key: str | None = None, client_ca: str | None = None,
          repository_unique_id: str = "1.2.250.1.213.1.1.9.99", fault_mode: str = "none",
          fault_count: int = 0, fault_seconds: float = 5.0, log_level: str = "info",
          allow_sha1: bool = False) -> None:
    """Run the simulator with uvicorn (blocking)."""
    import ssl
    from pathlib import Path

    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    faults = FaultPlan()
    faults.set(fault_mode, fault_count, fault_seconds)
    app = Simulator(SimStore(Path(db)), load_cas(trust_ca), repository_unique_id, faults,
                    allow_sha1)
    kw = {}
    if tls_cert:
        kw = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
        if client_ca:
            kw.update(ssl_ca_certs=client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on",
                timeout_graceful_shutdown=2, **kw)
