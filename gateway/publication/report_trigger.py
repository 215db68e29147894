"""Reports from the RIS drive the publication (R1, R4, R6, R8): the seam
between :class:`~gateway.reports.workflow.ReportWorkflow` and :class:`~gateway.publication.workflow.PublicationWorkflow`.

* An accepted CR (ORU^R01, MDM^T02, MDM^T10) publishes its study with the CR's metadata
  (:func:`gateway.reports.workflow.publication_context`: author, legal authenticator, facility, practice
  setting, masking flags, region and act codes, service times). When the study's KOS is
  already live, the CR *replaces* it (RPLC) even if the images did not change: the record's
  DocumentEntry must carry the metadata of the CR in force. The CR's idCDA goes into the
  study's publication history (``report`` event) and stays in the ``reports`` table, where
  the R18 viewer link is checked against it.
* An accepted withdrawal (MDM^T04, ORU/MDM with ORC-1 CA) or exam cancellation (OMI^O23 with
  ORC-1 CA) un-publishes the study (ITI-57 Deprecated).
* An order (OMI^O23 otherwise) for a study already published is recorded in the study's
  history (``order`` event) and nothing is re-published: the KOS and its DocumentEntry are
  built from the images and the CR, not from the order, so a new or changed order cannot
  change what the record holds; the next CR (MDM^T10) carries the corrected data.
* With the Annuaire Santé configured (``annuaire_url``), the CR's author is completed from it
  where the CR lacks a name, a profession/specialty or a structure
  (:func:`gateway.directory.professionals.complete_author`): the XDS author slots and the VIHF
  built from them (R4, R6). An author the Annuaire does not know, or an Annuaire that cannot
  be asked, is an ``annuaire`` event of the study's history (``drimbox study show``) and a log
  line; the publication goes on with what the CR gave, nothing invented.
* Stability (``publication_trigger``): with ``report``, a study without a CR in force is not
  published when it becomes stable (a ``waiting_for_report`` event says so); a study with one
  is re-published with that CR's metadata, which is a replacement when instances were added
  after the CR. With ``stable``, a stable study is published with its CR's metadata when it
  has one, with the configuration's otherwise.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.access.sessions import aware
from gateway.config import Settings
from gateway.directory.professionals import (
    DirectoryError,
    ProfessionalDirectory,
    complete_author,
)
from gateway.identity.codecs import PatientIds
from gateway.index import outbox
from gateway.index.facts import NotPublishable, UnknownStudy
from gateway.index.models import Manifest
from gateway.index.reports import StoredReport, current_report
from gateway.manifest.manifests import publication_context as configured_context
from gateway.manifest.xds_metadata import MASKING_FLAGS, PublicationContext
from gateway.publication.workflow import PublicationWorkflow, live_manifest
from gateway.reports.cda import read_cda
from gateway.reports.workflow import (
    ImagingReport,
    MessageKey,
    ReportKind,
    ReportWorkflow,
    publication_context,
)

log = logging.getLogger(__name__)


def imaging_report_of(report: StoredReport) -> ImagingReport:
    """A CR read back from the ``reports`` table (its CDA and the masking flags kept as
    confidentiality codes). Raises ``CdaError``."""
    cda = read_cda(report.cda) if report.cda else None
    flags = {code: True for code in report.confidentiality if code in MASKING_FLAGS}
    return ImagingReport(MessageKey("", "", ""), report.message_type, ReportKind.REPORT,
                         PatientIds(), cda=cda, cda_bytes=report.cda, flags=flags,
                         document_id=report.id_cda)


def stored_report_context(report: StoredReport, settings: Settings) -> PublicationContext:
    """The publication context of a CR read back from the ``reports`` table. Raises
    ``NotPublishable`` / ``CdaError``."""
    return publication_context(imaging_report_of(report), configured_context(settings))


def completed_context(context: PublicationContext, report: ImagingReport,
                      directory: ProfessionalDirectory | None
                      ) -> tuple[PublicationContext, str, str]:
    """``context`` with its author completed from the Annuaire Santé (module docstring), what
    came from it and what went wrong, to say in the study's history ('' when nothing)."""
    if directory is None:
        return context, "", ""
    national_id = report.author_id
    try:
        found = directory.professional(national_id) if national_id else None
    except DirectoryError as exc:
        return context, "", f"author {national_id}: the Annuaire Santé could not be asked: {exc}"
    cda_author = report.cda.author if report.cda is not None else None
    done = complete_author(context.author, national_id, found,
                           has_institution=bool(cda_author and cda_author.organization_id))
    filled = (f"author {national_id}: {', '.join(done.filled)} from the Annuaire Santé"
              if done.filled else "")
    return dataclasses.replace(context, author=done.author), filled, "; ".join(done.problems)


