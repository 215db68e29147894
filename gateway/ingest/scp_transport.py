"""pynetdicom's per-association layers for the associations our SCP accepts, made cheaper
per C-STORE: the network thread (the DICOM upper layer, DUL) waits instead of polling and
reads P-DATA-TF PDUs with fewer copies; the C-STORE response is encoded without pydicom.

pynetdicom 3.0's :class:`~pynetdicom.dul.DULServiceProvider` runs one thread per association
that goes round a loop: sleep ``_run_loop_delay`` (``dul_poll_interval``, 0.2 ms here), look
for a primitive to send, ``select`` the socket with a zero timeout, look at the event queue.
An association that is waiting for its peer therefore costs CPU all the time it lasts: about
0.11 s of CPU per second for one idle association on the benchmark machine (bench/RESULTS.md,
"CPU per instance in the DICOM path"), ~1 ms per C-STORE at 100 instances a second. And it
reads a PDU with a loop of 4 KiB ``recv`` calls appended to a ``bytearray`` (``+=``), then
copies it whole into ``bytes``, slices the PDU body, slices each PDV item, slices the
fragment off its message control header and writes it into the DIMSE message's ``BytesIO``:
six copies of every byte of a 512 KiB CT slice and ~130 ``recv`` calls.

:class:`WaitingDUL` changes two methods and nothing of the state machine:

* ``_is_transport_event``: before looking at the socket it *waits* (``poll``) until the
  socket is readable, a primitive is queued for sending (:meth:`send_pdu` writes a byte to a
  wake-up socket pair), the thread is told to stop (:meth:`kill_dul`), the ARTIM timer runs
  out, or ``MAX_WAIT`` passes (a safety net for anything else that would need the loop).
  A primitive queued meanwhile is turned into its state-machine event at once, so the
  response to a C-STORE leaves without waiting out a sleep. It never waits in Sta13
  (waiting for the connection to close: pynetdicom's own handling) nor while events are
  queued or TLS has decrypted bytes buffered.
* ``_read_pdu_data``: reads the 6-byte header and the PDU body with ``recv_into`` straight
  into one buffer of the PDU's length; the PDVs of a P-DATA-TF are handed on as
  ``memoryview`` slices of it, so the only copy left is the one into the DIMSE message.
  Other PDU types go through pynetdicom's decoder as before. ``EVT_DATA_RECV`` (the raw
  bytes) is built only when a handler is bound to it; ``EVT_PDU_RECV`` fires as before.

Both could go upstream as they are: the first is what pynetdicom's own ``TODO: try and make
this event based rather than running loops`` asks for; the second keeps the PDU classes and
changes only how bytes reach them (``PresentationDataValueItem.presentation_data_value``
already accepts any bytes-like value that ``DIMSEMessage.decode_msg`` can index and slice).

:class:`StoreResponseDIMSE` changes ``send_msg`` for the C-STORE response only, the one
message sent for every instance received. pynetdicom builds a ``C_STORE_RSP`` message
(a pydicom ``Dataset`` of the command set, each value validated), encodes it once to learn
the group length and again to send it: ~0.5 ms of CPU per instance on the benchmark machine.
Here the command set of a response carrying only the four usual fields (no Error Comment, no
Offending Element: every success) is written with ``struct`` from a template made once
(PS3.7 9.3.1.2, implicit VR little endian: the same bytes as pynetdicom's, checked by
``tests/test_scp_transport.py``); anything else, or a bound ``EVT_DIMSE_SENT`` handler,
takes pynetdicom's path. Upstream, the same idea would be a cache of the encoded command set
per message type in ``DIMSEMessage.encode_msg``.

Only associations accepted by our SCP use them (:func:`adopt`, called on ``EVT_CONN_OPEN``
before the network thread starts); associations we request (C-MOVE sub-operations, Storage
Commitment reports) keep pynetdicom's classes.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF, PresentationDataValueItem
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LB")
_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
_P_DATA_TF = 0x04
_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


class _PDUTooShort(Exception):
    """The connection ended (or timed out) inside a PDU."""


class WaitingDUL(DULServiceProvider):
    """See the module docstring. Not instantiated: :meth:`adopt` converts pynetdicom's."""

    #: Longest wait, in seconds, when nothing is expected (the loop then runs once).
    MAX_WAIT = 0.05

    _wake_r: socket.socket
    _wake_w: socket.socket
    _wake_lock: threading.Lock
    _woken: bool
    _poller: Any
    _polled_fd: int

    @classmethod
    def adopt(cls, dul: DULServiceProvider) -> None:
        """Make ``dul`` (not started yet) a :class:`WaitingDUL`."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        dul.__class__ = cls
        assert isinstance(dul, WaitingDUL)
        dul._wake_r, dul._wake_w = wake_r, wake_w
        dul._wake_lock = threading.Lock()
        dul._woken = False
        dul._poller = select.poll()
        dul._poller.register(wake_r, select.POLLIN)
        dul._polled_fd = -1

    # -- waking the thread ----------------------------------------------------------------

    def _wake(self) -> None:
        with self._wake_lock:
            if self._woken:  # closed, or a byte is waiting already
                return
            self._woken = True
            try:
                self._wake_w.send(b"\0")
            except OSError:  # full (cannot be: one byte at a time) or closed
                pass

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def run(self) -> None:
        try:
            super().run()
        finally:
            with self._wake_lock:
                self._woken = True  # no more wake-ups: the socket pair is closed
                self._wake_r.close()
                self._wake_w.close()

    # -- waiting --------------------------------------------------------------------------

    def _wait(self) -> None:
        """Block until there may be something to do (see the module docstring)."""
        if (self._kill_thread or self.state_machine.current_state == "Sta13"
                or not self.event_queue.empty() or not self.to_provider_queue.empty()):
            return
        transport = self.socket
        sock = getattr(transport, "socket", None)
        if sock is None or not getattr(transport, "_is_connected", False):
            fd = -1
        else:
            if getattr(sock, "pending", None) is not None and sock.pending():
                return  # TLS: decrypted bytes buffered, invisible to poll
            fd = sock.fileno()
        if fd != self._polled_fd:
            if self._polled_fd >= 0:
                try:
                    self._poller.unregister(self._polled_fd)
                except KeyError:
                    pass
            if fd >= 0:
                self._poller.register(fd, _READABLE)
            self._polled_fd = fd
        timeout = self.MAX_WAIT
        artim = self.artim_timer
        if artim.timeout is not None and artim._start_time is not None and artim._end_time is None:
            timeout = max(0.0, min(timeout, artim.remaining))
        try:
            ready = self._poller.poll(timeout * 1000)
        except OSError:
            return
        for fd_ready, _ in ready:
            if fd_ready == self._wake_r.fileno():
                with self._wake_lock:
                    self._woken = False
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass

    def _is_transport_event(self) -> bool:
        self._wait()
        if super()._is_transport_event():
            return True
        # Woken for a primitive to send: queue its event now, the loop acts on it this turn
        # (pynetdicom would sleep first and find it on the next turn).
        self._process_recv_primitive()
        return False

    # -- reading a PDU --------------------------------------------------------------------

    def _recv_exactly(self, view: memoryview) -> None:
        sock = self.socket.socket  # type: ignore[union-attr]
        got, size = 0, len(view)
        while got < size:
            n = sock.recv_into(view[got:])
            if not n:
                raise _PDUTooShort(got, size)
            got += n

    def _read_pdu_data(self) -> None:
        header = bytearray(6)
        try:
            self._recv_exactly(memoryview(header))
        except (OSError, _PDUTooShort) as exc:
            if isinstance(exc, OSError):
                log.error("Connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")  # transport connection closed
            return
        pdu_type, _, length = _HEADER.unpack(header)
        if pdu_type not in _PDU_TYPES:
            log.error("Unknown PDU type received '0x%02X'", pdu_type)
            self.event_queue.put("Evt19")  # unrecognised or invalid PDU
            return
        body = bytearray(length)
        try:
            self._recv_exactly(memoryview(body))
        except (OSError, _PDUTooShort) as exc:
            log.error("Connection closed before the entire PDU was received: %s", exc)
            self.event_queue.put("Evt17")
            return
        try:
            if pdu_type == _P_DATA_TF:
                pdu, event = self._p_data_tf(header, body)
            else:
                pdu, event = self._decode_pdu(header + body)
        except Exception as exc:  # as pynetdicom: any decoding failure is Evt19
            log.error("Unable to decode the received PDU data: %s", exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _p_data_tf(self, header: bytearray, body: bytearray) -> tuple[P_DATA_TF, str]:
        """A P-DATA-TF PDU whose PDV values are views of ``body`` (PS3.8 9.3.5)."""
        if self.assoc.get_handlers(evt.EVT_DATA_RECV):
            evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": bytes(header + body)})
        view = memoryview(body)
        items = []
        offset, end = 0, len(body)
        while offset < end:
            if end - offset < 5:
                raise ValueError("truncated presentation data value item")
            item_length, context_id = _PDV_HEADER.unpack_from(body, offset)
            if item_length < 1 or offset + 4 + item_length > end:
                raise ValueError(f"presentation data value item of {item_length} bytes "
                                 f"at offset {offset} runs past the PDU")
            item = PresentationDataValueItem()
            item.presentation_context_id = context_id
            item.presentation_data_value = view[offset + 5:offset + 4 + item_length]
            items.append(item)
            offset += 4 + item_length
        pdu = P_DATA_TF()
        pdu.presentation_data_value_items = items
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt10"


# -- the C-STORE response -----------------------------------------------------------------

_COMMAND_LAST_FRAGMENT = b"\x03"  # message control header: command, last fragment


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _us(element: int, value: int) -> bytes:
    return struct.pack("<HHLH", 0x0000, element, 2, value)


_STORE_RSP_FIELD = _us(0x0100, 0x8001)  # Command Field: C-STORE-RSP
_NO_DATA_SET = _us(0x0800, 0x0101)  # Command Data Set Type: no data set
_US_HEAD = struct.Struct("<HHL")  # tag and length of a US element (value follows)


def store_response_command(message_id: int, sop_class_uid: str, sop_instance_uid: str,
                           status: int) -> bytes:
    """The command set of a C-STORE-RSP without Error Comment or Offending Element, encoded
    as PS3.7 6.3.1 requires (implicit VR little endian, elements in tag order, UIDs padded
    with NUL to an even length, Command Group Length first)."""
    body = b"".join((
        _ui(0x0002, sop_class_uid),
        _STORE_RSP_FIELD,
        _us(0x0120, message_id),
        _NO_DATA_SET,
        _us(0x0900, status),
        _ui(0x1000, sop_instance_uid),
    ))
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


class StoreResponseDIMSE(DIMSEServiceProvider):
    """See the module docstring. Not instantiated: :func:`adopt` converts pynetdicom's."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = self._store_response(primitive)
        if command is None:
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list = [[context_id, _COMMAND_LAST_FRAGMENT + command]]
        self.dul.send_pdu(pdata)

    def _store_response(self, rsp: Any) -> bytes | None:
        """The encoded command set if ``rsp`` is a plain C-STORE response, else ``None``."""
        if (type(rsp) is not C_STORE or rsp.MessageIDBeingRespondedTo is None
                or rsp.Status is None or rsp.ErrorComment is not None
                or rsp.OffendingElement is not None or rsp.AffectedSOPClassUID is None
                or rsp.AffectedSOPInstanceUID is None
                or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            return None
        try:
            command = store_response_command(
                rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID,
                rsp.AffectedSOPInstanceUID, rsp.Status,
            )
        except (UnicodeEncodeError, struct.error):
            return None
        limit = self.maximum_pdu_size
        if limit and len(command) + 6 > limit:  # PDV header (4 + 1 + 1): one PDU
            return None
        return command


def adopt(assoc: Any) -> None:
    """Give ``assoc`` (accepted, its network thread not started: ``EVT_CONN_OPEN``) the
    cheaper classes of this module, where it still has pynetdicom's own."""
    if type(assoc.dul) is DULServiceProvider:
        WaitingDUL.adopt(assoc.dul)
    if type(assoc.dimse) is DIMSEServiceProvider:
        assoc.dimse.__class__ = StoreResponseDIMSE
