"""The DIMSE face of the gateway: a pynetdicom Storage and Verification SCP.

Conformance (what a modality or PACS vendor needs to know):

* Verification SCP (C-ECHO).
* Query/Retrieve SCP (C-FIND, C-MOVE, C-GET; Patient Root and Study Root) when
  ``query_retrieve`` is on: :mod:`gateway.ingest.query_retrieve`.
* Storage SCP (C-STORE) for every storage SOP class pynetdicom knows (PS3.4 Annex B), and,
  with ``accept_unknown_sop_classes``, for private/unknown ones too.
* Storage Commitment Push Model SCP (PS3.4 Annex J; ``storage_commitment``): N-ACTION and
  the N-EVENT-REPORT that follows, :mod:`gateway.ingest.storage_commitment`.
* Transfer syntaxes: implicit and explicit VR little endian, explicit big endian (retired),
  deflated, RLE, JPEG baseline/extended/lossless (14, 14 SV1), JPEG-LS, JPEG 2000, HTJ2K,
  MPEG-2/MPEG-4/HEVC video and the other non-private syntaxes pydicom lists. The dataset is
  kept exactly as received: it is never decoded past its header nor re-encoded.
* Association policy: the called AE title must be ours (``check_called_ae``); with
  ``restrict_callers`` only calling AE titles listed in ``peers`` are accepted. At most
  ``max_associations`` at once (A-ASSOCIATE-RJ transient, local limit exceeded beyond);
  a connection must deliver its A-ASSOCIATE-RQ within ``artim_timeout`` seconds and at most
  ``max_pending_per_address`` connections of one address may be doing so at once
  (:mod:`gateway.ingest.dimse_guard`).
* DICOM TLS (PS3.15 B.1, BCP 195; ``dicom_tls``): TLS 1.2 or 1.3 with the ciphers of
  :mod:`gateway.tls`, our ``tls_cert``; the peer's certificate is required by default
  (``dicom_tls_client_auth``) and checked against ``tls_ca_bundle``.

C-STORE statuses (PS3.4 B.2.3, PS3.7 C): 0x0000 success, also for an identical re-send;
0xA700 out of resources (disk full); 0xA900 dataset SOP Class differs from the request;
0xC000 dataset cannot be parsed; 0xC001 a required attribute (SOP Class/Instance, Study,
Series UID) is missing; 0xC002 a UID is malformed; 0xC003 dataset SOP Instance UID differs
from the request; 0xC004 dataset truncated or corrupt (an element runs past the end, Pixel Data
shorter than its Rows x Columns x samples x bits x frames, encapsulated pixel data without its
items or delimiter: :mod:`gateway.ingest.completeness`); 0xC005 an image storage SOP class without
Pixel Data; 0xC006 explicit VR bytes on an implicit VR presentation context; 0x0111 same SOP
Instance UID with other content under ``duplicate_policy = refuse``; 0x0122 the request's SOP
Class is not the presentation context's; 0x0110 any other processing failure. A request
without Affected SOP Instance UID (or another mandatory command element) gets 0xC001 at once,
naming the element in Offending Element (0000,0901); one we cannot answer (no Message ID,
unknown presentation context) is aborted. Every failure carries an Error Comment (0000,0902).
Success is sent only after the instance is on disk (fsync) and committed to the index.
"""

from __future__ import annotations

import collections
import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes, PrivateTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from adapters.dicom_transport import adopt, wait_for_messages
from gateway import metrics
from gateway.config import Settings
from gateway.ingest.arrivals import ARRIVALS
from gateway.ingest.dimse_guard import ConnectionGuard, calling_ae
from gateway.ingest.ingestor import Incoming, Ingestor, IngestRejected, Rejection
from gateway.ingest.query_retrieve import QueryRetrieveSCP
from gateway.ingest.storage_commitment import StorageCommitmentSCP
from gateway.tls import describe, handshake_failure, listener_context, peer_subject

log = logging.getLogger(__name__)

#: Transfer syntaxes accepted for storage: every public one pydicom knows.
STORAGE_TRANSFER_SYNTAXES: list[str] = [
    ts for ts in AllTransferSyntaxes if ts not in PrivateTransferSyntaxes
]

