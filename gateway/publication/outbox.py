"""The outbox worker: carries queued publications, replacements and withdrawals to the shared
record through a :class:`~gateway.publication.transport.DocumentTransport` (R4, R8).

It runs as a thread in ``drimbox serve`` when a DMP is configured. Each pass claims one due row
(:func:`gateway.index.outbox.claim_next`) and:

* ``publish`` / ``replace``: if an earlier try of this row went unanswered (``attempts > 1``),
  first asks :meth:`~DocumentTransport.find` for the KOS uniqueId; if the record has it, that
  try succeeded and nothing is sent again — a retry never makes a second document. Otherwise it
  submits the bytes and DocumentEntry kept in the row (the same uniqueId every time), as a
  replacement (RPLC) of the previous KOS when that one reached the record. A retried submission
  that the record refuses is checked with a find too: a slow record may have stored the earlier
  try after our query, and then refuses the second copy.
* ``withdraw``: every KOS of the study the record holds as Approved becomes Deprecated.

Answers: success → ``done`` with the entryUUID and warnings, the manifest ``published`` (and the
replaced one ``withdrawn``); :class:`TransportUnavailable` (or any unexpected error) → back to
``pending`` after an exponential backoff with jitter (``outbox_backoff_initial`` doubling up to
``outbox_backoff_max``); :class:`TransportRefused` → ``refused`` with the record's code and text,
never retried unless an operator says so (``drimbox outbox retry``).

Restarts: the state is in the index. A row claimed by a process that died is due again when
its lease ends, and at once when the worker starts on the same host and sees that the claiming
process is gone.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import metrics
from gateway.config import Settings
from gateway.index import outbox
from gateway.index.manifests import mark_published, mark_withdrawn
from gateway.index.models import Manifest
from gateway.index.outbox import PUBLISH, REPLACE, WITHDRAW, ClaimedRow
from gateway.index.store import InstanceIndex
from gateway.publication.transport import (
    DocumentTransport,
    OutgoingDocument,
    TransportRefused,
    TransportUnavailable,
)
from gateway.publication.worker import OutboxThread

log = logging.getLogger(__name__)


def backoff_delay(attempts: int, initial: float, maximum: float,
                  rng: random.Random | None = None) -> float:
    """Seconds before retry number ``attempts`` (1-based): ``initial * 2**(attempts-1)`` capped
    at ``maximum``, of which a random half is waived ("equal jitter"), so that many rows that
    failed together do not all come back at the same instant."""
    ceiling = min(maximum, initial * 2 ** max(0, attempts - 1))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


_MATRICULE = re.compile(r"\b([0-9]{5})(?:[0-9]{2}|2A|2B)[0-9]{8}\b")


def redact(text: str) -> str:
    """Log lines carry no INS (a DMP error text may quote the patientId): ``27903*****``."""
    return _MATRICULE.sub(lambda m: m.group(1) + "*" * 10, text)


class OutboxWorker(OutboxThread):
    thread_name = "publication-outbox"

    def __init__(self, index: InstanceIndex, transport: DocumentTransport, *,
                 backoff_initial: float = 5.0, backoff_max: float = 900.0,
                 poll_interval: float = 2.0, lease_seconds: float = 150.0) -> None:
        super().__init__(index, poll_interval)
        self.transport = transport
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.lease_seconds = lease_seconds
        self.published_hooks: list[Callable[[str], None]] = []
        """Called with the study UID after a KOS is recorded published (the MSSanté messages
        waiting for it go at once)."""

    @classmethod
    def from_settings(cls, index: InstanceIndex, transport: DocumentTransport,
                      settings: Settings) -> OutboxWorker:
        return cls(index, transport, backoff_initial=settings.outbox_backoff_initial,
                   backoff_max=settings.outbox_backoff_max,
                   poll_interval=settings.outbox_poll_interval,
                   lease_seconds=settings.effective_outbox_lease_seconds)

    # ------------------------------------------------------------------------------ thread

    def after_pass(self) -> None:
        self._refresh_gauge()

    def _refresh_gauge(self) -> None:
        try:
            with self.index.read() as s:
                counts = outbox.counts_by_state(s)
        except Exception:  # noqa: BLE001
            return
        for state, n in counts.items():
            metrics.OUTBOX_ROWS.labels(state).set(n)

    def claimants(self, s: Session) -> list[str]:
        return outbox.claimants(s)

    def release_claims(self, s: Session, workers: list[str]) -> int:
        """Rows claimed by processes of this host that are gone (a SIGKILL, a crash) are sent
        again at once, after a query by uniqueId."""
        return outbox.release_claims(s, workers)

    # -------------------------------------------------------------------------------- work

    def run_once(self) -> bool:
        """Claim and carry one row; False when nothing was due."""
        with self.index.write() as s:
            row = outbox.claim_next(s, self.worker_id, self.lease_seconds)
        if row is None:
            return False
        log.info("outbox #%d: %s of KOS %s (attempt %d)", row.id, row.kind, row.kos_uid,
                 row.attempts)
        try:
            if row.kind == WITHDRAW:
                self._withdraw(row)
            else:
                self._publish(row)
        except TransportRefused as exc:
            self._refused(row, exc)
        except TransportUnavailable as exc:
            self._postpone(row, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not lose the row
            log.exception("outbox #%d: unexpected failure", row.id)
            self._postpone(row, f"internal error: {type(exc).__name__}: {exc}")
        return True

    def _publish(self, row: ClaimedRow) -> None:
        assert row.entry is not None and row.kos_bytes is not None
        rplc_of, rplc_uuid, note = "", None, ""
        if row.replaces_kos_uid:
            with self.index.read() as s:
                old_published = s.scalar(select(Manifest.published_at).where(
                    Manifest.kos_uid == row.replaces_kos_uid)) is not None
                old_uuid = outbox.published_entry_uuid(s, row.replaces_kos_uid)
            if old_published:
                rplc_of, rplc_uuid = row.replaces_kos_uid, old_uuid or None
            else:
                note = f"{row.replaces_kos_uid} never reached the record: a first publication"
        if row.attempts > 1:
            found = self.transport.find(row.patient, row.kos_uid)
            if found is not None:
                note = (f"found in the record ({found.status}) after an unanswered try: "
                        "not sent again")
                self._published(row, found.entry_uuid, "", note, rplc_of)
                return
        try:
            receipt = self.transport.submit(OutgoingDocument(
                row.patient, row.entry, row.kos_bytes, rplc_of or None, rplc_uuid))
        except TransportRefused:
            # An earlier, unanswered try may have been stored after our find (the record was
            # still working on it): the refusal is then of a second copy, not of the document.
            found = self.transport.find(row.patient, row.kos_uid) if row.attempts > 1 else None
            if found is None:
                raise
            self._published(row, found.entry_uuid, "", "the record refused a second copy: an "
                            "earlier try had been stored; not sent again", rplc_of)
            return
        warnings = "; ".join(f"{w.code}: {w.text}" for w in receipt.warnings)
        self._published(row, receipt.entry_uuid, warnings, note, rplc_of)

    def _published(self, row: ClaimedRow, entry_uuid: str, warnings: str, note: str,
                   rplc_of: str) -> None:
        now = datetime.now(UTC)
        with self.index.write() as s:
            if not outbox.finish(s, row.id, self.worker_id, entry_uuid=entry_uuid,
                                 warnings=warnings, now=now):
                log.warning("outbox #%d: claim lost while sending (another worker took it)",
                            row.id)
                return
            mark_published(s, row.kos_uid, now)
            detail = f"entryUUID {entry_uuid}" + (f"; warnings: {warnings}" if warnings else "") \
                + (f"; {note}" if note else "")
            outbox.add_event(s, row.study_instance_uid, "published", kos_uid=row.kos_uid,
                             outbox_id=row.id, detail=detail, now=now)
            if row.replaces_kos_uid:
                mark_withdrawn(s, row.replaces_kos_uid, now)
            if rplc_of:
                outbox.add_event(s, row.study_instance_uid, "replaced", kos_uid=rplc_of,
                                 outbox_id=row.id, detail=f"by {row.kos_uid} (RPLC)", now=now)
        log.info("outbox #%d: KOS %s published (%s)", row.id, row.kos_uid, entry_uuid)
        for hook in self.published_hooks:
            hook(row.study_instance_uid)

    def _withdraw(self, row: ClaimedRow) -> None:
        with self.index.read() as s:
            published = list(s.scalars(
                select(Manifest.kos_uid)
                .where(Manifest.study_instance_uid == row.study_instance_uid,
                       Manifest.published_at.is_not(None))))
            targets = list(dict.fromkeys([row.kos_uid, *published]))
            # Each KOS with the patient it was published for (an INS corrected in between).
            patients = {uid: outbox.patient_of(s, uid) or row.patient for uid in targets}
        deprecated = []
        for kos_uid in targets:
            found = self.transport.find(patients[kos_uid], kos_uid)
            if found is not None and found.status == "Approved":
                self.transport.withdraw(patients[kos_uid], kos_uid, found.entry_uuid)
                deprecated.append(kos_uid)
        now = datetime.now(UTC)
        with self.index.write() as s:
            if not outbox.finish(s, row.id, self.worker_id, now=now):
                return
            for kos_uid in targets:
                mark_withdrawn(s, kos_uid, now)
            outbox.add_event(s, row.study_instance_uid, "withdrawn", kos_uid=row.kos_uid,
                             outbox_id=row.id, now=now,
                             detail=("deprecated " + ", ".join(deprecated)) if deprecated
                             else "nothing Approved in the record")
        log.info("outbox #%d: study %s withdrawn", row.id, row.study_instance_uid)

    def _postpone(self, row: ClaimedRow, error: str) -> None:
        delay = backoff_delay(row.attempts, self.backoff_initial, self.backoff_max)
        now = datetime.now(UTC)
        with self.index.write() as s:
            if outbox.postpone(s, row.id, self.worker_id, error, now + timedelta(seconds=delay)) \
                    and error != row.last_error:
                outbox.add_event(s, row.study_instance_uid, "error", kos_uid=row.kos_uid,
                                 outbox_id=row.id, now=now,
                                 detail=f"attempt {row.attempts}: {error}; retrying")
        log.warning("outbox #%d: attempt %d failed (%s); retry in %.1f s", row.id, row.attempts,
                    redact(error), delay)

    def _refused(self, row: ClaimedRow, exc: TransportRefused) -> None:
        now = datetime.now(UTC)
        with self.index.write() as s:
            if outbox.refuse(s, row.id, self.worker_id, exc.code, exc.text, now):
                outbox.add_event(s, row.study_instance_uid, "refused", kos_uid=row.kos_uid,
                                 outbox_id=row.id, detail=exc.text, now=now)
        log.error("outbox #%d: %s of KOS %s refused: %s", row.id, row.kind, row.kos_uid,
                  redact(exc.text))


__all__ = ["PUBLISH", "REPLACE", "WITHDRAW", "OutboxWorker", "backoff_delay"]
