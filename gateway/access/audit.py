"""The audit trail (R15, R22): every access decision, allowed or denied, appended to
``audit_events`` before the answer leaves.

Callers (the DICOMweb face, the viewer login, share links, the R18 viewer link) call
:func:`record_access` with the :class:`~gateway.access.principal.Principal` and what was asked. The
row keeps a SubjectNameID, a local user name or a share-link id, never a token or a full
identity. Exports (FHIR AuditEvent, the DRIM-M KPI file) read the table.

Durability: an audit row is committed before the answer leaves, but without the flush to disk
that instances get (SQLite ``synchronous=NORMAL`` on a connection of its own, PostgreSQL
``synchronous_commit = off`` for the transaction): it survives a crash of the process, and a
power loss may take the last few milliseconds of rows. A flush per request tripled the
latency of a single-instance WADO-RS (bench/RESULTS.md, "Access control").

Group commit (:class:`AuditCommitter`): rows of requests answered at the same time share one
transaction, leader / follower as :mod:`gateway.index.group_commit` does for instances. A
request :meth:`~AuditCommitter.submit`\\ s its row (a list append, no I/O) as soon as the
decision is made, does its work, and :meth:`~AuditCommitter.settle`\\ s the row before it
answers: if the row is not yet committed and no commit is running, the caller commits every
queued row in one precompiled ``INSERT`` (no ORM objects), else it waits for the running commit
and, if its row was not in it, leads the next. Nobody answers before the commit holding its
row, so "audited before the answer" is unchanged; :func:`record_access` is submit + settle.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Dialect, Engine, bindparam, event, insert, select
from sqlalchemy.orm import Session

from gateway.access.principal import Principal
from gateway.index.group_commit import SharedCommits
from gateway.index.models import AuditEvent, Study
from gateway.index.prepared import Prepared
from gateway.index.store import InstanceIndex

ALLOWED = "allowed"
DENIED = "denied"


@dataclass(frozen=True, slots=True)
class AccessRecord:
    principal: Principal
    action: str
    outcome: str
    reason: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    patient_ins: str = ""
    kos_uid: str = ""
    client_address: str = ""
    patient_ins_of_study: bool = False
    """Fill ``patient_ins`` with the INS matricule of ``study_uid`` as the index knows it
    when the row is written (in the audit's own transaction: no query on the request's path)."""


def _values(rec: AccessRecord, now: datetime) -> dict:
    p = rec.principal
    return dict(
        recorded_at=now, principal_kind=p.kind, subject=p.subject, via=p.via,
        activity=p.activity or "", action=rec.action, outcome=rec.outcome, reason=rec.reason,
        study_instance_uid=rec.study_uid, series_instance_uid=rec.series_uid,
        sop_instance_uids=" ".join(rec.sop_instance_uids), patient_ins=rec.patient_ins,
        kos_uid=rec.kos_uid, client_address=rec.client_address[:64],
    )


def record_in(s: Session, records: Iterable[AccessRecord], now: datetime | None = None) -> None:
    """Append in the caller's transaction."""
    now = now or datetime.now(UTC)
    s.add_all(AuditEvent(**_values(r, now)) for r in records)


_ENGINES: dict[str, Engine] = {}


def _audit_engine(index: InstanceIndex) -> Engine:
    """SQLite: an engine of its own on the same file whose connections do not flush each
    commit; PostgreSQL: the index's engine (the transaction relaxes its own commit)."""
    if index.engine.dialect.name != "sqlite":
        return index.engine
    url = index.engine.url.render_as_string(hide_password=False)
    engine = _ENGINES.get(url)
    if engine is None:
        from gateway.index.engine import create_index_engine

        engine = create_index_engine(url)

        @event.listens_for(engine, "connect")
        def _relaxed(dbapi_conn, _record) -> None:  # noqa: ANN001 - runs after the index's
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        _ENGINES[url] = engine
    return engine


_AUDIT = AuditEvent.__table__
_STUDIES = Study.__table__
_COLUMNS = tuple(c.name for c in _AUDIT.columns if c.name != "id")
_INSERT = insert(_AUDIT).values({name: bindparam(name) for name in _COLUMNS})
_INS_OF_STUDY = Prepared(select(_STUDIES.c.ins_matricule)
                         .where(_STUDIES.c.study_instance_uid == bindparam("study")))


