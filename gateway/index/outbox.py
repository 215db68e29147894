"""The publication outbox and the publication history, in the index (R4-R8).

Rows are written by :mod:`gateway.publication.workflow` in the caller's transaction (the one that
records the manifest, marks the study stable or takes the operator's command), and claimed,
answered and listed here for the worker (:mod:`gateway.publication.outbox`) and ``drimbox outbox``.

Claiming: a due ``pending`` row, or a ``sending`` row whose lease expired (its process died),
and only the oldest unfinished row of its study, so that a study's publication, replacements
and withdrawal reach the record in the order they were decided. The claim is one conditional
``UPDATE`` (the state is checked again under the row lock), so two workers never send the same
row at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from gateway.identity.ins import Ins
from gateway.index.models import OutboxItem, PublicationEvent
from gateway.manifest.xds_metadata import Author, Code, DocumentEntry, ReferenceId

PENDING, SENDING, DONE, REFUSED, SUPERSEDED = "pending", "sending", "done", "refused", "superseded"
STATES = (PENDING, SENDING, DONE, REFUSED, SUPERSEDED)
PUBLISH, REPLACE, WITHDRAW = "publish", "replace", "withdraw"


# ------------------------------------------------------------------------ DocumentEntry as JSON

def entry_to_json(entry: DocumentEntry) -> str:
    return json.dumps(asdict(entry), ensure_ascii=False, sort_keys=True)


def entry_from_json(text: str) -> DocumentEntry:
    d = json.loads(text)
    codes = ("class_code", "type_code", "format_code", "healthcare_facility_type",
             "practice_setting")
    return DocumentEntry(**{
        **d,
        **{k: Code(**d[k]) for k in codes},
        "confidentiality": tuple(Code(**c) for c in d["confidentiality"]),
        "event_codes": tuple(Code(**c) for c in d["event_codes"]),
        "source_patient_info": tuple(d["source_patient_info"]),
        "author": Author(**d["author"]),
        "reference_ids": tuple(ReferenceId(**r) for r in d["reference_ids"]),
    })


# ---------------------------------------------------------------------------------- reading

@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An outbox row as ``drimbox outbox list`` shows it (no KOS bytes)."""

    id: int
    kind: str
    study_instance_uid: str
    kos_uid: str
    replaces_kos_uid: str
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    done_at: datetime | None
    entry_uuid: str
    last_error: str
    error_code: str
    error_text: str
    warnings: str


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A row claimed for sending, with what must be sent."""

    id: int
    kind: str
    study_instance_uid: str
    kos_uid: str
    replaces_kos_uid: str
    patient: Ins
    kos_bytes: bytes | None
    entry: DocumentEntry | None
    attempts: int
    last_error: str


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime
    event: str
    kos_uid: str
    outbox_id: int | None
    detail: str


def _row(r: OutboxItem) -> OutboxRow:
    return OutboxRow(r.id, r.kind, r.study_instance_uid, r.kos_uid, r.replaces_kos_uid, r.state,
                     r.attempts, r.created_at, r.next_attempt_at, r.done_at, r.entry_uuid,
                     r.last_error, r.error_code, r.error_text, r.warnings)


def list_rows(s: Session, state: str | None = None, study_uid: str | None = None,
              limit: int = 200) -> list[OutboxRow]:
    q = select(OutboxItem).order_by(OutboxItem.id.desc()).limit(limit)
    if state:
        q = q.where(OutboxItem.state == state)
    if study_uid:
        q = q.where(OutboxItem.study_instance_uid == study_uid)
    return [_row(r) for r in s.scalars(q)]


def get_row(s: Session, row_id: int) -> OutboxRow | None:
    r = s.get(OutboxItem, row_id)
    return _row(r) if r is not None else None


def counts_by_state(s: Session) -> dict[str, int]:
    found = dict(s.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
    return {state: int(found.get(state, 0)) for state in STATES}


def history(s: Session, study_uid: str) -> list[Event]:
    rows = s.scalars(select(PublicationEvent)
                     .where(PublicationEvent.study_instance_uid == study_uid)
                     .order_by(PublicationEvent.id))
    return [Event(r.at, r.event, r.kos_uid, r.outbox_id, r.detail) for r in rows]


def published_entry_uuid(s: Session, kos_uid: str) -> str:
    """The entryUUID the record gave ``kos_uid`` when we published it ('' if unknown)."""
    return s.scalar(select(OutboxItem.entry_uuid)
                    .where(OutboxItem.kos_uid == kos_uid, OutboxItem.state == DONE,
                           OutboxItem.kind.in_((PUBLISH, REPLACE)))
                    .order_by(OutboxItem.id.desc()).limit(1)) or ""


def patient_of(s: Session, kos_uid: str) -> Ins | None:
    """The patient a KOS was queued for."""
    r = s.execute(select(OutboxItem.ins_matricule, OutboxItem.ins_oid)
                  .where(OutboxItem.kos_uid == kos_uid, OutboxItem.kind.in_((PUBLISH, REPLACE)))
                  .order_by(OutboxItem.id).limit(1)).one_or_none()
    return Ins(r[0], r[1]) if r else None


def in_flight(s: Session, kos_uid: str) -> bool:
    """A publication of ``kos_uid`` is queued or being sent."""
    return bool(s.scalar(select(exists().where(
        OutboxItem.kos_uid == kos_uid, OutboxItem.kind.in_((PUBLISH, REPLACE)),
        OutboxItem.state.in_((PENDING, SENDING))))))


def last_kind(s: Session, study_uid: str) -> str:
    """The kind of the study's latest row ('' when none)."""
    return s.scalar(select(OutboxItem.kind).where(OutboxItem.study_instance_uid == study_uid)
                    .order_by(OutboxItem.id.desc()).limit(1)) or ""


