"""Storage Commitment Push Model SCP (PS3.4 Annex J): a real gateway, instances sent with dcmtk
storescu, commitment asked by a pynetdicom SCU, the result received on the request's
association or on a new association to an SCP the test runs.

The rule itself (:func:`gateway.index.commitment.commitment_verdict`) runs on both index
back-ends; the protocol tests share one gateway on SQLite (the index is not what they test).
"""

from __future__ import annotations

import json
import queue
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import module_gateway
from dicom_factory import make_instance
from peers import free_port, storescu
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]
from sqlalchemy import create_engine, select

from gateway.index.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    Reference,
    commitment_verdict,
)
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.models import AuditEvent, Instance
from gateway.index.store import InstanceIndex, StoredFile
from gateway.ingest.header import InstanceHeader
from gateway.ingest.storage_commitment import PUSH_MODEL_INSTANCE

ROOT = "1.2.826.0.1.3680043.10.1257.77."
STUDY = ROOT + "1"
SOPS = [f"{ROOT}1.1.{i}" for i in range(1, 4)]
UNKNOWN = ROOT + "9.9.9"

# -- the rule, on both back-ends -------------------------------------------------------------


@pytest.fixture
def index(database_url: str) -> Iterator[InstanceIndex]:
    engine = create_index_engine(database_url)
    upgrade(engine)
    yield InstanceIndex(engine)
    engine.dispose()


def _header(n: int) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=CTImageStorage, sop_instance_uid=f"{ROOT}5.{n}",
        study_instance_uid=ROOT + "5", series_instance_uid=ROOT + "5.0",
        patient_id="248092700000000", issuer_of_patient_id="ASIP-SANTE-INS-NIR",
        patient_name="DUPONT^JEAN", modality="CT", instance_number=n)


def test_committed_iff_indexed_with_its_file_or_evicted_to_another_pacs(
        index: InstanceIndex) -> None:
    for n in (1, 2, 3):
        index.record(_header(n), StoredFile("1.2.840.10008.1.2.1", "a" * 64, 10, f"k/{n}", "MOD"))
    with index.write() as s:  # the third one's file evicted to the PACS
        s.execute(Instance.__table__.update().where(Instance.sop_instance_uid == f"{ROOT}5.3")
                  .values(evicted_at=Instance.received_at))
    on_disk = {"k/1", "k/3-not-its-key"}  # k/2 was lost; k/3 is evicted, nothing on disk
    refs = [Reference(CTImageStorage, f"{ROOT}5.{n}") for n in (1, 2, 3)]
    refs += [Reference(MRImageStorage, f"{ROOT}5.1"), Reference(CTImageStorage, UNKNOWN),
             Reference(CTImageStorage, f"{ROOT}5.1")]  # a repeated reference counts once

    verdict = commitment_verdict(index, on_disk.__contains__, refs, pacs_copy_counts=True)
    assert verdict.committed == [refs[0], refs[2]]
    assert [(f.reference, f.reason) for f in verdict.failed] == [
        (refs[1], PROCESSING_FAILURE), (refs[3], CLASS_INSTANCE_CONFLICT),
        (refs[4], NO_SUCH_OBJECT_INSTANCE)]

    # The PACS asking: the evicted instance's only copy is its own, no commitment of ours.
    verdict = commitment_verdict(index, on_disk.__contains__, refs[:3], pacs_copy_counts=False)
    assert verdict.committed == [refs[0]]
    assert [(f.reference, f.reason) for f in verdict.failed] == [
        (refs[1], PROCESSING_FAILURE), (refs[2], PROCESSING_FAILURE)]


# -- the protocol, on one gateway ------------------------------------------------------------


