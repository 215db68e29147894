"""Who may hold a thread of the DICOM listener, and for how long.

pynetdicom's server starts an association (two threads) for every TCP connection it accepts
and, left alone:

* reads a PDU with blocking ``recv`` calls on a socket without a timeout: a peer that sends
  the first bytes of a PDU and then nothing holds both threads for ever (the ARTIM timer and
  the ACSE timeout are only checked between PDUs, and ``Association.kill`` then waits for
  the network thread that never comes back);
* counts every such thread against ``maximum_associations``, so that a few dozen stalled
  connections make it answer every new association, C-ECHO included, with A-ASSOCIATE-RJ
  "local limit exceeded".

:class:`ConnectionGuard` is the listener's doorman, fed by the server's accept hooks and by
association events (see :class:`gateway.ingest.dimse.GuardedAssociationServer`):

* **ARTIM** (PS3.8 9.1.5): a connection whose A-ASSOCIATE-RQ has not arrived whole
  ``artim_timeout`` seconds after it was accepted is shut down (its blocked ``recv`` returns,
  pynetdicom closes the association, the peer sees the connection end);
* **read timeout**: every accepted socket gets ``SO_RCVTIMEO``/``SO_SNDTIMEO`` of
  ``network_timeout``, so that a PDU whose bytes stop arriving (or a peer that stops reading
  ours) ends the association with an A-P-ABORT after that long instead of never (kernel
  timeouts: no extra system call per ``recv``, unlike ``socket.settimeout``);
* **pending connections per address**: at most ``max_pending_per_address`` connections from
  one IP address may be still sending their A-ASSOCIATE-RQ; more are closed at once;
* **association limit**: ``max_associations`` counts the associations whose request arrived
  whole and was let through, from then until they are rejected, released or aborted (or
  their connection ends), never the connections still negotiating; of those, at most
  ``max_associations_per_ae`` from one calling AE title.

Each DICOM worker process (:mod:`gateway.ingest.workers`) has its own guard: the limits hold per
worker, as ``max_associations`` always did.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics

log = logging.getLogger(__name__)

#: Seconds between two reports of refused connections from one address.
LOG_EVERY = 10.0


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection, from ``accept`` until it is closed."""

    sock: socket.socket
    host: str
    deadline: float  # monotonic time by which the A-ASSOCIATE-RQ must have arrived
    pending: bool = True  # still sending its A-ASSOCIATE-RQ
    admitted: bool = False  # holds one of the ``max_associations`` slots
    ae: str = ""  # the calling AE title, once its A-ASSOCIATE-RQ arrived
    assoc: Any = field(default=None, repr=False)  # the pynetdicom Association, once made


def calling_ae(assoc: Any) -> str:
    """The calling AE title of an association whose A-ASSOCIATE-RQ arrived (at EVT_REQUESTED
    pynetdicom has the request's primitive but has not copied it into ``requestor`` yet)."""
    primitive = getattr(assoc.requestor, "primitive", None)
    value = getattr(primitive, "calling_ae_title", None) or assoc.requestor.ae_title or ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


