"""The audit trail (R15, R22; issue #6): every access decision, allowed or denied, appended to
``audit_events`` before the answer leaves.

Callers (the DICOMweb face, the viewer login, share links, the R18 viewer link) call
:func:`record_access` with the :class:`~gateway.principal.Principal` and what was asked. The
row keeps a SubjectNameID, a local user name or a share-link id, never a token or a full
identity. Exports (FHIR AuditEvent, the DRIM-M KPI file) read the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from gateway.index.models import AuditEvent
from gateway.index.store import InstanceIndex
from gateway.principal import Principal

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


def record_access(index: InstanceIndex, record: AccessRecord) -> None:
    """Append one decision in its own committed transaction."""
    with index.write() as s:
        record_in(s, [record])