# ---------------------------------------------------------------------------------- writing

def add_event(s: Session, study_uid: str, event: str, *, kos_uid: str = "",
              outbox_id: int | None = None, detail: str = "", now: datetime | None = None) -> None:
    s.add(PublicationEvent(study_instance_uid=study_uid, at=now or datetime.now(UTC), event=event,
                           kos_uid=kos_uid, outbox_id=outbox_id, detail=detail[:4000]))


def enqueue(s: Session, *, kind: str, study_uid: str, kos_uid: str, patient: Ins,
            kos_bytes: bytes | None = None, entry: DocumentEntry | None = None,
            replaces_kos_uid: str = "", now: datetime | None = None) -> int:
    """Add a row in the caller's transaction; returns its id."""
    now = now or datetime.now(UTC)
    row = OutboxItem(kind=kind, study_instance_uid=study_uid, kos_uid=kos_uid,
                     replaces_kos_uid=replaces_kos_uid, ins_matricule=patient.matricule,
                     ins_oid=patient.oid, kos_bytes=kos_bytes,
                     entry_json=entry_to_json(entry) if entry is not None else "",
                     state=PENDING, attempts=0, created_at=now, next_attempt_at=now)
    s.add(row)
    s.flush()
    return row.id


def supersede_refused(s: Session, study_uid: str) -> int:
    """A new publication of the study makes its refused ones moot (they can no longer be
    retried: an old KOS must never reach the record after a newer one)."""
    return s.execute(update(OutboxItem)
                     .where(OutboxItem.study_instance_uid == study_uid,
                            OutboxItem.state == REFUSED,
                            OutboxItem.kind.in_((PUBLISH, REPLACE)))
                     .values(state=SUPERSEDED)).rowcount or 0


def _claimable(now: datetime):  # noqa: ANN202
    return or_(and_(OutboxItem.state == PENDING, OutboxItem.next_attempt_at <= now),
               and_(OutboxItem.state == SENDING, OutboxItem.lease_until < now))


