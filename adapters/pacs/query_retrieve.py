"""Query/retrieve against the centre's PACS with pynetdicom (R2; SPEC.md section 1.2 step 3).

:class:`PacsClient` is the :class:`~gateway.reports.workflow.StudyLocator` of the report workflow:

* :meth:`PacsClient.find_study` runs a Study Root C-FIND at STUDY level on the
  StudyInstanceUID (PatientID, AccessionNumber), then at IMAGE level to list the instances;
  :meth:`PacsClient.studies_with_accession` searches by AccessionNumber (to say which study
  the PACS has when the report names one it does not);
* :meth:`PacsClient.retrieve_study` runs a Study Root C-MOVE of the study with our own AE
  title as Move Destination: the PACS opens an association to our C-STORE SCP
  (``gateway/ingest/dimse.py``), so **the PACS must know our AE title, host and DICOM port** (in
  Orthanc: ``DicomModalities``; in dcm4chee: an AE entry).

Association or DIMSE failures raise :class:`~gateway.reports.workflow.PacsUnavailable` naming the step.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from adapters.pacs.reactor import reactor_paused
from gateway.reports.workflow import PacsMoveFailed, PacsUnavailable, RemoteStudy

log = logging.getLogger(__name__)

_PENDING = (0xFF00, 0xFF01)


class PacsClient:
    def __init__(self, *, our_ae_title: str, pacs_ae_title: str, host: str, port: int,
                 timeout: float = 30.0, move_timeout: float = 300.0) -> None:
        self.our_ae_title = our_ae_title
        self.pacs_ae_title = pacs_ae_title
        self.host = host
        self.port = port
        self.timeout = timeout
        self.move_timeout = move_timeout

    def _associate(self, context: str, step: str):  # noqa: ANN202
        ae = AE(ae_title=self.our_ae_title)
        ae.acse_timeout = ae.network_timeout = self.timeout
        ae.dimse_timeout = self.move_timeout if step == "C-MOVE" else self.timeout
        ae.add_requested_context(context)
        assoc = ae.associate(self.host, self.port, ae_title=self.pacs_ae_title)
        if not assoc.is_established:
            raise PacsUnavailable(f"{step}: no association with {self.pacs_ae_title} at "
                                  f"{self.host}:{self.port}")
        return assoc

    def _find(self, identifier: Dataset) -> list[Dataset]:
        assoc = self._associate(StudyRootQueryRetrieveInformationModelFind, "C-FIND")
        matches: list[Dataset] = []
        try:
            with reactor_paused(assoc):  # pynetdicom's own pause has a race (adapters.pacs.reactor)
                for status, found in assoc.send_c_find(
                        identifier, StudyRootQueryRetrieveInformationModelFind):
                    if not status:
                        raise PacsUnavailable("C-FIND: the association was lost")
                    code = int(status.Status)
                    if code in _PENDING:
                        if found is not None:
                            matches.append(found)
                    elif code != 0x0000:
                        raise PacsUnavailable(f"C-FIND failed with status 0x{code:04X}")
        finally:
            assoc.release()
        return matches

    def studies_with_accession(self, accession: str) -> tuple[str, ...]:
        """StudyInstanceUIDs the PACS files under this accession number (STUDY-level C-FIND)."""
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.AccessionNumber = accession
        q.StudyInstanceUID = ""
        return tuple(str(s.StudyInstanceUID) for s in self._find(q) if s.get("StudyInstanceUID"))

    def find_study(self, study_uid: str) -> RemoteStudy | None:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid
        q.PatientID = ""
        q.AccessionNumber = ""
        studies = self._find(q)
        if not studies:
            return None
        study = studies[0]
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = ""
        q.SOPInstanceUID = ""
        instances = self._find(q)
        uids = tuple(sorted({str(i.SOPInstanceUID) for i in instances if i.get("SOPInstanceUID")}))
        return RemoteStudy(study_uid, str(study.get("PatientID", "") or ""),
                           str(study.get("AccessionNumber", "") or ""), uids)

    def retrieve_study(self, study_uid: str) -> None:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid
        assoc = self._associate(StudyRootQueryRetrieveInformationModelMove, "C-MOVE")
        final = None
        try:
            with reactor_paused(assoc):  # pynetdicom's own pause has a race (adapters.pacs.reactor)
                for status, _ in assoc.send_c_move(q, self.our_ae_title,
                                                   StudyRootQueryRetrieveInformationModelMove):
                    if not status:
                        raise PacsUnavailable("C-MOVE: the association was lost")
                    final = status
        finally:
            assoc.release()
        code = int(final.Status) if final is not None else -1
        if code not in (0x0000, 0xB000):
            failed = int(final.get("NumberOfFailedSuboperations", 0) or 0) if final else 0
            message = (f"C-MOVE to {self.our_ae_title} ended with status 0x{code:04X} ({failed} "
                       "failed sub-operations): does the PACS know our AE title, host and port?")
            if final is None:
                raise PacsUnavailable(message)
            raise PacsMoveFailed(message, code)
        log.info("C-MOVE of study %s from %s done", study_uid, self.pacs_ae_title)
