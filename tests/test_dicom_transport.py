"""The SCP's cheaper pynetdicom layers (adapters.dicom_transport) produce and accept
exactly what pynetdicom's own do: the C-STORE response bytes, the C-STORE request read
from its command set, and the PDVs read from a P-DATA-TF PDU. The network behaviour
(storescu, TLS, bad input, admission, Q/R, Storage Commitment) is exercised through real
associations by tests/test_dimse_*.py and the others."""

from __future__ import annotations

import io
import struct

import pytest
from pynetdicom.dimse_messages import (
    C_ECHO_RQ,
    C_GET_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    DIMSEMessage,
)
from pynetdicom.dimse_primitives import C_ECHO, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from adapters.dicom_transport import (
    PYNETDICOM_LINE,
    StoreDIMSE,
    WaitingDUL,
    _CommandReader,
    _PlainStoreRequest,
    pending_retrieve_response_command,
    plain_store_request,
    store_request_command,
    store_response_command,
)


def _pynetdicom_pdvs(rsp: C_STORE, context_id: int, max_pdu: int) -> list[list]:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return [[cx, bytes(data)] for p in message.encode_msg(context_id, max_pdu)
            for cx, data in p.presentation_data_value_list]


def _rsp(message_id: int, sop_class: str, sop_instance: str, status: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


CASES = [
    (1, "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1", 0x0000),  # odd, odd
    (65535, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.44", 0xB000),  # even, even
    (7, "1.2.840.10008.5.1.4.1.1.128", "2.25." + "9" * 59, 0x0000),  # 64 characters
]


class _Dul:
    def __init__(self) -> None:
        self.sent: list = []

    def send_pdu(self, primitive) -> None:
        self.sent.append(primitive)


class _Peer:
    def __init__(self, maximum_length: int) -> None:
        self.maximum_length = maximum_length


class _Assoc:
    """What the DIMSE provider asks of its association: handlers, network layer, peer."""

    is_requestor = False

    def __init__(self, handlers=(), max_pdu: int = 16384) -> None:
        self.handlers = list(handlers)
        self.dul = _Dul()
        self.requestor = _Peer(max_pdu)

    def get_handlers(self, event):
        return self.handlers


def _dimse(max_pdu: int = 16384, handlers=()) -> StoreDIMSE:
    dimse = StoreDIMSE.__new__(StoreDIMSE)
    dimse.__dict__["_assoc"] = _Assoc(handlers, max_pdu)
    return dimse


@pytest.mark.parametrize(("message_id", "sop_class", "sop_instance", "status"), CASES)
def test_store_response_bytes_are_pynetdicoms(message_id, sop_class, sop_instance, status):
    rsp = _rsp(message_id, sop_class, sop_instance, status)
    ours = store_response_command(message_id, sop_class, sop_instance, status)
    assert _pynetdicom_pdvs(rsp, 3, 16384) == [[3, b"\x03" + ours]]

    dimse = _dimse()
    dimse.send_msg(rsp, 3)
    assert [p.presentation_data_value_list for p in dimse.dul.sent] == [[[3, b"\x03" + ours]]]


def test_responses_with_more_fields_take_pynetdicoms_path():
    rsp = _rsp(*CASES[0][:3], 0xC000)
    rsp.ErrorComment = "dataset cannot be parsed"
    dimse = _dimse()
    dimse.send_msg(rsp, 1)
    expected = _pynetdicom_pdvs(rsp, 1, 16384)
    assert [[cx, bytes(d)] for p in dimse.dul.sent
            for cx, d in p.presentation_data_value_list] == expected
    assert b"dataset cannot be parsed" in expected[0][1]


def test_a_bound_dimse_sent_handler_sees_pynetdicoms_message():
    seen = []
    dimse = _dimse(handlers=[(lambda event: seen.append(event), None)])
    assert dimse._store_response(_rsp(*CASES[0])) is None


def test_a_response_too_long_for_the_peers_pdu_is_fragmented_by_pynetdicom():
    assert _dimse(max_pdu=64)._store_response(_rsp(*CASES[2])) is None


def _rq(message_id: int, sop_class: str, sop_instance: str, priority: int, move_aet,
        move_id, data: bytes) -> C_STORE:  # noqa: ANN001
    rq = C_STORE()
    rq.MessageID = message_id
    rq.AffectedSOPClassUID = sop_class
    rq.AffectedSOPInstanceUID = sop_instance
    rq.Priority = priority
    if move_aet is not None:
        rq.MoveOriginatorApplicationEntityTitle = move_aet
    if move_id is not None:
        rq.MoveOriginatorMessageID = move_id
    rq.DataSet = io.BytesIO(data)
    return rq


def _pynetdicom_request_pdvs(rq: C_STORE, context_id: int, max_pdu: int) -> list[list]:
    message = C_STORE_RQ()
    message.primitive_to_message(rq)
    return [[cx, bytes(data)] for p in message.encode_msg(context_id, max_pdu)
            for cx, data in p.presentation_data_value_list]


REQUESTS = [  # (message id, class, instance, priority, move originator AE and id, size, PDU)
    (1, "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1", 2, None, None, 10, 16384),
    (65535, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.44", 0, "MOVESCU", 7, 40000, 16384),
    (9, "1.2.840.10008.5.1.4.1.1.128", "2.25." + "9" * 59, 1, "SIXTEEN_CHARS_AE", 65535,
     16378, 16384),  # the data set fills one PDU exactly
    (3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", 2, "AB", 1, 300000, 0),  # no PDU limit
    (4, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", 2, "ODD", None, 16379, 16384),  # one byte more
]


@pytest.mark.parametrize(("message_id", "sop_class", "sop_instance", "priority", "move_aet",
                          "move_id", "size", "max_pdu"), REQUESTS)
def test_store_request_bytes_are_pynetdicoms(message_id, sop_class, sop_instance, priority,
                                             move_aet, move_id, size, max_pdu):
    """A C-STORE-RQ we send (C-MOVE/C-GET sub-operation, export): the same PDVs, command
    and data set fragments, as pynetdicom's encoder gives."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    rq = _rq(message_id, sop_class, sop_instance, priority, move_aet, move_id, data)
    expected = _pynetdicom_request_pdvs(rq, 5, max_pdu)
    command = store_request_command(message_id, sop_class, sop_instance, priority, move_aet,
                                    move_id)
    assert expected[0] == [5, b"\x03" + command]
    dimse = _dimse(max_pdu=max_pdu)
    dimse.send_msg(_rq(message_id, sop_class, sop_instance, priority, move_aet, move_id, data),
                   5)
    sent = [[cx, bytes(d)] for p in dimse.dul.sent for cx, d in p.presentation_data_value_list]
    assert sent == expected
    assert len(sent) == 1 + (1 if max_pdu == 0 else -(-size // (max_pdu - 6)))


def test_other_requests_take_pynetdicoms_path():
    """No data set, or a handler that wants pynetdicom's message: pynetdicom encodes it."""
    rq = _rq(*REQUESTS[1][:6], b"")
    assert _dimse()._store_request(rq) is None
    rq = _rq(*REQUESTS[1][:6], b"data")
    assert _dimse(handlers=[(lambda event: None, None)])._store_request(rq) is None
    assert _dimse(max_pdu=64)._store_request(_rq(*REQUESTS[2][:6], b"data")) is None
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    assert _dimse()._store_request(echo) is None


def _retrieve_rsp(kind, status: int = 0xFF00, counts=(3, 1, 0, 2)):  # noqa: ANN001, ANN202
    rsp = kind()
    rsp.MessageIDBeingRespondedTo = 41
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root MOVE
    rsp.Status = status
    (rsp.NumberOfRemainingSuboperations, rsp.NumberOfCompletedSuboperations,
     rsp.NumberOfFailedSuboperations, rsp.NumberOfWarningSuboperations) = counts
    return rsp


@pytest.mark.parametrize(("kind", "message", "field"),
                         [(C_MOVE, C_MOVE_RSP, 0x8021), (C_GET, C_GET_RSP, 0x8010)])
@pytest.mark.parametrize("counts", [(3, 1, 0, 2), (0, 65535, 7, 0)])
def test_pending_retrieve_response_bytes_are_pynetdicoms(kind, message, field, counts):
    """The pending response sent after each C-MOVE / C-GET sub-operation."""
    rsp = _retrieve_rsp(kind, counts=counts)
    reference = message()
    reference.primitive_to_message(rsp)
    expected = [[cx, bytes(d)] for p in reference.encode_msg(7, 16384)
                for cx, d in p.presentation_data_value_list]
    ours = pending_retrieve_response_command(field, 41, "1.2.840.10008.5.1.4.1.2.2.2", *counts)
    assert expected == [[7, b"\x03" + ours]]
    dimse = _dimse()
    dimse.send_msg(_retrieve_rsp(kind, counts=counts), 7)
    assert [[cx, bytes(d)] for p in dimse.dul.sent
            for cx, d in p.presentation_data_value_list] == expected


def test_final_retrieve_responses_take_pynetdicoms_path():
    """A final response (success, failure, cancel), one with an Error Comment or a Failed
    SOP Instance UID List, or one without its counts: pynetdicom encodes it."""
    assert _dimse()._pending_retrieve_response(_retrieve_rsp(C_MOVE, 0x0000)) is None
    rsp = _retrieve_rsp(C_MOVE)
    rsp.Identifier = io.BytesIO(b"\x08\x00\x58\x11\x00\x00\x00\x00")
    assert _dimse()._pending_retrieve_response(rsp) is None
    rsp = _retrieve_rsp(C_GET)
    rsp.NumberOfWarningSuboperations = None
    assert _dimse()._pending_retrieve_response(rsp) is None
    assert _dimse(handlers=[(lambda event: None, None)])._pending_retrieve_response(
        _retrieve_rsp(C_MOVE)) is None


def _dul() -> WaitingDUL:
    dul = WaitingDUL.__new__(WaitingDUL)
    dul.__dict__["_assoc"] = _Assoc()
    return dul


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def test_p_data_tf_pdvs_are_pynetdicoms():
    body = (_pdv(1, 0x03, b"\x00" * 10) + _pdv(3, 0x00, bytes(range(256)) * 3)
            + _pdv(3, 0x02, b"tail"))
    header = struct.pack(">BBL", 4, 0, len(body))
    reference = P_DATA_TF()
    reference.decode(header + body)
    pdu, event = _dul()._p_data_tf(bytearray(header), bytearray(body))
    assert event == "Evt10"
    got = pdu.to_primitive().presentation_data_value_list
    want = reference.to_primitive().presentation_data_value_list
    assert [(cx, bytes(v)) for cx, v in got] == [(cx, bytes(v)) for cx, v in want]
    assert [cx for cx, _ in got] == [1, 3, 3]


@pytest.mark.parametrize("body", [
    struct.pack(">LBB", 100, 1, 3) + b"short",  # item runs past the PDU
    struct.pack(">LB", 0, 1),  # item length 0
    b"\x00\x00\x00",  # not even an item header
])
def test_malformed_p_data_tf_is_refused(body):
    with pytest.raises(ValueError):
        _dul()._p_data_tf(bytearray(struct.pack(">BBL", 4, 0, len(body))), bytearray(body))


def _request_pdvs(rq: C_STORE, context_id: int = 5) -> list:
    message = C_STORE_RQ()
    message.primitive_to_message(rq)
    return [[cx, bytes(d)] for p in message.encode_msg(context_id, 16384)
            for cx, d in p.presentation_data_value_list]


def _decode(pdvs: list, reader: bool):
    primitive = P_DATA()
    primitive.presentation_data_value_list = pdvs
    message = DIMSEMessage()
    if reader:
        message.__class__ = _CommandReader
    assert message.decode_msg(primitive)
    return message, message.message_to_primitive()


def _store_rq(**extra) -> C_STORE:
    rq = C_STORE()
    rq.MessageID = 42
    rq.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rq.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    rq.Priority = 2
    rq.DataSet = io.BytesIO(b"\x08\x00\x16\x00" + b"dataset!" * 9)
    for keyword, value in extra.items():
        setattr(rq, keyword, value)
    return rq


FIELDS = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
          "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")


@pytest.mark.parametrize(("extra", "plain"), [
    ({}, True),
    ({"AffectedSOPInstanceUID": "1.2.3.4"}, True),  # even length: no padding
    ({"MoveOriginatorApplicationEntityTitle": "PACS", "MoveOriginatorMessageID": 3}, False),
])
def test_store_request_read_as_pynetdicom_reads_it(extra, plain):
    pdvs = _request_pdvs(_store_rq(**extra))
    # the data set in two fragments, as over several PDUs
    data = pdvs.pop()
    pdvs += [[data[0], b"\x00" + data[1][1:20]], [data[0], b"\x02" + data[1][20:]]]
    reference_message, reference = _decode(pdvs, reader=False)
    message, ours = _decode(pdvs, reader=True)
    assert isinstance(message, _PlainStoreRequest) is plain
    assert type(ours) is C_STORE
    for field in FIELDS:
        assert getattr(ours, field) == getattr(reference, field), field
    assert ours.DataSet.getvalue() == reference.DataSet.getvalue()
    assert ours._context_id == reference._context_id == 5


def test_other_messages_decoded_by_pynetdicom():
    echo = C_ECHO()
    echo.MessageID = 9
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    pdvs = [[1, bytes(d)] for p in message.encode_msg(1, 16384)
            for _, d in p.presentation_data_value_list]
    decoded, primitive = _decode(pdvs, reader=True)
    assert type(decoded) is C_ECHO_RQ
    assert type(primitive) is C_ECHO and primitive.MessageID == 9


@pytest.mark.parametrize("mangle", [
    lambda c: c[:-3],  # truncated
    lambda c: c + struct.pack("<HHL", 0, 0x0902, 2) + b"xx",  # an extra element
    lambda c: c.replace(struct.pack("<HHLH", 0, 0x0100, 2, 1),  # a C-FIND-RQ instead
                        struct.pack("<HHLH", 0, 0x0100, 2, 0x20)),
])
def test_anything_but_a_plain_store_request_is_not_read_here(mangle):
    command = _request_pdvs(_store_rq())[0][1][1:]
    assert plain_store_request(command) is not None
    assert plain_store_request(mangle(command)) is None


def test_written_for_the_installed_pynetdicom():
    """The subclasses lean on pynetdicom's internals; another release line turns them off
    (adopt) until they are checked against it and PYNETDICOM_LINE is moved."""
    import pynetdicom

    assert pynetdicom.__version__.startswith(PYNETDICOM_LINE)


def test_a_store_command_announces_its_data_set_until_it_is_handed_over():
    """The group commit's leader waits for rows on their way (gateway.ingest.arrivals): a
    C-STORE whose command set has arrived announces its data set, once, until the handler
    takes it (whichever way its command set was read); a stale announcement is forgotten."""
    import time

    from gateway.ingest.arrivals import ARRIVALS, Arrivals

    dimse = _dimse()
    dimse.__dict__["message"] = None
    key = id(dimse.assoc)
    ARRIVALS.handed_over(key)
    before = ARRIVALS.count()
    command, data = _request_pdvs(_store_rq())
    first = P_DATA()
    first.presentation_data_value_list = [command, [data[0], b"\x00" + data[1][1:20]]]
    dimse.receive_primitive(first)  # the command and a first fragment: more to come
    assert isinstance(dimse.message, _PlainStoreRequest)
    assert ARRIVALS.count() == before + 1
    more = P_DATA()
    more.presentation_data_value_list = [[data[0], b"\x00" + data[1][20:30]]]
    dimse.receive_primitive(more)
    assert ARRIVALS.count() == before + 1  # announced once
    ARRIVALS.handed_over(key)  # DicomService._on_store does this first
    assert ARRIVALS.count() == before

    moved = _dimse()  # a C-STORE of a C-MOVE (pynetdicom's reading): announced too
    moved.__dict__["message"] = None
    command, data = _request_pdvs(_store_rq(MoveOriginatorApplicationEntityTitle="PACS",
                                            MoveOriginatorMessageID=3))
    first.presentation_data_value_list = [command, [data[0], b"\x00" + data[1][1:20]]]
    moved.receive_primitive(first)
    assert not isinstance(moved.message, _PlainStoreRequest)
    assert ARRIVALS.count() == before + 1
    ARRIVALS.handed_over(id(moved.assoc))

    arrivals = Arrivals(max_age=0.05)
    arrivals.announced("a")
    arrivals.announced("b")
    arrivals.handed_over("a")
    assert arrivals.count() == 1
    time.sleep(0.06)  # "b" aborted mid-instance: forgotten
    assert arrivals.count() == 0
