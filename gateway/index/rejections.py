"""Removing instances from the index (IOCM rejection notes; R8)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.index.models import Instance, Series, Study
from gateway.index.store import InstanceIndex


@dataclass(frozen=True, slots=True)
class RemovedInstance:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    storage_key: str


def remove_instances(s: Session, sop_instance_uids: set[str]) -> list[RemovedInstance]:
    """Delete the index rows of these instances (unknown UIDs are skipped), and their series
    and study when left empty, in the caller's transaction. The files are the caller's."""
    if not sop_instance_uids:
        return []
    rows = s.execute(
        select(Instance, Series.series_instance_uid, Study.study_instance_uid)
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Instance.sop_instance_uid.in_(sorted(sop_instance_uids)))).all()
    removed = []
    series_pks = set()
    for inst, series_uid, study_uid in rows:
        removed.append(RemovedInstance(study_uid, series_uid, inst.sop_instance_uid,
                                       inst.storage_key))
        series_pks.add(inst.series_pk)
        s.delete(inst)
    s.flush()
    for series_pk in series_pks:
        InstanceIndex._drop_if_empty(s, series_pk)  # noqa: SLF001 - the index's own rule
    return removed


def study_instance_count(s: Session, study_uid: str) -> int:
    return int(s.scalar(
        select(func.count(Instance.id)).join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(Study.study_instance_uid == study_uid)) or 0)
