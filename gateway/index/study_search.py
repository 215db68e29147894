"""Finding studies in the index as the centre's staff look for them (the operator console):
by the patient's INS (or PatientID), name, study date range, accession number, modality.

Read only; answers :class:`StudyRow` (what a result list shows), newest study first. The
state of one study (publishable, publication, report) is
:func:`gateway.publication.study_status.study_status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from gateway.index.models import Instance, Patient, Series, Study


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """Empty fields do not filter. ``date_from``/``date_to``: DICOM DA (``YYYYMMDD``)."""

    ins: str = ""
    name: str = ""
    date_from: str = ""
    date_to: str = ""
    accession: str = ""
    modality: str = ""
    limit: int = 100

    @property
    def empty(self) -> bool:
        return not any((self.ins, self.name, self.date_from, self.date_to, self.accession,
                        self.modality))


@dataclass(frozen=True, slots=True)
class StudyRow:
    study_instance_uid: str
    patient_name: str
    patient_id: str
    ins_matricule: str
    study_date: str
    study_description: str
    accession_number: str
    modalities: tuple[str, ...]
    series_count: int
    instance_count: int
    created_at: datetime
    stable: bool


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def find_studies(s: Session, query: StudyQuery) -> list[StudyRow]:
    q = select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
    if query.ins:
        q = q.where(or_(Study.ins_matricule == query.ins, Patient.patient_id == query.ins))
    if query.name:
        # PN components are separated by ^: "DUPONT^JEAN" is found by "dupont jean" too.
        for word in query.name.replace("^", " ").split():
            q = q.where(func.lower(Patient.patient_name).like(_like(word.lower()), escape="\\"))
    if query.date_from:
        q = q.where(Study.study_date >= query.date_from)
    if query.date_to:
        q = q.where(Study.study_date <= query.date_to)
    if query.accession:
        q = q.where(Study.accession_number == query.accession)
    if query.modality:
        q = q.where(Study.id.in_(select(Series.study_pk)
                                 .where(Series.modality == query.modality.upper())))
    return _rows(s, q.order_by(Study.created_at.desc(), Study.id.desc()).limit(query.limit))


def study_heading(s: Session, study_uid: str) -> StudyRow | None:
    """The result-list line of one study (the console's study page heading), or None."""
    rows = _rows(s, select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
                 .where(Study.study_instance_uid == study_uid))
    return rows[0] if rows else None


def _rows(s: Session, q) -> list[StudyRow]:  # noqa: ANN001 - a select of (Study, Patient)
    found = s.execute(q).all()
    if not found:
        return []
    pks = [study.id for study, _ in found]
    modalities: dict[int, set[str]] = {}
    series_counts: dict[int, int] = {}
    for pk, modality in s.execute(select(Series.study_pk, Series.modality)
                                  .where(Series.study_pk.in_(pks))):
        series_counts[pk] = series_counts.get(pk, 0) + 1
        if modality:
            modalities.setdefault(pk, set()).add(modality)
    instance_counts = dict(s.execute(
        select(Series.study_pk, func.count(Instance.id))
        .join(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk.in_(pks)).group_by(Series.study_pk)).all())
    return [StudyRow(
        study_instance_uid=study.study_instance_uid, patient_name=patient.patient_name,
        patient_id=patient.patient_id, ins_matricule=study.ins_matricule,
        study_date=study.study_date, study_description=study.study_description,
        accession_number=study.accession_number,
        modalities=tuple(sorted(modalities.get(study.id, ()))),
        series_count=series_counts.get(study.id, 0),
        instance_count=int(instance_counts.get(study.id, 0)), created_at=study.created_at,
        stable=study.stable_at is not None and study.stable_at >= study.updated_at,
    ) for study, patient in found]
