"""Retention: the file store as a cache of the PACS, and the purge of old audit rows and
rejected instances (``drimbox store evict``, ``drimbox store purge``, and the retention task
of ``drimbox serve``).

**Eviction.** With ``storage_max_bytes`` and/or ``storage_max_age_days`` set (and the PACS
configured: only the PACS can give a file back), whole studies lose their files, least
recently used first: a study's *last use* is the latest of its instances' arrival and its last
fetch back from the PACS (``studies.restored_at``). Arrival rather than every read: a read
would cost an index write per WADO-RS request, and a Source's studies are read mostly in the
weeks after they are published. A study is evicted when it was last used more than
``storage_max_age_days`` ago, or, while the files in the store add up to more than
``storage_max_bytes`` (dataset bytes as the index records them), oldest first until they do
not. Never evicted: a study that is not stable (still receiving), one whose publication waits
in the outbox, and, when a DMP is configured, one never published; a study being fetched back
at that moment is skipped too.

Evicting a study: its series and study metadata are computed into the metadata cache first
(:class:`gateway.imaging.metadata.MetadataCache`: the files it keeps stay valid, since an
eviction changes no row the cache is versioned by), then its instances are marked evicted
(``instances.evicted_at``) in one transaction that checks the study is still settled, then the
files are deleted. The rows stay: QIDO-RS, metadata, manifests, the access policy are
unchanged; WADO-RS fetches the files back (:mod:`gateway.imaging.restore`).

**Purges.** Audit rows older than ``audit_retention_days`` are deleted (never a younger one:
the cut-off is computed from the current time, rows are compared on ``recorded_at``), and
the instances an IOCM rejection note removed (``rejected/<study>/<note>/``, kept aside for
the operator) are deleted ``rejected_retention_days`` after the note arrived (the note file's
modification time). Each pass that deletes something is itself audited
(``retention_purge`` by the system principal ``retention``).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.access.audit import ALLOWED, AccessRecord, record_in
from gateway.access.principal import Principal
from gateway.config import Settings
from gateway.index.retention import (
    count_audit_before,
    mark_evicted,
    mark_evicted_again,
    purge_audit,
    stored_bytes,
    studies_by_use,
)
from gateway.index.store import InstanceIndex
from gateway.ingest.storage import FileStore

log = logging.getLogger(__name__)

RETENTION = Principal(kind="system", subject="retention", via="scheduler")


@dataclass
class EvictionReport:
    enabled: bool = True
    dry_run: bool = False
    stored_bytes_before: int = 0
    stored_bytes_after: int = 0
    evicted: list[dict] = field(default_factory=list)
    """One per study: uid, instances, bytes, last_used."""
    kept: list[dict] = field(default_factory=list)
    """Studies a limit named but that could not be evicted: uid and why."""

    def as_dict(self) -> dict:
        return {"enabled": self.enabled, "dry_run": self.dry_run,
                "stored_bytes_before": self.stored_bytes_before,
                "stored_bytes_after": self.stored_bytes_after,
                "evicted": self.evicted, "kept": self.kept}


@dataclass
class PurgeReport:
    dry_run: bool = False
    audit_before: str = ""
    audit_rows: int = 0
    rejected_before: str = ""
    rejected_notes: int = 0
    rejected_files: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def evict(store: FileStore, index: InstanceIndex, settings: Settings, *,
          keep_metadata: Callable[[str], object] | None = None, dry_run: bool = False,
          now: datetime | None = None, busy: Callable[[str], bool] | None = None
          ) -> EvictionReport:
    """One eviction pass (module docstring). ``keep_metadata(study_uid)`` computes the study's
    metadata into the cache before its files go (a failure keeps the study); ``busy(uid)``
    says a study is being fetched back at this moment."""
    report = EvictionReport(enabled=settings.eviction_enabled, dry_run=dry_run)
    total = stored_bytes(index)
    report.stored_bytes_before = report.stored_bytes_after = total
    if not settings.eviction_enabled:
        return report
    now = now or datetime.now(UTC)
    max_bytes = settings.storage_max_bytes
    cutoff = (now - timedelta(days=settings.storage_max_age_days)
              if settings.storage_max_age_days is not None else None)
    for use in studies_by_use(index, require_published=settings.dmp_configured):
        too_big = max_bytes is not None and total > max_bytes
        too_old = cutoff is not None and use.last_used < cutoff
        if not (too_big or too_old):
            break  # least recently used first: every later study is younger and fits
        uid = use.study_instance_uid
        if not use.settled:
            report.kept.append({"study": uid, "reason": use.why_kept})
            continue
        if busy is not None and busy(uid):
            report.kept.append({"study": uid, "reason": "being fetched back from the PACS"})
            continue
        entry = {"study": uid, "instances": use.stored_instances, "bytes": use.stored_bytes,
                 "last_used": use.last_used.isoformat(),
                 "reason": "age" if too_old else "size"}
        if dry_run:
            report.evicted.append(entry)
            total -= use.stored_bytes
            continue
        if keep_metadata is not None:
            try:
                keep_metadata(uid)
            except Exception as exc:  # noqa: BLE001 - the study keeps its files
                log.warning("study %s not evicted: its metadata could not be computed (%s)",
                            uid, exc)
                report.kept.append({"study": uid, "reason": f"metadata not computed: {exc}"})
                continue
        files = mark_evicted(index, uid, now, settings.dmp_configured)
        if not files:
            report.kept.append({"study": uid, "reason": "no longer settled"})
            continue
        for f in files:
            try:
                store.delete(f.storage_key)
            except OSError:
                log.exception("evicted instance %s: its file could not be deleted",
                              f.sop_instance_uid)
        # A fetch back finishing between the mark and the deletion: its file is gone again.
        mark_evicted_again(index, files, now,
                           {f.storage_key for f in files if not store.exists(f.storage_key)})
        total -= use.stored_bytes
        entry["instances"] = len(files)
        report.evicted.append(entry)
        log.info("study %s evicted (%s): %d instances, %d bytes; the PACS keeps them", uid,
                 entry["reason"], len(files), use.stored_bytes)
    report.stored_bytes_after = total
    return report


def _note_time(note_dir: Path) -> float:
    note = note_dir / "rejection-note.dcm"
    try:
        return note.stat().st_mtime
    except FileNotFoundError:
        return note_dir.stat().st_mtime


def purge(store: FileStore, index: InstanceIndex, settings: Settings, *, dry_run: bool = False,
          now: datetime | None = None) -> PurgeReport:
    """One purge pass: audit rows and rejected instances past their retention."""
    now = now or datetime.now(UTC)
    report = PurgeReport(dry_run=dry_run)
    audit_cutoff = now - timedelta(days=settings.audit_retention_days)
    rejected_cutoff = now - timedelta(days=settings.rejected_retention_days)
    report.audit_before = audit_cutoff.isoformat()
    report.rejected_before = rejected_cutoff.isoformat()
    rejected_root = store.root / "rejected"
    old_notes = []
    if rejected_root.is_dir():
        for study_dir in sorted(p for p in rejected_root.iterdir() if p.is_dir()):
            for note_dir in sorted(p for p in study_dir.iterdir() if p.is_dir()):
                if _note_time(note_dir) < rejected_cutoff.timestamp():
                    old_notes.append(note_dir)
    report.rejected_notes = len(old_notes)
    report.rejected_files = sum(1 for d in old_notes for p in d.iterdir() if p.is_file())
    with index.write() as s:
        if dry_run:
            report.audit_rows = count_audit_before(s, audit_cutoff)
            return report
        report.audit_rows = purge_audit(s, audit_cutoff)
        if report.audit_rows or old_notes:
            record_in(s, [AccessRecord(
                RETENTION, "retention_purge", ALLOWED,
                f"{report.audit_rows} audit rows before {audit_cutoff:%Y-%m-%d}, "
                f"{report.rejected_notes} rejection notes ({report.rejected_files} files) "
                f"before {rejected_cutoff:%Y-%m-%d}")], now)
    for note_dir in old_notes:
        shutil.rmtree(note_dir, ignore_errors=True)
        try:
            note_dir.parent.rmdir()  # the study folder, once empty
        except OSError:
            pass
    if report.audit_rows or old_notes:
        log.info("retention: %d audit rows and %d rejection notes (%d files) purged",
                 report.audit_rows, report.rejected_notes, report.rejected_files)
    return report


class RetentionTask:
    """The retention task of ``drimbox serve``: :func:`evict` then :func:`purge`, every
    ``retention_interval`` seconds (the first pass ``first_delay`` seconds after start)."""

    def __init__(self, run_once: Callable[[], None], interval: float,
                 first_delay: float = 60.0) -> None:
        self._run_once = run_once
        self.interval = interval
        self.first_delay = min(first_delay, interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        wait = self.first_delay
        while not self._stop.wait(wait):
            try:
                self._run_once()
            except Exception:  # the next pass tries again
                log.exception("retention pass failed")
            wait = self.interval