def set_io_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel receive and send timeouts: a blocking ``recv``/``send`` that waits longer fails
    with ``EAGAIN`` (an ``OSError``, which pynetdicom treats as the connection closing)."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class ConnectionGuard:
    """Admission and timers of one listener's connections (thread-safe)."""

    def __init__(
        self,
        *,
        artim_timeout: float,
        io_timeout: float,
        max_pending_per_address: int,
        max_associations: int,
        max_associations_per_ae: int | None = None,
    ) -> None:
        self.artim_timeout = artim_timeout
        self.io_timeout = io_timeout
        self.max_pending_per_address = max_pending_per_address
        self.max_associations = max_associations
        self.max_associations_per_ae = max_associations_per_ae or max_associations
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, Connection] = {}
        self._admitted = 0
        self._refused: dict[str, tuple[float, int]] = {}  # host -> (last report, refused since)
        self._stop = threading.Event()
        self._tick = min(1.0, artim_timeout / 4)
        self._watchdog: threading.Thread | None = None

    # -- the listener's side ------------------------------------------------------------

    def start(self) -> None:
        self._watchdog = threading.Thread(target=self._watch, name="dicom-artim", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5)

    def accept(self, sock: socket.socket, address: Any) -> bool:
        """A connection was accepted: ``False`` if it must be closed at once."""
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        with self._lock:
            pending = sum(1 for c in self._conns.values() if c.pending and c.host == host)
            if pending >= self.max_pending_per_address:
                self._report_refused(host, pending)
                return False
            self._conns[sock] = Connection(sock, host, time.monotonic() + self.artim_timeout)
        try:
            set_io_timeouts(sock, self.io_timeout)
        except OSError:  # the peer is gone already
            self.release(sock)
            return False
        return True

    def attach(self, sock: socket.socket | None, assoc: Any) -> None:
        """The association pynetdicom made for ``sock`` (EVT_CONN_OPEN)."""
        with self._lock:
            conn = self._conns.get(sock) if sock is not None else None
            if conn is not None:
                conn.assoc = assoc
                assoc.__dict__["_drimbox_conn"] = conn

    def request_received(self, assoc: Any) -> str:
        """The association's A-ASSOCIATE-RQ arrived whole (EVT_REQUESTED): it is no longer
        pending, and takes an association slot if one is free: ``""``; else the name of the
        limit it is over (``max_associations`` or ``max_associations_per_ae``)."""
        conn: Connection | None = assoc.__dict__.get("_drimbox_conn")
        if conn is None:  # not accepted through this guard: not ours to count
            return ""
        ae = calling_ae(assoc)
        with self._lock:
            if conn.sock not in self._conns:  # shut down by ARTIM in the meantime
                return "artim_timeout"
            conn.pending = False
            if self._admitted >= self.max_associations:
                return "max_associations"
            same_ae = sum(1 for c in self._conns.values() if c.admitted and c.ae == ae)
            if same_ae >= self.max_associations_per_ae:
                return "max_associations_per_ae"
            conn.admitted = True
            conn.ae = ae
            self._admitted += 1
            return ""

    def release(self, sock: socket.socket | None = None, assoc: Any = None) -> None:
        """The connection ended (or its association was rejected): forget it. Idempotent."""
        if sock is None and assoc is not None:
            conn = assoc.__dict__.get("_drimbox_conn")
            sock = conn.sock if conn is not None else None
        if sock is None:
            return
        with self._lock:
            self._forget(sock)

    def never_requested(self, assoc: Any) -> bool:
        """The association's connection came through this guard and has not delivered its
        A-ASSOCIATE-RQ (it may be shut down already)."""
        conn: Connection | None = assoc.__dict__.get("_drimbox_conn")
        return conn is not None and conn.pending

    def close_pending(self) -> None:
        """Shut down every connection still sending its request (the server is stopping)."""
        with self._lock:
            doomed = [c for c in self._conns.values() if c.pending]
            for conn in doomed:
                self._forget(conn.sock)
        for conn in doomed:
            _shutdown(conn.sock)

    @property
    def admitted(self) -> int:
        """Associations holding a slot now."""
        return self._admitted

    # -- internals ----------------------------------------------------------------------

    def _forget(self, sock: socket.socket) -> None:
        conn = self._conns.pop(sock, None)
        if conn is not None and conn.admitted:
            conn.admitted = False
            self._admitted -= 1

    def _report_refused(self, host: str, pending: int) -> None:
        metrics.DICOM_CONNECTIONS_CLOSED.labels("pending_per_address").inc()
        now = time.monotonic()
        last, count = self._refused.get(host, (0.0, 0))
        if last and now - last < LOG_EVERY:
            self._refused[host] = (last, count + 1)
            return
        self._refused[host] = (now, 0)
        log.warning(
            "DICOM connection from %s closed at once: %d connections from this address are "
            "still sending their A-ASSOCIATE-RQ (max_pending_per_address)", host, pending,
        )

    def _report_quiet(self, now: float) -> None:
        """Report (once) the refusals not logged since an address's last report."""
        for host, (last, count) in list(self._refused.items()):
            if now - last >= LOG_EVERY:
                del self._refused[host]
                if count:
                    log.warning("%d more DICOM connection(s) from %s closed at once "
                                "(max_pending_per_address)", count, host)

    def _watch(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                expired = [c for c in self._conns.values() if c.pending and c.deadline <= now]
                # Safety net: a connection whose association thread ended without telling us.
                dead = [c.sock for c in self._conns.values()
                        if c.assoc is not None and c.assoc.ident is not None
                        and not c.assoc.is_alive()]
                for conn in expired:
                    self._forget(conn.sock)
                for sock in dead:
                    self._forget(sock)
                self._report_quiet(now)
            for conn in expired:
                metrics.DICOM_CONNECTIONS_CLOSED.labels("artim").inc()
                log.warning(
                    "DICOM connection from %s closed: no complete A-ASSOCIATE-RQ within "
                    "%g s (ARTIM, artim_timeout)", conn.host, self.artim_timeout,
                )
                _shutdown(conn.sock)


def _shutdown(sock: socket.socket) -> None:
    """End the connection both ways: a ``recv`` blocked on it in another thread returns
    at once, and the peer sees the connection end. pynetdicom closes the socket itself."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass
