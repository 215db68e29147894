"""IOCM rejection notes (IHE RAD TF-1 IOCM; R8): a modality or the PACS
rejects instances it sent us with a Key Object Selection whose ConceptNameCode is one of
:data:`REJECTION_REASONS`.

When such a note arrives (C-STORE, STOW-RS or ``drimbox import``; :class:`Ingestor` hands
every KOS to :meth:`RejectionHandler.handle`):

1. the note itself is written under ``<data_dir>/rejected/<study>/<note SOP Instance UID>/``
   (fsync'ed) and **not** indexed: it is kept, never served as an image of the study;
2. in one transaction the referenced instances are removed from the index (their series and
   study too when left empty), and, when the study has a live KOS in the shared record (R8),
   a replacement KOS without them is queued (RPLC; with the metadata of the study's CR in
   force, if any), or a withdrawal when nothing remains;
3. after the commit, the rejected instances' files are moved next to the note (kept, not
   deleted: an operator may still need them; nothing serves them). Referenced instances we
   do not hold are ignored.

A KOS that is not a rejection note is an ordinary instance. An instance rejected and then
sent again is accepted again (the IOCM "Rejected Instance" blocking is not implemented).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from gateway.config import Settings
from gateway.index import outbox
from gateway.index.rejections import RemovedInstance, remove_instances, study_instance_count
from gateway.index.reports import current_report
from gateway.index.store import InstanceIndex
from gateway.ingest.storage import FileStore
from gateway.manifest.kos import referenced_instances

log = logging.getLogger(__name__)

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
DCM = "DCM"
#: The IOCM Document Title codes (CID 7011) of a rejection note.
REJECTION_REASONS = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


@dataclass(frozen=True, slots=True)
class RejectionNote:
    sop_instance_uid: str
    study_instance_uid: str
    code: str
    meaning: str
    referenced: frozenset[str]
    patient_id: str = ""


class NoteRefused(ValueError):
    """The note cannot be applied as it is (nothing was changed)."""


def read_rejection_note(dataset: bytes | memoryview, transfer_syntax_uid: str
                        ) -> RejectionNote | None:
    """The note, when this KOS dataset (no Part 10 header) is an IOCM rejection note."""
    ds = read_dataset(BytesIO(bytes(dataset)),
                      is_implicit_VR=transfer_syntax_uid == ImplicitVRLittleEndian,
                      is_little_endian=transfer_syntax_uid != ExplicitVRBigEndian)
    concept = ds.get("ConceptNameCodeSequence")
    if not concept:
        return None
    code = str(concept[0].get("CodeValue", ""))
    scheme = str(concept[0].get("CodingSchemeDesignator", ""))
    if scheme != DCM or code not in REJECTION_REASONS:
        return None
    return RejectionNote(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), code,
                         REJECTION_REASONS[code], frozenset(referenced_instances(ds)),
                         str(ds.get("PatientID", "")))


class RejectionHandler:
    """Applies rejection notes (module docstring)."""

    def __init__(self, store: FileStore, index: InstanceIndex, settings: Settings) -> None:
        self.store = store
        self.index = index
        self.settings = settings
        self.rejected_dir = store.root / "rejected"

    def _area(self, note: RejectionNote) -> Path:
        return self.rejected_dir / note.study_instance_uid / note.sop_instance_uid

    def handle(self, note: RejectionNote, dataset: bytes | memoryview, meta: bytes) -> None:
        area = self._area(note)
        area.mkdir(parents=True, exist_ok=True)
        path = area / "rejection-note.dcm"
        with open(path, "wb") as f:
            f.write(meta)
            f.write(dataset)
            f.flush()
            os.fsync(f.fileno())
        try:
            with self.index.write() as s:
                self._check_patient(s, note)
                removed = self._apply(s, note)
        except NoteRefused:
            path.unlink(missing_ok=True)
            raise
        for r in removed:
            self._move(r, area)
        log.info("IOCM rejection note %s (%s): %d instance(s) removed", note.sop_instance_uid,
                 note.code, len(removed))

    @staticmethod
    def _check_patient(s, note: RejectionNote) -> None:  # noqa: ANN001
        """A note rejects instances of its own patient only: one naming another PatientID is
        refused whole (a misdirected note must not delete another patient's images)."""
        from sqlalchemy import select

        from gateway.index.models import Instance, Patient, Series, Study

        others = set(s.scalars(
            select(Patient.patient_id).join(Study, Study.patient_pk == Patient.id)
            .join(Series, Series.study_pk == Study.id)
            .join(Instance, Instance.series_pk == Series.id)
            .where(Instance.sop_instance_uid.in_(sorted(note.referenced)))
            .distinct()))
        wrong = {p for p in others if p != note.patient_id}
        if wrong:
            raise NoteRefused("rejection note references another patient's instances")

    def _apply(self, s, note: RejectionNote) -> list[RemovedInstance]:  # noqa: ANN001
        removed = remove_instances(s, set(note.referenced))
        for study in sorted({r.study_instance_uid for r in removed} | {note.study_instance_uid}):
            count = sum(1 for r in removed if r.study_instance_uid == study)
            outbox.add_event(s, study, "iocm_rejection",
                             detail=f"note {note.sop_instance_uid} ({note.code} {note.meaning}): "
                                    f"{count} instance(s) removed")
            if count:
                self._republish(s, study, note)  # the outbox worker polls for the row
        return removed

    def _republish(self, s, study: str, note: RejectionNote):  # noqa: ANN001, ANN202
        from gateway.publication.report_trigger import stored_report_context
        from gateway.publication.workflow import PublicationWorkflow, live_manifest

        if live_manifest(s, study) is None:
            return None
        workflow = PublicationWorkflow(self.index, self.settings)
        reason = f"IOCM rejection note {note.sop_instance_uid} ({note.meaning})"
        if study_instance_count(s, study) == 0:
            return workflow.plan_withdrawal(s, study, reason=reason)
        report = current_report(s, study)
        context = stored_report_context(report, self.settings) if report else None
        return workflow.plan_publication(s, study, trigger=f"iocm {note.code}", context=context)

    def _move(self, r: RemovedInstance, area: Path) -> None:
        try:
            source = self.store.path_of(r.storage_key)
            os.replace(source, area / f"{r.sop_instance_uid}.dcm")
        except FileNotFoundError:
            return
        except OSError:
            log.exception("rejected instance %s: its file could not be moved", r.sop_instance_uid)
