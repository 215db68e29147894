"""The Query/Retrieve SCP of the DICOM listener (PS3.4 Annex C): C-FIND, C-MOVE and C-GET in
the Patient Root and Study Root information models, bound by :class:`gateway.ingest.dimse.DicomService`.

This module speaks DIMSE (identifiers, response datasets, statuses, sub-operations); what a
request matches is :mod:`gateway.imaging.dimse_query` (the QIDO-RS index and rules), who may
ask is :mod:`gateway.access.dicom_peers`.

* C-FIND runs as pynetdicom's ``EVT_C_FIND`` handler: one pending response (0xFF00) per match,
  with the keys of the request (zero-length where the index has no value), Query/Retrieve
  Level, Specific Character Set (``ISO_IR 192``) and Retrieve AE Title; a C-CANCEL is seen
  between two matches (0xFE00).
* C-MOVE and C-GET are served here in full (:meth:`QueryRetrieveSCP.serve`, called on the
  association's thread before pynetdicom sees the request): pynetdicom's own retrieve loop
  re-encodes every dataset it sends, we send each instance **as stored** (the stored bytes,
  byte for byte) on a presentation context with its transfer syntax, and transcode
  (:mod:`gateway.imaging.transcode`) only when the destination accepted nothing else for the
  SOP class. A pending response follows each sub-operation (remaining, completed, failed,
  warning); the final one is 0x0000, 0xB000 (some failed, with Failed SOP Instance UID List),
  0xA702 (all failed) or 0xFE00 (C-CANCEL). Evicted instances are fetched back from the PACS
  first (:func:`gateway.imaging.dimse_query.fetch_back`); those that cannot be are failed
  sub-operations, never an error of the whole request.

Statuses: 0x0124 refused, the caller may not query/retrieve (``query_retrieve_callers``);
0xA900 identifier does not match the SOP class (level missing or not of this model, a unique
key missing or not single in hierarchical mode, a matching key below the level); 0xC000
a matching value that cannot be parsed (a bad date, a malformed UID) or an identifier that
cannot be decoded; 0xA801 move destination unknown (not in ``peers``) or unreachable;
0xA701 more than 65,535 instances to send.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from adapters.dicom_transport import RequestingAE
from adapters.pacs.reactor import reactor_paused
from gateway import metrics
from gateway.access.audit import ALLOWED, DENIED
from gateway.access.dicom_peers import QueryRetrieveAccess, audit
from gateway.config import PeerAE, Settings
from gateway.imaging import dimse_query as dq
from gateway.imaging.restore import Restorer
from gateway.imaging.transcode import TranscodeError, can_send, dataset_bytes
from gateway.index.store import InstanceIndex
from gateway.ingest.storage import FileStore

log = logging.getLogger(__name__)

FIND = {str(PatientRootQueryRetrieveInformationModelFind): dq.PATIENT_ROOT,
        str(StudyRootQueryRetrieveInformationModelFind): dq.STUDY_ROOT}
MOVE = {str(PatientRootQueryRetrieveInformationModelMove): dq.PATIENT_ROOT,
        str(StudyRootQueryRetrieveInformationModelMove): dq.STUDY_ROOT}
GET = {str(PatientRootQueryRetrieveInformationModelGet): dq.PATIENT_ROOT,
       str(StudyRootQueryRetrieveInformationModelGet): dq.STUDY_ROOT}
#: Transfer syntaxes of the query/retrieve contexts themselves (identifiers are small).
QR_TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian]

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
NOT_AUTHORIZED = 0x0124
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
DESTINATION_UNKNOWN = 0xA801
TOO_MANY = 0xA701
SUBOPS_FAILED = 0xA702
SUBOPS_WARNING = 0xB000
_STORE_WARNINGS = {0xB000, 0xB006, 0xB007}
_MAX_CONTEXTS = 128
_MAX_SUBOPS = 65535
_STATUS_FOR = {dq.Problem.BAD_LEVEL: IDENTIFIER_MISMATCH,
               dq.Problem.MISSING_KEY: IDENTIFIER_MISMATCH,
               dq.Problem.LOWER_LEVEL_KEY: IDENTIFIER_MISMATCH,
               dq.Problem.BAD_VALUE: UNABLE_TO_PROCESS}


def _comment(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c != "\\")[:64]


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = _comment(comment)
    return ds


def identifier_keys(identifier: Dataset) -> list[dq.Key]:
    """The identifier's top-level keys as text (a sequence: ``None``, never matched)."""
    keys = []
    for elem in identifier:
        if elem.tag.group in (0x0000, 0x0002) or not elem.keyword:
            continue
        if elem.VR == "SQ" or isinstance(elem.value, bytes):
            keys.append(dq.Key(elem.keyword, None))
            continue
        value = elem.value
        if value is None:
            text = ""
        elif isinstance(value, MultiValue | list | tuple):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        keys.append(dq.Key(elem.keyword, text))
    return keys


