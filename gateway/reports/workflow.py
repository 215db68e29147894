"""The radiology report (CR) as the RIS hands it over, and what the gateway does with it (R1, R2, R8).

Flow A of SPEC.md section 1.2: the RIS sends the CR (CDA R2 IMG-CR-IMG inside HL7 v2, read
by :mod:`gateway.reports.hl7_reader`); the gateway keeps a durable record of the message (table
``reports``: a message is processed once, a repeat is answered with the same outcome), finds
the exam it reports - in the index, else in the centre's PACS (C-FIND, then C-MOVE to us and a
wait until the instances are indexed, R2) - checks that the report and the images agree on the
patient (INS, else IPP) and the accession number, and answers a precise :class:`Outcome`.

Nothing here knows HL7 or DICOM encodings: :class:`ImagingReport` is the domain event, the
PACS is a :class:`StudyLocator`. Publication is *not* done here: once a report is accepted,
:meth:`ReportWorkflow.on_report_ready` runs the hooks registered in ``report_ready_hooks``
(one call per study), where the publication outbox enqueues the KOS; a withdrawal or an exam
cancellation runs ``withdrawal_hooks`` the same way.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.identity.codecs import PatientIds
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import (
    MASKING_FLAGS,
    SCHEME_CONFIDENTIALITY_DMP,
    Author,
    Code,
    PublicationContext,
)
from gateway.reports.cda import CdaHeader, CdaPerson, Recipient

log = logging.getLogger(__name__)


class ReportKind(enum.StrEnum):
    REPORT = "report"
    """A report to publish with the exam: ORU^R01, MDM^T02 (and MDM^T10, a replacement)."""
    WITHDRAWAL = "withdrawal"
    """Un-publication of a report: MDM^T04, or ORU^R01 / MDM with ORC-1 = CA."""
    CANCEL = "cancel"
    """The exam itself is cancelled: OMI^O23 with ORC-1 = CA (IOCM by HL7, R8)."""
    ORDER = "order"
    """An imaging order (OMI^O23 otherwise): recorded only."""


class Ack(enum.StrEnum):
    """HL7 acknowledgment codes (table 0008, original mode)."""

    ACCEPTED = "AA"
    ERROR = "AE"
    """The content is wrong: fix it before sending again."""
    REJECTED = "AR"
    """Not processed for a reason other than content (unsupported message, version, or a
    temporary failure on our side): the same message may be sent again."""


@dataclass(frozen=True, slots=True)
class MessageKey:
    """What identifies one message for its sender: MSH-3, MSH-4, MSH-10."""

    sending_application: str
    sending_facility: str
    control_id: str


@dataclass(frozen=True, slots=True)
class FieldError:
    """The field in error, as an HL7 ERR segment says it."""

    location: str
    """ERR-2 (ERL), e.g. ``PID^1^3``: segment, sequence, field[, repetition, component]."""
    code: int
    """ERR-3, HL7 table 0357: 100 segment sequence, 101 required field missing, 102 data type,
    103 table value not found, 200 unsupported message type, 201 event, 203 version,
    204 unknown key identifier, 207 application internal error."""
    message: str
    """ERR-8, a message for the sender's operator (never a name or a full INS)."""
    severity: str = "E"


@dataclass(frozen=True, slots=True)
class Outcome:
    ack: Ack
    error: FieldError | None = None
    study_uids: tuple[str, ...] = ()
    duplicate: bool = False
    """True when this message was already processed and its outcome is repeated."""

    @property
    def accepted(self) -> bool:
        return self.ack is Ack.ACCEPTED


class ReportRefused(Exception):
    """Raised while reading or checking a report; carries the outcome to answer."""

    def __init__(self, ack: Ack, error: FieldError) -> None:
        super().__init__(f"{error.location}: {error.message}")
        self.outcome = Outcome(ack, error)


def refuse(location: str, code: int, message: str, ack: Ack = Ack.ERROR) -> ReportRefused:
    return ReportRefused(ack, FieldError(location, code, message))


