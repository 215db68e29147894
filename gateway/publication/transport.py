"""The seam between the publication workflow and the shared record (R4-R8).

The outbox worker (:mod:`gateway.publication.outbox`) speaks only these domain types; an adapter turns
them into a protocol: XDS.b ITI-41/18/57 to the DMP (:mod:`adapters.dmp.transport`) or IHE MHD
ITI-65 / ITI-67 to a FHIR endpoint (:mod:`adapters.mhd`). ``Settings.dmp_transport`` chooses
(``xds`` or ``mhd``).

Error contract, which the outbox's retry logic depends on:

* :class:`TransportUnavailable` — the record may or may not have acted (connection refused,
  timeout, HTTP 5xx, SOAP Receiver fault, response lost). The outbox retries with backoff, and
  before re-submitting asks :meth:`DocumentTransport.find` whether the document (keyed by its
  uniqueId) is already there: a retry never creates a second document.
* :class:`TransportRefused` — the record read the request and refused it (XDS
  RegistryError / FHIR OperationOutcome). A business refusal: the outbox stops retrying and
  shows ``code`` and ``text``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import DocumentEntry


@dataclass(frozen=True, slots=True)
class OutgoingDocument:
    """One KOS to register, with its XDS-I.b metadata (R4) and, for a replacement (R8), the
    uniqueId and (when known) the registry entryUUID of the document it replaces."""

    patient: Ins
    entry: DocumentEntry
    kos_bytes: bytes
    replaces_unique_id: str | None = None
    replaces_entry_uuid: str | None = None


@dataclass(frozen=True, slots=True)
class RegisteredDocument:
    """What the record holds for one uniqueId."""

    unique_id: str
    entry_uuid: str
    status: str  # "Approved" | "Deprecated"
    repository_unique_id: str = ""


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    text: str
    location: str = ""


class TransportUnavailable(Exception):
    """The record could not be reached or did not answer; it may have acted. Retry later."""


class TransportRefused(Exception):
    """The record refused the request (a business error). Do not retry the same request."""

    def __init__(self, refusals: list[Refusal]) -> None:
        self.refusals = refusals
        super().__init__("; ".join(f"{r.code}: {r.text}" for r in refusals) or "refused")

    @property
    def code(self) -> str:
        return self.refusals[0].code if self.refusals else ""

    @property
    def text(self) -> str:
        return "; ".join(f"{r.code}: {r.text}" for r in self.refusals)


@dataclass(frozen=True, slots=True)
class SubmitReceipt:
    entry_uuid: str
    warnings: list[Refusal] = field(default_factory=list)


class DocumentTransport(Protocol):
    def submit(self, doc: OutgoingDocument) -> SubmitReceipt:
        """Register the document (a replacement when ``doc.replaces_*`` is set)."""

    def find(self, patient: Ins, unique_id: str) -> RegisteredDocument | None:
        """The document with this uniqueId, whatever its status, or None."""

    def withdraw(self, patient: Ins, unique_id: str, entry_uuid: str | None = None) -> None:
        """Un-publish: mark the document Deprecated (XDS ITI-57 / MHD status superseded)."""

    def close(self) -> None: ...
