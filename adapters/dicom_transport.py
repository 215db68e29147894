"""pynetdicom's per-association layers, made cheaper per C-STORE, for the associations our
SCP accepts and those we request: the network thread (the DICOM upper layer, DUL) waits
instead of polling and reads P-DATA-TF PDUs with fewer copies; the C-STORE messages and the
pending C-MOVE / C-GET responses are encoded without pydicom. Used by the DICOM service
(``gateway/ingest/dimse.py``, ``query_retrieve.py``) and by the PACS adapters (export, speed
test), hence here among the adapters.

pynetdicom 3.0's :class:`~pynetdicom.dul.DULServiceProvider` runs one thread per association
that goes round a loop: sleep ``_run_loop_delay`` (``dul_poll_interval``, 0.2 ms here), look
for a primitive to send, ``select`` the socket with a zero timeout, look at the event queue.
An association that is waiting for its peer therefore costs CPU all the time it lasts: about
0.11 s of CPU per second for one idle association on the benchmark machine (bench/RESULTS.md,
"CPU per instance in the DICOM path"), ~1 ms per C-STORE at 100 instances a second. And it
reads a PDU with a loop of 4 KiB ``recv`` calls, each appended to a ``bytearray``, appends
that to another (``+=``), copies it whole into ``bytes``, slices the PDU body, slices each
PDV item, slices the fragment off its message control header and writes it into the DIMSE
message's ``BytesIO``: seven copies of every byte of a 512 KiB CT slice after the kernel's,
and ~130 ``recv`` calls.

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

:class:`StoreDIMSE` reads the command set of a C-STORE request without pydicom, and writes
those of the messages sent once per instance likewise.

* Request: pynetdicom decodes every command set into a pydicom ``Dataset``, then converts each
  element to set the primitive's fields (~0.25 ms of CPU per C-STORE). Here a command set
  holding exactly the elements of a C-STORE-RQ without Move Originator (PS3.7 9.3.1.1: Group
  Length, Affected SOP Class UID, Command Field 0x0001, Message ID, Priority, Command Data
  Set Type, Affected SOP Instance UID), each once and well formed, is read with ``struct``
  and the ``C_STORE`` primitive is built through its own setters (the same validation);
  any other command set, one missing an element included, is decoded by pynetdicom as
  before. Not used when ``EVT_DIMSE_RECV`` has a handler (it expects pynetdicom's message)
  nor with pynetdicom's ``STORE_RECV_CHUNKED_DATASET``.
* Sending: ``send_msg`` is changed for three messages, each sent once per instance: the
  C-STORE response, the C-STORE request of a sub-operation or an export, and the pending
  C-MOVE / C-GET response after each sub-operation. pynetdicom builds each as a message
  (a pydicom ``Dataset`` of the command set, each value validated), encodes it once to learn
  the group length and again to send it: ~0.5 ms of CPU per message on the benchmark
  machine. Here the command set of such a message with only its usual fields (no Error
  Comment, no Offending Element, no identifier) is written with ``struct`` (PS3.7 9.3.1,
  9.3.3, 9.3.4, implicit VR little endian: the same bytes as pynetdicom's, checked by
  ``tests/test_dicom_transport.py``), and a request's data set is cut into the fragments
  pynetdicom cuts; anything else, a command set longer than one of the peer's PDUs, or a
  bound ``EVT_DIMSE_SENT`` handler, takes pynetdicom's path. Upstream, the same ideas would be a ``struct`` fast path for the
fixed command sets in ``DIMSEMessage.decode_msg`` / ``encode_msg``.

Associations accepted by our SCP use them (:func:`adopt`, called on ``EVT_CONN_OPEN``
before the network thread starts), and so do those we request through :class:`RequestingAE`
(C-MOVE sub-operations, exports to a PACS, the PACS speed test). The subclasses lean on pynetdicom 3.0's
internals (the loop of ``run_reactor``, ``_recv_pdu``, ``_MESSAGE_TYPES``): with any other
release line :func:`adopt` leaves pynetdicom's classes alone (``PYNETDICOM_LINE``; the
tests check that the installed pynetdicom is the one these were written for).
"""

from __future__ import annotations

import io
import logging
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom import __version__ as _pynetdicom_version
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF, PresentationDataValueItem
from pynetdicom.pdu_primitives import P_DATA

from gateway.ingest.arrivals import ARRIVALS

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


_STORE_RQ_FIELD = _us(0x0100, 0x0001)  # Command Field: C-STORE-RQ
_DATA_SET_PRESENT = _us(0x0800, 0x0001)  # Command Data Set Type: a data set follows


