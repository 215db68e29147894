"""The MSSanté outbox in the index: one row per message (:class:`~gateway.index.models.MssanteMessage`).

Rows are written by :mod:`gateway.mssante.delivery` in the transaction that records the
decision (the report accepted), each with its ``Message-ID`` fixed before any attempt; they
are claimed, answered and listed here for the worker, ``drimbox study show`` and ``drimbox
mssante list|retry``. Claiming is one conditional ``UPDATE`` (a due ``pending`` row, or a
``sending`` row whose lease ended), so two workers never send the same row at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from gateway.index.models import MssanteMessage

PENDING, SENDING, SENT, REFUSED = "pending", "sending", "sent", "refused"
STATES = (PENDING, SENDING, SENT, REFUSED)
PROFESSIONAL, PATIENT = "professional", "patient"


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A row as ``study show`` and ``mssante list`` show it, and as the worker sends it."""

    id: int
    study_instance_uid: str
    id_cda: str
    recipient_kind: str
    recipient_id: str
    address: str
    message_id: str
    subject: str
    body: str
    ack_reception: bool
    ack_read: bool
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    done_at: datetime | None
    smtp_reply: str
    last_error: str
    error_code: str
    error_text: str


def _row(r: MssanteMessage) -> MessageRow:
    return MessageRow(r.id, r.study_instance_uid, r.id_cda, r.recipient_kind, r.recipient_id,
                      r.address, r.message_id, r.subject, r.body, r.ack_reception, r.ack_read,
                      r.state, r.attempts, r.created_at, r.next_attempt_at, r.done_at,
                      r.smtp_reply, r.last_error, r.error_code, r.error_text)


def enqueue(s: Session, *, study_uid: str, id_cda: str, recipient_kind: str, address: str,
            message_id: str, subject: str, body: str, recipient_id: str = "",
            ack_reception: bool = False, ack_read: bool = False,
            now: datetime | None = None) -> int:
    """Add a message in the caller's transaction; returns its id."""
    now = now or datetime.now(UTC)
    row = MssanteMessage(study_instance_uid=study_uid, id_cda=id_cda,
                         recipient_kind=recipient_kind, recipient_id=recipient_id,
                         address=address, message_id=message_id, subject=subject, body=body,
                         ack_reception=ack_reception, ack_read=ack_read, state=PENDING,
                         attempts=0, created_at=now, next_attempt_at=now)
    s.add(row)
    s.flush()
    return row.id


def list_rows(s: Session, *, study_uid: str | None = None, state: str | None = None,
              limit: int = 200) -> list[MessageRow]:
    q = select(MssanteMessage).order_by(MssanteMessage.id.desc()).limit(limit)
    if study_uid:
        q = q.where(MssanteMessage.study_instance_uid == study_uid)
    if state:
        q = q.where(MssanteMessage.state == state)
    return [_row(r) for r in s.scalars(q)]


def counts_by_state(s: Session) -> dict[str, int]:
    found = dict(s.execute(select(MssanteMessage.state, func.count())
                           .group_by(MssanteMessage.state)).all())
    return {state: int(found.get(state, 0)) for state in STATES}


def _claimable(now: datetime):  # noqa: ANN202
    return or_(and_(MssanteMessage.state == PENDING, MssanteMessage.next_attempt_at <= now),
               and_(MssanteMessage.state == SENDING, MssanteMessage.lease_until < now))


def claim_next(s: Session, worker: str, lease_seconds: float,
               now: datetime | None = None) -> MessageRow | None:
    now = now or datetime.now(UTC)
    candidates = s.scalars(select(MssanteMessage.id).where(_claimable(now))
                           .order_by(MssanteMessage.next_attempt_at, MssanteMessage.id)
                           .limit(5)).all()
    for row_id in candidates:
        won = s.scalar(update(MssanteMessage)
                       .where(MssanteMessage.id == row_id, _claimable(now))
                       .values(state=SENDING, claimed_by=worker,
                               lease_until=now + timedelta(seconds=lease_seconds),
                               attempts=MssanteMessage.attempts + 1)
                       .returning(MssanteMessage.id))
        if won is None:
            continue
        r = s.get(MssanteMessage, row_id)
        s.refresh(r)
        return _row(r)
    return None


def _mine(row_id: int, worker: str):  # noqa: ANN202
    return and_(MssanteMessage.id == row_id, MssanteMessage.state == SENDING,
                MssanteMessage.claimed_by == worker)


def finish(s: Session, row_id: int, worker: str, reply: str,
           now: datetime | None = None) -> bool:
    """The server took the message. False if the claim was lost meanwhile."""
    return s.scalar(update(MssanteMessage).where(_mine(row_id, worker))
                    .values(state=SENT, done_at=now or datetime.now(UTC),
                            smtp_reply=reply[:4000], claimed_by="", lease_until=None)
                    .returning(MssanteMessage.id)) is not None


def postpone(s: Session, row_id: int, worker: str, error: str, next_attempt_at: datetime) -> bool:
    return s.scalar(update(MssanteMessage).where(_mine(row_id, worker))
                    .values(state=PENDING, next_attempt_at=next_attempt_at,
                            last_error=error[:4000], claimed_by="", lease_until=None)
                    .returning(MssanteMessage.id)) is not None


def refuse(s: Session, row_id: int, worker: str, code: str, text: str,
           now: datetime | None = None) -> bool:
    return s.scalar(update(MssanteMessage).where(_mine(row_id, worker))
                    .values(state=REFUSED, done_at=now or datetime.now(UTC), error_code=code,
                            error_text=text[:4000], claimed_by="", lease_until=None)
                    .returning(MssanteMessage.id)) is not None


def retry_now(s: Session, row_id: int, now: datetime | None = None) -> str:
    """``drimbox mssante retry``: a refused or waiting message becomes due now ('' or why not)."""
    r = s.get(MssanteMessage, row_id)
    if r is None:
        return f"no MSSanté message {row_id}"
    if r.state not in (REFUSED, PENDING):
        return f"MSSanté message {row_id} is {r.state}: only refused or pending ones are retried"
    s.execute(update(MssanteMessage).where(MssanteMessage.id == row_id)
              .values(state=PENDING, next_attempt_at=now or datetime.now(UTC), done_at=None))
    return ""


def due_now(s: Session, study_uid: str, now: datetime | None = None) -> int:
    """The study's waiting messages become due now (its KOS was just published)."""
    return s.execute(update(MssanteMessage)
                     .where(MssanteMessage.study_instance_uid == study_uid,
                            MssanteMessage.state == PENDING)
                     .values(next_attempt_at=now or datetime.now(UTC))).rowcount or 0


def release_claims(s: Session, workers: list[str], now: datetime | None = None) -> int:
    if not workers:
        return 0
    return s.execute(update(MssanteMessage)
                     .where(MssanteMessage.state == SENDING,
                            MssanteMessage.claimed_by.in_(workers))
                     .values(state=PENDING, next_attempt_at=now or datetime.now(UTC),
                             claimed_by="", lease_until=None)).rowcount or 0


def claimants(s: Session) -> list[str]:
    return list(s.scalars(select(MssanteMessage.claimed_by)
                          .where(MssanteMessage.state == SENDING).distinct()))