@dataclass
class Setup:
    port: int
    data_dir: Path
    database_url: str
    reports: queue.Queue  # (event type, event information, calling AE) received by REPORTS
    stored: list[Reference]
    lost: Reference  # stored, then its file deleted


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("stgcmt")
    reports: queue.Queue = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put((event.request.EventTypeID, event.event_information,
                     event.assoc.requestor.ae_title))
        return 0x0000, None

    scp = AE(ae_title="REPORTS")
    scp.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    scp_port = free_port()
    server = scp.start_server(("127.0.0.1", scp_port), block=False,
                              evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    peers = [
        {"ae_title": "MODALITY", "host": "127.0.0.1", "port": 104},
        {"ae_title": "FALLBACK", "host": "127.0.0.1", "port": scp_port},  # same_association
        {"ae_title": "REPORTS", "host": "127.0.0.1", "port": 104,
         "storage_commitment": "new_association", "storage_commitment_port": scp_port},
    ]
    folder = tmp / "in"
    folder.mkdir()
    files = []
    for i, sop in enumerate(SOPS):
        path = folder / f"{i}.dcm"
        make_instance(study_uid=STUDY, series_uid=STUDY + ".1", sop_uid=sop,
                      instance_number=i + 1, rows=8, cols=8).save_as(path, enforce_file_format=True)
        files.append(path)
    try:
        with module_gateway("sqlite", tmp, DRIMBOX_PEERS=json.dumps(peers)) as gw:
            storescu(files, gw.dicom_port, aet="MODALITY")
            (lost_file,) = (gw.data_dir / "storage").rglob(f"{SOPS[2]}.*.dcm")
            lost_file.unlink()
            yield Setup(gw.dicom_port, gw.data_dir, gw.database_url, reports,
                        [Reference(CTImageStorage, s) for s in SOPS[:2]],
                        Reference(CTImageStorage, SOPS[2]))
    finally:
        server.shutdown()


def _request(refs: list[Reference], transaction: str | None = None) -> Dataset:
    ds = Dataset()
    if transaction is not None:
        ds.TransactionUID = transaction
    items = []
    for r in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = r.sop_class_uid
        item.ReferencedSOPInstanceUID = r.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _associate(port: int, calling: str, reports: queue.Queue | None = None,
               answer: int = 0x0000) -> Association:
    """An association proposing the Push Model; a report received on it goes to ``reports``
    once its response has left (pynetdicom's requestor answers incoming N-EVENT-REPORTs on a
    thread of its own: released earlier, the gateway would never see the answer)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    answered: list = []

    def on_report(event: evt.Event) -> tuple[int, None]:
        assert reports is not None, "no report expected"
        assert (event.request.AffectedSOPClassUID, event.request.AffectedSOPInstanceUID) == (
            StorageCommitmentPushModel, PUSH_MODEL_INSTANCE)
        answered.append((event.request.EventTypeID, event.event_information))
        return answer, None

    def on_pdu_sent(event: evt.Event) -> None:
        if answered and isinstance(event.pdu, P_DATA_TF):  # the N-EVENT-REPORT-RSP
            reports.put(answered.pop())

    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title="DRIMBOX",
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report),
                                       (evt.EVT_PDU_SENT, on_pdu_sent)])
    assert assoc.is_established
    return assoc


def _action(assoc: Association, info: Dataset, action_type: int = 1) -> Dataset:
    status, _ = assoc.send_n_action(info, action_type, StorageCommitmentPushModel,
                                    PUSH_MODEL_INSTANCE)
    return status


def _refs(seq: list[Dataset] | None) -> list[Reference]:
    return [Reference(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in seq or []]


def _audit(setup: Setup, subject: str) -> list[tuple[str, str]]:
    engine = create_engine(setup.database_url)
    try:
        with engine.connect() as c:
            return [(r.outcome, r.reason) for r in c.execute(
                select(AuditEvent.outcome, AuditEvent.reason).where(
                    AuditEvent.action == "storage_commitment", AuditEvent.subject == subject)
                .order_by(AuditEvent.id))]
    finally:
        engine.dispose()


def test_result_on_the_same_association_lists_committed_and_failed(setup: Setup) -> None:
    transaction = generate_uid()
    wrong_class = Reference(MRImageStorage, SOPS[0])
    asked = [*setup.stored, Reference(CTImageStorage, UNKNOWN), wrong_class, setup.lost]
    received: queue.Queue = queue.Queue()
    assoc = _associate(setup.port, "MODALITY", received)
    try:
        assert _action(assoc, _request(asked, transaction)).Status == 0x0000
        event_type, info = received.get(timeout=20)
    finally:
        assoc.release()
    assert event_type == 2  # failures exist
    assert info.TransactionUID == transaction
    assert _refs(info.ReferencedSOPSequence) == setup.stored
    assert [(r, i.FailureReason) for r, i in zip(_refs(info.FailedSOPSequence),
                                                 info.FailedSOPSequence, strict=True)] == [
        (Reference(CTImageStorage, UNKNOWN), 0x0112), (wrong_class, 0x0119),
        (setup.lost, 0x0110)]
    assert (("allowed", f"transaction {transaction}: 2 committed, 3 failed "
             "(0x0110, 0x0112, 0x0119)") in _audit(setup, "MODALITY"))


def test_result_on_a_new_association_to_the_peer(setup: Setup) -> None:
    """The peer set to ``new_association`` releases at once; the result comes to its SCP."""
    transaction = generate_uid()
    assoc = _associate(setup.port, "REPORTS")
    try:
        assert _action(assoc, _request(setup.stored, transaction)).Status == 0x0000
    finally:
        assoc.release()
    event_type, info, caller = setup.reports.get(timeout=20)
    assert (event_type, caller) == (1, "DRIMBOX")  # all committed, sent by the gateway
    assert info.TransactionUID == transaction
    assert _refs(info.ReferencedSOPSequence) == setup.stored
    assert "FailedSOPSequence" not in info


def test_result_refused_on_the_same_association_comes_again_on_a_new_one(setup: Setup) -> None:
    """A peer that answers the report with a failure on the request's association (or has
    released it) gets it again on a new association to its configured address."""
    transaction = generate_uid()
    received: queue.Queue = queue.Queue()
    assoc = _associate(setup.port, "FALLBACK", received, answer=0x0110)
    try:
        assert _action(assoc, _request(setup.stored, transaction)).Status == 0x0000
        assert received.get(timeout=20)[1].TransactionUID == transaction
    finally:
        assoc.release()
    event_type, info, caller = setup.reports.get(timeout=20)
    assert (event_type, caller, info.TransactionUID) == (1, "DRIMBOX", transaction)


def test_unknown_caller_is_refused_and_audited(setup: Setup) -> None:
    assoc = _associate(setup.port, "STRANGER")
    try:
        status = _action(assoc, _request(setup.stored, generate_uid()))
    finally:
        assoc.release()
    assert status.Status == 0x0124
    assert "not a configured peer" in status.ErrorComment
    assert _audit(setup, "STRANGER") == [("denied", "calling AE STRANGER is not a configured peer")]


@pytest.mark.parametrize(("refs", "transaction", "action_type", "code", "comment"), [
    ([Reference(CTImageStorage, SOPS[0])], None, 1, 0x0121, "Transaction UID"),
    ([], "1.2.3", 1, 0x0121, "Referenced SOP Sequence"),
    ([Reference(CTImageStorage, "1.2.x")], "1.2.3", 1, 0x0115, "malformed UID"),
    ([Reference(CTImageStorage, SOPS[0])], "1.2.3", 2, 0x0123, "Action Type ID 2"),
], ids=["no-transaction-uid", "no-references", "bad-uid", "action-type-2"])
def test_malformed_request_is_answered_with_its_status(
        setup: Setup, refs: list[Reference], transaction: str | None, action_type: int,
        code: int, comment: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warning about the malformed UID we send
        info = _request(refs, transaction)
    assoc = _associate(setup.port, "MODALITY")
    try:
        status = _action(assoc, info, action_type)
    finally:
        assoc.release()
    assert status.Status == code
    assert comment in status.ErrorComment
