"""The index side of retention: storage as a cache of the PACS, and the purges.

An *evicted* instance keeps its row (QIDO-RS, the cached metadata, the manifests and the
access policy all read rows), with ``instances.evicted_at`` set and no file. Eviction works
study by study (:mod:`gateway.ingest.retention` decides which); a WADO-RS request for an
evicted instance fetches its study back from the PACS, and each copy that comes back
identical clears the mark (:func:`mark_restored`).

A study may be evicted only when it is *settled*: stable (no instance arrived since it was
last found quiet), no publication of it waiting in the outbox, and, when ``require_published``
(a DMP is configured), published at least once. :func:`mark_evicted` checks this again in the
transaction that sets the marks, so an instance arriving meanwhile keeps the study.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.orm import Session

from gateway.index.models import AuditEvent, Instance, Manifest, OutboxItem, Series, Study
from gateway.index.store import InstanceIndex

#: Outbox states of a publication not yet settled (gateway.index.outbox).
_IN_FLIGHT = ("pending", "sending")


@dataclass(frozen=True, slots=True)
class StudyUse:
    """A study holding files, with what eviction orders and counts it by."""

    study_instance_uid: str
    last_used: datetime
    """The latest of its instances' arrival and its last fetch back from the PACS."""
    stored_bytes: int
    stored_instances: int
    settled: bool
    """Stable, nothing waiting in the outbox, published when that is required."""
    why_kept: str = ""


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite hands timezone-aware columns back naive
    return value


def _settled_clauses(require_published: bool) -> list:
    clauses = [
        Study.stable_at.is_not(None),
        Study.stable_at >= Study.updated_at,
        ~exists().where(and_(OutboxItem.study_instance_uid == Study.study_instance_uid,
                             OutboxItem.state.in_(_IN_FLIGHT))),
    ]
    if require_published:
        clauses.append(exists().where(and_(
            Manifest.study_instance_uid == Study.study_instance_uid,
            Manifest.published_at.is_not(None))))
    return clauses


def stored_bytes(index: InstanceIndex) -> int:
    """Bytes of the instances whose file is in the store (datasets as received)."""
    with index.read() as s:
        return int(s.scalar(select(func.coalesce(func.sum(Instance.size), 0))
                            .where(Instance.evicted_at.is_(None))) or 0)


def studies_by_use(index: InstanceIndex, require_published: bool) -> list[StudyUse]:
    """Every study with at least one file in the store, least recently used first."""
    settled = and_(*_settled_clauses(require_published))
    q = (
        select(Study.study_instance_uid, Study.restored_at, func.max(Instance.received_at),
               func.sum(Instance.size), func.count(Instance.id), settled,
               Study.stable_at, Study.updated_at)
        .join(Series, Series.study_pk == Study.id)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Instance.evicted_at.is_(None))
        .group_by(Study.id, Study.study_instance_uid, Study.restored_at, Study.stable_at,
                  Study.updated_at)
    )
    out = []
    with index.read() as s:
        for uid, restored, received, size, count, ok, stable_at, updated_at in s.execute(q):
            last = max(d for d in (_aware(restored), _aware(received)) if d is not None)
            why = ""
            if not ok:
                stable = stable_at is not None and _aware(stable_at) >= _aware(updated_at)
                why = "not stable (receiving)" if not stable else (
                    "publication pending or not yet published")
            out.append(StudyUse(uid, last, int(size or 0), int(count), bool(ok), why))
    out.sort(key=lambda u: (u.last_used, u.study_instance_uid))
    return out


@dataclass(frozen=True, slots=True)
class EvictedFile:
    sop_instance_uid: str
    storage_key: str


def mark_evicted(index: InstanceIndex, study_uid: str, now: datetime,
                 require_published: bool) -> list[EvictedFile]:
    """Mark every stored instance of the study evicted, if it is still settled; returns their
    files (for the caller to delete), empty when the study is not (or no longer) settled."""
    with index.write() as s:
        ok = s.scalar(select(Study.id).where(Study.study_instance_uid == study_uid,
                                             *_settled_clauses(require_published)))
        if ok is None:
            return []
        rows = s.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.storage_key)
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == ok, Instance.evicted_at.is_(None))).all()
        if rows:
            s.execute(update(Instance).where(Instance.id.in_([r.id for r in rows]))
                      .values(evicted_at=now))
        return [EvictedFile(r.sop_instance_uid, r.storage_key) for r in rows]


def mark_evicted_again(index: InstanceIndex, files: list[EvictedFile], now: datetime,
                       missing: set[str]) -> None:
    """Instances restored while their eviction was deleting their files (a race of
    milliseconds): the files named in ``missing`` are gone, so mark them evicted again."""
    keys = [f.storage_key for f in files if f.storage_key in missing]
    if not keys:
        return
    with index.write() as s:
        s.execute(update(Instance).where(Instance.storage_key.in_(keys),
                                         Instance.evicted_at.is_(None))
                  .values(evicted_at=now))


def mark_restored(index: InstanceIndex, sop_instance_uid: str, storage_key: str,
                  now: datetime) -> bool:
    """The file of an evicted instance is back (identical to what the row records): clear the
    mark, nothing else (``received_at`` and the study's ``updated_at`` stay, so the study is
    not reopened and its cached metadata stays current). False when it was not evicted."""
    with index.write() as s:
        series_pk = s.scalar(select(Instance.series_pk).where(
            Instance.sop_instance_uid == sop_instance_uid,
            Instance.storage_key == storage_key, Instance.evicted_at.is_not(None)))
        if series_pk is None:
            return False
        s.execute(update(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
                  .values(evicted_at=None))
        s.execute(update(Study).where(
            Study.id == select(Series.study_pk).where(Series.id == series_pk).scalar_subquery())
            .values(restored_at=now))
        return True


def evicted_instances(index: InstanceIndex, sop_instance_uids: list[str]) -> list[str]:
    """Those of these instances whose file is evicted."""
    out: list[str] = []
    with index.read() as s:
        for i in range(0, len(sop_instance_uids), 500):
            chunk = sop_instance_uids[i:i + 500]
            out += s.scalars(select(Instance.sop_instance_uid).where(
                Instance.sop_instance_uid.in_(chunk), Instance.evicted_at.is_not(None)))
    return out


def evicted_of_study(index: InstanceIndex, study_uid: str) -> list[str]:
    """The study's instances whose file is evicted."""
    with index.read() as s:
        return list(s.scalars(
            select(Instance.sop_instance_uid).join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_uid, Instance.evicted_at.is_not(None))))


def evicted_counts(index: InstanceIndex) -> tuple[int, int]:
    """(evicted instances, their bytes)."""
    with index.read() as s:
        n, size = s.execute(select(func.count(Instance.id), func.coalesce(func.sum(Instance.size), 0))
                            .where(Instance.evicted_at.is_not(None))).one()
    return int(n), int(size or 0)


def purge_audit(s: Session, before: datetime) -> int:
    """Delete the audit rows recorded strictly before ``before`` (caller's transaction)."""
    result = s.execute(delete(AuditEvent).where(AuditEvent.recorded_at < before))
    return int(result.rowcount or 0)


def count_audit_before(s: Session, before: datetime) -> int:
    return int(s.scalar(select(func.count(AuditEvent.id))
                        .where(AuditEvent.recorded_at < before)) or 0)


__all__ = ["EvictedFile", "StudyUse", "count_audit_before", "evicted_counts",
           "evicted_instances", "evicted_of_study", "mark_evicted", "mark_evicted_again", "mark_restored",
           "purge_audit", "stored_bytes", "studies_by_use"]
