"""``MhdTransport``: the publication seam (:class:`gateway.publication.transport.DocumentTransport`)
over IHE MHD / ANS PDSm, FHIR R4 JSON over HTTPS with mutual TLS (R4, R7, R8).

==========  =============================================================================
submit      ITI-65: ``POST [base]`` the transaction Bundle of :mod:`adapters.mhd.bundle`
            (a replacement adds ``relatesTo replaces`` and the PATCH of the old one)
find        ITI-67: ``GET [base]/DocumentReference?patient.identifier=urn:oid:<OID>|<INS>
            &identifier=urn:ietf:rfc:3986|urn:oid:<uniqueId>&status=current,superseded``
withdraw    PDSm flux 03: ``PATCH [base]/DocumentReference?identifier=urn:ietf:rfc:3986|
            urn:oid:<uniqueId>`` with a FHIRPath Patch setting ``status`` to ``superseded``
==========  =============================================================================

Withdrawal choice: ``superseded`` is what XDS *Deprecated* maps to in MHD and in PDSm's table
(Approved ↔ current, Deprecated ↔ superseded), so an MHD withdrawal is the same act as the XDS
transport's ITI-57 deprecation. PDSm's logical deletion (``superseded`` plus the
``PDSm_IsDeleted`` extension, irreversible) is not used: un-publishing a KOS is not deleting the
patient's record of it.

Errors follow :mod:`gateway.publication.transport`: no connection, TLS failure (including our
certificate being refused), timeout, HTTP 5xx / 408 / 429, or a success answer we cannot read →
:class:`TransportUnavailable` (the record may have acted: the outbox calls :meth:`find` before
trying again); any other 4xx → :class:`TransportRefused` with one :class:`Refusal` per
``OperationOutcome`` issue (``code`` = the XDS error code in ``details.text`` when there is one,
else the FHIR issue type; ``text`` = diagnostics; ``location`` = expression).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx

from adapters.dmp.client import tls_context
from adapters.mhd.bundle import identifier_query, provide_bundle, status_patch
from adapters.mhd.resources import STATUS_FROM_FHIR, entry_uuid_from, unique_id_from
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import SCHEME_CONTENT_TYPE, Code, submission_set
from gateway.publication.transport import (
    OutgoingDocument,
    Refusal,
    RegisteredDocument,
    SubmitReceipt,
    TransportRefused,
    TransportUnavailable,
)

log = logging.getLogger("drimbox.mhd")

FHIR_JSON = "application/fhir+json"


def new_oid() -> str:
    """A fresh OID under 2.25 (UUID-derived), for submission set uniqueIds."""
    return f"2.25.{uuid.uuid4().int}"


class MhdTransport:
    def __init__(self, base_url: str, *, ca_bundle: Path, client_cert: Path | None,
                 client_key: Path | None, source_id: str, content_type: Code,
                 timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.source_id = source_id
        self.content_type = content_type
        self._http = httpx.Client(verify=tls_context(ca_bundle, client_cert, client_key),
                                  timeout=timeout, http2=False,
                                  headers={"Accept": FHIR_JSON})

    @classmethod
    def from_settings(cls, settings) -> MhdTransport:  # noqa: ANN001 - gateway.config.Settings
        """The transport the configuration describes; raises ``ValueError`` naming what is
        missing (``dmp_fhir_url``, the mTLS files, ``dmp_content_type``, a source OID)."""
        missing = [name for name in ("dmp_fhir_url", "dmp_ca_bundle", "dmp_client_cert",
                                     "dmp_client_key") if getattr(settings, name) is None]
        if not settings.dmp_content_type:
            missing.append("dmp_content_type")
        source = settings.dmp_source_id or settings.repository_oid
        if not source:
            missing.append("dmp_source_id (or repository_oid)")
        if missing:
            raise ValueError(f"MHD settings missing: {', '.join(missing)}")
        return cls(settings.dmp_fhir_url, ca_bundle=settings.dmp_ca_bundle,
                   client_cert=settings.dmp_client_cert, client_key=settings.dmp_client_key,
                   source_id=source,
                   content_type=Code(settings.dmp_content_type, SCHEME_CONTENT_TYPE,
                                     settings.dmp_content_type),
                   timeout=settings.dmp_timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MhdTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- transport

    def request(self, method: str, path: str, *, json: dict[str, Any] | None = None,
                params: dict[str, str] | None = None) -> httpx.Response:
        """One FHIR interaction (low level): the 2xx response, or a typed error. Tests and
        vendors use it to send deliberately broken bundles."""
        url = f"{self.base_url}/{path}" if path else self.base_url
        headers = {"Content-Type": FHIR_JSON} if json is not None else {}
        try:
            resp = self._http.request(method, url, json=json, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransportUnavailable(f"FHIR endpoint timeout ({type(exc).__name__}) on "
                                       f"{method} {path or '/'}") from exc
        except httpx.RequestError as exc:  # connection refused or reset, TLS alert, decoding
            raise TransportUnavailable(f"FHIR endpoint unreachable: {exc}") from exc
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise TransportUnavailable(f"FHIR endpoint answered HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise TransportRefused(_refusals(resp))
        return resp

    @staticmethod
    def _body(resp: httpx.Response) -> dict[str, Any]:
        try:
            doc = resp.json()
        except ValueError as exc:
            raise TransportUnavailable(f"unreadable FHIR answer (HTTP {resp.status_code})") from exc
        if not isinstance(doc, dict):
            raise TransportUnavailable("the FHIR answer is not a resource")
        return doc

    # ---------------------------------------------------------------------------- ITI-65

    def submit(self, doc: OutgoingDocument) -> SubmitReceipt:
        ss = submission_set(doc.entry, new_oid(), self.source_id, dt.datetime.now(dt.UTC),
                            self.content_type)
        replaced = doc.replaces_unique_id or doc.replaces_entry_uuid
        pb = provide_bundle(doc.entry, ss, doc.patient, doc.kos_bytes, replaced)
        resp = self.request("POST", "", json=pb.json())
        answer = self._body(resp)
        if answer.get("resourceType") != "Bundle" or answer.get("type") != "transaction-response":
            raise TransportUnavailable("the ITI-65 answer is not a transaction-response Bundle")
        warnings = [Refusal(*r) for r in _issues(answer)]
        for w in warnings:
            log.warning("MHD warning on %s: %s %s", doc.entry.unique_id, w.code, w.location)
        return SubmitReceipt(pb.document_entry_uuid, warnings)

    # ---------------------------------------------------------------------------- ITI-67

    def find(self, patient: Ins, unique_id: str) -> RegisteredDocument | None:
        resp = self.request("GET", "DocumentReference", params={
            "patient.identifier": f"urn:oid:{patient.oid}|{patient.matricule}",
            "identifier": identifier_query(unique_id),
            "status": "current,superseded",
        })
        bundle = self._body(resp)
        if bundle.get("resourceType") != "Bundle":
            raise TransportUnavailable("the ITI-67 answer is not a searchset Bundle")
        found = [e.get("resource") or {} for e in bundle.get("entry") or []]
        found = [r for r in found if r.get("resourceType") == "DocumentReference"
                 and unique_id_from(r.get("masterIdentifier")) == unique_id]
        if not found:
            return None
        found.sort(key=lambda r: r.get("status") != "current")
        r = found[0]
        entry_uuid = entry_uuid_from(r) or (f"urn:uuid:{r['id']}" if r.get("id") else "")
        return RegisteredDocument(unique_id, entry_uuid,
                                  STATUS_FROM_FHIR.get(str(r.get("status")), str(r.get("status"))))

    # ----------------------------------------------------------------------- withdrawal

    def withdraw(self, patient: Ins, unique_id: str, entry_uuid: str | None = None) -> None:
        """Un-publish (R8): the DocumentReference becomes ``superseded`` (XDS Deprecated)."""
        del patient, entry_uuid  # the uniqueId addresses the fiche (PDSm conditional patch)
        self.request("PATCH", "DocumentReference", json=status_patch("superseded"),
                     params={"identifier": identifier_query(unique_id)})


def _issues(outcome_or_bundle: dict[str, Any]) -> list[tuple[str, str, str]]:
    outcomes = [outcome_or_bundle] if outcome_or_bundle.get("resourceType") == \
        "OperationOutcome" else [
            (e.get("response") or {}).get("outcome") or e.get("resource") or {}
            for e in outcome_or_bundle.get("entry") or []]
    out = []
    for oo in outcomes:
        if oo.get("resourceType") != "OperationOutcome":
            continue
        for i in oo.get("issue") or []:
            out.append((str((i.get("details") or {}).get("text") or i.get("code") or ""),
                        str(i.get("diagnostics") or ""), ", ".join(i.get("expression") or [])))
    return out


def _refusals(resp: httpx.Response) -> list[Refusal]:
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    found = _issues(doc) if isinstance(doc, dict) else []
    refusals = [Refusal(*r) for r in found]
    return refusals or [Refusal(f"HTTP{resp.status_code}", resp.text[:200])]