@functools.cache
def _compiled_insert(dialect: Dialect) -> tuple[str, tuple[str, ...] | None, dict]:
    """The audit INSERT compiled once per dialect, with the columns' bind processors (the
    DateTime of SQLite is stored as SQLAlchemy writes it)."""
    compiled = _INSERT.compile(dialect=dialect)
    order = tuple(compiled.positiontup) if compiled.positional else None
    processors = {}
    for name in _COLUMNS:
        proc = _AUDIT.c[name].type._cached_bind_processor(dialect)  # noqa: SLF001
        if proc is not None:
            processors[name] = proc
    return compiled.string, order, processors


@dataclass(eq=False)
class AuditTicket:
    """One submitted row, until the commit that holds it."""

    record: AccessRecord
    recorded_at: datetime
    done: bool = False
    error: BaseException | None = None


class AuditCommitter(SharedCommits[AuditTicket]):
    """Shares one audit commit between the requests answered at the same time (see the
    module docstring; the leader / follower queue is the instances' one,
    :class:`gateway.index.group_commit.SharedCommits`)."""

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        super().__init__(max_batch)
        self._engine = engine.execution_options(writer=True)
        self._postgres = engine.dialect.name == "postgresql"
        self.commits = 0
        """Transactions made (for tests)."""

    def submit(self, record: AccessRecord) -> AuditTicket:
        """Queue ``record``; nothing is written until someone settles (no I/O here)."""
        ticket = AuditTicket(record, datetime.now(UTC))
        self._enqueue(ticket)
        return ticket

    def settle(self, ticket: AuditTicket) -> None:
        """Return once ``ticket``'s row is committed; raise what its commit raised."""
        self._wait_committed(ticket)
        if ticket.error is not None:
            raise ticket.error

    def _commit(self, batch: list[AuditTicket]) -> None:
        """One transaction on a pooled DBAPI connection of the audit engine (SQLite: its own
        connections, ``synchronous=NORMAL``; PostgreSQL: ``synchronous_commit`` off)."""
        self.commits += 1
        engine = self._engine
        try:
            conn = engine.raw_connection()
            try:
                cur = conn.cursor()
                if self._postgres:
                    cur.execute("SET LOCAL synchronous_commit TO OFF")
                else:
                    cur.execute("BEGIN IMMEDIATE")
                ins: dict[str, str] = {}
                for uid in {t.record.study_uid for t in batch
                            if t.record.patient_ins_of_study and t.record.study_uid}:
                    found = _INS_OF_STUDY.rows_on_cursor(engine, cur, study=uid)
                    ins[uid] = (found[0][0] or "") if found else ""
                sql, order, processors = _compiled_insert(engine.dialect)
                rows = []
                for t in batch:
                    rec = t.record
                    if rec.patient_ins_of_study:
                        rec = replace(rec, patient_ins=ins.get(rec.study_uid, ""))
                    values = _values(rec, t.recorded_at)
                    for name, proc in processors.items():
                        values[name] = proc(values[name])
                    rows.append(values if order is None else tuple(values[n] for n in order))
                cur.executemany(sql, rows)
                if self._postgres:
                    conn.commit()
                else:
                    cur.execute("COMMIT")
                cur.close()
            except BaseException:
                conn.rollback()
                raise
            finally:
                conn.close()
        except BaseException as exc:  # nothing is committed: every row fails the same way
            for t in batch:
                t.error = exc


_COMMITTERS: dict[str, AuditCommitter] = {}
_PG_COMMITTERS: weakref.WeakKeyDictionary[Engine, AuditCommitter] = weakref.WeakKeyDictionary()
_COMMITTERS_LOCK = threading.Lock()


def committer_for(index: InstanceIndex) -> AuditCommitter:
    """The audit committer of ``index``'s database (one per SQLite file, one per PostgreSQL
    engine)."""
    engine = index.engine
    with _COMMITTERS_LOCK:
        if engine.dialect.name == "sqlite":
            key = engine.url.render_as_string(hide_password=False)
            committer = _COMMITTERS.get(key)
            if committer is None:
                committer = _COMMITTERS[key] = AuditCommitter(_audit_engine(index))
            return committer
        committer = _PG_COMMITTERS.get(engine)
        if committer is None:
            committer = _PG_COMMITTERS[engine] = AuditCommitter(engine)
        return committer


def submit_access(index: InstanceIndex, record: AccessRecord) -> AuditTicket:
    """Queue one decision; the caller must :func:`settle` it before it answers."""
    return committer_for(index).submit(record)


def settle(index: InstanceIndex, ticket: AuditTicket) -> None:
    """Block until ``ticket``'s row is committed (shared with concurrent requests)."""
    committer_for(index).settle(ticket)


def record_access(index: InstanceIndex, record: AccessRecord) -> None:
    """Append one decision, committed when this returns (see the module docstring)."""
    committer = committer_for(index)
    committer.settle(committer.submit(record))
