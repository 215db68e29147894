"""What the operator console's home, audit and consumer pages read from the index: today's
counts, the last publication errors, the audit trail filtered, the consumer's recent
retrievals and exports. Read only, no patient data beyond what the rows already hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from gateway.index.models import (
    AuditEvent,
    ConsumerRetrieval,
    Instance,
    OutboxItem,
    PublicationEvent,
    Study,
)


@dataclass(frozen=True, slots=True)
class DayCounts:
    studies_received: int
    instances_received: int
    publications_done: int
    publications_refused: int
    accesses_allowed: int
    accesses_denied: int


def counts_since(s: Session, since: datetime) -> DayCounts:
    """What happened since ``since`` (the console: since midnight UTC)."""
    def count(q) -> int:  # noqa: ANN001
        return int(s.scalar(q) or 0)

    audit = dict(s.execute(select(AuditEvent.outcome, func.count())
                           .where(AuditEvent.recorded_at >= since)
                           .group_by(AuditEvent.outcome)).all())
    return DayCounts(
        studies_received=count(select(func.count()).select_from(Study)
                               .where(Study.created_at >= since)),
        instances_received=count(select(func.count()).select_from(Instance)
                                 .where(Instance.received_at >= since)),
        publications_done=count(select(func.count()).select_from(OutboxItem)
                                .where(OutboxItem.state == "done", OutboxItem.done_at >= since)),
        publications_refused=count(select(func.count()).select_from(OutboxItem)
                                   .where(OutboxItem.state == "refused",
                                          OutboxItem.created_at >= since)),
        accesses_allowed=int(audit.get("allowed", 0)),
        accesses_denied=int(audit.get("denied", 0)),
    )


@dataclass(frozen=True, slots=True)
class ErrorLine:
    at: datetime
    study_instance_uid: str
    what: str
    """``refused``, ``retrying``, ``not_publishable``, ``error``."""
    detail: str
    outbox_id: int | None


def last_errors(s: Session, limit: int = 10) -> list[ErrorLine]:
    """The latest publication problems: rows waiting after an error, refused rows, and the
    publication history's error events; newest first."""
    lines = [ErrorLine(r.next_attempt_at if r.state == "pending" else (r.done_at or r.created_at),
                       r.study_instance_uid, "refused" if r.state == "refused" else "retrying",
                       (f"{r.error_code} {r.error_text}".strip() if r.state == "refused"
                        else r.last_error), r.id)
             for r in s.scalars(select(OutboxItem)
                                .where(or_(OutboxItem.state == "refused",
                                           (OutboxItem.state.in_(("pending", "sending")))
                                           & (OutboxItem.last_error != "")))
                                .order_by(OutboxItem.id.desc()).limit(limit))]
    lines += [ErrorLine(e.at, e.study_instance_uid, e.event, e.detail, e.outbox_id)
              for e in s.scalars(select(PublicationEvent)
                                 .where(PublicationEvent.event.in_(("not_publishable", "error")))
                                 .order_by(PublicationEvent.id.desc()).limit(limit))]
    lines.sort(key=lambda e: _naive(e.at), reverse=True)
    return lines[:limit]


def _naive(value: datetime) -> datetime:
    return value.replace(tzinfo=None) if value.tzinfo else value


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Empty fields do not filter; ``since``/``until`` bound ``recorded_at``."""

    subject: str = ""
    study_uid: str = ""
    action: str = ""
    outcome: str = ""
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200


def audit_events(s: Session, query: AuditQuery) -> list[AuditEvent]:
    """Audit rows matching ``query``, newest first (detached from the session)."""
    q = select(AuditEvent)
    if query.subject:
        q = q.where(AuditEvent.subject == query.subject)
    if query.study_uid:
        q = q.where(AuditEvent.study_instance_uid == query.study_uid)
    if query.action:
        q = q.where(AuditEvent.action == query.action)
    if query.outcome:
        q = q.where(AuditEvent.outcome == query.outcome)
    if query.since is not None:
        q = q.where(AuditEvent.recorded_at >= query.since)
    if query.until is not None:
        q = q.where(AuditEvent.recorded_at < query.until)
    rows = list(s.scalars(q.order_by(AuditEvent.id.desc()).limit(query.limit)))
    s.expunge_all()
    return rows


def audit_actions(s: Session) -> list[str]:
    """Every action the trail holds (the console's filter choices)."""
    return sorted(a for a in s.scalars(select(AuditEvent.action).distinct()) if a)


def recent_retrievals(s: Session, limit: int = 50) -> list[ConsumerRetrieval]:
    """The consumer's latest retrievals from Source DRIMboxes (R17), newest first."""
    rows = list(s.scalars(select(ConsumerRetrieval)
                          .order_by(ConsumerRetrieval.id.desc()).limit(limit)))
    s.expunge_all()
    return rows