def claim_next(s: Session, worker: str, lease_seconds: float,
               now: datetime | None = None) -> ClaimedRow | None:
    """Claim the next due row (see the module docstring), or None."""
    now = now or datetime.now(UTC)
    earlier = aliased(OutboxItem)
    blocked = exists().where(earlier.study_instance_uid == OutboxItem.study_instance_uid,
                             earlier.id < OutboxItem.id,
                             earlier.state.in_((PENDING, SENDING)))
    candidates = s.scalars(select(OutboxItem.id).where(_claimable(now), ~blocked)
                           .order_by(OutboxItem.next_attempt_at, OutboxItem.id).limit(5)).all()
    for row_id in candidates:
        won = s.scalar(update(OutboxItem)
                       .where(OutboxItem.id == row_id, _claimable(now))
                       .values(state=SENDING, claimed_by=worker,
                               lease_until=now + timedelta(seconds=lease_seconds),
                               attempts=OutboxItem.attempts + 1)
                       .returning(OutboxItem.id))
        if won is None:
            continue
        r = s.get(OutboxItem, row_id)
        s.refresh(r)
        try:
            return ClaimedRow(r.id, r.kind, r.study_instance_uid, r.kos_uid, r.replaces_kos_uid,
                              Ins(r.ins_matricule, r.ins_oid), r.kos_bytes,
                              entry_from_json(r.entry_json) if r.entry_json else None,
                              r.attempts, r.last_error)
        except (ValueError, TypeError, KeyError) as exc:
            # A row that cannot be read (an INS that fails its rules, metadata that no longer
            # parses: edited by hand, or written by an older version) would fail every pass and
            # hold up the rows behind it: it is refused here, never sent, and shown.
            r.state, r.done_at, r.claimed_by, r.lease_until = REFUSED, now, "", None
            r.error_code = f"local:{type(exc).__name__}"
            r.error_text = f"the outbox row cannot be read, nothing was sent: {exc}"[:4000]
            s.flush()
    return None


def _mine(row_id: int, worker: str):  # noqa: ANN202
    return and_(OutboxItem.id == row_id, OutboxItem.state == SENDING,
                OutboxItem.claimed_by == worker)


def finish(s: Session, row_id: int, worker: str, *, entry_uuid: str = "", warnings: str = "",
           now: datetime | None = None) -> bool:
    """The record acknowledged the row. False if the claim was lost meanwhile."""
    return s.scalar(update(OutboxItem).where(_mine(row_id, worker))
                    .values(state=DONE, done_at=now or datetime.now(UTC), entry_uuid=entry_uuid,
                            warnings=warnings, claimed_by="", lease_until=None)
                    .returning(OutboxItem.id)) is not None


def postpone(s: Session, row_id: int, worker: str, error: str, next_attempt_at: datetime) -> bool:
    """A transient failure: back to ``pending`` until ``next_attempt_at``."""
    return s.scalar(update(OutboxItem).where(_mine(row_id, worker))
                    .values(state=PENDING, next_attempt_at=next_attempt_at,
                            last_error=error[:4000], claimed_by="", lease_until=None)
                    .returning(OutboxItem.id)) is not None


def refuse(s: Session, row_id: int, worker: str, code: str, text: str,
           now: datetime | None = None) -> bool:
    """A business refusal: no more retries; ``code`` and ``text`` are shown."""
    return s.scalar(update(OutboxItem).where(_mine(row_id, worker))
                    .values(state=REFUSED, done_at=now or datetime.now(UTC), error_code=code,
                            error_text=text[:4000], claimed_by="", lease_until=None)
                    .returning(OutboxItem.id)) is not None


def retry_now(s: Session, row_id: int, now: datetime | None = None) -> str:
    """``drimbox outbox retry``: a refused or waiting row becomes due now. Returns '' or why
    not."""
    r = s.get(OutboxItem, row_id)
    if r is None:
        return f"no outbox row {row_id}"
    if r.state not in (REFUSED, PENDING):
        return f"outbox row {row_id} is {r.state}: only refused or pending rows are retried"
    now = now or datetime.now(UTC)
    s.execute(update(OutboxItem).where(OutboxItem.id == row_id)
              .values(state=PENDING, next_attempt_at=now, done_at=None))
    add_event(s, r.study_instance_uid, "retry_requested", kos_uid=r.kos_uid, outbox_id=row_id,
              detail=f"was {r.state}" + (f" ({r.error_code})" if r.error_code else ""), now=now)
    return ""


def release_claims(s: Session, workers: list[str], now: datetime | None = None) -> int:
    """Rows claimed by these (dead) workers are due again at once."""
    if not workers:
        return 0
    return s.execute(update(OutboxItem)
                     .where(OutboxItem.state == SENDING, OutboxItem.claimed_by.in_(workers))
                     .values(state=PENDING, next_attempt_at=now or datetime.now(UTC),
                             claimed_by="", lease_until=None)).rowcount or 0


def claimants(s: Session) -> list[str]:
    return list(s.scalars(select(OutboxItem.claimed_by).where(OutboxItem.state == SENDING)
                          .distinct()))
