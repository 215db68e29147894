"""Read what a study's manifest is built from, and whether it may be published.

:func:`study_state` answers "where is this study" (instances, stability, INS, publishable or
why not); :func:`study_facts` returns the :class:`~gateway.manifest.facts.StudyFacts` the KOS, the
XDS-I.b metadata and the FHIR twin are built from, or raises :class:`NotPublishable` with the
reason (R19: only a valid, qualified INS is published).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.identity.ins import Ins, InsError, check_publishable
from gateway.index.models import Instance, Patient, Series, Study
from gateway.index.store import InstanceIndex
from gateway.manifest.facts import (
    InstanceRef,
    PatientFacts,
    SeriesFacts,
    StudyFacts,
    accession_issuer,
)


class NotPublishable(Exception):
    """The study cannot be published; the message says why."""


class UnknownStudy(LookupError):
    pass


@dataclass(frozen=True)
class PublicationPolicy:
    """What the configuration says about identities read from images (R19)."""

    dicom_ins_status: str = "QUAL"
    admit_validated: bool = False
    accession_issuer_oid: str = ""
    """The centre's default Issuer of Accession Number (``accession_issuer_oid``)."""


@dataclass(frozen=True)
class StudyState:
    study_instance_uid: str
    series_count: int
    instance_count: int
    created_at: datetime
    updated_at: datetime
    stable_at: datetime | None
    ins_matricule: str
    ins_oid: str
    ins_refusal: str
    publishable: bool
    """As far as the index alone tells (the INS rule of R19). ``study show`` says more: the
    publication's own verdict (:func:`gateway.publication.study_status.publication_refusal`)."""
    reason: str
    """Why it is not publishable ('' when it is)."""

    @property
    def stable(self) -> bool:
        return self.stable_at is not None and self.stable_at >= self.updated_at


def _publishability(study: Study, policy: PublicationPolicy) -> tuple[bool, str]:
    if not study.ins_matricule:
        return False, f"no valid INS in the images: {study.ins_refusal or 'absent'}"
    try:
        Ins(study.ins_matricule, study.ins_oid)
        if policy.dicom_ins_status == "unknown":
            raise InsError("status", "the images carry no identity status; a report must qualify it")
        check_publishable(policy.dicom_ins_status, admit_validated=policy.admit_validated)
    except InsError as exc:
        return False, str(exc)
    return True, ""


def study_state(index: InstanceIndex, study_uid: str, policy: PublicationPolicy) -> StudyState:
    with index.read() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            raise UnknownStudy(study_uid)
        series_count = s.scalar(select(func.count()).where(Series.study_pk == study.id)) or 0
        instance_count = s.scalar(
            select(func.count())
            .select_from(Instance)
            .join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == study.id)
        ) or 0
        ok, reason = _publishability(study, policy)
        return StudyState(
            study_instance_uid=study.study_instance_uid,
            series_count=series_count,
            instance_count=instance_count,
            created_at=study.created_at,
            updated_at=study.updated_at,
            stable_at=study.stable_at,
            ins_matricule=study.ins_matricule,
            ins_oid=study.ins_oid,
            ins_refusal=study.ins_refusal,
            publishable=ok,
            reason=reason,
        )


def study_facts(index: InstanceIndex, study_uid: str, policy: PublicationPolicy, *,
                session: Session | None = None) -> StudyFacts:
    """The manifest facts of a stored study. Raises :class:`UnknownStudy` or
    :class:`NotPublishable`. With ``session``, read in the caller's transaction (the
    publication workflow writes the outbox row in the transaction that reads the facts)."""
    with nullcontext(session) if session is not None else index.read() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == study_uid))
        if study is None:
            raise UnknownStudy(study_uid)
        ok, reason = _publishability(study, policy)
        if not ok:
            raise NotPublishable(reason)
        patient = s.get(Patient, study.patient_pk)
        assert patient is not None
        rows = s.execute(
            select(
                Series.series_instance_uid,
                Series.modality,
                Series.series_number,
                Series.series_description,
                Series.body_part_examined,
                Instance.sop_class_uid,
                Instance.sop_instance_uid,
                Instance.instance_number,
                Instance.rows,
                Instance.columns,
            )
            .join(Instance, Instance.series_pk == Series.id)
            .where(Series.study_pk == study.id)
            .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
        ).all()
        series: dict[str, tuple[tuple, list[InstanceRef]]] = {}
        for r in rows:
            entry = series.setdefault(r[0], ((r[0], r[1], r[2], r[3], r[4]), []))
            entry[1].append(InstanceRef(r[5], r[6], r[7], r[8], r[9]))
        ins = Ins(study.ins_matricule, study.ins_oid)
        local_ipp = patient.patient_id if patient.patient_id != ins.matricule else None
        return StudyFacts(
            study_instance_uid=study.study_instance_uid,
            patient=PatientFacts(
                ins=ins,
                name=patient.patient_name,
                birth_date=patient.patient_birth_date,
                sex=patient.patient_sex,
                ipp=local_ipp,
                ipp_issuer=(patient.issuer_of_patient_id or None) if local_ipp else None,
            ),
            series=tuple(
                SeriesFacts(uid, modality or "", number, description or "", body or "",
                            tuple(instances))
                for (uid, modality, number, description, body), instances in series.values()
            ),
            study_date=study.study_date,
            study_time=study.study_time,
            study_description=study.study_description,
            study_id=study.study_id,
            referring_physician_name=study.referring_physician_name,
            accession_number=study.accession_number,
            accession_number_issuer=accession_issuer(
                study.accession_number, study.accession_number_issuer,
                policy.accession_issuer_oid),
        )
