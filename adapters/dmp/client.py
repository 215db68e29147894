"""``DmpClient``: the DMP's XDS.b transactions over SOAP 1.2 / MTOM and mutual TLS (R4-R8).

Every call carries a VIHF built for it (:mod:`adapters.dmp.vihf`, R6) and goes over TLS 1.2+
with the structure's ORG authentication certificate (R7). Failures are typed
(:mod:`adapters.dmp.errors`): :class:`DmpTransientError` when the DMP may not have acted
(connection, TLS, timeout, HTTP 5xx, SOAP Receiver fault) — the outbox retries these after a
query by uniqueId — and :class:`DmpRefusedError` carrying the XDS error codes and codeContexts
when the DMP read the request and refused it.

Transactions: ITI-41 :meth:`provide_and_register` / :meth:`replace` (RPLC), ITI-18
:meth:`find_documents`, :meth:`find_documents_by_reference_id`, :meth:`get_documents`, TD0.2
:meth:`check_access` (the consumer's DMP access check, R16), ITI-43
:meth:`retrieve_document`, ITI-57 :meth:`update_availability` / :meth:`deprecate` and ITI-62
:meth:`delete`.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
from lxml import etree

from adapters.dmp import ebrim, patients, query
from adapters.dmp import ns as N
from adapters.dmp.errors import (
    DmpProtocolError,
    DmpRefusedError,
    DmpSecurityError,
    DmpTlsError,
    DmpTransientError,
    XdsError,
)
from adapters.dmp.soap import (
    SOAP_CONTENT_TYPE,
    SoapError,
    body_payload,
    envelope,
    pack_mtom,
    parse_fault,
    unpack_mtom,
)
from adapters.dmp.vihf import VihfContext, build_vihf
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import (
    Code,
    DocumentEntry,
    PublishedEntry,
    ReferenceId,
    SubmissionSet,
    xds_patient_id,
)

log = logging.getLogger("drimbox.dmp")


def _pid(patient: str | Ins) -> str:
    return xds_patient_id(patient) if isinstance(patient, Ins) else patient


@dataclass(frozen=True, slots=True)
class DmpEndpoints:
    registry_url: str
    repository_url: str
    patients_url: str = ""
    """TD0.2 (``/patients``); empty: the registry URL with its last segment ``patients``."""

    @property
    def patients(self) -> str:
        if self.patients_url:
            return self.patients_url
        return self.registry_url.rstrip("/").rsplit("/", 1)[0] + "/patients"


def tls_context(ca_bundle: Path, client_cert: Path | None, client_key: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ trusting only ``ca_bundle``, presenting the ORG certificate (R7)."""
    ctx = ssl.create_default_context(cafile=str(ca_bundle))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return ctx