STATUS_FOR_REJECTION: dict[Rejection, int] = {
    Rejection.UNPARSEABLE: 0xC000,
    Rejection.MISSING_ATTRIBUTE: 0xC001,
    Rejection.INVALID_UID: 0xC002,
    Rejection.SOP_INSTANCE_MISMATCH: 0xC003,
    Rejection.INCOMPLETE: 0xC004,
    Rejection.PIXEL_DATA_MISSING: 0xC005,
    Rejection.VR_ENCODING: 0xC006,
    Rejection.SOP_CLASS_MISMATCH: 0xA900,
    Rejection.DUPLICATE_CONFLICT: 0x0111,
    Rejection.OUT_OF_RESOURCES: 0xA700,
    Rejection.PROCESSING_FAILURE: 0x0110,
}
SOP_CLASS_NOT_SUPPORTED = 0x0122
MISSING_ATTRIBUTE = STATUS_FOR_REJECTION[Rejection.MISSING_ATTRIBUTE]
#: pynetdicom's own association limit counts every connection's thread, also those still
#: negotiating; :class:`ConnectionGuard` counts instead, so pynetdicom's never applies.
UNLIMITED = 1_000_000


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        # Error Comment is LO: at most 64 characters, no backslash or control characters.
        ds.ErrorComment = "".join(c for c in comment if c.isprintable() and c != "\\")[:64]
    return ds


class SupportedContexts(list):
    """The server's supported presentation contexts, copied cheaply for each connection.

    pynetdicom gives every connection its own copy of the server's contexts
    (``RequestHandler._create_association``: ``deepcopy(server.contexts)``), on the
    connection's thread, before its A-ASSOCIATE-RQ is even read. ``deepcopy`` rebuilds every
    transfer syntax UID (pydicom validates each one again): about 40 ms of CPU for the 171
    classes and ~6,600 transfer syntaxes we accept, under the GIL. So 50 connections opened
    together (a burst of modalities, or a peer stalling on purpose) cost 2 s of CPU before
    the next association could be answered, and more on a loaded machine: an ``echoscu``
    behind them timed out. The copy made here is the same (new context objects, new transfer
    syntax lists; the UIDs are immutable strings and are shared) in ~0.15 ms."""

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for cx in self:
            new = PresentationContext.__new__(PresentationContext)
            new.__dict__.update(cx.__dict__)
            new._transfer_syntax = list(cx._transfer_syntax)
            copies.append(new)
        return copies


