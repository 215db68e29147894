"""Connections that stall before or inside a PDU cannot lock the DICOM service
(gateway/ingest/dimse_guard.py).

The attack: many TCP connections each send the first 20 bytes of an A-ASSOCIATE-RQ and
then nothing. pynetdicom blocks in ``recv`` for the rest of the PDU for ever and counts
those connections against the association limit, so every new association, C-ECHO
included, was rejected (local limit exceeded) and the connections were never closed.

* pending connections do not count against ``max_associations``: a real ``echoscu``
  succeeds while 50 stalled connections are held;
* the ARTIM timer closes a connection whose A-ASSOCIATE-RQ is not complete in time;
* at most ``max_pending_per_address`` connections of one address are held, more are closed
  at once, other addresses are not affected;
* an accepted association whose next PDU stops half-way is aborted after
  ``network_timeout`` and gives its association slot back.

The stalled connections come from 127.0.0.2 and ``echoscu`` from 127.0.0.1 (two addresses
of the loopback network). These tests are about the listener, not the index: they run on
SQLite only. Each runs ``drimbox serve`` with its default two DICOM worker processes, where
the limits hold per worker.
"""

from __future__ import annotations

import selectors
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Gateway
from peers import require_tool
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

ATTACKER = "127.0.0.2"
#: Upper bound of every wait for the server to close a connection (never reached when it
#: works: the timeouts configured below are 2 s, or the close is immediate).
WAIT = 30.0


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator:
    made: list[Gateway] = []

    def start(**env: str) -> Gateway:
        gw = Gateway(tmp_path / "data", f"sqlite:///{tmp_path / 'index.sqlite'}", **env)
        made.append(gw)
        return gw.start()

    yield start
    for gw in made:
        if gw.proc is not None:
            gw.stop(signal.SIGKILL)


def association_rq(called: str = "DRIMBOX", calling: str = "STALLER") -> bytes:
    """A complete, well-formed A-ASSOCIATE-RQ PDU proposing Verification."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cx = build_context(Verification)
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1.1"
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def stall(port: int, count: int, source: str = ATTACKER) -> list[socket.socket]:
    """``count`` connections from ``source``, each sending the first 20 bytes of an
    A-ASSOCIATE-RQ and then nothing."""
    head = association_rq()[:20]
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            socks.append(s)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            s.sendall(head)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def _ended(s: socket.socket) -> bool:
    """The peer closed or reset the connection (``s`` is readable)."""
    try:
        while s.recv(65536):  # an A-ABORT or A-ASSOCIATE-RJ may come before the end
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def wait_closed(socks: list[socket.socket], at_least: int, timeout: float = WAIT) -> int:
    """Wait (at most ``timeout`` s) until the server has closed ``at_least`` of ``socks``;
    return how many it closed."""
    closed: set[socket.socket] = set()
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while len(closed) < at_least and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                s = key.fileobj
                if _ended(s):  # type: ignore[arg-type]
                    closed.add(s)  # type: ignore[arg-type]
                    sel.unregister(s)
    return len(closed)


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (checked now, without waiting)."""
    opened = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1, socket.MSG_PEEK):
                opened += 1  # data, not an end
        except BlockingIOError:
            opened += 1
        except OSError:
            pass
    return opened


