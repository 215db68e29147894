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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from gateway.access.principal import Principal
from gateway.index.models import AuditEvent
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


def _row(rec: AccessRecord, now: datetime) -> AuditEvent:
    p = rec.principal
    return AuditEvent(
        recorded_at=now, principal_kind=p.kind, subject=p.subject, via=p.via,
        activity=p.activity or "", action=rec.action, outcome=rec.outcome, reason=rec.reason,
        study_instance_uid=rec.study_uid, series_instance_uid=rec.series_uid,
        sop_instance_uids=" ".join(rec.sop_instance_uids), patient_ins=rec.patient_ins,
        kos_uid=rec.kos_uid, client_address=rec.client_address[:64],
    )


def record_in(s: Session, records: Iterable[AccessRecord], now: datetime | None = None) -> None:
    """Append in the caller's transaction."""
    now = now or datetime.now(UTC)
    s.add_all(_row(r, now) for r in records)


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


def record_access(index: InstanceIndex, record: AccessRecord) -> None:
    """Append one decision in its own committed transaction (see the module docstring)."""
    engine = _audit_engine(index)
    with Session(engine.execution_options(writer=True)) as s, s.begin():
        if engine.dialect.name == "postgresql":
            s.execute(text("SET LOCAL synchronous_commit TO OFF"))
        record_in(s, [record])