def _built_with(s: Session, study_uid: str, report: ImagingReport) -> bool:
    """Whether the study's live KOS was built after this CR was recorded (stability planned
    it with the CR's metadata first): then the CR has nothing to replace."""
    live = live_manifest(s, study_uid)
    current = current_report(s, study_uid)
    if live is None or current is None or current.id_cda != report.id_cda \
            or current.received_at is None:
        return False
    created = s.scalar(select(Manifest.created_at).where(Manifest.kos_uid == live.kos_uid))
    return created is not None and aware(created) >= aware(current.received_at)


class ReportPublisher:
    """Attach to a :class:`ReportWorkflow` (:meth:`attach`) and, for ``drimbox serve``, to the
    stability monitor (:meth:`on_stable`)."""

    def __init__(self, publication: PublicationWorkflow, settings: Settings,
                 directory: ProfessionalDirectory | None = None) -> None:
        self.publication = publication
        self.settings = settings
        self.directory = directory
        """The Annuaire Santé (``annuaire_url``), which completes the CR's author."""

    @staticmethod
    def _say(s: Session, study_uid: str, filled: str, problem: str) -> None:
        """The Annuaire's part in the study's history: ``annuaire`` (what it gave) and
        ``annuaire_problem`` (an unknown author, an Annuaire that refused or failed)."""
        if filled:
            outbox.add_event(s, study_uid, "annuaire", detail=filled)
            log.info("study %s: %s", study_uid, filled)
        if problem:
            outbox.add_event(s, study_uid, "annuaire_problem", detail=problem)
            log.warning("study %s: %s", study_uid, problem)

    def attach(self, reports: ReportWorkflow) -> None:
        reports.report_ready_hooks.append(self.on_report_ready)
        reports.withdrawal_hooks.append(self.on_withdrawal_ready)
        reports.order_hooks.append(self.on_order)

    # -- report hooks (run after the message's outcome is recorded, before the ACK) ---------

    def on_report_ready(self, report: ImagingReport, study_uid: str) -> None:
        try:
            context = publication_context(report, configured_context(self.settings))
        except NotPublishable as exc:
            with self.publication.index.write() as s:
                outbox.add_event(s, study_uid, "not_publishable", detail=str(exc))
            return
        # The Annuaire is asked before the transaction: no lock held over an HTTP request.
        context, filled, problem = completed_context(context, report, self.directory)
        with self.publication.index.write() as s:
            self.publication.lock_study(s, study_uid)
            outbox.add_event(s, study_uid, "report",
                             detail=f"{report.message_type} CR {report.id_cda}"
                             + (f" replacing {report.replaces_id_cda}"
                                if report.replaces_id_cda else ""))
            self._say(s, study_uid, filled, problem)
            try:
                result = self.publication.plan_publication(
                    s, study_uid, trigger=f"report {report.id_cda}", context=context,
                    even_if_current=not _built_with(s, study_uid, report))
            except UnknownStudy:
                log.warning("report for study %s: the study is not in the index", study_uid)
                return
        self.publication.announce(result)

    def on_withdrawal_ready(self, report: ImagingReport, study_uid: str) -> None:
        reason = f"{report.message_type} from the RIS" + (
            f" (CR {report.id_cda})" if report.id_cda else "")
        try:
            result = self.publication.request_withdrawal(study_uid, reason=reason)
        except UnknownStudy:
            log.info("withdrawal for study %s: nothing of it here", study_uid)
            return
        if not result.queued:
            with self.publication.index.write() as s:
                outbox.add_event(s, study_uid, "withdrawal_skipped",
                                 detail=f"{reason}: {result.reason}")

    def on_order(self, report: ImagingReport, study_uid: str) -> None:
        with self.publication.index.write() as s:
            outbox.add_event(
                s, study_uid, "order",
                detail=f"{report.message_type} order {report.placer_order or '?'} accession "
                       f"{report.accession_number or '?'} recorded; the KOS is built from the "
                       "images and the CR, nothing re-published")

    # -- stability ---------------------------------------------------------------------------

    def on_stable(self, s: Session, uids: list[str]) -> None:
        """:meth:`StabilityMonitor.subscribe_in_transaction` hook replacing
        :meth:`PublicationWorkflow.on_stable` when reports are wired (module docstring)."""
        by_report = self.settings.effective_publication_trigger == "report"
        for uid in uids:
            try:
                with s.begin_nested():
                    report = current_report(s, uid)
                    if report is None:
                        if by_report:
                            outbox.add_event(s, uid, "waiting_for_report",
                                             detail="stable; publication waits for the CR "
                                                    "(publication_trigger = report)")
                            continue
                        self.publication.plan_publication(s, uid, trigger="stable")
                        continue
                    imaging = imaging_report_of(report)
                    context, filled, problem = completed_context(publication_context(
                        imaging, configured_context(self.settings)), imaging, self.directory)
                    result = self.publication.plan_publication(
                        s, uid, trigger=f"stable, CR {report.id_cda}", context=context)
                    if result.queued:  # said once per publication, not at every stability
                        self._say(s, uid, filled, problem)
            except Exception as exc:  # noqa: BLE001 - one study must not block the others
                log.exception("publication of study %s could not be planned", uid)
                outbox.add_event(s, uid, "error", detail=f"planning failed: {exc}")