@dataclass(frozen=True, slots=True)
class Sender:
    """The sending professional and structure (PRT with PRT-4 = SB)."""

    person_id: str = ""
    person_family: str = ""
    organization_name: str = ""
    structure_id: str = ""
    """PRT-8.10: the structure's identifier (FINEG...)."""


@dataclass(frozen=True, slots=True)
class ImagingReport:
    """One CR message from the RIS, everything read from it (R1)."""

    key: MessageKey
    message_type: str
    """``ORU^R01``, ``MDM^T02``, ``MDM^T04``, ``MDM^T10``, ``OMI^O23``."""
    kind: ReportKind
    patient: PatientIds
    """From PID-3 (INS with its OID, IPP) and PID-32 (identity status)."""
    cda: CdaHeader | None = None
    cda_bytes: bytes = b""
    flags: dict[str, bool] = field(default_factory=dict)
    """MetaDMPMSS OBX flags by name (MASQUE_PS, INVISIBLE_PATIENT, DESTDMP, ...)."""
    sender: Sender = Sender()
    hl7_recipients: tuple[Recipient, ...] = ()
    """PRT with PRT-4 = RCT: the professionals the CR is copied to (MSSanté, DESTMSSANTEPS)."""
    hl7_patient_address: str = ""
    """PID-13's MSSanté address of the patient."""
    document_id: str = ""
    """TXA-12 (MDM); must equal the CDA's ClinicalDocument/id when both are given."""
    replaced_document_id: str = ""
    """TXA-13 (MDM^T10)."""
    order_study_uid: str = ""
    """IPC-3 of an OMI^O23 (no CDA there)."""
    order_accession: str = ""
    """IPC-1 of an OMI^O23."""
    placer_order_number: str = ""
    """ORC-2 / OBR-2 (HL7 side)."""
    cda_field: str = "OBX^1^5"
    """Where the CDA travelled (ERR-2 of a problem found in it)."""

    # -- what the report says, whatever carried it ---------------------------------------

    @property
    def ins(self) -> Ins | None:
        if self.patient.ins is not None:
            return self.patient.ins
        return self.cda.patient.ins if self.cda is not None else None

    @property
    def ipp(self) -> str | None:
        return self.patient.ipp or (self.cda.patient.ipp if self.cda is not None else None)

    @property
    def id_cda(self) -> str:
        """The CDA's ClinicalDocument/id (R18: the viewer link names it), else TXA-12."""
        return str(self.cda.document_id) if self.cda is not None else self.document_id

    @property
    def replaces_id_cda(self) -> str:
        return (self.cda.replaces if self.cda is not None else "") or self.replaced_document_id

    @property
    def study_uids(self) -> tuple[str, ...]:
        if self.cda is not None:
            return self.cda.study_instance_uids
        return (self.order_study_uid,) if self.order_study_uid else ()

    @property
    def accession_number(self) -> str:
        if self.cda is not None and self.cda.accession_number is not None:
            return self.cda.accession_number.extension
        return self.order_accession

    @property
    def placer_order(self) -> str:
        if self.cda is not None and self.cda.placer_order is not None:
            return self.cda.placer_order.extension or self.cda.placer_order.root
        return self.placer_order_number

    @property
    def confidentiality(self) -> tuple[Code, ...]:
        """The CDA's confidentialityCode (``N``...) plus the DMP codes the flags ask for."""
        codes: list[Code] = [self.cda.confidentiality] if self.cda is not None else []
        codes += [Code(name, SCHEME_CONFIDENTIALITY_DMP, display)
                  for name, display in MASKING_FLAGS.items() if self.flags.get(name)]
        return tuple(codes)

    @property
    def title(self) -> str:
        return self.cda.title if self.cda is not None else ""

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        """Who the CR is for (DESTMSSANTEPS): the CDA's ``informationRecipient`` and the HL7
        PRT-4 = RCT segments, one per identifier or address (the CDA's first)."""
        out: list[Recipient] = []
        for r in (*(self.cda.recipients if self.cda is not None else ()), *self.hl7_recipients):
            same = next((i for i, o in enumerate(out)
                         if (r.id and o.id == r.id) or (r.address and o.address == r.address)),
                        None)
            if same is None:
                out.append(r)
            elif not out[same].address and r.address:
                out[same] = dataclasses.replace(out[same], address=r.address)
        return tuple(out)

    @property
    def patient_address(self) -> str:
        """The patient's MSSanté address (DESTMSSANTEPAT): the CDA's, else PID-13's."""
        return (self.cda.patient_address if self.cda is not None else "") or \
            self.hl7_patient_address

    @property
    def author_id(self) -> str:
        """The author's national identifier: the CDA's ``assignedAuthor/id``, else the
        sending professional's (PRT-4 = SB)."""
        if self.cda is not None and self.cda.author is not None and self.cda.author.id:
            return self.cda.author.id
        return self.sender.person_id

    @property
    def effective_time(self) -> str:
        return self.cda.effective_time if self.cda is not None else ""


