"""A pynetdicom C-STORE SCU that can send any bytes as the Data Set, and a snapshot of what a
gateway holds (files under ``storage/`` and ``staging/``, index rows and counts).

pynetdicom's :meth:`Association.send_c_store` only sends datasets it can encode itself and
always derives the Affected SOP Class/Instance UIDs from the dataset. The bad-input tests need
the opposite: garbage bytes, or a command that disagrees with its dataset, or a presentation
context that is not the request's SOP class. :func:`raw_c_store` does what ``send_c_store``
does (pause the reactor, send the request through DIMSE, wait for the response) with a
request primitive built by the test.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from gateway.index.engine import create_index_engine
from gateway.index.store import IndexCounts, InstanceIndex, StoredInstance

_message_ids = itertools.count(1)


def encode_dataset(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The bytes a C-STORE carries for ``ds`` in an uncompressed ``transfer_syntax``."""
    ts = UID(transfer_syntax)
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    assert data is not None, "pydicom could not encode the dataset"
    return data


def associate(port: int, contexts: list[str], calling: str = "BADSCU",
              called: str = "DRIMBOX") -> Association:
    """An established association proposing each SOP class in ``contexts`` with Explicit VR
    Little Endian only (so the bytes we send are interpreted in that syntax)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in contexts:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association with the gateway was not established"
    return assoc


def context_id(assoc: Association, sop_class: str) -> int:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == sop_class:
            return int(cx.context_id)
    raise AssertionError(f"no accepted presentation context for {sop_class}")


def raw_c_store(
    assoc: Association,
    *,
    context: str,
    sop_class: str,
    sop_instance: str | None,
    data: bytes,
) -> C_STORE:
    """Send a C-STORE request with these exact command values and dataset bytes on the
    accepted presentation context whose abstract syntax is ``context``; return the response
    primitive (``Status``, ``ErrorComment``...). ``sop_instance=None`` leaves the Affected
    SOP Instance UID out of the command."""
    req = C_STORE()
    req.MessageID = next(_message_ids) % 65536
    req.Priority = 2
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.DataSet = BytesIO(data)
    cx_id = context_id(assoc, context)
    # As in Association.send_c_store: pause the reactor so that it does not take our response.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, cx_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert rsp is not None, "no C-STORE response within the DIMSE timeout"
    assert isinstance(rsp, C_STORE)
    return rsp


def store_dataset(assoc: Association, ds: Dataset) -> C_STORE:
    """A well-formed C-STORE of ``ds`` (command values taken from the dataset)."""
    return raw_c_store(
        assoc,
        context=str(ds.SOPClassUID),
        sop_class=str(ds.SOPClassUID),
        sop_instance=str(ds.SOPInstanceUID),
        data=encode_dataset(ds),
    )


def open_index(url: str) -> InstanceIndex:
    return InstanceIndex(create_index_engine(url))


@dataclass(frozen=True)
class Snapshot:
    """What a gateway holds: stored files (relative path -> SHA-256), staging entries, index."""

    storage: dict[str, str]
    staging: list[str]
    rows: list[StoredInstance]
    counts: IndexCounts


def snapshot(data_dir: Path, database_url: str) -> Snapshot:
    storage_dir = data_dir / "storage"
    storage = {
        str(p.relative_to(storage_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(storage_dir.rglob("*"))
        if p.is_file()
    }
    staging = sorted(p.name for p in (data_dir / "staging").iterdir())
    index = open_index(database_url)
    try:
        return Snapshot(storage, staging, index.all_instances(), index.counts())
    finally:
        index.engine.dispose()


def all_paths(root: Path) -> set[str]:
    """Every file and directory under ``root`` (relative), for 'nothing created anywhere'."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}
