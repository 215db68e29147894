"""The publication workflow (R4, R8): decide what to publish, replace or withdraw, and
queue it in the outbox in the same transaction as the decision.

The API other parts of the gateway call (stable; the HL7 report trigger will use it too):

* :meth:`PublicationWorkflow.request_publication` — publish a study's current content: build
  the KOS and its DocumentEntry now, record the manifest (:func:`record_manifest`) and queue a
  ``publish`` row, or a ``replace`` row (RPLC) when a previous KOS of the study is live.
  Nothing is queued when the study has no usable INS (the reason is returned and kept in the
  history) or when the live KOS already references exactly the stored instances.
* :meth:`PublicationWorkflow.request_withdrawal` — un-publish: queue a ``withdraw`` row (ITI-57
  Deprecated) and close access at once (``mark_withdrawn``).
* :meth:`PublicationWorkflow.on_stable` — the hook :class:`~gateway.manifest.stability.StabilityMonitor`
  runs inside the transaction that marks studies stable (``auto_publish``). A study un-published
  by hand is not re-published automatically.
* :func:`publication_status` — a study's publication state and history (``drimbox study show``).

Every function that takes a ``Session`` works in the caller's transaction; the others open one.
The outbox worker (:mod:`gateway.publication.outbox`) sends the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.config import Settings
from gateway.index import outbox
from gateway.index.facts import NotPublishable, UnknownStudy, study_facts
from gateway.index.manifests import mark_withdrawn, record_manifest
from gateway.index.models import Manifest, ManifestInstance, Study
from gateway.index.outbox import PUBLISH, REPLACE, WITHDRAW, Event, OutboxRow
from gateway.index.store import InstanceIndex
from gateway.manifest.facts import StudyFacts
from gateway.manifest.manifests import document_entry, manifest_from_facts, policy
from gateway.manifest.xds_metadata import MetadataError, PublicationContext, kos_document_entry
from gateway.publication.outbox import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublicationRequest:
    """What a request decided: the outbox row queued (``outbox_id``), or why none was."""

    study_instance_uid: str
    outbox_id: int | None
    kind: str = ""
    kos_uid: str = ""
    replaces_kos_uid: str = ""
    reason: str = ""

    @property
    def queued(self) -> bool:
        return self.outbox_id is not None


@dataclass(frozen=True, slots=True)
class LiveManifest:
    kos_uid: str
    published: bool


def live_manifest(s: Session, study_uid: str) -> LiveManifest | None:
    """The study's latest KOS that is (or is on its way to being) in the record: not withdrawn,
    and published or queued for publication."""
    rows = s.execute(select(Manifest.kos_uid, Manifest.published_at)
                     .where(Manifest.study_instance_uid == study_uid,
                            Manifest.withdrawn_at.is_(None))
                     .order_by(Manifest.created_at.desc(), Manifest.id.desc())).all()
    for kos_uid, published_at in rows:
        if published_at is not None or outbox.in_flight(s, kos_uid):
            return LiveManifest(kos_uid, published_at is not None)
    return None


def _referenced(s: Session, kos_uid: str) -> set[str]:
    return set(s.scalars(select(ManifestInstance.sop_instance_uid)
                         .join(Manifest, Manifest.id == ManifestInstance.manifest_pk)
                         .where(Manifest.kos_uid == kos_uid)))


def _stored(facts: StudyFacts) -> set[str]:
    return {i.sop_instance_uid for series in facts.series for i in series.instances}


class PublicationWorkflow:
    def __init__(self, index: InstanceIndex, settings: Settings,
                 on_queued: Callable[[], None] | None = None) -> None:
        self.index = index
        self.settings = settings
        self.on_queued = on_queued
        """Called after a commit that queued rows (the in-process worker wakes up)."""

    # ------------------------------------------------------------------------------ requests

    def request_publication(self, study_uid: str, *,
                            context: PublicationContext | None = None) -> PublicationRequest:
        """Publish (or replace) the study's KOS by hand or from a report. Raises
        :class:`~gateway.index.facts.UnknownStudy`."""
        with self.index.write() as s:
            result = self.plan_publication(s, study_uid, trigger="manual", context=context)
        self._queued(result)
        return result

    def request_withdrawal(self, study_uid: str, *, reason: str = "") -> PublicationRequest:
        """Un-publish the study's live KOS (R8): ITI-57 → Deprecated, access closed now."""
        with self.index.write() as s:
            result = self.plan_withdrawal(s, study_uid, reason=reason)
        self._queued(result)
        return result

    def on_stable(self, s: Session, uids: list[str]) -> None:
        """:meth:`StabilityMonitor.subscribe_in_transaction` hook: auto-publication. Each study
        is planned in a savepoint: one that fails is logged and kept in its history, the others
        go on (and the stability mark commits, so a broken study is not retried every pass).
        The worker is woken by the monitor's after-commit announcement."""
        for uid in uids:
            try:
                with s.begin_nested():
                    self.plan_publication(s, uid, trigger="stable")
            except Exception as exc:  # noqa: BLE001 - one study must not block the others
                log.exception("publication of study %s could not be planned", uid)
                outbox.add_event(s, uid, "error", detail=f"planning failed: {exc}")

    def _queued(self, result: PublicationRequest) -> None:
        if result.queued and self.on_queued is not None:
            self.on_queued()

    def announce(self, result: PublicationRequest) -> None:
        """After the commit of a caller's session that planned ``result``: wake the worker."""
        self._queued(result)

    # ----------------------------------------------------------------- in the caller's session

    @staticmethod
    def lock_study(s: Session, study_uid: str) -> None:
        """Serialise the planners of one study (stability, a report, IOCM, by hand) on its
        index row until ``s`` ends (PostgreSQL ``FOR UPDATE``; SQLite writes are serial): each
        sees what the one before it queued, so a study is not published twice."""
        s.execute(select(Study.id).where(Study.study_instance_uid == study_uid)
                  .with_for_update())

    def plan_publication(self, s: Session, study_uid: str, *, trigger: str,
                         context: PublicationContext | None = None,
                         even_if_current: bool = False) -> PublicationRequest:
        """Decide and queue a publication in ``s`` (see the module docstring). A ``trigger``
        starting with ``stable`` does not re-publish a study un-published by hand;
        ``even_if_current`` replaces a live KOS that already references every stored instance
        (a new CR: the DocumentEntry's metadata change, R8)."""
        now = datetime.now(UTC)
        self.lock_study(s, study_uid)
        try:
            facts = study_facts(self.index, study_uid, policy(self.settings), session=s)
        except NotPublishable as exc:
            return self._not_publishable(s, study_uid, str(exc), now)
        if trigger.startswith("stable") and outbox.last_kind(s, study_uid) == WITHDRAW:
            reason = "un-published by hand: `drimbox publish` publishes it again"
            outbox.add_event(s, study_uid, "skipped", detail=f"became stable; {reason}", now=now)
            return PublicationRequest(study_uid, None, reason=reason)
        live = live_manifest(s, study_uid)
        if live is not None and not even_if_current \
                and _referenced(s, live.kos_uid) == _stored(facts):
            reason = f"KOS {live.kos_uid} already references every stored instance"
            return PublicationRequest(study_uid, None, kos_uid=live.kos_uid, reason=reason)
        try:
            built = manifest_from_facts(facts, self.settings)
            kos_uid = str(built.kos.SOPInstanceUID)
            entry = (kos_document_entry(facts, built.kos_bytes, kos_uid, built.created, context)
                     if context is not None else document_entry(built, self.settings))
        except (NotPublishable, MetadataError) as exc:
            return self._not_publishable(s, study_uid, str(exc), now)
        replaces = live.kos_uid if live is not None else ""
        record_manifest(s, kos_uid, facts, replaces_kos_uid=replaces, now=now)
        outbox.supersede_refused(s, study_uid)
        kind = REPLACE if replaces else PUBLISH
        row_id = outbox.enqueue(s, kind=kind, study_uid=study_uid, kos_uid=kos_uid,
                                patient=facts.patient.ins, kos_bytes=built.kos_bytes, entry=entry,
                                replaces_kos_uid=replaces, now=now)
        outbox.add_event(s, study_uid, "built", kos_uid=kos_uid, now=now,
                         detail=f"{facts.instance_count} instance(s) in {len(facts.series)} "
                                f"series ({trigger})")
        outbox.add_event(s, study_uid, "queued", kos_uid=kos_uid, outbox_id=row_id, now=now,
                         detail=f"{kind}" + (f" of {replaces}" if replaces else ""))
        log.info("study %s: %s of KOS %s queued (outbox #%d)", study_uid, kind, kos_uid, row_id)
        return PublicationRequest(study_uid, row_id, kind, kos_uid, replaces)

    def plan_withdrawal(self, s: Session, study_uid: str, *, reason: str = "") -> PublicationRequest:
        now = datetime.now(UTC)
        self.lock_study(s, study_uid)
        live = live_manifest(s, study_uid)
        if live is None:
            if s.scalar(select(Study.id).where(Study.study_instance_uid == study_uid)) is None \
                    and s.scalar(select(Manifest.id).where(
                        Manifest.study_instance_uid == study_uid).limit(1)) is None:
                raise UnknownStudy(study_uid)
            return PublicationRequest(study_uid, None,
                                      reason="no published or queued KOS to withdraw")
        patient = outbox.patient_of(s, live.kos_uid)
        assert patient is not None  # a live manifest always has its publication row
        row_id = outbox.enqueue(s, kind=WITHDRAW, study_uid=study_uid, kos_uid=live.kos_uid,
                                patient=patient, now=now)
        for kos_uid in s.scalars(select(Manifest.kos_uid).where(
                Manifest.study_instance_uid == study_uid, Manifest.withdrawn_at.is_(None))):
            mark_withdrawn(s, kos_uid, now)  # every KOS of the study stops opening access now
        outbox.add_event(s, study_uid, "withdrawal_queued", kos_uid=live.kos_uid,
                         outbox_id=row_id, detail=reason, now=now)
        log.info("study %s: withdrawal of KOS %s queued (outbox #%d)", study_uid, live.kos_uid,
                 row_id)
        return PublicationRequest(study_uid, row_id, WITHDRAW, live.kos_uid)

    @staticmethod
    def _not_publishable(s: Session, study_uid: str, reason: str,
                         now: datetime) -> PublicationRequest:
        outbox.add_event(s, study_uid, "not_publishable", detail=reason, now=now)
        log.info("study %s not published: %s", study_uid, redact(reason))
        return PublicationRequest(study_uid, None, reason=f"not publishable: {reason}")