def echo(port: int) -> subprocess.CompletedProcess:
    """A real dcmtk C-ECHO with its own 5 s connection, ACSE and DIMSE timeouts."""
    return subprocess.run(
        [require_tool("echoscu"), "-to", "5", "-ta", "5", "-td", "5", "-aec", "DRIMBOX",
         "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=60,
    )


def test_stalled_requests_neither_block_echo_nor_stay_open(start_gateway) -> None:
    """50 connections stalled inside their A-ASSOCIATE-RQ: echoscu still succeeds (they do
    not count against max_associations = 2), and the ARTIM timer (2 s) closes them all."""
    gw = start_gateway(DRIMBOX_MAX_ASSOCIATIONS="2", DRIMBOX_ARTIM_TIMEOUT="2",
                       DRIMBOX_MAX_PENDING_PER_ADDRESS="100")
    socks = stall(gw.dicom_port, 50)
    try:
        result = echo(gw.dicom_port)
        assert result.returncode == 0, result.stdout + result.stderr
        assert wait_closed(socks, 50) == 50, gw.log()
    finally:
        close_all(socks)
    assert "ARTIM" in gw.log()
    result = echo(gw.dicom_port)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pending_connections_per_address_are_limited(start_gateway) -> None:
    """With max_pending_per_address = 3 (per worker, 2 workers) and an ARTIM of 60 s, of 20
    stalled connections from one address at most 6 are held: the others are closed at once
    and logged. Those held stay open, and echoscu from another address still succeeds with
    max_associations = 1."""
    limit, workers, count = 3, 2, 20
    gw = start_gateway(DRIMBOX_MAX_ASSOCIATIONS="1", DRIMBOX_ARTIM_TIMEOUT="60",
                       DRIMBOX_MAX_PENDING_PER_ADDRESS=str(limit),
                       DRIMBOX_DICOM_WORKERS=str(workers))
    socks = stall(gw.dicom_port, count)
    try:
        # Closed at once: well before the ARTIM timer (60 s) could close anything.
        assert wait_closed(socks, count - limit * workers) >= count - limit * workers, gw.log()
        result = echo(gw.dicom_port)
        assert result.returncode == 0, result.stdout + result.stderr
        # The held ones are still open: at least one worker's worth.
        assert limit <= still_open(socks) <= limit * workers
    finally:
        close_all(socks)
    assert "max_pending_per_address" in gw.log()
    assert 'drimbox_dicom_connections_closed_total{reason="pending_per_address"}' in gw.metrics()


def test_pdu_stalled_after_acceptance_is_aborted(start_gateway) -> None:
    """An association is accepted, then its next PDU stops after 10 bytes: the gateway drops
    it after network_timeout (2 s) and its slot (max_associations = 1, one worker) serves
    the next association."""
    gw = start_gateway(DRIMBOX_MAX_ASSOCIATIONS="1", DRIMBOX_NETWORK_TIMEOUT="2",
                       DRIMBOX_DICOM_WORKERS="1")
    s = socket.create_connection(("127.0.0.1", gw.dicom_port), timeout=WAIT)
    try:
        s.sendall(association_rq())
        header = s.recv(6, socket.MSG_WAITALL)
        pdu_type, _, length = struct.unpack(">BBL", header)
        assert pdu_type == 0x02, "A-ASSOCIATE-AC expected"
        s.recv(length, socket.MSG_WAITALL)
        # A P-DATA-TF announcing 100 bytes, of which only the first 10 come.
        s.sendall(struct.pack(">BBL", 0x04, 0, 100) + b"\x00" * 4)
        assert wait_closed([s], 1) == 1, gw.log()
    finally:
        s.close()
    result = echo(gw.dicom_port)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stop_is_clean_with_stalled_connections(start_gateway) -> None:
    """SIGTERM while connections are stalled inside their A-ASSOCIATE-RQ: they have nothing
    to drain, so they are closed and the gateway stops cleanly (exit status 0) without
    waiting for them."""
    gw = start_gateway(DRIMBOX_ARTIM_TIMEOUT="600")
    socks = stall(gw.dicom_port, 12)
    try:
        result = echo(gw.dicom_port)  # the workers have taken the stalled connections by now
        assert result.returncode == 0, result.stdout + result.stderr
        assert gw.stop(signal.SIGTERM, timeout=WAIT * 2) == 0, gw.log()
        assert still_open(socks) == 0
    finally:
        close_all(socks)
    assert "still open after" not in gw.log()


def test_association_limit_still_holds_for_accepted_associations(start_gateway) -> None:
    """max_associations = 1 (one worker): while one association is open the next is rejected
    (local limit exceeded); once it is released, associations are accepted again, one after
    the other."""
    gw = start_gateway(DRIMBOX_MAX_ASSOCIATIONS="1", DRIMBOX_DICOM_WORKERS="1")
    s = socket.create_connection(("127.0.0.1", gw.dicom_port), timeout=WAIT)
    try:
        s.sendall(association_rq())
        pdu_type, _, length = struct.unpack(">BBL", s.recv(6, socket.MSG_WAITALL))
        assert pdu_type == 0x02, "A-ASSOCIATE-AC expected"
        s.recv(length, socket.MSG_WAITALL)
        refused = echo(gw.dicom_port)
        assert refused.returncode != 0
        assert "Local Limit Exceeded" in refused.stdout + refused.stderr
        s.sendall(struct.pack(">BBL", 0x05, 0, 4) + b"\x00" * 4)  # A-RELEASE-RQ
        pdu_type, _, length = struct.unpack(">BBL", s.recv(6, socket.MSG_WAITALL))
        assert pdu_type == 0x06, "A-RELEASE-RP expected"
    finally:
        s.close()
    for _ in range(3):
        result = echo(gw.dicom_port)
        assert result.returncode == 0, result.stdout + result.stderr


def test_one_calling_ae_cannot_take_every_association(start_gateway) -> None:
    """max_associations_per_ae = 2 of max_associations = 8 (one worker): a third association
    from the same calling AE is rejected (local limit exceeded, transient: it may retry),
    while another AE title is still served; once one of the first two is released, the
    same AE gets in again."""
    gw = start_gateway(DRIMBOX_MAX_ASSOCIATIONS="8", DRIMBOX_MAX_ASSOCIATIONS_PER_AE="2",
                       DRIMBOX_DICOM_WORKERS="1")

    def associate(calling: str) -> tuple[socket.socket, int]:
        s = socket.create_connection(("127.0.0.1", gw.dicom_port), timeout=WAIT)
        s.sendall(association_rq(calling=calling))
        pdu_type, _, length = struct.unpack(">BBL", s.recv(6, socket.MSG_WAITALL))
        body = s.recv(length, socket.MSG_WAITALL)
        if pdu_type == 0x03:  # A-ASSOCIATE-RJ: result, source, reason
            assert tuple(body[1:4]) == (0x02, 0x03, 0x02), body  # transient, local limit
        return s, pdu_type

    held = [associate("MODALITY1"), associate("MODALITY1")]
    try:
        assert [t for _, t in held] == [0x02, 0x02]
        third, kind = associate("MODALITY1")
        third.close()
        assert kind == 0x03, "the third association of one AE must be rejected"
        other, kind = associate("MODALITY2")
        other.close()
        assert kind == 0x02, "another AE title is still served"
        first, _ = held.pop(0)
        first.sendall(struct.pack(">BBL", 0x05, 0, 4) + b"\x00" * 4)  # A-RELEASE-RQ
        assert first.recv(1) == b"\x06"  # A-RELEASE-RP
        first.close()
        deadline = time.monotonic() + WAIT
        while True:  # the slot comes back once the connection is seen closed
            again, kind = associate("MODALITY1")
            again.close()
            if kind == 0x02 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert kind == 0x02
    finally:
        for s, _ in held:
            s.close()
    assert "over max_associations_per_ae (2)" in gw.log()


def test_each_connection_gets_its_own_copy_of_the_contexts() -> None:
    """The cheap per-connection copy of the supported contexts (SupportedContexts) is a real
    copy: equal contexts, new objects and lists, so that one association negotiating cannot
    change what the next one is offered."""
    import copy

    from gateway.config import Settings
    from gateway.ingest.dimse import DicomService, SupportedContexts

    original = DicomService(Settings(), None).ae.supported_contexts  # type: ignore[arg-type]
    copies = copy.deepcopy(SupportedContexts(original))
    assert len(copies) == len(original) > 100
    for mine, theirs in zip(copies, original, strict=True):
        assert mine is not theirs and mine._transfer_syntax is not theirs._transfer_syntax
        assert (mine.abstract_syntax, mine.transfer_syntax, mine.context_id) == (
            theirs.abstract_syntax, theirs.transfer_syntax, theirs.context_id)
    copies[0].transfer_syntax.append("1.2.3")
    assert "1.2.3" not in original[0].transfer_syntax


def test_accepted_connections_have_nagle_off() -> None:
    """Each accepted DICOM connection has TCP_NODELAY: a DIMSE message is two writes
    (command, dataset), and with Nagle's algorithm the second waited for the peer's delayed
    ACK, ~40 ms per C-FIND match (bench/RESULTS.md, "Query/Retrieve")."""
    from gateway.ingest.dimse import GuardedAssociationServer

    server = GuardedAssociationServer.__new__(GuardedAssociationServer)
    server.ssl_context = None
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server.socket = listener
        with socket.create_connection(listener.getsockname(), timeout=5):
            accepted, _ = server.get_request()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