def _set(ds: Dataset, keyword: str, value: Any) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    vr = dictionary_VR(tag)
    if vr == "SQ":
        ds.add_new(tag, vr, [])
        return
    if value is None or value == "" or value == []:
        ds.add_new(tag, vr, None)
        return
    if isinstance(value, list):
        value = [str(v) for v in value]
    elif vr in ("IS", "DS"):
        value = str(value)
    ds.add_new(tag, vr, value)


class QueryRetrieveSCP:
    def __init__(self, settings: Settings, index: InstanceIndex, store: FileStore,
                 restorer: Restorer | None) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        self.restorer = restorer
        self.access = QueryRetrieveAccess.from_settings(settings)

    def add_contexts(self, ae: AE) -> None:
        """The query/retrieve contexts, and SCP/SCU role selection on the storage contexts
        (a C-GET peer acts as Storage SCP on the same association, PS3.7 D.3.3.4)."""
        for uid in (*FIND, *MOVE, *GET):
            ae.add_supported_context(uid, QR_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # No transfer syntax added: the storage contexts keep theirs, only roles change.
            ae.add_supported_context(cx.abstract_syntax, [], scu_role=True, scp_role=True)

    # -- who asks ------------------------------------------------------------------------

    def _who(self, assoc: Any) -> tuple[str, str]:
        return str(assoc.requestor.ae_title), str(assoc.requestor.address)

    def _audit(self, assoc: Any, action: str, outcome: str, reason: str,
               study_uid: str = "") -> None:
        ae_title, address = self._who(assoc)
        try:
            audit(self.index, ae_title=ae_title, address=address, action=action,
                  outcome=outcome, reason=reason, study_uid=study_uid)
        except Exception:
            log.exception("audit of %s from %s failed", action, ae_title)

    def _refused(self, assoc: Any, action: str) -> str | None:
        """The reason the caller may not query/retrieve, audited; None when it may."""
        ae_title, address = self._who(assoc)
        allowed, reason = self.access.decide(ae_title, address)
        if allowed:
            return None
        log.warning("%s from %s (%s) refused: %s", action, ae_title, address, reason)
        self._audit(assoc, action, DENIED, reason)
        return reason

    # -- C-FIND --------------------------------------------------------------------------

    def on_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        model = FIND.get(str(event.context.abstract_syntax))
        status = yield from self._find(event, model)
        metrics.QUERY_RETRIEVE.labels("find", f"0x{status:04X}").inc()

    def _find(self, event: evt.Event, model: str | None) -> Iterator[Any]:
        action = "dicom_find"
        if model is None:
            yield _status(0x0122, "SOP class not supported"), None
            return 0x0122
        reason = self._refused(event.assoc, action)
        if reason is not None:
            yield _status(NOT_AUTHORIZED, reason), None
            return NOT_AUTHORIZED
        try:
            identifier = event.identifier
            keys = identifier_keys(identifier)
            level = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
            plan = dq.plan_find(model, level, keys)
        except dq.IdentifierError as exc:
            code = _STATUS_FOR[exc.problem]
            self._audit(event.assoc, action, "failed", f"{model} root: {exc.message}")
            yield _status(code, exc.message), None
            return code
        except Exception as exc:
            self._audit(event.assoc, action, "failed", f"identifier: {exc}")
            yield _status(UNABLE_TO_PROCESS, "identifier cannot be decoded"), None
            return UNABLE_TO_PROCESS
        count, final = 0, SUCCESS
        try:
            for row in dq.find(self.index, plan):
                if event.is_cancelled:
                    final = CANCEL
                    break
                count += 1
                yield PENDING, self._match(plan, row)
        except Exception:
            log.exception("C-FIND failed")
            final = UNABLE_TO_PROCESS
        what = f"{plan.model.title()} Root {plan.level}: {count} match(es)"
        if final == CANCEL:
            what += ", cancelled"
        self._audit(event.assoc, action, ALLOWED if final != UNABLE_TO_PROCESS else "failed",
                    what, plan.study_uid)
        yield (_status(final, "processing failure") if final == UNABLE_TO_PROCESS
               else final), None
        return final

    def _match(self, plan: dq.FindPlan, row: dict[str, Any]) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = plan.level
        ds.RetrieveAETitle = self.settings.ae_title
        for keyword in plan.returned:
            if keyword in ("SpecificCharacterSet", "RetrieveAETitle"):
                continue
            if keyword == "InstanceAvailability":
                ds.InstanceAvailability = "ONLINE"
                continue
            _set(ds, keyword, row.get(keyword))
        return ds

    # -- C-MOVE and C-GET ----------------------------------------------------------------

    def serve(self, assoc: Any, item: Any) -> bool:
        """Serve a C-MOVE or C-GET request taken off the association's queue; ``False`` for
        anything else (pynetdicom's business)."""
        context_id, msg = item if isinstance(item, tuple) else (None, None)
        if not isinstance(msg, C_GET | C_MOVE) or not msg.is_valid_request:
            return False
        context = next((cx for cx in assoc.accepted_contexts if cx.context_id == context_id),
                       None)
        if context is None:
            return False
        Retrieve(self, assoc, context, msg).run()
        return True

    def destination(self, ae_title: str) -> PeerAE | None:
        return next((p for p in self.settings.peers if p.ae_title == ae_title.strip()), None)


class Retrieve:
    """One C-MOVE or C-GET, from its request to its final response."""

    def __init__(self, scp: QueryRetrieveSCP, assoc: Any, context: Any,
                 req: C_GET | C_MOVE) -> None:
        self.scp = scp
        self.assoc = assoc
        self.context = context
        self.req = req
        self.move = isinstance(req, C_MOVE)
        self.operation = "move" if self.move else "get"
        self.action = f"dicom_{self.operation}"
        self.remaining = self.completed = self.failed = self.warning = 0
        self.failed_uids: list[str] = []

    # responses

    def respond(self, status: int, comment: str = "", counts: bool = True,
                final: bool = True) -> None:
        rsp = C_MOVE() if self.move else C_GET()
        rsp.MessageIDBeingRespondedTo = self.req.MessageID
        rsp.AffectedSOPClassUID = self.req.AffectedSOPClassUID
        rsp.Status = status
        if comment and status not in (SUCCESS, PENDING):
            rsp.ErrorComment = _comment(comment)
        if counts:
            if status in (PENDING, CANCEL):
                rsp.NumberOfRemainingSuboperations = self.remaining
            rsp.NumberOfCompletedSuboperations = self.completed
            rsp.NumberOfFailedSuboperations = self.failed
            rsp.NumberOfWarningSuboperations = self.warning
        if status != PENDING and self.failed_uids:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = self.failed_uids
            ts = self.context.transfer_syntax[0]
            rsp.Identifier = io.BytesIO(encode(ds, ts.is_implicit_VR, ts.is_little_endian,
                                               ts.is_deflated))
        self.assoc.dimse.send_msg(rsp, self.context.context_id)
        if final:
            metrics.QUERY_RETRIEVE.labels(self.operation, f"0x{status:04X}").inc()

    def refuse(self, status: int, reason: str, outcome: str = "failed",
               study_uid: str = "") -> None:
        self.scp._audit(self.assoc, self.action, outcome, reason, study_uid)
        self.respond(status, reason, counts=False)

    # the request

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("C-%s failed", self.operation.upper())
            if self.assoc.is_established:
                self.respond(UNABLE_TO_PROCESS, "processing failure", counts=False)

    def _run(self) -> None:
        scp = self.scp
        abstract = str(self.context.abstract_syntax)
        model = (MOVE if self.move else GET).get(abstract)
        if model is None or str(self.req.AffectedSOPClassUID) != abstract:
            self.respond(0x0122, "SOP class not supported", counts=False)
            return
        reason = scp._refused(self.assoc, self.action)
        if reason is not None:
            self.respond(NOT_AUTHORIZED, reason, counts=False)
            return
        try:
            ts = self.context.transfer_syntax[0]
            identifier = decode(self.req.Identifier, ts.is_implicit_VR, ts.is_little_endian,
                                ts.is_deflated)
            level = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
            plan = dq.plan_retrieve(model, level, identifier_keys(identifier))
        except dq.IdentifierError as exc:
            self.refuse(_STATUS_FOR[exc.problem], exc.message)
            return
        except Exception as exc:
            self.refuse(UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}")
            return
        where = f"{model.title()} Root {plan.level}"
        destination = None
        if self.move:
            name = str(self.req.MoveDestination or "").strip()
            destination = scp.destination(name)
            if destination is None:
                self.refuse(DESTINATION_UNKNOWN, f"move destination {name[:16]!r} unknown",
                            study_uid=plan.study_uid)
                return
            where += f" to {destination.ae_title}"
        items = dq.select_instances(scp.index, plan)
        if len(items) > _MAX_SUBOPS:
            self.refuse(TOO_MANY, f"{len(items)} instances: more than {_MAX_SUBOPS}",
                        study_uid=plan.study_uid)
            return
        unreadable: set[str] = set()
        if any(i.evicted for i in items):
            unreadable, why = dq.fetch_back(scp.restorer, items, self._restore_audit(plan))
            if unreadable:
                log.warning("C-%s: %d evicted instance(s) not fetched back: %s",
                            self.operation.upper(), len(unreadable), why)
            items = dq.select_instances(scp.index, plan)  # storage keys may be new
        self.remaining = len(items)
        if not items:
            scp._audit(self.assoc, self.action, ALLOWED, f"{where}: nothing to send",
                       plan.study_uid)
            self.respond(SUCCESS)
            return
        cancelled = False
        with _Sink(self, destination, items) as sink:
            if sink is None:
                self.refuse(DESTINATION_UNKNOWN, f"move destination {destination.ae_title} "
                            "unreachable", study_uid=plan.study_uid)
                return
            for item in items:
                if self.assoc.dimse.cancel_req.pop(self.req.MessageID, None) is not None:
                    cancelled = True
                    break
                if not self.assoc.is_established:
                    return
                if item.sop_instance_uid in unreadable:
                    outcome = "failed"
                else:
                    outcome = sink.send(item)
                self.remaining -= 1
                self._count(item, outcome)
                if sink.lost:
                    # The destination is gone: what is left fails without being tried.
                    for rest in items[len(items) - self.remaining:]:
                        self._count(rest, "failed")
                    self.remaining = 0
                    break
                if self.remaining:
                    self.respond(PENDING, final=False)
        if cancelled:
            status = CANCEL
        elif self.failed and not self.completed and not self.warning:
            status = SUBOPS_FAILED
        elif self.failed or self.warning:
            status = SUBOPS_WARNING
        else:
            status = SUCCESS
        summary = (f"{where}: {self.completed} completed, {self.failed} failed, "
                   f"{self.warning} warning" + (f", {self.remaining} cancelled"
                                                 if cancelled else ""))
        scp._audit(self.assoc, self.action, ALLOWED if status != SUBOPS_FAILED else "failed",
                   summary, plan.study_uid)
        self.respond(status, "one or more sub-operations failed"
                     if status in (SUBOPS_FAILED, SUBOPS_WARNING) else "")

    def _count(self, item: dq.Outgoing, outcome: str) -> None:
        if outcome == "completed":
            self.completed += 1
        elif outcome == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(item.sop_instance_uid)
        metrics.INSTANCES_SENT.labels(self.operation, outcome).inc()

    def _restore_audit(self, plan: dq.RetrievePlan) -> Any:
        def audit_move(outcome: str, reason: str) -> None:
            self.scp._audit(self.assoc, "pacs_restore", outcome, reason, plan.study_uid)
        return audit_move


class _Sink:
    """Where the C-STORE sub-operations go: this association (C-GET, on the contexts where the
    peer took the Storage SCP role) or a new one with the move destination (C-MOVE)."""

    def __init__(self, retrieve: Retrieve, destination: PeerAE | None,
                 items: list[dq.Outgoing]) -> None:
        self.retrieve = retrieve
        self.own = destination is not None
        self.assoc: Any = None if self.own else retrieve.assoc
        self.destination = destination
        self.items = items
        self.lost = False
        self.accepted: dict[tuple[str, str], int] = {}
        self._message_id = 0
        self._held = contextlib.ExitStack()

    def __enter__(self) -> _Sink | None:
        scp = self.retrieve.scp
        if self.own:
            assert self.destination is not None
            items = self.items
            pairs = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items})
            classes = sorted({i.sop_class_uid for i in items})
            contexts = [(sop, [ts]) for sop, ts in pairs]
            contexts += [(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                         for sop in classes]
            ae = RequestingAE(ae_title=scp.settings.ae_title)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = \
                scp.settings.network_timeout
            for sop, tss in contexts[:_MAX_CONTEXTS]:
                ae.add_requested_context(sop, tss)
            d = self.destination
            self.assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
            if not self.assoc.is_established:
                log.warning("C-MOVE: no association with %s at %s:%d", d.ae_title, d.host,
                            d.port)
                return None
            # Its reactor is held for the whole C-MOVE: the responses to our sub-operations
            # are ours to take (adapters.pacs.reactor), and a hold per sub-operation waited
            # up to 1 ms each time for the reactor's next pass.
            self._held.enter_context(reactor_paused(self.assoc))
            contexts_ok = self.assoc.accepted_contexts
        else:
            contexts_ok = [cx for cx in self.assoc.accepted_contexts if cx.as_scu]
        for cx in contexts_ok:
            self.accepted.setdefault((str(cx.abstract_syntax), str(cx.transfer_syntax[0])),
                                     int(cx.context_id))
        return self

    def __exit__(self, *exc: object) -> None:
        self._held.close()
        if self.own and self.assoc is not None and self.assoc.is_established:
            self.assoc.release()

    def _context(self, sop: str, stored: str) -> tuple[int, str] | None:
        if (sop, stored) in self.accepted:
            return self.accepted[(sop, stored)], stored
        candidates = [(s, t) for (s, t) in self.accepted if s == sop and can_send(stored, t)]
        order = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
        candidates.sort(key=lambda p: order.index(p[1]) if p[1] in order else len(order))
        if not candidates:
            return None
        return self.accepted[candidates[0]], candidates[0][1]

    def send(self, item: dq.Outgoing) -> str:
        """One C-STORE sub-operation: ``completed``, ``warning`` or ``failed``."""
        r = self.retrieve
        chosen = self._context(item.sop_class_uid, item.transfer_syntax_uid)
        if chosen is None:
            log.warning("C-%s: %s not sent: no accepted context for SOP class %s in %s or a "
                        "syntax it can be transcoded to", r.operation.upper(),
                        item.sop_instance_uid, item.sop_class_uid, item.transfer_syntax_uid)
            return "failed"
        context_id, target = chosen
        try:
            data = dataset_bytes(r.scp.store.path_of(item.storage_key),
                                 item.transfer_syntax_uid, target)
        except (OSError, ValueError, TranscodeError) as exc:
            log.warning("C-%s: %s not sent: %s", r.operation.upper(), item.sop_instance_uid,
                        exc)
            return "failed"
        self._message_id = self._message_id % 65535 + 1
        req = C_STORE()
        req.MessageID = self._message_id
        req.Priority = 2
        req.AffectedSOPClassUID = item.sop_class_uid
        req.AffectedSOPInstanceUID = item.sop_instance_uid
        if r.move:
            req.MoveOriginatorApplicationEntityTitle = r.assoc.requestor.ae_title
            req.MoveOriginatorMessageID = r.req.MessageID
        req.DataSet = io.BytesIO(data)
        rsp = self._exchange(req, context_id)
        if rsp is None or not isinstance(rsp, C_STORE) or rsp.Status is None:
            self.lost = True
            if self.assoc.is_established:
                self.assoc.abort()
            return "failed"
        status = int(rsp.Status)
        if status == SUCCESS:
            return "completed"
        if status in _STORE_WARNINGS:
            return "warning"
        log.warning("C-%s: %s refused by the destination: 0x%04X", r.operation.upper(),
                    item.sop_instance_uid, status)
        return "failed"

    def _exchange(self, req: C_STORE, context_id: int) -> Any:
        # C-GET: we run on this association's own reactor thread, which is not polling its
        # queue meanwhile; C-MOVE: our association's reactor is held (__enter__). Either way
        # the response is ours to take.
        assoc = self.assoc
        assoc.dimse.send_msg(req, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
        return rsp


def build(settings: Settings, runtime: Any) -> QueryRetrieveSCP | None:
    """The SCP for a process's runtime (``query_retrieve`` off: None)."""
    if not settings.query_retrieve:
        return None
    return QueryRetrieveSCP(settings, runtime.index, runtime.store, runtime.restorer)
