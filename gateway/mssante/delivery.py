"""MSSanté delivery of a CR with its study (SPEC.md 1.2: the ``DESTMSSANTEPS`` /
``DESTMSSANTEPAT`` flags of the RIS's message).

Deciding (:class:`MssanteDelivery`, a hook of the report workflow, run once per accepted CR and
study):

* ``DESTMSSANTEPS = Y``: one message per professional the CR names (the CDA's
  ``informationRecipient``, the HL7 ``PRT`` with PRT-4 = RCT), to the MSSanté address the CR
  gives, else to the one the Annuaire Santé gives for the professional's RPPS
  (``annuaire_url``);
* ``DESTMSSANTEPAT = Y``: one message to the patient's MSSanté address from the report
  (``recordTarget/patientRole/telecom``, PID-13).

A recipient with no address to be found, an unknown RPPS, a flag with nobody to send to: an
``mssante_problem`` event in the study's history (``drimbox study show``: its ``problems``) and
a log line; never a guessed address. Each message is queued in the index (table
``mssante_outbox``) with its ``Message-ID`` fixed now, in one transaction with its
``mssante_queued`` event.

Sending (:class:`MssanteWorker`, a thread of ``drimbox serve`` when ``mssante_smtp_host`` is
set): each pass claims one due message, builds the attachment (the study's XDM archive,
``IHE_XDM.ZIP``: the function given, :func:`adapters.xdm.archive.build_xdm_archive` in
``serve``, which carries the KOS *as published in the DMP*: until the DMP outbox has published
it the message waits, tried again every ``mssante_backoff_initial`` and at once when the
publication is recorded, :meth:`MssanteWorker.on_study_published`) and the MIME message
(:mod:`gateway.mssante.message`), and submits it
(:class:`~gateway.mssante.transport.MailTransport`). Taken → ``sent`` with the server's reply
(``mssante_sent`` event); :class:`~gateway.mssante.transport.MailUnavailable` (4xx, connection,
TLS) → back to ``pending`` after an exponential backoff with jitter
(``mssante_backoff_initial`` doubling up to ``mssante_backoff_max``);
:class:`~gateway.mssante.transport.MailRefused` (5xx) → ``refused``, shown, retried only by
``drimbox mssante retry``.

Exactly once: a message is submitted only while its row is claimed by this worker, and is
``sent`` as soon as the server answered ``DATA`` with 250, before anything else. Retries carry
the same ``Message-ID``. The one window left is a process killed between the server's 250
and that commit: the message then goes again, with the same ``Message-ID``, by which a
mailbox recognises the copy (SMTP has no way to ask a server whether it took a message).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from gateway import metrics
from gateway.config import Settings
from gateway.directory.professionals import DirectoryError, ProfessionalDirectory
from gateway.index import mssante as rows
from gateway.index import outbox as history
from gateway.index.store import InstanceIndex
from gateway.mssante.message import build_message, new_message_id, wire_bytes
from gateway.mssante.transport import MailRefused, MailTransport, MailUnavailable
from gateway.publication.outbox import backoff_delay, redact
from gateway.publication.study_status import viewer_link
from gateway.publication.worker import OutboxThread
from gateway.reports.workflow import ImagingReport, ReportWorkflow

log = logging.getLogger(__name__)

FLAG_PROFESSIONALS = "DESTMSSANTEPS"
FLAG_PATIENT = "DESTMSSANTEPAT"
FLAG_RECEIPT = "ACK_RECEPTION"
FLAG_READ = "ACK_LECTURE_MSS"

AttachmentBuilder = Callable[[str, str], bytes]
"""``(study_uid, id_cda) -> bytes``: the XDM archive (zip) attached as ``IHE_XDM.ZIP``."""


def _subject(report: ImagingReport) -> str:
    return "Compte rendu d'imagerie" + (f" : {report.title}" if report.title else "")


def _body(settings: Settings, report: ImagingReport, study_uid: str, professional: bool) -> str:
    centre = settings.institution_name or settings.ae_title
    lines = [
        "Bonjour,", "",
        f"{centre} vous adresse le compte rendu d'un examen d'imagerie (document "
        f"{report.id_cda}).", "",
        "La pièce jointe IHE_XDM.ZIP est une archive IHE XDM : le compte rendu (CDA), le "
        "manifeste de l'examen (KOS DICOM) et leurs métadonnées signées. Un logiciel "
        "compatible MSSanté ou une DRIMbox l'importe.",
    ]
    if professional:
        lines += ["", "Les images se consultent, après authentification Pro Santé Connect, à "
                      "l'adresse :", viewer_link(settings, study_uid, report.id_cda)]
    lines += ["", "Ce message a été envoyé automatiquement par la DRIMbox du centre ; merci de "
                  "ne pas y répondre."]
    return "\n".join(lines) + "\n"


class MssanteDelivery:
    """The report hook that decides and queues MSSanté messages (module docstring)."""

    def __init__(self, index: InstanceIndex, settings: Settings,
                 directory: ProfessionalDirectory | None = None,
                 on_queued: Callable[[], None] | None = None) -> None:
        self.index = index
        self.settings = settings
        self.directory = directory
        self.on_queued = on_queued

    def attach(self, reports: ReportWorkflow) -> None:
        reports.report_ready_hooks.append(self.on_report_ready)

    def _address_of(self, national_id: str) -> tuple[str, str]:
        """(address, problem) for a professional the CR names without an address."""
        if self.directory is None:
            return "", (f"recipient {national_id}: the CR gives no MSSanté address and no "
                        "Annuaire Santé is configured (annuaire_url) to find one")
        try:
            found = self.directory.professional(national_id)
        except DirectoryError as exc:
            return "", f"recipient {national_id}: the Annuaire Santé could not be asked: {exc}"
        if found is None:
            return "", (f"recipient {national_id} is not in the Annuaire Santé: no MSSanté "
                        "address, nothing sent to them")
        if not found.mssante_addresses:
            return "", (f"recipient {national_id} has no MSSanté mailbox in the Annuaire Santé: "
                        "nothing sent to them")
        return found.mssante_addresses[0], ""

    def plan(self, report: ImagingReport) -> tuple[list[tuple[str, str, str]], list[str]]:
        """The messages the report asks for, ``(kind, national id, address)``, and the
        problems. Asks the Annuaire (no transaction is open)."""
        messages: list[tuple[str, str, str]] = []
        problems: list[str] = []
        if report.flags.get(FLAG_PROFESSIONALS):
            if not report.recipients:
                problems.append(f"{FLAG_PROFESSIONALS} = Y but the CR names no recipient "
                                "(informationRecipient, PRT with PRT-4 = RCT)")
            for r in report.recipients:
                address, problem = (r.address, "") if r.address else self._address_of(r.id)
                if problem:
                    problems.append(problem)
                elif all(a != address for _, _, a in messages):
                    messages.append((rows.PROFESSIONAL, r.id, address))
        if report.flags.get(FLAG_PATIENT):
            if report.patient_address:
                messages.append((rows.PATIENT, "", report.patient_address))
            else:
                problems.append(f"{FLAG_PATIENT} = Y but the report gives no MSSanté address of "
                                "the patient (recordTarget/patientRole/telecom, PID-13)")
        return messages, problems

    def on_report_ready(self, report: ImagingReport, study_uid: str) -> None:
        if not (report.flags.get(FLAG_PROFESSIONALS) or report.flags.get(FLAG_PATIENT)):
            return
        messages, problems = self.plan(report)
        sender = self.settings.mssante_sender
        if messages and not sender:
            problems.append("the CR asks for MSSanté delivery but no MSSanté sender is "
                            "configured (mssante_smtp_host, mssante_sender): nothing sent")
            messages = []
        elif messages and not self.settings.dmp_configured:
            problems.append("the CR asks for MSSanté delivery, whose XDM archive carries the "
                            "study's KOS as published in the DMP (a Source serves only a "
                            "published KOS, R10), and no DMP is configured: nothing sent")
            messages = []
        now = datetime.now(UTC)
        with self.index.write() as s:
            for kind, national_id, address in messages:
                row_id = rows.enqueue(
                    s, study_uid=study_uid, id_cda=report.id_cda, recipient_kind=kind,
                    recipient_id=national_id, address=address,
                    message_id=new_message_id(sender), subject=_subject(report),
                    body=_body(self.settings, report, study_uid, kind == rows.PROFESSIONAL),
                    ack_reception=bool(report.flags.get(FLAG_RECEIPT)),
                    ack_read=bool(report.flags.get(FLAG_READ)), now=now)
                who = f"{kind} {national_id}".strip()
                history.add_event(s, study_uid, "mssante_queued", now=now,
                                  detail=redact(f"message #{row_id} to {address} ({who}), "
                                                f"CR {report.id_cda}"))
            for problem in problems:
                history.add_event(s, study_uid, "mssante_problem", detail=redact(problem),
                                  now=now)
        for problem in problems:
            log.warning("study %s: MSSanté: %s", study_uid, redact(problem))
        if messages:
            log.info("study %s: %d MSSanté message(s) queued", study_uid, len(messages))
            if self.on_queued is not None:
                self.on_queued()


class MssanteWorker(OutboxThread):
    """Sends the queued messages (module docstring)."""

    thread_name = "mssante-outbox"

    def __init__(self, index: InstanceIndex, transport: MailTransport, sender: str,
                 attachment: AttachmentBuilder, *, backoff_initial: float = 30.0,
                 backoff_max: float = 3600.0, poll_interval: float = 2.0,
                 lease_seconds: float = 300.0) -> None:
        super().__init__(index, poll_interval)
        self.transport = transport
        self.sender = sender
        self.attachment = attachment
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.lease_seconds = lease_seconds

    @classmethod
    def from_settings(cls, index: InstanceIndex, transport: MailTransport,
                      settings: Settings, attachment: AttachmentBuilder) -> MssanteWorker:
        return cls(index, transport, settings.mssante_sender or "", attachment,
                   backoff_initial=settings.mssante_backoff_initial,
                   backoff_max=settings.mssante_backoff_max,
                   poll_interval=settings.mssante_poll_interval,
                   lease_seconds=4 * settings.mssante_timeout + 60)

    def claimants(self, s: Session) -> list[str]:
        return rows.claimants(s)

    def after_pass(self) -> None:
        try:
            with self.index.read() as s:
                counts = rows.counts_by_state(s)
        except Exception:  # noqa: BLE001 - the index may be briefly unreachable
            return
        for state, n in counts.items():
            metrics.MSSANTE_MESSAGES.labels(state).set(n)

    def on_study_published(self, study_uid: str) -> None:
        """The DMP outbox published a KOS of the study: its messages waiting for the archive
        go now."""
        with self.index.write() as s:
            n = rows.due_now(s, study_uid)
        if n:
            self.nudge()

    def release_claims(self, s: Session, workers: list[str]) -> int:
        return rows.release_claims(s, workers)

    # -------------------------------------------------------------------------------- work

    def run_once(self) -> bool:
        """Claim and send one message; False when nothing was due."""
        with self.index.write() as s:
            row = rows.claim_next(s, self.worker_id, self.lease_seconds)
        if row is None:
            return False
        log.info("MSSanté #%d: attempt %d", row.id, row.attempts)
        try:
            attachment = self.attachment(row.study_instance_uid, row.id_cda)
        except Exception as exc:  # noqa: BLE001 - e.g. the KOS not published in the DMP yet
            # Not the mail server's doing: tried again every ``backoff_initial`` (and at once
            # when the study's KOS is published), not after a growing wait.
            self._postpone(row, f"the XDM archive cannot be made yet: {exc}",
                           delay=self.backoff_initial)
            return True
        try:
            message = build_message(sender=self.sender, recipient=row.address,
                                    message_id=row.message_id, subject=row.subject,
                                    body=row.body, attachment=attachment,
                                    read_receipt=row.ack_read)
            reply = self.transport.send(self.sender, [row.address], wire_bytes(message),
                                        delivery_receipt=row.ack_reception)
        except MailRefused as exc:
            self._refused(row, exc)
        except MailUnavailable as exc:
            self._postpone(row, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the message
            log.exception("MSSanté #%d: unexpected failure", row.id)
            self._postpone(row, f"internal error: {type(exc).__name__}: {exc}")
        else:
            self._sent(row, reply)
        return True

    def _sent(self, row: rows.MessageRow, reply: str) -> None:
        now = datetime.now(UTC)
        with self.index.write() as s:
            if not rows.finish(s, row.id, self.worker_id, reply, now):
                log.warning("MSSanté #%d: claim lost while sending", row.id)
                return
            history.add_event(s, row.study_instance_uid, "mssante_sent", now=now,
                              detail=redact(f"message #{row.id} {row.message_id} to "
                                            f"{row.address}: {reply}"))
        log.info("MSSanté #%d sent (%s)", row.id, redact(reply))

    def _postpone(self, row: rows.MessageRow, error: str, delay: float | None = None) -> None:
        if delay is None:
            delay = backoff_delay(row.attempts, self.backoff_initial, self.backoff_max)
        now = datetime.now(UTC)
        with self.index.write() as s:
            if rows.postpone(s, row.id, self.worker_id, error, now + timedelta(seconds=delay)) \
                    and error != row.last_error:
                history.add_event(s, row.study_instance_uid, "mssante_error", now=now,
                                  detail=redact(f"message #{row.id} attempt {row.attempts}: "
                                                f"{error}; retrying"))
        log.warning("MSSanté #%d: attempt %d failed (%s); retry in %.1f s", row.id,
                    row.attempts, redact(error), delay)

    def _refused(self, row: rows.MessageRow, exc: MailRefused) -> None:
        now = datetime.now(UTC)
        with self.index.write() as s:
            if rows.refuse(s, row.id, self.worker_id, exc.code, exc.text, now):
                history.add_event(s, row.study_instance_uid, "mssante_refused", now=now,
                                  detail=redact(f"message #{row.id} to {row.address}: "
                                                f"{exc.text}"))
        log.error("MSSanté #%d refused: %s", row.id, redact(exc.text))