class DmpClient:
    def __init__(self, endpoints: DmpEndpoints, *, ca_bundle: Path, client_cert: Path | None,
                 client_key: Path | None, sign_cert: Path, sign_key: Path,
                 timeout: float = 30.0) -> None:
        self.endpoints = endpoints
        self._sign_cert = sign_cert.read_bytes()
        self._sign_key = sign_key.read_bytes()
        self._http = httpx.Client(verify=tls_context(ca_bundle, client_cert, client_key),
                                  timeout=timeout, http2=False)

    @classmethod
    def from_settings(cls, settings) -> DmpClient:  # noqa: ANN001 - gateway.config.Settings
        """The client the configuration describes; raises ``ValueError`` naming what is missing."""
        missing = [name for name in ("dmp_registry_url", "dmp_repository_url", "dmp_ca_bundle",
                                     "dmp_client_cert", "dmp_client_key", "dmp_sign_cert",
                                     "dmp_sign_key") if getattr(settings, name) is None]
        if missing:
            raise ValueError(f"DMP settings missing: {', '.join(missing)}")
        if settings.dmp_transport != "xds":
            raise ValueError(f"dmp_transport is {settings.dmp_transport!r}: the FHIR transport is "
                             "adapters.mhd.transport.MhdTransport.from_settings")
        return cls(DmpEndpoints(settings.dmp_registry_url, settings.dmp_repository_url,
                                getattr(settings, "dmp_patients_url", None) or ""),
                   ca_bundle=settings.dmp_ca_bundle, client_cert=settings.dmp_client_cert,
                   client_key=settings.dmp_client_key, sign_cert=settings.dmp_sign_cert,
                   sign_key=settings.dmp_sign_key, timeout=settings.dmp_timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DmpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- transport

    def call(self, url: str, action: str, body: etree._Element, vihf: VihfContext | None,
             attachments: dict[str, bytes] | None = None, mtom: bool = False,
             assertion: etree._Element | None = None,
             registry_status: bool = True):  # noqa: ANN201
        """One SOAP transaction (low level): returns (payload element, MTOM attachments) or
        raises a typed error. ``assertion`` replaces the VIHF built from ``vihf`` (tests and
        vendors use it to send a deliberately broken one). ``registry_status`` False: the
        payload is not an ebXML registry answer (TD0.2's HL7v3), its status is not read."""
        if assertion is None and vihf is not None:
            assertion = build_vihf(vihf, self._sign_key, self._sign_cert)
        env = envelope(action, url, body, security=assertion)
        if mtom or attachments:
            content_type, data = pack_mtom(env, attachments or {}, action)
        else:
            content_type = f'{SOAP_CONTENT_TYPE}; charset=UTF-8; action="{action}"'
            data = etree.tostring(env, xml_declaration=True, encoding="UTF-8")
        try:
            resp = self._http.post(url, content=data, headers={"Content-Type": content_type})
        except httpx.TimeoutException as exc:
            raise DmpTransientError(f"DMP timeout ({type(exc).__name__}) on {action}") from exc
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc) or "TLS" in str(exc):
                raise DmpTlsError(f"TLS handshake with the DMP failed: {exc}") from exc
            raise DmpTransientError(f"cannot connect to the DMP: {exc}") from exc
        except httpx.TransportError as exc:
            if "SSL" in str(exc) or "TLS" in str(exc) or "alert" in str(exc):
                raise DmpTlsError(f"TLS failure with the DMP: {exc}") from exc
            raise DmpTransientError(f"DMP connection failed: {exc}") from exc
        try:
            msg = unpack_mtom(resp.headers.get("content-type", ""), resp.content)
        except SoapError as exc:
            if resp.status_code >= 500 or resp.status_code in (408, 429):
                raise DmpTransientError(f"DMP answered HTTP {resp.status_code}") from exc
            if resp.status_code >= 400:
                raise DmpRefusedError([XdsError(f"HTTP{resp.status_code}", resp.text[:200])]) from exc
            raise DmpProtocolError(f"unreadable DMP answer: {exc}") from exc
        fault = parse_fault(msg.envelope)
        if fault is not None:
            text = f"SOAP fault {fault.code} {fault.subcode}: {fault.reason}"
            if fault.code == "Receiver":
                raise DmpTransientError(text)
            err = [XdsError(fault.subcode or fault.code, fault.reason)]
            if fault.subcode.startswith("wsse:") or "wss" in fault.subcode:
                raise DmpSecurityError(err, text)
            raise DmpRefusedError(err, text)
        if resp.status_code >= 500:
            raise DmpTransientError(f"DMP answered HTTP {resp.status_code}")
        try:
            payload = body_payload(msg.envelope)
        except SoapError as exc:
            raise DmpProtocolError(str(exc)) from exc
        if not registry_status:
            return payload, msg.attachments
        status = query.response_status(payload)
        if status == N.RESPONSE_FAILURE:
            errors = query.registry_errors(payload)
            if any(e.code in ("XDSRegistryBusy", "XDSRepositoryBusy", "XDSRegistryNotAvailable",
                              "XDSRepositoryNotAvailable", "XDSRegistryOutOfResources",
                              "XDSRepositoryOutOfResources") for e in errors):
                raise DmpTransientError("; ".join(f"{e.code}: {e.context}" for e in errors))
            raise DmpRefusedError(errors or [XdsError("XDSRegistryError", "Failure without error")])
        if status not in (N.RESPONSE_SUCCESS, N.RESPONSE_PARTIAL):
            raise DmpProtocolError(f"unexpected response status {status!r}")
        return payload, msg.attachments

    # ---------------------------------------------------------------------------- ITI-41

    def provide_and_register(self, entry: DocumentEntry, ss: SubmissionSet, kos_bytes: bytes,
                             vihf: VihfContext, signature_unique_id: str,
                             replaces_entry_uuid: str | None = None) -> list[XdsError]:
        """Publish the KOS with its signature document (R4, R5). Raises on failure; returns the
        warnings of a successful answer (also logged)."""
        sub = ebrim.provide_and_register(entry, ss, kos_bytes, self._sign_key, self._sign_cert,
                                         signature_unique_id, replaces_entry_uuid)
        payload, _ = self.call(self.endpoints.repository_url, N.ACTION_ITI41, sub.body, vihf,
                               sub.attachments)
        warnings = [e for e in query.registry_errors(payload) if e.is_warning]
        for w in warnings:
            log.warning("DMP warning on %s: %s %s", entry.unique_id, w.code, w.context)
        return warnings

    def replace(self, old_entry_uuid: str, entry: DocumentEntry, ss: SubmissionSet,
                kos_bytes: bytes, vihf: VihfContext, signature_unique_id: str) -> list[XdsError]:
        """Replace a published KOS (RPLC, R8): the old entry becomes Deprecated."""
        return self.provide_and_register(entry, ss, kos_bytes, vihf, signature_unique_id, old_entry_uuid)

    # ------------------------------------------------------------------------------ TD0.2

    def check_access(self, patient: Ins, vihf: VihfContext) -> patients.DmpAccess:
        """TD0.2 (R16): does ``patient`` have a DMP this professional may open? An ``AE``
        acknowledgement raises :class:`DmpRefusedError` with its code and text."""
        body = patients.request(patient.matricule, patient.oid, vihf.lps_id)
        payload, _ = self.call(self.endpoints.patients, N.ACTION_TD02, body, vihf,
                               registry_status=False)
        try:
            answer = patients.parse_response(payload)
        except ValueError as exc:
            raise DmpProtocolError(f"unreadable TD0.2 answer: {exc}") from exc
        if isinstance(answer, patients.AckError):
            raise DmpRefusedError([XdsError(answer.code, answer.text)])
        return answer

    # ---------------------------------------------------------------------------- ITI-18

    def _query(self, body: etree._Element, vihf: VihfContext) -> list[PublishedEntry]:
        payload, _ = self.call(self.endpoints.registry_url, N.ACTION_ITI18, body, vihf)
        return query.parse_query_response(payload)

    def find_documents(self, patient: str | Ins, vihf: VihfContext,
                       statuses: tuple[str, ...] = ("Approved",), creation_from: str = "",
                       creation_to: str = "", service_start_from: str = "",
                       service_stop_to: str = "",
                       event_codes: tuple[Code, ...] | tuple[tuple[Code, ...], ...] = (),
                       reference_ids: list[str] | None = None) -> list[PublishedEntry]:
        """ITI-18 FindDocuments for a patient (an :class:`Ins` or its ``INS^^^&OID&ISO^NH``);
        with ``reference_ids`` (CXi values), FindDocumentsByReferenceId with the same filters.
        ``event_codes``: one OR group of codes, or several groups (ANDed)."""
        return self._query(query.find_documents(_pid(patient), statuses, creation_from, creation_to,
                                                service_start_from, service_stop_to, event_codes,
                                                reference_ids), vihf)

    def find_documents_by_reference_id(self, patient: str | Ins,
                                       reference_ids: list[str | ReferenceId],
                                       vihf: VihfContext,
                                       statuses: tuple[str, ...] = ("Approved",)
                                       ) -> list[PublishedEntry]:
        """ITI-18 FindDocumentsByReferenceId (e.g. the accession number, R4)."""
        refs = [r.cxi() if isinstance(r, ReferenceId) else r for r in reference_ids]
        return self._query(query.find_documents_by_reference_id(_pid(patient), refs, statuses),
                           vihf)

    def get_documents(self, vihf: VihfContext, entry_uuids: list[str] = (),
                      unique_ids: list[str] = ()) -> list[PublishedEntry]:
        return self._query(query.get_documents(list(entry_uuids), list(unique_ids)), vihf)

    # ---------------------------------------------------------------------------- ITI-43

    def retrieve_document(self, repository_unique_id: str, unique_id: str,
                          vihf: VihfContext) -> bytes:
        payload, attachments = self.call(self.endpoints.repository_url, N.ACTION_ITI43,
                                          query.retrieve_request(repository_unique_id, unique_id),
                                          vihf, mtom=True)
        docs = query.parse_retrieve_response(payload, attachments)
        match = [d for d in docs if d.unique_id == unique_id]
        if not match:
            raise DmpProtocolError(f"the DMP returned no document {unique_id}")
        return match[0].data

    # ------------------------------------------------------------------------ ITI-57 / 62

    def update_availability(self, entry_uuid: str, ss: SubmissionSet, vihf: VihfContext,
                            new_status: str = "Deprecated", original_status: str = "Approved") -> None:
        body = ebrim.update_availability(ss, entry_uuid, query.STATUS_URNS[original_status],
                                         query.STATUS_URNS[new_status])
        self.call(self.endpoints.registry_url, N.ACTION_ITI57, body, vihf)

    def deprecate(self, entry_uuid: str, ss: SubmissionSet, vihf: VihfContext) -> None:
        """Un-publish (R8): the entry becomes Deprecated (ITI-57 UpdateAvailabilityStatus)."""
        self.update_availability(entry_uuid, ss, vihf, "Deprecated", "Approved")

    def delete(self, entry_uuids: list[str], vihf: VihfContext) -> None:
        """ITI-62 Remove Metadata: the entries disappear from the registry."""
        self.call(self.endpoints.registry_url, N.ACTION_ITI62, ebrim.remove_objects(entry_uuids),
                   vihf)