def nodelay(sock: socket.socket) -> None:
    """Nagle's algorithm off on an accepted TCP connection. Every DIMSE message goes out as
    two P-DATA-TF writes (command, then dataset); with Nagle on, the second waits for the
    peer's (delayed) ACK of the first, about 40 ms on Linux, on each C-FIND match, C-GET
    sub-operation and final response (dcmtk's tools do the same with TCP_NODELAY=1)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # the peer is gone already: the guard closes it
            pass


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a :class:`ConnectionGuard` at the door.

    ``verify_request`` and ``shutdown_request`` are :mod:`socketserver`'s own hooks: the
    first runs on the accept thread for each new connection (``False``: socketserver closes
    it at once), the second whenever a connection is done with (pynetdicom calls it when an
    association's thread ends, socketserver when a refused or failed one is dropped).

    DICOM TLS (``dicom_tls``, R12): pynetdicom wraps each accepted socket and runs the TLS
    handshake on the accept thread, where a peer that connects and sends nothing would stop
    every other connection from being accepted. Here the socket is wrapped without a
    handshake; the handshake runs on the connection's own thread (:meth:`finish_request`),
    under the guard's timers like the A-ASSOCIATE-RQ that follows it. A failed handshake (a
    plain client, a certificate from another CA, an expired one) is one log line and a
    closed connection, counted in ``drimbox_dicom_connections_closed_total{reason="tls"}``."""

    guard: ConnectionGuard | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()
        nodelay(client)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                metrics.DICOM_CONNECTIONS_CLOSED.labels("tls").inc()
                host = client_address[0] if isinstance(client_address, tuple) else client_address
                log.warning("DICOM TLS handshake with %s failed, connection closed: %s", host,
                            handshake_failure(exc))
                self.shutdown_request(request)
                return
        super().finish_request(request, client_address)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.guard is None or self.guard.accept(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        if self.guard is not None:
            self.guard.release(request)
        super().shutdown_request(request)


#: Seconds an accepted connection counts as work before its association is admitted.
_RECENT_ACCEPT = 0.05


class SharedSocketServer(GuardedAssociationServer):
    """pynetdicom's threaded server on a listening socket made elsewhere (the ``serve``
    process shares one among its DICOM workers, see :mod:`gateway.ingest.workers`).

    ``TCPServer.__init__`` creates a socket and calls :meth:`server_bind` and
    :meth:`server_activate`; here the first swaps in the given socket and the second has
    nothing to do (it listens already). The socket is non-blocking: several processes wait
    on it and all wake for a connection, the ones that lose the race get ``EAGAIN`` from
    ``accept`` (an ``OSError``, which ``socketserver`` ignores) instead of blocking in it.
    """

    listen_socket: socket.socket  # set on the subclass :meth:`on_socket` makes
    #: Seconds a worker waits per association it already has before it accepts another,
    #: so that an idler worker takes the connection first (0: no other process accepts).
    accept_delay_per_association: float = 0.0

    @classmethod
    def on_socket(cls, sock: socket.socket, shared: bool = True) -> type[SharedSocketServer]:
        return type(
            cls.__name__,
            (cls,),
            {"listen_socket": sock, "accept_delay_per_association": 0.005 if shared else 0.0,
             "_recent_accepts": collections.deque(maxlen=64)},
        )

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Every worker wakes for a new connection and the first to call accept() gets it.
        # Left alone, the worker that is already awake (it just accepted the previous one)
        # wins a burst of connections: 4 storescu started together went 3 + 1. A short wait
        # per association in hand gives the less busy worker the lead (at most 40 ms).
        # Only associations count: connections still negotiating (perhaps stalled on
        # purpose) are no work, and would slow the accepting of every connection behind them.
        # A connection accepted a moment ago counts too, before its association is admitted
        # (its A-ASSOCIATE-RQ is read on another thread): counting only admitted ones, a
        # worker that had just taken one still looked idle and took the next of a burst as
        # well (3 + 1 about one time in three).
        if self.accept_delay_per_association:
            busy = self.guard.admitted if self.guard is not None else len(self.active_associations)
            now = time.monotonic()
            recent = sum(1 for t in self._recent_accepts if now - t < _RECENT_ACCEPT)
            busy = max(busy, recent)
            if busy:
                time.sleep(min(busy * self.accept_delay_per_association, 0.04))
        request = super().get_request()
        if self.accept_delay_per_association:
            self._recent_accepts.append(time.monotonic())
        return request

    def server_bind(self) -> None:
        self.socket.close()
        self.socket = self.listen_socket
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass


class DicomService:
    """Runs the SCP in background threads; :meth:`stop` drains in-flight associations."""

    def __init__(self, settings: Settings, ingestor: Ingestor,
                 query_retrieve: QueryRetrieveSCP | None = None) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.query_retrieve = query_retrieve
        self.server: Any = None
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.maximum_associations = UNLIMITED  # the guard counts (see UNLIMITED)
        ae.network_timeout = settings.network_timeout
        # For an acceptor, pynetdicom's ACSE timeout is the ARTIM timer: how long it waits
        # for the A-ASSOCIATE-RQ, and for the peer to close after a reject or a release.
        ae.acse_timeout = settings.artim_timeout
        ae.dimse_timeout = settings.network_timeout
        ae.require_called_aet = settings.check_called_ae
        if settings.restrict_callers:
            ae.require_calling_aet = [p.ae_title for p in settings.peers]
        self.ssl_context = listener_context(settings, "dicom")  # None: plain TCP
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        if query_retrieve is not None:  # C-FIND, C-MOVE, C-GET (gateway.ingest.query_retrieve)
            query_retrieve.add_contexts(ae)
        self.commitment = StorageCommitmentSCP(settings, ingestor)
        self.commitment.add_contexts(ae)
        # A module-level switch of pynetdicom: when on, unknown abstract syntaxes are storage.
        _config.UNRESTRICTED_STORAGE_SERVICE = settings.accept_unknown_sop_classes
        # Module-level switches too: when on (pynetdicom's default), every C-FIND request and
        # every match is formatted for a log line, whatever the log level (~6 % of the CPU of
        # a C-FIND), and at INFO / DEBUG those lines would carry patient names and IDs.
        _config.LOG_REQUEST_IDENTIFIERS = _config.LOG_RESPONSE_IDENTIFIERS = False
        # Likewise its standard handlers format every DIMSE message and PDU for DEBUG lines
        # (~3 % of a C-FIND's CPU): bound only when pynetdicom's DEBUG lines are shown.
        debug = logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG)
        _config.LOG_HANDLER_LEVEL = "standard" if debug else "none"
        self.ae = ae
        self.guard = ConnectionGuard(
            artim_timeout=settings.artim_timeout,
            io_timeout=settings.network_timeout,
            max_pending_per_address=settings.max_pending_per_address,
            max_associations=settings.max_associations,
            max_associations_per_ae=settings.max_associations_per_ae,
        )

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return int(self.server.server_address[1])

    def start(self, listen_socket: socket.socket | None = None, shared: bool = False) -> None:
        """Listen on ``host:dicom_port``, or accept on ``listen_socket`` (already listening;
        ``shared``: other processes accept on it too)."""
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_ended),
            (evt.EVT_ABORTED, self._on_ended),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_CONN_OPEN, self._on_open),
            *self.commitment.handlers(),
        ]
        if self.query_retrieve is not None:
            handlers.append((evt.EVT_C_FIND, self.query_retrieve.on_find))
        if listen_socket is None:
            address = (self.settings.host, self.settings.dicom_port)
            server_class: type[GuardedAssociationServer] = GuardedAssociationServer
        else:
            address = listen_socket.getsockname()[:2]
            server_class = SharedSocketServer.on_socket(listen_socket, shared)
        # What AE.start_server(block=False) does, with our server class.
        server = self.ae.make_server(address, evt_handlers=handlers, server_class=server_class,
                                     ssl_context=self.ssl_context)
        server.guard = self.guard
        server.contexts = SupportedContexts(server.contexts)
        self.guard.start()
        threading.Thread(target=server.serve_forever, name="AcceptorServer", daemon=True).start()
        self.ae._servers.append(server)
        self.server = server
        log.info(
            "DICOM SCP %s listening on %s:%d (%s)",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            describe(self.settings, "dicom"),
        )

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight associations finish (up to ``grace`` s), then abort."""
        if self.server is None:
            return
        grace = self.settings.shutdown_grace if grace is None else grace
        server = self.server
        socketserver.BaseServer.shutdown(server)  # stop the accept loop
        server.socket.close()  # refuse new connections at once
        # Connections that never delivered their A-ASSOCIATE-RQ have nothing to drain: shut
        # down, their threads end within artim_timeout, or are aborted below.
        self.guard.close_pending()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            not self.guard.never_requested(a) for a in server.active_associations
        ):
            time.sleep(0.05)
        left = server.active_associations
        stuck = [a for a in left if not self.guard.never_requested(a)]
        if stuck:
            log.warning("aborting %d association(s) still open after %.0f s", len(stuck), grace)
        for assoc in left:
            assoc.abort()
        self.commitment.wait(max(0.0, min(5.0, deadline - time.monotonic())))
        self.ae.shutdown()
        self.guard.stop()
        self.server = None

    # -- event handlers -----------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_open(self, event: evt.Event) -> None:
        # Fired before the association's threads start.
        self.guard.attach(getattr(event.assoc.dul.socket, "socket", None), event.assoc)
        # pynetdicom 3.0 has no public knob for the network thread's idle sleep
        # (DULServiceProvider._run_loop_delay, 1 ms), which each C-STORE waits out for the
        # request and again for the response. adopt() makes the thread wait on the socket
        # instead (it sleeps only where it cannot) and encodes C-STORE responses without
        # pydicom (adapters.dicom_transport).
        dul = event.assoc.dul
        if hasattr(dul, "_run_loop_delay"):
            dul._run_loop_delay = self.settings.dul_poll_interval
        adopt(event.assoc)
        # Nothing is queued yet: the network thread starts after this event.
        assoc = event.assoc
        wait_for_messages(assoc, self.settings.reactor_wait,
                          lambda item: self._screen(assoc, item))

    def _on_requested(self, event: evt.Event) -> None:
        # The A-ASSOCIATE-RQ arrived whole; pynetdicom negotiates after this event unless
        # it rejected the association (the way its own local-limit rejection does it).
        assoc = event.assoc
        over = self.guard.request_received(assoc)
        if not over:
            return
        metrics.DICOM_ASSOCIATIONS_REFUSED.labels(over).inc()
        log.warning("association from %r (%s) rejected: over %s (%d)",
                    calling_ae(assoc), assoc.requestor.address, over,
                    getattr(self.settings, over, 0))
        assoc.acse.send_reject(0x02, 0x03, 0x02)  # transient, provider (presentation), limit
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()  # returns once the A-ASSOCIATE-RJ is sent and the connection closed

    def _on_accepted(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS.inc()
        metrics.ASSOCIATIONS_ACTIVE.inc()
        event.assoc.__dict__["_drimbox_counted"] = True
        req = event.assoc.requestor
        peer = peer_subject(getattr(event.assoc.dul.socket, "socket", None))
        log.info("association from %s (%s)%s", req.ae_title, req.address,
                 f" over TLS, certificate {peer}" if peer else "")

    def _on_rejected(self, event: evt.Event) -> None:
        self.guard.release(assoc=event.assoc)
        metrics.ASSOCIATIONS_REJECTED.inc()
        req = event.assoc.requestor
        log.warning("association from %r (%s) rejected", req.ae_title, req.address)

    def _on_ended(self, event: evt.Event) -> None:
        # Released or aborted: the association's slot is free, even though its connection
        # may linger until the peer closes it (at most artim_timeout).
        self.guard.release(assoc=event.assoc)

    def _on_closed(self, event: evt.Event) -> None:
        self.guard.release(assoc=event.assoc)
        if event.assoc.__dict__.pop("_drimbox_counted", False):
            metrics.ASSOCIATIONS_ACTIVE.dec()

    def _on_store(self, event: evt.Event) -> Dataset | int:
        ARRIVALS.handed_over(id(event.assoc))  # the Ingestor counts it from here
        req = event.request
        context = event.context
        sop_class = str(req.AffectedSOPClassUID or "")
        if sop_class != context.abstract_syntax:
            return self._fail(
                SOP_CLASS_NOT_SUPPORTED,
                f"SOP Class {sop_class[:64]} is not this presentation context's",
            )
        calling = event.assoc.requestor.ae_title
        data = req.DataSet.getbuffer()  # the received bytes, no copy
        try:
            result = self.ingestor.ingest(
                Incoming(
                    dataset=data,
                    transfer_syntax_uid=str(context.transfer_syntax),
                    source=calling,
                    expected_sop_class_uid=sop_class,
                    expected_sop_instance_uid=str(req.AffectedSOPInstanceUID or "") or None,
                )
            )
        except IngestRejected as exc:
            log.warning("C-STORE from %s refused: %s", calling, exc)
            return self._fail(STATUS_FOR_REJECTION[exc.reason], exc.detail)
        except Exception:
            log.exception("C-STORE from %s failed", calling)
            return self._fail(0x0110, "processing failure")
        metrics.INSTANCES_RECEIVED.labels("dimse").inc()
        metrics.BYTES_RECEIVED.labels("dimse").inc(result.size)
        return 0x0000

    def _screen(self, assoc: Any, item: Any) -> bool:
        """Answer a request pynetdicom would drop unanswered (see
        :class:`~adapters.dicom_transport.ReactorQueue`); ``True`` if it was handled
        here."""
        if self.query_retrieve is not None and self.query_retrieve.serve(assoc, item):
            return True  # a C-MOVE or C-GET, served in full on this thread
        context_id, msg = item if isinstance(item, tuple) else (None, None)
        if (msg is None or msg.is_valid_request or getattr(msg, "Status", None) is not None
                or getattr(msg, "MessageIDBeingRespondedTo", None) is not None):
            return False  # nothing, a good request, or a response: pynetdicom's business
        missing = [k for k in msg.REQUEST_KEYWORDS if getattr(msg, k) is None]
        calling = assoc.requestor.ae_title
        contexts = {cx.context_id for cx in assoc.accepted_contexts}
        if not isinstance(msg, C_STORE) or msg.MessageID is None or context_id not in contexts:
            log.warning("%s request from %s without %s (presentation context %s): cannot be "
                        "answered, aborting the association", msg.msg_type, calling,
                        ", ".join(missing), context_id)
            assoc.abort()
            return True
        comment = "request lacks " + ", ".join(missing)
        log.warning("C-STORE from %s refused: %s", calling, comment)
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = msg.MessageID
        rsp.AffectedSOPClassUID = msg.AffectedSOPClassUID
        rsp.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
        status = self._fail(MISSING_ATTRIBUTE, comment)
        rsp.Status = status.Status
        rsp.ErrorComment = status.ErrorComment
        rsp.OffendingElement = [tag_for_keyword(k) for k in missing if tag_for_keyword(k)]
        assoc.dimse.send_msg(rsp, context_id)
        return True

    @staticmethod
    def _fail(code: int, comment: str) -> Dataset:
        metrics.STORE_FAILURES.labels(f"0x{code:04X}").inc()
        return _status(code, comment)