# -- what the report adds to the publication (R4) -------------------------------------------

#: The JDV the DMP filters anatomical regions on (SPEC.md 1.3, TD3.1 ``$XDSDocumentEntryEventCodeList``).
SCHEME_REGION = "1.2.250.1.213.1.1.5.695"
OID_RPPS = "1.2.250.1.71.4.2.1"
OID_STRUCTURE = "1.2.250.1.71.4.2.2"


def _xcn(person) -> str:  # noqa: ANN001 - a CdaPerson
    """XDS XCN of a professional: ``<IdNat_PS>^FAMILY^Given^^^^^^&<OID>&ISO^D^^^IDNPS``."""
    if person is None or not person.id:
        return ""
    return (f"{person.id}^{person.family}^{person.given}^^^^^^&{person.id_root or OID_RPPS}&ISO"
            "^D^^^IDNPS")


def publication_context(report: ImagingReport, base: PublicationContext) -> PublicationContext:
    """``base`` (from the configuration) completed with what the report says: author and
    legal authenticator, facility type, practice setting, masking flags, region and act
    codes, service times (SPEC.md 2.1; the modality codes come from the images)."""
    cda = report.cda
    if cda is None:
        return dataclasses.replace(
            base, masking_flags=tuple(f for f in MASKING_FLAGS if report.flags.get(f)))
    author = base.author
    if cda.author is not None:
        org = cda.author
        institution = (f"{org.organization_name}^^^^^&{OID_STRUCTURE}&ISO^IDNST^^^"
                       f"{org.organization_id}" if org.organization_id else base.author.institution)
        code = cda.author.code
        author = Author(person=_xcn(cda.author), institution=institution,
                        role=base.author.role,
                        specialty=(f"{code.code}^{code.display}^{code.scheme}" if code is not None
                                   else base.author.specialty))
    elif report.sender.person_id:
        author = dataclasses.replace(base.author, person=_xcn(CdaPerson(
            report.sender.person_id, OID_RPPS, report.sender.person_family)))
    return dataclasses.replace(
        base,
        healthcare_facility_type=cda.healthcare_facility_type or base.healthcare_facility_type,
        practice_setting=cda.practice_setting or base.practice_setting,
        author=author,
        masking_flags=tuple(f for f in MASKING_FLAGS if report.flags.get(f)),
        legal_authenticator=_xcn(cda.legal_authenticator) or base.legal_authenticator,
        region_codes=tuple(Code(c.code, SCHEME_REGION, c.display) for c in cda.region_codes),
        act_codes=cda.act_codes,
        service_start=cda.service_start[:14] or base.service_start,
        service_stop=cda.service_stop[:14] or base.service_stop,
    )


# -- the workflow --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexedStudy:
    """What the images in our index say about who and what they are."""

    study_uid: str
    ins_matricule: str
    """'' when the images carry no usable INS."""
    patient_id: str
    accession_number: str
    instances: int


@dataclass(frozen=True, slots=True)
class RemoteStudy:
    """What the PACS answered to a C-FIND for the study."""

    study_uid: str
    patient_id: str
    accession_number: str
    sop_instance_uids: tuple[str, ...]


