"""The audit trail's group commit (R15: every decision committed before the answer leaves):
rows submitted by concurrent requests share commits, every one is in the table when its
``settle`` returns, and a failed commit fails every request whose row it held."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from gateway.access.audit import ALLOWED, AccessRecord, AuditCommitter, committer_for, record_access
from gateway.access.principal import Principal
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.models import AuditEvent, Study
from gateway.index.store import InstanceIndex

WHO = Principal(kind="practitioner", subject="810000000001", via="bearer-jwt")


@pytest.fixture
def index(database_url: str) -> InstanceIndex:  # database_url: both back-ends (conftest)
    engine = create_index_engine(database_url)
    upgrade(engine)
    yield InstanceIndex(engine)
    engine.dispose()


def _rows(index: InstanceIndex) -> list[AuditEvent]:
    with index.read() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_concurrent_rows_share_commits_and_are_durable_on_return(index: InstanceIndex) -> None:
    committer = committer_for(index)
    before = committer.commits
    n = 24
    start = threading.Barrier(n)
    seen: list[int] = []
    lock = threading.Lock()

    def request(i: int) -> None:
        ticket = committer.submit(AccessRecord(WHO, "qido", ALLOWED, "viewer_role",
                                               study_uid=f"1.2.3.{i}", client_address="::1"))
        start.wait()
        committer.settle(ticket)
        with index.read() as s:  # committed, visible to another connection, on return
            count = s.scalar(select(func.count()).select_from(AuditEvent)
                             .where(AuditEvent.study_instance_uid == f"1.2.3.{i}"))
        with lock:
            seen.append(count)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [1] * n
    rows = _rows(index)
    assert sorted(r.study_instance_uid for r in rows) == sorted(f"1.2.3.{i}" for i in range(n))
    assert all(r.subject == "810000000001" and r.via == "bearer-jwt" for r in rows)
    assert committer.commits - before <= n  # shared: usually far fewer than one per row


def test_patient_ins_is_the_studys_when_written(index: InstanceIndex) -> None:
    with index.write() as s:
        s.execute(text("INSERT INTO patients (patient_id, issuer_of_patient_id, patient_name, "
                       "patient_birth_date, patient_sex) VALUES ('P', '', '', '', '')"))
        pk = s.scalar(text("SELECT id FROM patients WHERE patient_id = 'P'"))
        now = datetime.now(UTC)
        s.add(Study(study_instance_uid="1.2.9", patient_pk=pk, ins_matricule="248092700000000",
                    created_at=now, updated_at=now))
    record_access(index, AccessRecord(WHO, "wado", ALLOWED, "viewer_role", study_uid="1.2.9",
                                      patient_ins_of_study=True))
    record_access(index, AccessRecord(WHO, "wado", ALLOWED, "viewer_role", study_uid="1.2.10",
                                      patient_ins_of_study=True))
    record_access(index, AccessRecord(WHO, "wado", ALLOWED, "viewer_role", study_uid="1.2.9"))
    assert [r.patient_ins for r in _rows(index)] == ["248092700000000", "", ""]


def test_a_failed_commit_fails_every_row_it_held(index: InstanceIndex) -> None:
    committer = AuditCommitter(index.engine)
    tickets = [committer.submit(AccessRecord(WHO, "qido", ALLOWED, "x", client_address="a" * 64))
               for _ in range(3)]
    with index.write() as s:
        s.execute(text("DROP TABLE audit_events"))
    for ticket in tickets:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the driver's own error
            committer.settle(ticket)