def store_request_command(message_id: int, sop_class_uid: str, sop_instance_uid: str,
                          priority: int, move_originator_aet: str | None = None,
                          move_originator_id: int | None = None) -> bytes:
    """The command set of a C-STORE-RQ with a data set (PS3.7 9.3.1.1), encoded as
    pynetdicom encodes it: implicit VR little endian, elements in tag order, UIDs padded
    with NUL and the Move Originator's AE title with a space to an even length."""
    parts = [_ui(0x0002, sop_class_uid), _STORE_RQ_FIELD, _us(0x0110, message_id),
             _us(0x0700, priority), _DATA_SET_PRESENT, _ui(0x1000, sop_instance_uid)]
    if move_originator_aet is not None:
        value = move_originator_aet.strip().encode("ascii")
        if len(value) % 2:
            value += b" "
        parts.append(struct.pack("<HHL", 0x0000, 0x1030, len(value)) + value)
    if move_originator_id is not None:
        parts.append(_us(0x1031, move_originator_id))
    body = b"".join(parts)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


_RETRIEVE_RSP_FIELD = {C_MOVE: 0x8021, C_GET: 0x8010}  # Command Field of the response


def pending_retrieve_response_command(command_field: int, message_id: int,
                                      sop_class_uid: str, remaining: int, completed: int,
                                      failed: int, warning: int) -> bytes:
    """The command set of a pending (0xFF00) C-MOVE-RSP or C-GET-RSP with its four
    sub-operation counts and nothing else (PS3.7 9.3.3.2, 9.3.4.2), encoded as pynetdicom
    encodes it."""
    body = b"".join((
        _ui(0x0002, sop_class_uid),
        _us(0x0100, command_field),
        _us(0x0120, message_id),
        _NO_DATA_SET,
        _us(0x0900, 0xFF00),
        _us(0x1020, remaining),
        _us(0x1021, completed),
        _us(0x1022, failed),
        _us(0x1023, warning),
    ))
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


# -- the C-STORE request -------------------------------------------------------------------

_ELEMENT_HEAD = struct.Struct("<HHL")
_US = struct.Struct("<H")
#: C-STORE-RQ command elements (group 0000) read here; Group Length may be left out.
_STORE_RQ = {0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000}
_STORE_RQ_REQUIRED = _STORE_RQ - {0x0000}


def _uid(value: bytes) -> str | None:
    try:
        text = value.decode("ascii").rstrip("\0 ")
    except UnicodeDecodeError:
        return None
    return text if text and "\\" not in text else None


def plain_store_request(command: bytes) -> tuple[int, str, str, int] | None:
    """(Message ID, Affected SOP Class UID, Affected SOP Instance UID, Priority) of a C-STORE-RQ
    command set with a data set and nothing else, ``None`` for any other command set."""
    fields: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _ELEMENT_HEAD.unpack_from(command, offset)
        offset += 8
        if (group != 0 or element not in _STORE_RQ or element in fields
                or length > end - offset):
            return None
        fields[element] = command[offset:offset + length]
        offset += length
    if not _STORE_RQ_REQUIRED <= fields.keys():
        return None
    if any(len(fields[e]) != 2 for e in (0x0100, 0x0110, 0x0700, 0x0800)):
        return None
    if _US.unpack(fields[0x0100])[0] != 0x0001 or _US.unpack(fields[0x0800])[0] == 0x0101:
        return None
    sop_class, sop_instance = _uid(fields[0x0002]), _uid(fields[0x1000])
    if sop_class is None or sop_instance is None:
        return None
    return _US.unpack(fields[0x0110])[0], sop_class, sop_instance, _US.unpack(fields[0x0700])[0]


class _CommandReader(DIMSEMessage):
    """A DIMSE message being received, until its command set is complete: then it becomes a
    :class:`_PlainStoreRequest` or, for anything else, pynetdicom's message class with the
    command set pynetdicom decoded (as ``DIMSEMessage.decode_msg`` does)."""

    def decode_msg(self, primitive: Any, assoc: Any = None) -> bool:
        # DIMSEMessage.decode_msg without STORE_RECV_CHUNKED_DATASET, but for the command set.
        if primitive.__class__ is not P_DATA:
            return False
        for context_id, data in primitive.presentation_data_value_list:
            control = data[0]
            if control & 1:  # command fragment
                self.encoded_command_set.write(data[1:])
                if control & 2:
                    self.context_id = context_id
                    self._end_of_command()
                    if self.command_set.get("CommandDataSetType") == 0x0101:
                        return True
            else:
                self.data_set.write(data[1:])  # type: ignore[union-attr]
                if control & 2:
                    return True
        return False

    def _end_of_command(self) -> None:
        store = plain_store_request(self.encoded_command_set.getvalue())
        if store is not None:
            self.__class__ = _PlainStoreRequest
            self._store = store  # type: ignore[attr-defined]
            return
        self.command_set = decode(self.encoded_command_set, True, True)
        self.__class__ = _MESSAGE_TYPES[self.command_set.CommandField][1]