class PacsUnavailable(Exception):
    """The PACS could not be reached or failed the query/retrieve (a temporary failure)."""


class PacsMoveFailed(PacsUnavailable):
    """The PACS answered the C-MOVE with a failure status (it is reachable; some or all
    sub-operations failed, e.g. our C-STORE SCP refused an instance)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class StudyLocator(Protocol):
    """The centre's PACS (``adapters/pacs``)."""

    def find_study(self, study_uid: str) -> RemoteStudy | None: ...

    def studies_with_accession(self, accession: str) -> tuple[str, ...]: ...

    def retrieve_study(self, study_uid: str) -> None:
        """Ask the PACS to send the study to us (C-MOVE); returns when the move is done."""


class ReportStore(Protocol):
    """The durable record of messages (``gateway/index/reports.py``)."""

    def previous(self, key: MessageKey) -> Outcome | None: ...

    def begin(self, report: ImagingReport) -> bool:
        """Record a received report; False when the key is already recorded."""

    def begin_unreadable(self, key: MessageKey, message_type: str) -> bool: ...

    def finish(self, key: MessageKey, outcome: Outcome) -> None: ...

    def study_of_document(self, id_cda: str) -> tuple[str, ...]: ...

    def indexed_study(self, study_uid: str) -> IndexedStudy | None: ...


class ReportHandler(Protocol):
    """What the HL7 listener calls (``gateway/reports/mllp.py``)."""

    def previous(self, key: MessageKey) -> Outcome | None:
        """The outcome already given to this message, when it was processed before."""

    def handle(self, report: ImagingReport) -> Outcome: ...

    def refuse_unreadable(self, key: MessageKey, message_type: str, outcome: Outcome) -> Outcome:
        """Record a message that could not be read into a report, with its refusal."""


ReportHook = Callable[[ImagingReport, str], None]


