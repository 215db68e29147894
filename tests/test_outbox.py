# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""The publication outbox's rules on both index back-ends, and ``XdsTransport``'s
error contract against the real ``drimbox dmp-sim`` (R4-R8).

The end-to-end behaviour (storescu → stable → DMP, faults, restarts) is in
``test_publication_e2e.py``; here: claim order per study, one claimant per row, lease expiry,
a dead claimant's rows released at start, the backoff bounds, and the DMP answers mapped to
TransportUnavailable / TransportRefused with the XDS code and codeContext.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from dmp_support import Sim, new_oid, pki, publication, sim  # noqa: F401
from test_kos import facts

from gateway.identity.ins import Ins
from gateway.index import outbox
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.store import InstanceIndex
from gateway.publication.outbox import OutboxWorker, backoff_delay
from gateway.publication.transport import OutgoingDocument, TransportRefused, TransportUnavailable

PATIENT = Ins("279035121518989", "1.2.250.1.213.1.4.10")


@pytest.fixture
def index(database_url: str) -> InstanceIndex:
    engine = create_index_engine(database_url)
    upgrade(engine)
    yield InstanceIndex(engine)
    engine.dispose()


def queue(index: InstanceIndex, study: str, kind: str = "publish", kos: str | None = None) -> int:
    pub = publication()
    with index.write() as s:
        return outbox.enqueue(s, kind=kind, study_uid=study, kos_uid=kos or new_oid(),
                              patient=PATIENT, kos_bytes=pub.kos, entry=pub.entry)


def claim(index: InstanceIndex, worker: str = "w", lease: float = 60,
          now: datetime | None = None) -> outbox.ClaimedRow | None:
    with index.write() as s:
        return outbox.claim_next(s, worker, lease, now)


def test_rows_of_one_study_go_in_order_and_keep_their_bytes(index: InstanceIndex) -> None:
    """A study's rows are claimed one at a time, oldest first (publication before its
    replacement before its withdrawal); other studies are not held up. The claimed row carries
    the very bytes and DocumentEntry that were queued."""
    a1, b1 = queue(index, "1.1"), queue(index, "2.2")
    a2 = queue(index, "1.1", "replace")
    first = claim(index)
    assert first.id == a1 and first.attempts == 1 and first.patient == PATIENT
    with index.read() as s:
        from gateway.index.models import OutboxItem
        kept = s.get(OutboxItem, a1)
        assert first.kos_bytes == kept.kos_bytes and outbox.entry_to_json(first.entry) == kept.entry_json
    assert claim(index).id == b1
    assert claim(index) is None  # a2 waits for a1
    with index.write() as s:
        assert outbox.finish(s, a1, "w", entry_uuid="urn:uuid:1")
        assert not outbox.finish(s, a1, "w")  # not claimed any more
    assert claim(index).id == a2


def test_transient_failure_waits_and_refusal_stops(index: InstanceIndex) -> None:
    row_id = queue(index, "1.1")
    now = datetime.now(UTC)
    assert claim(index, now=now).id == row_id
    with index.write() as s:
        assert outbox.postpone(s, row_id, "w", "DMP down", now + timedelta(seconds=30))
    assert claim(index, now=now + timedelta(seconds=10)) is None
    again = claim(index, now=now + timedelta(seconds=31))
    assert again.id == row_id and again.attempts == 2 and again.last_error == "DMP down"
    with index.write() as s:
        assert outbox.refuse(s, row_id, "w", "XDSRegistryMetadataError", "DocumentKOS: classCode")
    assert claim(index, now=now + timedelta(days=1)) is None  # never again by itself
    with index.write() as s:
        assert outbox.retry_now(s, row_id) == ""
        assert outbox.retry_now(s, 424242) == "no outbox row 424242"
        assert outbox.counts_by_state(s)["pending"] == 1
    assert claim(index).attempts == 3


def test_an_expired_lease_is_taken_over(index: InstanceIndex) -> None:
    """A process that claimed a row and died: after the lease, another claimant takes it, and
    the first one's late answer is ignored."""
    row_id = queue(index, "1.1")
    now = datetime.now(UTC)
    assert claim(index, "dead", lease=5, now=now).id == row_id
    assert claim(index, "other", now=now + timedelta(seconds=4)) is None
    taken = claim(index, "other", now=now + timedelta(seconds=6))
    assert taken.id == row_id and taken.attempts == 2
    with index.write() as s:
        assert not outbox.finish(s, row_id, "dead")
        assert outbox.finish(s, row_id, "other", entry_uuid="urn:uuid:2")