class _PlainStoreRequest(C_STORE_RQ):
    """A C-STORE-RQ whose command set :func:`plain_store_request` read."""

    _store: tuple[int, str, str, int]

    def message_to_primitive(self) -> C_STORE:
        message_id, sop_class, sop_instance, priority = self._store
        primitive = C_STORE()
        primitive.MessageID = message_id
        primitive.AffectedSOPClassUID = sop_class
        primitive.AffectedSOPInstanceUID = sop_instance
        primitive.Priority = priority
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        primitive._dataset_path = None
        primitive._dataset_file = None
        return primitive


class StoreDIMSE(DIMSEServiceProvider):
    """See the module docstring. Not instantiated: :func:`adopt` converts pynetdicom's."""

    def receive_primitive(self, primitive: Any) -> None:
        if (self.message is None and not _config.STORE_RECV_CHUNKED_DATASET
                and not self.assoc.get_handlers(evt.EVT_DIMSE_RECV)):
            message = DIMSEMessage()
            message.__class__ = _CommandReader
            self.message = message
        super().receive_primitive(primitive)
        message = self.message  # None again once a whole message has gone to its handler
        if isinstance(message, C_STORE_RQ) and not getattr(message, "_announced", False):
            message._announced = True
            ARRIVALS.announced(id(self.assoc))  # its data set follows (gateway.ingest.arrivals)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = (self._store_response(primitive) or self._store_request(primitive)
                   or self._pending_retrieve_response(primitive))
        if command is None:
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list = [[context_id, _COMMAND_LAST_FRAGMENT + command]]
        self.dul.send_pdu(pdata)
        if primitive.MessageIDBeingRespondedTo is None:  # a request: its data set follows
            self._send_data_set(primitive.DataSet, context_id)

    def _store_request(self, rq: Any) -> bytes | None:
        """The encoded command set if ``rq`` is a C-STORE request whose data set is in
        memory (a C-MOVE or C-GET sub-operation, an export), else ``None``."""
        if (type(rq) is not C_STORE or rq.MessageIDBeingRespondedTo is not None
                or rq.MessageID is None or rq.AffectedSOPClassUID is None
                or rq.AffectedSOPInstanceUID is None or rq.Priority is None
                or not isinstance(rq.DataSet, io.BytesIO) or not rq.DataSet.getbuffer().nbytes
                or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            return None
        return self._one_pdu(lambda: store_request_command(
            rq.MessageID, rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID, rq.Priority,
            rq.MoveOriginatorApplicationEntityTitle, rq.MoveOriginatorMessageID,
        ))

    def _pending_retrieve_response(self, rsp: Any) -> bytes | None:
        """The encoded command set if ``rsp`` is a pending C-MOVE or C-GET response with its
        four counts and nothing else (one per sub-operation), else ``None``."""
        field = _RETRIEVE_RSP_FIELD.get(type(rsp))
        if (field is None or rsp.MessageIDBeingRespondedTo is None or rsp.Status != 0xFF00
                or rsp.AffectedSOPClassUID is None or rsp.ErrorComment is not None
                or rsp.Identifier is not None
                or None in (rsp.NumberOfRemainingSuboperations,
                            rsp.NumberOfCompletedSuboperations,
                            rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations)
                or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            return None
        return self._one_pdu(lambda: pending_retrieve_response_command(
            field, rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID,
            rsp.NumberOfRemainingSuboperations, rsp.NumberOfCompletedSuboperations,
            rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations,
        ))

    def _send_data_set(self, data_set: io.BytesIO, context_id: int) -> None:
        """The data set in fragments of at most the peer's PDU length less the PDV header,
        as pynetdicom's ``DIMSEMessage.encode_msg`` cuts them."""
        limit = self.maximum_pdu_size
        with data_set.getbuffer() as view:
            size = len(view)
            step = limit - 6 if limit else size
            for start in range(0, size, step):
                last = start + step >= size
                pdata = P_DATA()
                pdata.presentation_data_value_list = [
                    [context_id, (b"\x02" if last else b"\x00") + view[start:start + step]]]
                self.dul.send_pdu(pdata)

    def _store_response(self, rsp: Any) -> bytes | None:
        """The encoded command set if ``rsp`` is a plain C-STORE response, else ``None``."""
        if (type(rsp) is not C_STORE or rsp.MessageIDBeingRespondedTo is None
                or rsp.Status is None or rsp.ErrorComment is not None
                or rsp.OffendingElement is not None or rsp.AffectedSOPClassUID is None
                or rsp.AffectedSOPInstanceUID is None
                or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            return None
        return self._one_pdu(lambda: store_response_command(
            rsp.MessageIDBeingRespondedTo, rsp.AffectedSOPClassUID,
            rsp.AffectedSOPInstanceUID, rsp.Status,
        ))

    def _one_pdu(self, encode: Callable[[], bytes]) -> bytes | None:
        """``encode()``'s command set if it can be encoded here and fits in one PDU of the
        peer's, else ``None`` (pynetdicom's path then)."""
        try:
            command = encode()
        except (UnicodeEncodeError, struct.error):
            return None
        limit = self.maximum_pdu_size
        if limit and len(command) + 6 > limit:  # PDV header (4 + 1 + 1): one PDU
            return None
        return command


class ReactorQueue(queue.Queue):
    """The DIMSE message queue of one association, for pynetdicom's association reactor.

    pynetdicom 3.0's acceptor loop (``Association._run_reactor``) sleeps a hard-coded 1 ms,
    then polls this queue without blocking (``DIMSEServiceProvider.get_msg(block=False)``):
    a C-STORE request that the network thread has finished decoding waits 0.5 ms on
    average (up to 1 ms) before our handler sees it. Here a non-blocking ``get`` waits up
    to ``patience`` seconds instead (0: does not wait), so the request is taken the moment
    it is queued. The loop's other checks (release, abort, network timeout) then run at
    least every ``patience`` + 1 ms instead of every 1 ms. Blocking ``get`` calls are
    unchanged.

    The reactor's ``get`` also hands each message to ``screen`` first, on the association
    thread: pynetdicom drops a request that lacks a mandatory command element without any
    answer (``Association._serve_request``: "Received unexpected ... service message"), so
    the peer waits out its timeout; ``screen`` answers it and returns ``True`` (the reactor
    then sees an empty queue).
    """

    def __init__(self, patience: float, screen: Any = None) -> None:
        super().__init__()
        self.patience = patience
        self.screen = screen

    def get(self, block: bool = True, timeout: float | None = None):
        if block:
            return super().get(block, timeout)
        item = super().get(True, self.patience) if self.patience else super().get(False)
        if self.screen is not None and self.screen(item):
            raise queue.Empty
        return item


def wait_for_messages(assoc: Any, patience: float, screen: Any = None) -> None:
    """Give ``assoc`` (accepted, its threads not started) a :class:`ReactorQueue`: its
    reactor takes each message the moment it is decoded. Left alone if pynetdicom's queue
    is not a plain, empty ``queue.Queue``."""
    dimse = assoc.dimse
    if isinstance(getattr(dimse, "msg_queue", None), queue.Queue) and dimse.msg_queue.empty():
        dimse.msg_queue = ReactorQueue(patience, screen)


#: The pynetdicom release line these subclasses were written for and tested with.
PYNETDICOM_LINE = "3.0."


def adopt(assoc: Any) -> None:
    """Give ``assoc`` (its network thread not started: on ``EVT_CONN_OPEN`` for one we
    accept, from :class:`RequestingAE` for one we request) the cheaper classes of this
    module, where it still has pynetdicom's own (and pynetdicom is of
    :data:`PYNETDICOM_LINE`)."""
    if not _pynetdicom_version.startswith(PYNETDICOM_LINE):
        return
    if type(assoc.dul) is DULServiceProvider:
        WaitingDUL.adopt(assoc.dul)
    if type(assoc.dimse) is DIMSEServiceProvider:
        assoc.dimse.__class__ = StoreDIMSE


class RequestingAE(AE):
    """An AE whose *requested* associations get :class:`WaitingDUL` too: their network
    thread waits on the socket instead of sleeping 1 ms between looks, which each C-STORE
    sub-operation of a C-MOVE (and each instance an export sends) otherwise waits out for its
    request and again for its response. The hook is pynetdicom 3.0's ``AE._create_socket``,
    called by ``associate`` before the association's network thread starts."""

    def _create_socket(self, assoc: Any, *args: Any, **kwargs: Any) -> Any:
        sock = super()._create_socket(assoc, *args, **kwargs)
        adopt(assoc)
        return sock