class ReportWorkflow:
    """The part of flow A that needs no publication outbox (see the module docstring)."""

    def __init__(self, store: ReportStore, pacs: StudyLocator | None = None, *,
                 retrieve_timeout: float = 120.0, poll_interval: float = 0.2) -> None:
        self.store = store
        self.pacs = pacs
        self.retrieve_timeout = retrieve_timeout
        self.poll_interval = poll_interval
        self.report_ready_hooks: list[ReportHook] = []
        """Called once per study of an accepted report: the publication outbox goes here."""
        self.withdrawal_hooks: list[ReportHook] = []
        """Called once per study of an accepted withdrawal or exam cancellation."""
        self.order_hooks: list[ReportHook] = []
        """Called once per study of an accepted order (OMI^O23 that is not a cancellation)."""

    # -- ReportHandler --------------------------------------------------------------------

    def previous(self, key: MessageKey) -> Outcome | None:
        return self.store.previous(key)

    def refuse_unreadable(self, key: MessageKey, message_type: str, outcome: Outcome) -> Outcome:
        if not self.store.begin_unreadable(key, message_type):
            return self.store.previous(key) or outcome
        self.store.finish(key, outcome)
        return outcome

    def handle(self, report: ImagingReport) -> Outcome:
        if not self.store.begin(report):  # another copy of the same message came first
            previous = self.store.previous(report.key)
            if previous is not None:
                return previous
            return Outcome(Ack.REJECTED, FieldError(
                "MSH^1^10", 206, "the same message is being processed: send it again later"))
        try:
            outcome = self._process(report)
        except ReportRefused as refused:
            outcome = refused.outcome
        except PacsUnavailable as exc:
            outcome = Outcome(Ack.REJECTED, FieldError(
                report.cda_field, 207, f"the PACS could not be queried, send again later ({exc})"))
        self.store.finish(report.key, outcome)
        if outcome.accepted:
            for uid in outcome.study_uids:
                if report.kind is ReportKind.REPORT:
                    self.on_report_ready(report, uid)
                elif report.kind in (ReportKind.WITHDRAWAL, ReportKind.CANCEL):
                    self.on_withdrawal_ready(report, uid)
                elif report.kind is ReportKind.ORDER:
                    for hook in self.order_hooks:
                        hook(report, uid)
        return outcome

    # -- hooks ----------------------------------------------------------------------------

    def on_report_ready(self, report: ImagingReport, study_uid: str) -> None:
        """The report is accepted and its study is indexed: publication is enqueued here."""
        for hook in self.report_ready_hooks:
            hook(report, study_uid)

    def on_withdrawal_ready(self, report: ImagingReport, study_uid: str) -> None:
        """A withdrawal / cancellation is accepted: the un-publication is enqueued here."""
        for hook in self.withdrawal_hooks:
            hook(report, study_uid)

    # -- steps ----------------------------------------------------------------------------

    def _process(self, report: ImagingReport) -> Outcome:
        if report.kind is ReportKind.ORDER:
            return Outcome(Ack.ACCEPTED, study_uids=report.study_uids)
        if report.kind in (ReportKind.WITHDRAWAL, ReportKind.CANCEL):
            uids = report.study_uids or self.store.study_of_document(report.id_cda)
            return Outcome(Ack.ACCEPTED, study_uids=uids)
        for uid in report.study_uids:
            study = self._locate(uid, report.cda_field, report.accession_number)
            self._check_agreement(report, study)
        return Outcome(Ack.ACCEPTED, study_uids=report.study_uids)

    def _locate(self, study_uid: str, cda_field: str, accession: str = "") -> IndexedStudy:
        """The study in the index; else fetched from the PACS (R2); else refused."""
        study = self.store.indexed_study(study_uid)
        if study is not None:
            return study
        if self.pacs is None:
            raise refuse(cda_field, 204, f"study {study_uid} (CDA documentationOf/serviceEvent/id) "
                         "is not in the gateway and no PACS is configured")
        remote = self.pacs.find_study(study_uid)
        if remote is None or not remote.sop_instance_uids:
            hint = ""
            if accession:
                others = [u for u in self.pacs.studies_with_accession(accession) if u != study_uid]
                if others:
                    hint = f"; the PACS files accession {accession} under study {others[0]}"
            raise refuse(cda_field, 204, f"study {study_uid} (CDA documentationOf/serviceEvent/id) "
                         f"is neither in the gateway nor in the PACS{hint}")
        log.info("study %s: %d instances in the PACS, retrieving", study_uid,
                 len(remote.sop_instance_uids))
        self.pacs.retrieve_study(study_uid)
        deadline = time.monotonic() + self.retrieve_timeout
        while True:
            study = self.store.indexed_study(study_uid)
            if study is not None and study.instances >= len(remote.sop_instance_uids):
                return study
            if time.monotonic() > deadline:
                got = study.instances if study is not None else 0
                raise PacsUnavailable(
                    f"study {study_uid}: {got} of {len(remote.sop_instance_uids)} instances "
                    f"arrived within {self.retrieve_timeout:.0f} s")
            time.sleep(self.poll_interval)

    @staticmethod
    def _check_agreement(report: ImagingReport, study: IndexedStudy) -> None:
        """R2: the report and the images name the same patient and the same order."""
        ins = report.ins
        if study.ins_matricule:
            if ins is None or ins.matricule != study.ins_matricule:
                raise refuse("PID^1^3", 204, f"the INS of the report differs from the INS of the "
                             f"images of study {study.study_uid}")
        elif report.ipp and study.patient_id and study.patient_id not in (report.ipp,
                                                                         ins.matricule if ins else ""):
            raise refuse("PID^1^3", 204, f"the IPP of the report differs from the PatientID of "
                         f"the images of study {study.study_uid}")
        accession = report.accession_number
        if accession and study.accession_number and accession != study.accession_number:
            raise refuse(report.cda_field, 204, f"accession number {accession} (CDA inFulfillmentOf/order/"
                         f"ps3-20:accessionNumber) differs from the images' {study.accession_number}")
