"""The ``reports`` table: the durable record of the RIS's HL7 messages (R1).

:class:`SqlReportStore` is the :class:`~gateway.reports.workflow.ReportStore` of the workflow. A message
is recorded when it arrives (state ``received``) and its outcome when it is done; the unique
key (MSH-3, MSH-4, MSH-10) is what makes a repeated message be processed once. A message that
ended ``failed`` (AR, a temporary failure) may be processed again when re-sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.index.models import Instance, Patient, Report, Series, Study
from gateway.index.store import InstanceIndex
from gateway.reports.workflow import (
    Ack,
    FieldError,
    ImagingReport,
    IndexedStudy,
    MessageKey,
    Outcome,
)


@dataclass(frozen=True, slots=True)
class StoredReport:
    """An accepted message of the ``reports`` table, as the publication side needs it."""

    kind: str
    message_type: str
    id_cda: str
    replaces_id_cda: str
    confidentiality: list[str]
    cda: bytes
    received_at: datetime | None
    accession_number: str


_STATE = {Ack.ACCEPTED: "accepted", Ack.ERROR: "refused", Ack.REJECTED: "failed"}


def _where(key: MessageKey):  # noqa: ANN202
    return (
        (Report.sending_application == key.sending_application[:255])
        & (Report.sending_facility == key.sending_facility[:255])
        & (Report.msh10 == key.control_id[:199])
    )


class SqlReportStore:
    def __init__(self, index: InstanceIndex, *, stale_after: float = 3600.0) -> None:
        self.index = index
        self.stale_after = stale_after
        """A row left ``received`` longer than this (the process died while handling it) may
        be taken over by a re-sent copy; a younger one is a copy still being processed."""

    def previous(self, key: MessageKey) -> Outcome | None:
        with self.index.read() as s:
            row = s.scalar(select(Report).where(_where(key)))
            if row is None or row.state in ("received", "failed"):
                return None
            error = (FieldError(row.error_location, row.error_code or 0, row.error)
                     if row.error_location else None)
            uids = tuple(u for u in [row.study_instance_uid, *row.other_study_uids.split()] if u)
            return Outcome(Ack(row.ack_code), error, uids, duplicate=True)

    def _insert(self, key: MessageKey, **values: object) -> bool:
        """Insert, or take over a row left ``failed`` / ``received``; False when done before."""
        now = datetime.now(UTC)
        try:
            with self.index.write() as s:
                row = s.scalar(select(Report).where(_where(key)))
                if row is not None and row.state != "failed":
                    received = row.received_at
                    if received is not None and received.tzinfo is None:  # SQLite
                        received = received.replace(tzinfo=UTC)
                    in_flight = (row.state == "received" and received is not None
                                 and (now - received).total_seconds() < self.stale_after)
                    if row.state != "received" or in_flight:
                        return False
                if row is None:
                    row = Report(sending_application=key.sending_application[:255],
                                 sending_facility=key.sending_facility[:255],
                                 msh10=key.control_id[:199])
                    s.add(row)
                defaults = dict(message_type="", kind="", study_instance_uid="",
                                other_study_uids="", id_cda="", replaces_id_cda="",
                                accession_number="", ins_matricule="", confidentiality="",
                                cda=None, ack_code="", error_location="", error_code=None,
                                error="")
                for name, value in {**defaults, **values}.items():
                    setattr(row, name, value)
                row.received_at, row.processed_at, row.state = now, None, "received"
        except IntegrityError:  # the same message, arriving on another connection
            return False
        return True

    def begin(self, report: ImagingReport) -> bool:
        uids = report.study_uids
        return self._insert(
            report.key,
            message_type=report.message_type[:32],
            kind=report.kind.value,
            study_instance_uid=uids[0] if uids else "",
            other_study_uids=" ".join(uids[1:]),
            id_cda=report.id_cda[:255],
            replaces_id_cda=report.replaces_id_cda[:255],
            accession_number=report.accession_number[:64],
            ins_matricule=report.ins.matricule if report.ins else "",
            confidentiality=" ".join(c.code for c in report.confidentiality),
            cda=report.cda_bytes or None,
        )

    def begin_unreadable(self, key: MessageKey, message_type: str) -> bool:
        return self._insert(key, message_type=message_type[:32])

    def finish(self, key: MessageKey, outcome: Outcome) -> None:
        with self.index.write() as s:
            row = s.scalar(select(Report).where(_where(key)))
            if row is None:
                return
            row.state = _STATE[outcome.ack]
            row.ack_code = outcome.ack.value
            row.processed_at = datetime.now(UTC)
            if outcome.error is not None:
                row.error_location = outcome.error.location[:64]
                row.error_code = outcome.error.code
                row.error = outcome.error.message
            if outcome.study_uids and not row.study_instance_uid:
                row.study_instance_uid = outcome.study_uids[0]
                row.other_study_uids = " ".join(outcome.study_uids[1:])

    def study_of_document(self, id_cda: str) -> tuple[str, ...]:
        """The studies of the last accepted report with this idCDA (for a withdrawal)."""
        if not id_cda:
            return ()
        with self.index.read() as s:
            row = s.scalar(
                select(Report)
                .where(Report.id_cda == id_cda, Report.kind == "report", Report.state == "accepted")
                .order_by(Report.id.desc())
                .limit(1)
            )
            if row is None:
                return ()
            return tuple(u for u in [row.study_instance_uid, *row.other_study_uids.split()] if u)

    def indexed_study(self, study_uid: str) -> IndexedStudy | None:
        with self.index.read() as s:
            row = s.execute(
                select(Study.study_instance_uid, Study.ins_matricule, Patient.patient_id,
                       Study.accession_number)
                .join(Patient, Patient.id == Study.patient_pk)
                .where(Study.study_instance_uid == study_uid)
            ).first()
            if row is None:
                return None
            count = s.scalar(
                select(func.count(Instance.id))
                .join(Series, Series.id == Instance.series_pk)
                .join(Study, Study.id == Series.study_pk)
                .where(Study.study_instance_uid == study_uid)
            )
            return IndexedStudy(row[0], row[1] or "", row[2] or "", row[3] or "", int(count or 0))


def list_reports(index: InstanceIndex, *, study_uid: str | None = None,
                 control_id: str | None = None, limit: int = 50) -> list[dict[str, object]]:
    """Recorded messages, newest first (``drimbox report show``)."""
    q = select(Report).order_by(Report.id.desc()).limit(limit)
    if study_uid:
        q = q.where((Report.study_instance_uid == study_uid)
                    | Report.other_study_uids.contains(study_uid))
    if control_id:
        q = q.where(Report.msh10 == control_id)
    with index.read() as s:
        return [
            {
                "msh10": r.msh10, "sending_application": r.sending_application,
                "sending_facility": r.sending_facility, "message_type": r.message_type,
                "kind": r.kind, "state": r.state, "ack": r.ack_code,
                "study_instance_uid": r.study_instance_uid,
                "other_study_uids": r.other_study_uids.split(),
                "id_cda": r.id_cda, "replaces_id_cda": r.replaces_id_cda,
                "accession_number": r.accession_number,
                "confidentiality": r.confidentiality.split(),
                "cda_bytes": len(r.cda or b""),
                "received_at": r.received_at.isoformat() if r.received_at else None,
                "processed_at": r.processed_at.isoformat() if r.processed_at else None,
                "error_location": r.error_location, "error_code": r.error_code, "error": r.error,
            }
            for r in s.scalars(q)
        ]


def study_reports(s: Session, study_uid: str) -> list[StoredReport]:
    """The accepted reports and withdrawals of a study, oldest first, read in ``s`` (for
    the CR a publication carries, its idCDA for the R18 viewer link, the study's report
    state)."""
    rows = s.scalars(
        select(Report)
        .where(((Report.study_instance_uid == study_uid)
                | Report.other_study_uids.contains(study_uid)),
               Report.state == "accepted")
        .order_by(Report.id))
    return [StoredReport(r.kind, r.message_type, r.id_cda, r.replaces_id_cda,
                         r.confidentiality.split(), r.cda or b"", r.received_at,
                         r.accession_number)
            for r in rows]


def current_report(s: Session, study_uid: str) -> StoredReport | None:
    """The study's CR in force: the last accepted report, unless a withdrawal (MDM^T04, ORC CA)
    or an exam cancellation came after it."""
    current = None
    for r in study_reports(s, study_uid):
        if r.kind == "report":
            current = r
        elif r.kind in ("withdrawal", "cancel"):
            current = None
    return current