# ---------------------------------------------------------------------------- reading back

@dataclass(frozen=True, slots=True)
class PublicationStatus:
    """A study's publication, as ``drimbox study show`` prints it."""

    state: str
    """``not published``, ``queued``, ``published``, ``withdrawn`` or ``refused``."""
    current_kos_uid: str
    current_entry_uuid: str
    published_at: datetime | None
    rows: list[OutboxRow]
    """The study's outbox rows, newest first."""
    history: list[Event]


def publication_status(index: InstanceIndex, study_uid: str) -> PublicationStatus:
    with index.read() as s:
        rows = outbox.list_rows(s, study_uid=study_uid)
        events = outbox.history(s, study_uid)
        current = s.execute(select(Manifest.kos_uid, Manifest.published_at)
                            .where(Manifest.study_instance_uid == study_uid,
                                   Manifest.published_at.is_not(None),
                                   Manifest.withdrawn_at.is_(None))
                            .order_by(Manifest.created_at.desc(), Manifest.id.desc())
                            .limit(1)).one_or_none()
        entry_uuid = outbox.published_entry_uuid(s, current[0]) if current else ""
    open_rows = [r for r in rows if r.state in (outbox.PENDING, outbox.SENDING)]
    if open_rows:
        state = "queued"
    elif current:
        state = "published"
    elif rows and rows[0].kind == WITHDRAW and rows[0].state == outbox.DONE:
        state = "withdrawn"
    elif rows and rows[0].state == outbox.REFUSED:
        state = "refused"
    else:
        state = "not published"
    return PublicationStatus(state, current[0] if current else "", entry_uuid,
                             current[1] if current else None, rows, events)


__all__ = ["PublicationRequest", "PublicationStatus", "PublicationWorkflow", "UnknownStudy",
           "live_manifest", "publication_status"]
