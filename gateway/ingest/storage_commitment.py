"""Storage Commitment Push Model SCP (PS3.4 Annex J) on the DICOM listener: the DIMSE side.

Bound by :class:`gateway.ingest.dimse.DicomService` when ``storage_commitment`` is not
``off``. What "committed" means is the index's rule (:mod:`gateway.index.commitment`: indexed
and its file in the store, or evicted to the PACS); this module speaks the protocol.

* **N-ACTION-RQ** (J.3.2) on the well-known instance ``1.2.840.10008.1.20.1.1``, Action Type
  ID 1, Action Information with Transaction UID (0008,1195) and a non-empty Referenced SOP
  Sequence (0008,1199) of SOP Class / SOP Instance UIDs. Answers: 0x0000 (the request is
  taken; the result follows in an N-EVENT-REPORT); 0x0124 *refused: not authorized* for a
  calling AE title not in ``peers`` when ``storage_commitment = peers``; 0x0123 *no such
  action* for another Action Type ID; 0x0117 *invalid object instance* for another Requested
  SOP Instance UID; 0x0121 *missing attribute value* without Transaction UID, without
  Referenced SOP Sequence (or empty), or an item without both UIDs; 0x0115 *invalid argument
  value* for a malformed UID; 0x0110 when the Action Information cannot be decoded. Every
  answer carries an Error Comment, and every request, taken or refused, is audited
  (``storage_commitment``, the calling AE title as a ``dicom`` principal, ``via`` dimse).
* **N-EVENT-REPORT-RQ** (J.3.3), sent once the N-ACTION-RSP has left: Event Type ID 1 when
  every instance is committed, 2 when some failed; Event Information with the Transaction UID,
  the Referenced SOP Sequence (committed) and the Failed SOP Sequence with Failure Reason
  (0008,1197) 0x0110, 0x0112 or 0x0119. Where it goes, by the calling peer's settings
  (``peers[].storage_commitment``): ``same_association`` (default) on the request's association
  while it is open, else on a new one; ``new_association`` always on a new association to the
  peer's ``host`` and ``storage_commitment_port`` (default ``port``), called AE its AE title,
  proposing the SCP role (SCP/SCU Role Selection, PS3.4 J.3.3.1.3). A caller not in ``peers``
  (``storage_commitment = any``) is answered on the same association only. On the same
  association, a failure status or no answer (the peer released it) sends the report again on
  a new association when the peer is known. The new association is plain TCP. A report that cannot be delivered is logged and not retried:
  the peer asks again (a new Transaction UID).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from adapters.pacs.reactor import reactor_paused
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.config import PeerAE, Settings
from gateway.index.commitment import Reference, Verdict, commitment_verdict
from gateway.ingest.uids import is_safe_uid

log = logging.getLogger(__name__)

#: The well-known SOP Instance of the Push Model (PS3.4 J.3.5).
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1  # Action Type ID (J.3.2.1)
ALL_COMMITTED, FAILURES_EXIST = 1, 2  # Event Type IDs (J.3.3.1)

INVALID_ARGUMENT_VALUE = 0x0115
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ACTION = 0x0123
NOT_AUTHORIZED = 0x0124
PROCESSING_FAILURE = 0x0110

ACTION = "storage_commitment"


class Refused(Exception):
    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = "".join(c for c in comment if c.isprintable() and c != "\\")[:64]
    return ds


def read_request(info: Dataset) -> tuple[str, list[Reference]]:
    """The Transaction UID and references of an N-ACTION's Action Information, or
    :class:`Refused` with the status to answer."""
    transaction = str(info.get("TransactionUID", "") or "").strip()
    if not transaction:
        raise Refused(MISSING_ATTRIBUTE_VALUE, "Transaction UID (0008,1195) missing")
    if not is_safe_uid(transaction) or len(transaction) > 64:
        raise Refused(INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) malformed")
    items = info.get("ReferencedSOPSequence") or []
    if not items:
        raise Refused(MISSING_ATTRIBUTE_VALUE, "Referenced SOP Sequence (0008,1199) missing")
    refs = []
    for item in items:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            raise Refused(MISSING_ATTRIBUTE_VALUE,
                          "Referenced SOP Sequence item without its SOP Class/Instance UID")
        if not (is_safe_uid(sop_class) and is_safe_uid(sop_instance)
                and len(sop_class) <= 64 and len(sop_instance) <= 64):
            raise Refused(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence item: malformed UID")
        refs.append(Reference(sop_class, sop_instance))
    return transaction, refs


def event_information(transaction_uid: str, verdict: Verdict) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's Event Type ID and Event Information (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if verdict.committed:
        ds.ReferencedSOPSequence = [_item(r.sop_class_uid, r.sop_instance_uid)
                                    for r in verdict.committed]
    if verdict.failed:
        failed = []
        for f in verdict.failed:
            item = _item(f.reference.sop_class_uid, f.reference.sop_instance_uid)
            item.FailureReason = f.reason
            failed.append(item)
        ds.FailedSOPSequence = failed
    return (FAILURES_EXIST if verdict.failed else ALL_COMMITTED), ds


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


class StorageCommitmentSCP:
    """The N-ACTION handler and the N-EVENT-REPORT sender of one :class:`DicomService`."""

    def __init__(self, settings: Settings, ingestor: Any) -> None:
        self.settings = settings
        self.ingestor = ingestor  # its index and file store answer (None: never called)
        self.peers: dict[str, PeerAE] = {p.ae_title: p for p in settings.peers}
        self._reports: set[threading.Thread] = set()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.settings.storage_commitment != "off"

    def add_contexts(self, ae: AE) -> None:
        if self.enabled:
            ae.add_supported_context(StorageCommitmentPushModel)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_N_ACTION, self.on_action)] if self.enabled else []

    def wait(self, timeout: float) -> None:
        """Let the reports being sent finish (at most ``timeout`` seconds in all)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._reports)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- N-ACTION -----------------------------------------------------------------------

    def on_action(self, event: evt.Event) -> tuple[int | Dataset, None]:
        assoc = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        address = str(assoc.requestor.address)
        try:
            transaction, refs = self._accept(event, calling)
        except Refused as exc:
            log.warning("storage commitment request from %s refused (0x%04X): %s", calling,
                        exc.status, exc.comment)
            self._audit(calling, address, DENIED, exc.comment)
            return _status(exc.status, exc.comment), None
        thread = threading.Thread(target=self._report, name="StorageCommitmentReport",
                                  args=(assoc, calling, address, transaction, refs), daemon=True)
        with self._lock:
            self._reports.add(thread)
        thread.start()
        return 0x0000, None

    def _accept(self, event: evt.Event, calling: str) -> tuple[str, list[Reference]]:
        req = event.request
        if self.settings.storage_commitment == "peers" and calling not in self.peers:
            raise Refused(NOT_AUTHORIZED, f"calling AE {calling} is not a configured peer")
        if str(req.RequestedSOPInstanceUID or "") != PUSH_MODEL_INSTANCE:
            raise Refused(INVALID_OBJECT_INSTANCE,
                          f"Requested SOP Instance UID is not {PUSH_MODEL_INSTANCE}")
        if req.ActionTypeID != REQUEST_STORAGE_COMMITMENT:
            raise Refused(NO_SUCH_ACTION, f"Action Type ID {req.ActionTypeID} (only 1)")
        if req.ActionInformation is None:
            raise Refused(MISSING_ATTRIBUTE_VALUE, "no Action Information")
        try:
            info = event.action_information
            return read_request(info)
        except Refused:
            raise
        except Exception as exc:  # noqa: BLE001 - pydicom decodes lazily, any error possible
            raise Refused(PROCESSING_FAILURE, f"Action Information unreadable: {exc}") from None

    # -- the result ---------------------------------------------------------------------

    def _report(self, assoc: Any, calling: str, address: str, transaction: str,
                refs: list[Reference]) -> None:
        try:
            pacs = self.settings.pacs_ae_title
            verdict = commitment_verdict(
                self.ingestor.index, self.ingestor.store.exists, refs,
                pacs_copy_counts=not (pacs and calling == pacs))
            event_type, info = event_information(transaction, verdict)
            reasons = sorted({f"0x{f.reason:04X}" for f in verdict.failed})
            summary = (f"transaction {transaction}: {len(verdict.committed)} committed, "
                       f"{len(verdict.failed)} failed" + (f" ({', '.join(reasons)})" if reasons else ""))
            self._audit(calling, address, ALLOWED, summary,
                        tuple(r.sop_instance_uid for r in refs))
            where = self._deliver(assoc, calling, event_type, info)
            if where:
                log.info("storage commitment %s sent to %s on %s", summary, calling, where)
            else:
                log.error("storage commitment %s: the result could not be sent to %s", summary,
                          calling)
        except Exception:
            log.exception("storage commitment transaction %s from %s failed", transaction, calling)
        finally:
            with self._lock:
                self._reports.discard(threading.current_thread())

    def _deliver(self, assoc: Any, calling: str, event_type: int, info: Dataset) -> str:
        """Send the report where the peer wants it; where it went, '' when nowhere."""
        peer = self.peers.get(calling)
        if peer is None or peer.storage_commitment == "same_association":
            if self._on_same(assoc, event_type, info):
                return "the same association"
            if peer is None:
                return ""
        return "a new association" if self._on_new(peer, event_type, info) else ""

    def _on_same(self, assoc: Any, event_type: int, info: Dataset) -> bool:
        """True when the peer accepted the report on the request's association (else the
        caller tries a new association: the peer released it, or answered with a failure)."""
        if not assoc.is_established:
            return False
        try:
            with reactor_paused(assoc) as paused:
                if not (paused and assoc.is_established):
                    return False
                status, _ = assoc.send_n_event_report(
                    info, event_type, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE)
        except (RuntimeError, ValueError) as exc:
            log.warning("storage commitment report on the same association failed: %s", exc)
            return False
        return self._answered(status) == 0x0000

    def _on_new(self, peer: PeerAE, event_type: int, info: Dataset) -> bool:
        """True when the peer answered the report on a new association (whatever the status:
        a failure is logged, and not sent again)."""
        ae = AE(ae_title=self.settings.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.network_timeout
        ae.add_requested_context(StorageCommitmentPushModel)
        port = peer.storage_commitment_port or peer.port
        assoc = ae.associate(peer.host, port, ae_title=peer.ae_title,
                             ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
        if not assoc.is_established:
            log.warning("storage commitment: association to %s (%s:%d) failed", peer.ae_title,
                        peer.host, port)
            return False
        try:
            status, _ = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                                  PUSH_MODEL_INSTANCE)
        except (RuntimeError, ValueError) as exc:
            log.warning("storage commitment report to %s failed: %s", peer.ae_title, exc)
            status = Dataset()
        finally:
            if assoc.is_established:
                assoc.release()
        return self._answered(status) is not None

    @staticmethod
    def _answered(status: Dataset) -> int | None:
        """The peer's status, None when it did not answer (the association was aborted)."""
        if "Status" not in status:
            return None
        if status.Status != 0x0000:
            log.warning("storage commitment report answered 0x%04X", status.Status)
        return int(status.Status)

    def _audit(self, calling: str, address: str, outcome: str, reason: str,
               sops: tuple[str, ...] = ()) -> None:
        index = getattr(self.ingestor, "index", None)
        if index is None:
            return
        try:
            record_access(index, AccessRecord(
                principal=Principal(kind="dicom", subject=calling, via="dimse"),
                action=ACTION, outcome=outcome, reason=reason[:255], sop_instance_uids=sops,
                client_address=address))
        except Exception:
            log.exception("storage commitment: audit row not written")
