"""What a retrieve returns: the stored instances of a study, a series or one instance.

Domain side of WADO-RS (and of any future C-GET/C-MOVE): given UIDs, look the instances up in
the index and return, in a stable order (series number, then series, then instance number,
then arrival), what is needed to send them: storage key, stored transfer syntax, size.
Unknown or mismatched UIDs raise :class:`NotFound` naming the level; malformed UIDs raise
:class:`BadUID` before any query. Nothing here builds a path: storage keys come from the
index only, and :meth:`gateway.ingest.storage.FileStore.path_of` turns them into paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select

from gateway.index.models import Instance, Series, Study
from gateway.index.prepared import Prepared
from gateway.index.store import InstanceIndex
from gateway.ingest.uids import is_safe_uid


class BadUID(ValueError):
    """A request UID that is not a UID."""

    def __init__(self, level: str, value: str) -> None:
        super().__init__(f"{level} UID {value!r} is not a valid UID")
        self.level = level
        self.value = value


class NotFound(LookupError):
    """No such study, series in that study, or instance in that series."""

    def __init__(self, level: str, uid: str) -> None:
        super().__init__(f"{level} {uid} not found")
        self.level = level
        self.uid = uid


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """One stored instance to send."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    evicted: bool = False
    """The file was evicted (retention) when the row was read: it must be fetched back."""


def check_uids(**uids: str | None) -> None:
    """Raise :class:`BadUID` for the first malformed one (``study=..., series=..., ...``)."""
    for level, value in uids.items():
        if value is not None and not is_safe_uid(value):
            raise BadUID(level, value)


def _columns():
    return (
        Study.study_instance_uid,
        Series.series_instance_uid,
        Instance.sop_instance_uid,
        Instance.sop_class_uid,
        Instance.transfer_syntax_uid,
        Instance.storage_key,
        Instance.size,
        Instance.evicted_at.is_not(None),
    )


def _lookup(series: bool, instance: bool) -> Prepared:
    query = (
        select(*_columns())
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == bindparam("study"))
    )
    if series:
        query = query.where(Series.series_instance_uid == bindparam("series"))
    if instance:
        query = query.where(Instance.sop_instance_uid == bindparam("instance"))
    return Prepared(query.order_by(
        Series.series_number.is_(None),
        Series.series_number,
        Series.id,
        Instance.instance_number.is_(None),
        Instance.instance_number,
        Instance.id,
    ))


_LOOKUPS = {(se, inst): _lookup(se, inst) for se in (False, True) for inst in (False, True)}
"""Precompiled once (:mod:`gateway.index.prepared`): one instance is WADO-RS's hottest read."""


def find_instances(
    index: InstanceIndex,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[InstanceRef]:
    """The instances of ``study`` (optionally of one ``series``, or one ``instance``).

    Raises :class:`BadUID` or :class:`NotFound`; never returns an empty list.
    """
    check_uids(study=study, series=series, instance=instance)
    params = {"study": study}
    if series is not None:
        params["series"] = series
    if instance is not None:
        params["instance"] = instance
    rows = _LOOKUPS[series is not None, instance is not None].rows(index.engine, **params)
    if not rows:
        with index.read() as s:
            _raise_not_found(s, study, series, instance)
    return [InstanceRef(*r) for r in rows]


def _raise_not_found(s, study: str, series: str | None, instance: str | None) -> None:
    study_pk = s.scalar(select(Study.id).where(Study.study_instance_uid == study))
    if study_pk is None:
        raise NotFound("study", study)
    if series is not None:
        series_pk = s.scalar(
            select(Series.id).where(
                Series.series_instance_uid == series, Series.study_pk == study_pk
            )
        )
        if series_pk is None:
            raise NotFound("series", series)
    if instance is not None:
        raise NotFound("instance", instance)
    raise NotFound("study", study)  # a study row without instances: nothing to send


def refresh(index: InstanceIndex, ref: InstanceRef) -> InstanceRef | None:
    """The instance's current row (its file may have been replaced since the lookup)."""
    with index.read() as s:
        row = s.execute(
            select(*_columns())
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Instance.sop_instance_uid == ref.sop_instance_uid)
        ).one_or_none()
    return InstanceRef(*row) if row else None