def test_one_claimant_per_row_under_concurrency(index: InstanceIndex) -> None:
    ids = {queue(index, f"9.{n}") for n in range(12)}
    got: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        try:
            barrier.wait()
            while (row := claim(index, name)) is not None:
                got.append(row.id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == sorted(ids)  # each row once


def test_rows_of_a_dead_process_on_this_host_are_released_at_start(index: InstanceIndex) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    row_id = queue(index, "1.1")
    worker = OutboxWorker(index, transport=None, lease_seconds=3600)  # type: ignore[arg-type]
    gone = f"{worker.host}:{int(dead.stdout)}:abcd"
    assert claim(index, gone).id == row_id
    other_host = queue(index, "2.2")
    assert claim(index, "elsewhere:1:abcd").id == other_host
    assert worker.recover() == 1  # the dead local process only; another host's claim stays
    assert claim(index).id == row_id


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    rng = random.Random(5)
    for attempt, ceiling in ((1, 2.0), (2, 4.0), (3, 8.0), (6, 20.0), (30, 20.0)):
        delays = [backoff_delay(attempt, 2.0, 20.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # really spread


def test_document_entry_round_trips_through_json() -> None:
    entry = publication().entry
    assert outbox.entry_from_json(outbox.entry_to_json(entry)) == entry


# ------------------------------------------------------------------------- XdsTransport (sim)

@pytest.fixture
def transport(sim: Sim):  # noqa: ANN201
    from adapters.dmp.transport import SystemPublisher, XdsTransport
    from adapters.dmp.vihf import Role
    from gateway.manifest.xds_metadata import Author

    publisher = SystemPublisher(
        author_id="899700367909", author_name="Alain PAT-SIX", structure_id="499700367909006",
        activity_sector="SA07", roles=(Role("10", "1.2.250.1.71.1.2.7"),), lps_id="LPS-TEST",
        lps_name="DRIMbox", lps_version="0.1.0", lps_homologation_id="HOMOL-TEST",
        source_id="1.2.250.1.999.1.1", author=Author(institution="CENTRE IMAGERIE TEST"))
    t = XdsTransport(sim.client(timeout=5), publisher)
    yield t
    t.close()


def _doc(pub, **kw) -> OutgoingDocument:  # noqa: ANN001, ANN003
    return OutgoingDocument(facts().patient.ins, pub.entry, pub.kos, **kw)


def test_xds_transport_submit_find_replace_withdraw(transport) -> None:  # noqa: ANN001
    """submit = ITI-41 (entryUUID read back), find = GetDocuments by uniqueId, RPLC by the old
    uniqueId, withdraw = ITI-57 Deprecated (twice: nothing more to do)."""
    ins = facts().patient.ins
    old = publication()
    receipt = transport.submit(_doc(old))
    found = transport.find(ins, old.entry.unique_id)
    assert (found.entry_uuid, found.status) == (receipt.entry_uuid, "Approved")
    assert transport.find(ins, new_oid()) is None
    new = publication(accession=old.accession)
    transport.submit(_doc(new, replaces_unique_id=old.entry.unique_id))
    assert transport.find(ins, old.entry.unique_id).status == "Deprecated"
    transport.withdraw(ins, new.entry.unique_id)
    assert transport.find(ins, new.entry.unique_id).status == "Deprecated"
    transport.withdraw(ins, new.entry.unique_id)


def test_xds_transport_maps_errors(transport, sim: Sim) -> None:  # noqa: ANN001
    """DmpRefusedError → TransportRefused with the XDS code and codeContext; a transient DMP
    failure (HTTP 500) → TransportUnavailable."""
    pub = publication()
    with pytest.raises(TransportRefused) as exc:
        transport.submit(_doc(replace(pub, entry=replace(pub.entry, hash_sha1="0" * 40))))
    assert exc.value.code == "XDSNonIdenticalHash"
    assert "DocumentKOS" in exc.value.refusals[0].text
    sim.inject("http500", 1)
    with pytest.raises(TransportUnavailable, match="HTTP 500"):
        transport.submit(_doc(pub))
    assert transport.find(facts().patient.ins, pub.entry.unique_id) is None  # nothing stored


def test_log_lines_carry_no_ins() -> None:
    """A DMP error text may quote the patientId; the worker's log lines mask the matricule."""
    from gateway.publication.outbox import redact

    text = "XDSPatientIdDoesNotMatch: VIHF resource-id '279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH'"
    assert "279035121518989" not in redact(text) and "27903**********^^^" in redact(text)
    assert redact("2A key 1850275123456 97") == "2A key 1850275123456 97"  # not an INS: kept


# ------------------------------------------------------- the outbox row and its cause, one commit

def _stored_study(index: InstanceIndex, study: str, n: int = 2) -> None:
    from gateway.index.store import StoredFile
    from gateway.ingest.header import InstanceHeader

    for i in range(n):
        h = InstanceHeader(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=f"{study}.1.{i}",
            study_instance_uid=study, series_instance_uid=f"{study}.1", patient_id=PATIENT.matricule,
            issuer_of_patient_id="ASIP-SANTE-INS-NIR", patient_name="DUPONT^JEAN", modality="CT",
            accession_number="ACN1", accession_number_issuer="1.2.250.1.213.4.5.2.5",
            instance_number=i + 1, ins_matricule=PATIENT.matricule, ins_oid=PATIENT.oid)
        index.record(h, StoredFile("1.2.840.10008.1.2.1", "a" * 64, 100, f"k/{study}/{i}", "T"))


def _workflow(index: InstanceIndex):  # noqa: ANN202
    from gateway.config import Settings
    from gateway.publication.workflow import PublicationWorkflow

    settings = Settings(repository_oid="1.2.250.1.999.1.1", healthcare_facility_type="SA07",
                        institution_name="CENTRE", data_dir="/nonexistent")
    return PublicationWorkflow(index, settings)


def _counts(index: InstanceIndex) -> tuple[int, int]:
    from sqlalchemy import func, select

    from gateway.index.models import Manifest, OutboxItem

    with index.read() as s:
        return (s.scalar(select(func.count()).select_from(Manifest)),
                s.scalar(select(func.count()).select_from(OutboxItem)))


def test_stability_mark_manifest_and_outbox_row_commit_together(index: InstanceIndex,
                                                                monkeypatch) -> None:  # noqa: ANN001
    """The outbox row is written in the transaction that marks the study stable. A
    hook that fails leaves the study unmarked (tried again next pass); a study whose planning
    fails keeps neither manifest nor row but does not stop the others, and says why."""
    import time

    from gateway.manifest.stability import StabilityMonitor

    _stored_study(index, "1.2.3")
    _stored_study(index, "1.2.4")
    workflow = _workflow(index)
    monitor = StabilityMonitor(index, quiet_seconds=0.01)
    monitor.subscribe_in_transaction(lambda s, uids: 1 / 0)
    time.sleep(0.05)
    with pytest.raises(ZeroDivisionError):
        index.mark_stable(0.01, on_stable=monitor._run_hooks)
    assert index.mark_stable(3600) == []  # nothing was marked: the pass rolled back

    real_enqueue = outbox.enqueue

    def failing_for_one(s, **kw):  # noqa: ANN001, ANN003, ANN202
        if kw["study_uid"] == "1.2.3":
            raise RuntimeError("disk on fire")
        return real_enqueue(s, **kw)

    monkeypatch.setattr(outbox, "enqueue", failing_for_one)
    assert sorted(index.mark_stable(0.01, on_stable=workflow.on_stable)) == ["1.2.3", "1.2.4"]
    assert _counts(index) == (1, 1)  # 1.2.3's manifest went with its failed row
    with index.read() as s:
        (row,) = outbox.list_rows(s)
        assert row.study_instance_uid == "1.2.4" and row.kind == "publish"
        assert [e.event for e in outbox.history(s, "1.2.3")] == ["error"]
        assert "disk on fire" in outbox.history(s, "1.2.3")[0].detail
    monkeypatch.setattr(outbox, "enqueue", real_enqueue)
    assert workflow.request_publication("1.2.3").kind == "publish"  # by hand, once repaired
    again = workflow.request_publication("1.2.4")
    assert not again.queued and "already references every stored instance" in again.reason
    assert _counts(index) == (2, 2)


class ScriptedRecord:
    """A record that stores a late copy between the worker's find and its submit (a slow DMP
    finishing an earlier, timed-out try), then refuses the second copy as a duplicate."""

    def __init__(self) -> None:
        from gateway.publication.transport import RegisteredDocument

        self.stored: dict[str, RegisteredDocument] = {}
        self.submits = 0
        self.make = RegisteredDocument

    def find(self, patient, unique_id):  # noqa: ANN001, ANN201
        return self.stored.get(unique_id)

    def submit(self, doc):  # noqa: ANN001, ANN201
        from gateway.publication.transport import Refusal

        self.submits += 1
        uid = doc.entry.unique_id
        if self.submits == 1:
            raise TransportUnavailable("timeout")  # ... but the record goes on working
        self.stored[uid] = self.make(uid, "urn:uuid:late", "Approved")  # the late first copy
        raise TransportRefused([Refusal("XDSDuplicateUniqueIdInRegistry", f"{uid} registered")])

    def withdraw(self, patient, unique_id, entry_uuid=None) -> None:  # noqa: ANN001
        raise AssertionError("not used")

    def close(self) -> None:
        pass


def test_a_duplicate_refusal_after_an_unanswered_try_counts_as_published(
        index: InstanceIndex) -> None:
    """Exactly once even when the record stores the first (timed-out) copy after the retry's
    find: the duplicate refusal is checked with a find, and the row is done, not refused."""
    pub = publication()
    with index.write() as s:
        row_id = outbox.enqueue(s, kind="publish", study_uid="1.2.3", kos_uid=pub.entry.unique_id,
                                patient=PATIENT, kos_bytes=pub.kos, entry=pub.entry)
    record = ScriptedRecord()
    worker = OutboxWorker(index, record, backoff_initial=0.01, backoff_max=0.01)
    assert worker.run_once()
    time.sleep(0.05)
    assert worker.run_once()
    with index.read() as s:
        row = outbox.get_row(s, row_id)
        assert (row.state, row.entry_uuid, row.attempts) == ("done", "urn:uuid:late", 2)
        assert "not sent again" in outbox.history(s, "1.2.3")[-1].detail
    assert record.submits == 2
