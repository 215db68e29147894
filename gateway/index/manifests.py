"""The manifests table (R4, R8, R10): which KOS this DRIMbox built for which study, which
instances each references, and whether it is published and current.

Writers: the publication workflow records a manifest in the same transaction as its outbox row
(:func:`record_manifest` takes the caller's session) and marks it published or withdrawn.
Reader: the access policy asks :func:`current_manifest` whether a KOS named by a consumer is one
we published for that study, and which instances it opens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.index.models import Manifest, ManifestInstance
from gateway.manifest.facts import StudyFacts


@dataclass(frozen=True, slots=True)
class ManifestScope:
    """A manifest and the instances it references (series UID, SOP Instance UID)."""

    kos_uid: str
    study_instance_uid: str
    published: bool
    withdrawn: bool
    instances: frozenset[tuple[str, str]]

    @property
    def sop_instance_uids(self) -> frozenset[str]:
        return frozenset(sop for _, sop in self.instances)

    @property
    def series_instance_uids(self) -> frozenset[str]:
        return frozenset(series for series, _ in self.instances)

    @property
    def is_current(self) -> bool:
        return self.published and not self.withdrawn


def record_manifest(s: Session, kos_uid: str, facts: StudyFacts, *, replaces_kos_uid: str = "",
                    now: datetime | None = None) -> int:
    """Record a KOS built from ``facts`` and every instance it references; returns its id."""
    row = Manifest(kos_uid=kos_uid, study_instance_uid=facts.study_instance_uid,
                   created_at=now or datetime.now(UTC), replaces_kos_uid=replaces_kos_uid)
    s.add(row)
    s.flush()
    s.add_all(
        ManifestInstance(manifest_pk=row.id, series_instance_uid=series.series_instance_uid,
                         sop_instance_uid=inst.sop_instance_uid)
        for series in facts.series for inst in series.instances
    )
    return row.id


def mark_published(s: Session, kos_uid: str, now: datetime | None = None) -> None:
    s.execute(update(Manifest).where(Manifest.kos_uid == kos_uid, Manifest.published_at.is_(None))
              .values(published_at=now or datetime.now(UTC)))


def mark_withdrawn(s: Session, kos_uid: str, now: datetime | None = None) -> None:
    s.execute(update(Manifest).where(Manifest.kos_uid == kos_uid, Manifest.withdrawn_at.is_(None))
              .values(withdrawn_at=now or datetime.now(UTC)))


def manifest_scope(s: Session, kos_uid: str) -> ManifestScope | None:
    """The manifest ``kos_uid`` with its references, or None when we never built it."""
    row = s.scalar(select(Manifest).where(Manifest.kos_uid == kos_uid))
    if row is None:
        return None
    refs = s.execute(select(ManifestInstance.series_instance_uid, ManifestInstance.sop_instance_uid)
                     .where(ManifestInstance.manifest_pk == row.id)).all()
    return ManifestScope(row.kos_uid, row.study_instance_uid, row.published_at is not None,
                         row.withdrawn_at is not None, frozenset((a, b) for a, b in refs))


def current_manifest(s: Session, study_uid: str) -> ManifestScope | None:
    """The study's published, not withdrawn manifest (the latest), or None."""
    uid = s.scalar(select(Manifest.kos_uid)
                   .where(Manifest.study_instance_uid == study_uid,
                          Manifest.published_at.is_not(None), Manifest.withdrawn_at.is_(None))
                   .order_by(Manifest.created_at.desc(), Manifest.id.desc()).limit(1))
    return manifest_scope(s, uid) if uid else None
