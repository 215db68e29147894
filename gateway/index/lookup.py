"""Read-only index look-ups by resource: a study's series, a series' instances, versions.

What WADO-RS metadata and rendering need from the index, in domain types. Every function
takes UIDs that the caller has already validated and answers ``None`` (or an empty list)
for what the index does not hold; none of them writes.

A *series version* is what changes whenever an instance of the series is added, replaced or
moved away: the instance count, the highest instance row id (new rows only grow it), the
latest ``received_at`` (a replacement rewrites it) and the total size. One grouped query
gives the versions of every series of a study, so checking that a cached series is current
costs one cheap SQL statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from gateway.index.models import Instance, Series, Study
from gateway.index.store import InstanceIndex


@dataclass(frozen=True, slots=True)
class SeriesVersion:
    study_instance_uid: str
    series_instance_uid: str
    instances: int
    max_instance_pk: int
    last_received: datetime | None
    total_size: int

    def token(self) -> str:
        """A string that changes whenever the series' content changes."""
        last = self.last_received.isoformat() if self.last_received else ""
        return f"{self.instances}:{self.max_instance_pk}:{last}:{self.total_size}"


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """One stored instance, as the readers of files need it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    sha256: str
    storage_key: str


def study_exists(index: InstanceIndex, study_uid: str) -> bool:
    with index.read() as s:
        return s.scalar(select(Study.id).where(Study.study_instance_uid == study_uid)) is not None


def series_versions(
    index: InstanceIndex, study_uid: str, series_uid: str | None = None
) -> list[SeriesVersion]:
    """Versions of the study's series (or of one series of it), ordered by series number."""
    q = (
        select(
            Study.study_instance_uid,
            Series.series_instance_uid,
            func.count(Instance.id),
            func.max(Instance.id),
            func.max(Instance.received_at),
            func.sum(Instance.size),
        )
        .join(Series, Series.study_pk == Study.id)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Study.study_instance_uid == study_uid)
        .group_by(Study.study_instance_uid, Series.series_instance_uid, Series.series_number,
                  Series.id)
        .order_by(Series.series_number.asc().nulls_last(), Series.id)
    )
    if series_uid is not None:
        q = q.where(Series.series_instance_uid == series_uid)
    with index.read() as s:
        rows = s.execute(q).all()
    return [
        SeriesVersion(st, se, int(n), int(mx or 0), last, int(size or 0))
        for st, se, n, mx, last, size in rows
    ]


def _instance_select():
    return (
        select(
            Study.study_instance_uid,
            Series.series_instance_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.instance_number,
            Instance.transfer_syntax_uid,
            Instance.sha256,
            Instance.storage_key,
        )
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
    )


def series_instances(index: InstanceIndex, study_uid: str, series_uid: str) -> list[InstanceRef]:
    """The series' instances ordered by Instance Number (absent last), then arrival."""
    q = (
        _instance_select()
        .where(Study.study_instance_uid == study_uid)
        .where(Series.series_instance_uid == series_uid)
        .order_by(Instance.instance_number.asc().nulls_last(), Instance.id)
    )
    with index.read() as s:
        return [InstanceRef(*row) for row in s.execute(q).all()]


def find_instance(
    index: InstanceIndex, study_uid: str, series_uid: str, sop_uid: str
) -> InstanceRef | None:
    """The instance if it is stored in that series of that study, else ``None``."""
    q = (
        _instance_select()
        .where(Instance.sop_instance_uid == sop_uid)
        .where(Series.series_instance_uid == series_uid)
        .where(Study.study_instance_uid == study_uid)
    )
    with index.read() as s:
        row = s.execute(q).one_or_none()
    return InstanceRef(*row) if row else None
