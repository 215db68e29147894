"""Retrieving a prior study for the clinician (R17; SPEC 1.3 steps 4-6), the domain side.

1. The KOS: ITI-18 GetDocuments by its uniqueId (the DMP document the priors list names; the
   entry must be the current patient's), then ITI-43 of it from its repository, each with a
   VIHF naming the practitioner of the PSC session (:func:`practitioner_vihf`).
2. :func:`read_kos`: the study, the patient, and per series its RetrieveURL and the SOP
   Instance UIDs the KOS references.
3. Each RetrieveURL's host is checked against the ANS whitelist (R11) before any request: an
   untrusted series is ``refused`` with the reason, never called; a listed host must present
   the TLS certificate whose subject DN the list gives (``DNCertificatOperateur``), checked
   at the handshake, before the token is sent.
4. :class:`Retriever` runs the series (``consumer_retrieve_parallel_series`` at once, over all
   retrievals) with a :class:`~gateway.consumer.source.SourceReader` (:class:`adapters.source.wado.SourceClient`): WADO-RS with the session's PSC
   access token and ``KOS-SOPInstanceUID``. Each part is written aside, its header read
   (:func:`part_header`: it must be one of the series' referenced instances), counted in the cache
   (:meth:`gateway.consumer.cache.StudyCache.make_room`) and only then moved into place. 5xx,
   connection failures and cut answers are retried (``consumer_retrieve_attempts``, backoff
   from ``consumer_retrieve_backoff_seconds`` doubling); a refusal (401/403/404/410) ends the
   series at once. A series is ``complete`` only when every referenced instance is there.
5. Progress is kept in memory while it runs (:meth:`Retriever.status`) and in the row
   (``consumer_retrievals``) at each series' end; the row's final state is ``complete``,
   ``partial`` or ``failed``.

Each Source request is audited (action ``consumer_wado``: allowed with the count, or denied
with the reason), without token or names.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.consumer.cache import (
    COMPLETE,
    FAILED,
    PARTIAL,
    RETRIEVING,
    CacheFull,
    StudyCache,
)
from gateway.consumer.source import SourceError, SourceReader, SourceRefused, SourceUntrusted
from gateway.consumer.trust import Decision
from gateway.index.models import ConsumerRetrieval
from gateway.index.store import InstanceIndex
from gateway.ingest.uids import is_safe_uid

log = logging.getLogger("drimbox.consumer.retrieve")

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
ACTION_KOS = "consumer_kos"
ACTION_WADO = "consumer_wado"

# Series states.
PENDING = "pending"
RUNNING = "retrieving"
SERIES_COMPLETE = "complete"
REFUSED = "refused"  # never asked: the whitelist says no
SERIES_FAILED = "failed"


class KosUnreadable(ValueError):
    """The DMP's document is not a KOS we can follow; the message is for the clinician."""


@dataclass(frozen=True, slots=True)
class KosSeries:
    series_uid: str
    retrieve_url: str
    sop_uids: frozenset[str]


@dataclass(frozen=True, slots=True)
class KosPlan:
    kos_uid: str
    study_uid: str
    patient_id: str
    series: tuple[KosSeries, ...]


def read_kos(data: bytes) -> KosPlan:
    """What a consumer follows in a KOS (R3): its study, patient and each series' RetrieveURL
    and referenced instances. :class:`KosUnreadable` when it is not a usable KOS."""
    try:
        kos = dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise KosUnreadable("le document du DMP n'est pas un objet DICOM lisible") from exc
    if str(kos.get("SOPClassUID", "")) != KOS_SOP_CLASS:
        raise KosUnreadable("le document du DMP n'est pas un KOS (Key Object Selection)")
    study_uid = str(kos.get("StudyInstanceUID", ""))
    series: dict[str, KosSeries] = {}
    for study_item in kos.get("CurrentRequestedProcedureEvidenceSequence", []):
        if str(study_item.get("StudyInstanceUID", study_uid)) != study_uid:
            raise KosUnreadable("le KOS référence plusieurs examens")
        for item in study_item.get("ReferencedSeriesSequence", []):
            uid = str(item.get("SeriesInstanceUID", ""))
            url = str(item.get("RetrieveURL", "") or "")
            sops = frozenset(str(r.ReferencedSOPInstanceUID)
                             for r in item.get("ReferencedSOPSequence", []))
            if not is_safe_uid(uid) or not all(is_safe_uid(s) for s in sops):
                raise KosUnreadable("le KOS contient un UID invalide")
            if uid in series:
                raise KosUnreadable(f"le KOS cite deux fois la série {uid}")
            series[uid] = KosSeries(uid, url, sops)
    if not is_safe_uid(study_uid) or not series:
        raise KosUnreadable("le KOS ne référence aucune série")
    return KosPlan(str(kos.SOPInstanceUID), study_uid, str(kos.get("PatientID", "")),
                   tuple(series.values()))


#: What of each part is kept in memory to read its header (a CT slice's is ~1.5 KB).
HEAD_BYTES = 64 * 1024
_PART_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


def part_header(head: bytes, size: int, path) -> Dataset:  # noqa: ANN001 - a path
    """The UIDs of a retrieved part (``size`` bytes, written at ``path``) that says which
    instance it is, read from its first bytes ``head`` when they hold its whole header: the
    reading stopped at the pixel data before their end (a value cut by the end of ``head``
    leaves the reading at its end), or ``head`` is the whole part. Else from the file."""
    buf = io.BytesIO(head)
    try:
        ds = dcmread(buf, stop_before_pixels=True, specific_tags=list(_PART_UIDS))
        if buf.tell() < len(head) or len(head) == size:
            return ds
    except (InvalidDicomError, ValueError, EOFError):
        pass
    return dcmread(path, stop_before_pixels=True, specific_tags=list(_PART_UIDS))


# -- the retrieval itself ---------------------------------------------------------------------


@dataclass
class SeriesProgress:
    uid: str
    url: str
    expected: frozenset[str]
    state: str = PENDING
    received: set[str] = field(default_factory=set)
    bytes: int = 0
    attempts: int = 0
    message: str = ""
    certificate_dn: str = ""
    """The subject DN the whitelist names for the Source's host (R11; empty: not checked)."""

    def as_json(self) -> dict:
        return {"uid": self.uid, "state": self.state, "expected": len(self.expected),
                "received": len(self.received), "bytes": self.bytes,
                "attempts": self.attempts, "message": self.message,
                "host": _host(self.url)}


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


@dataclass
class Job:
    id: int
    plan: KosPlan
    token: str
    principal: Principal
    patient_ins: str
    client_address: str
    series: list[SeriesProgress]
    state: str = RETRIEVING
    lock: threading.Lock = field(default_factory=threading.Lock)
    save_lock: threading.Lock = field(default_factory=threading.Lock)
    """Held from the snapshot to the commit of a save: a slower save never writes an older
    snapshot over a newer one (the last series' end and another series' save race)."""
    left: int = 0

    def snapshot(self) -> dict:
        with self.lock:
            return {"id": self.id, "state": self.state, "study": self.plan.study_uid,
                    "series": [s.as_json() for s in self.series]}


class Retriever:
    """The retrievals of one gateway process."""

    def __init__(self, index: InstanceIndex, cache: StudyCache, client: SourceReader, *,
                 parallel: int, attempts: int, backoff: float,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.index = index
        self.cache = cache
        self.client = client
        self.attempts = attempts
        self.backoff = backoff
        self.now = now
        self._pool = ThreadPoolExecutor(max_workers=parallel,
                                        thread_name_prefix="consumer-retrieve")
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def close(self) -> None:
        self._stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # -- starting ---------------------------------------------------------------------------

    def start(self, session_key: str, plan: KosPlan, token: str, principal: Principal,
              patient_ins: str, trust: Callable[[str], Decision],
              client_address: str = "") -> int:
        """Record the retrieval and start its series; return its id. ``trust(url)`` says
        whether a RetrieveURL may be called, with the reason and the whitelist entry whose
        certificate DN the Source must present (R11)."""
        series = []
        for s in plan.series:
            progress = SeriesProgress(s.series_uid, s.retrieve_url, s.sop_uids)
            decision = trust(s.retrieve_url) if s.retrieve_url else Decision(
                False, "le KOS ne donne pas d'URL de récupération pour cette série")
            ok, reason = bool(decision), decision.reason
            if decision.source is not None:
                progress.certificate_dn = decision.source.certificate_dn
            if not ok:
                progress.state = REFUSED
                progress.message = ("source non autorisée (liste blanche ANS) : " + reason
                                    if s.retrieve_url else reason)
            series.append(progress)
        now = self.now()
        with self.index.write() as s:
            row = ConsumerRetrieval(
                session_sha256=session_key, subject=principal.subject, kos_uid=plan.kos_uid,
                study_instance_uid=plan.study_uid, patient_ins=patient_ins, state=RETRIEVING,
                series=json.dumps([p.as_json() for p in series]), bytes=0, created_at=now,
                updated_at=now, last_used_at=now, viewed_at=None)
            s.add(row)
            s.flush()
            rid = row.id
        job = Job(rid, plan, token, principal, patient_ins, client_address, series)
        for p in series:
            if p.state == REFUSED:
                self._audit(job, p, DENIED, "source_not_whitelisted")
        todo = [p for p in series if p.state == PENDING]
        job.left = len(todo)
        self.cache.start(rid)
        with self._lock:
            self._jobs[rid] = job
        if not todo:
            self._finish(job)
        for p in todo:
            self._pool.submit(self._run_series, job, p)
        return rid

    def status(self, retrieval_id: int) -> dict | None:
        """The running job's progress, or None when it is not running here."""
        with self._lock:
            job = self._jobs.get(retrieval_id)
        return job.snapshot() if job is not None else None

    # -- one series -----------------------------------------------------------------------------

    def _run_series(self, job: Job, p: SeriesProgress) -> None:
        try:
            self._series(job, p)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the job running
            log.exception("consumer retrieval %s: series failed", job.id)
            with job.lock:
                p.state = SERIES_FAILED
                p.message = p.message or f"erreur interne ({type(exc).__name__})"
        finally:
            with job.lock:
                job.left -= 1
                last = job.left == 0
            self._save(job)
            if last:
                self._finish(job)

    def _series(self, job: Job, p: SeriesProgress) -> None:
        with job.lock:
            p.state = RUNNING
        delay = self.backoff
        while True:
            if self._stopping.is_set():
                p.state, p.message = SERIES_FAILED, "récupération interrompue (arrêt du service)"
                return
            with job.lock:
                p.attempts += 1
                attempt = p.attempts
            before = len(p.received)
            try:
                self.client.retrieve(p.url, job.token, job.plan.kos_uid,
                                     lambda headers, chunks: self._part(job, p, headers, chunks),
                                     p.certificate_dn)
            except CacheFull:
                self._audit(job, p, DENIED, "cache_full")
                with job.lock:
                    p.state = SERIES_FAILED
                    p.message = "cache local plein : libérez de la place (examens en cours " \
                                "d'affichage conservés) ou augmentez consumer_cache_max_bytes"
                return
            except SourceUntrusted as exc:
                self._audit(job, p, DENIED, "source_certificate_not_whitelisted")
                with job.lock:
                    p.state, p.message = SERIES_FAILED, exc.message
                return
            except SourceRefused as exc:
                self._audit(job, p, DENIED, f"source_{exc.status or 'refused'}")
                with job.lock:
                    p.state, p.message = SERIES_FAILED, exc.message
                return
            except SourceError as exc:
                self._audit(job, p, DENIED, f"source_unavailable_{exc.status or 'network'}"
                            f"_attempt_{attempt}")
                if attempt >= self.attempts:
                    with job.lock:
                        p.state = SERIES_FAILED
                        p.message = f"{exc.message} ({attempt} tentatives)"
                    return
                with job.lock:
                    p.message = f"{exc.message} : nouvelle tentative"
                if self._stopping.wait(delay):
                    continue
                delay *= 2
                continue
            self._audit(job, p, ALLOWED, "retrieved", len(p.received) - before)
            missing = p.expected - p.received
            with job.lock:
                if missing:
                    p.state = SERIES_FAILED
                    p.message = (f"la DRIMbox source n'a pas envoyé {len(missing)} des "
                                 f"{len(p.expected)} images citées par le KOS")
                else:
                    p.state, p.message = SERIES_COMPLETE, ""
            return

    def _part(self, job: Job, p: SeriesProgress, headers: dict[str, str],
              chunks: Iterator[bytes]) -> None:
        """One part of the answer: written aside, checked, counted, then moved into place.
        Parts that are not referenced instances of this series are read and dropped."""
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        partial = self.cache.partial_folder(job.id)
        partial.mkdir(parents=True, exist_ok=True)
        tmp = partial / secrets.token_hex(8)
        size = 0
        head = bytearray()  # the part's first bytes: its header, read without the file
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
                    if len(head) < HEAD_BYTES:
                        head += chunk[:HEAD_BYTES - len(head)]
            if media != "application/dicom":
                return
            try:
                ds = part_header(head, size, tmp)
            except (InvalidDicomError, ValueError, EOFError, OSError):
                return
            sop = str(ds.get("SOPInstanceUID", ""))
            if (sop not in p.expected or sop in p.received
                    or str(ds.get("SeriesInstanceUID", "")) != p.uid
                    or str(ds.get("StudyInstanceUID", "")) != job.plan.study_uid):
                return
            self.cache.make_room(job.id, size)
            final = self.cache.instance_path(job.id, p.uid, sop)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            with job.lock:
                p.received.add(sop)
                p.bytes += size
        finally:
            tmp.unlink(missing_ok=True)

    # -- bookkeeping ----------------------------------------------------------------------------

    def _save(self, job: Job, state: str | None = None, size: int | None = None) -> None:
        with job.save_lock:
            self._save_locked(job, state, size)

    def _save_locked(self, job: Job, state: str | None, size: int | None) -> None:
        with job.lock:
            series = json.dumps([p.as_json() for p in job.series])
        with self.index.write() as s:
            row = s.get(ConsumerRetrieval, job.id)
            if row is None:  # purged meanwhile
                return
            row.series = series
            row.updated_at = self.now()
            if state is not None:
                row.state = state
            if size is not None:
                row.bytes = size
                row.last_used_at = self.now()

    def _finish(self, job: Job) -> None:
        states = {p.state for p in job.series}
        state = (COMPLETE if states == {SERIES_COMPLETE}
                 else PARTIAL if SERIES_COMPLETE in states else FAILED)
        # Only whole series stay on disk: the others' instances are removed.
        for p in job.series:
            if p.state != SERIES_COMPLETE:
                folder = self.cache.folder(job.id) / p.uid
                for path in folder.glob("*.dcm") if folder.is_dir() else ():
                    path.unlink(missing_ok=True)
        size = sum(p.bytes for p in job.series if p.state == SERIES_COMPLETE)
        shutil.rmtree(self.cache.partial_folder(job.id), ignore_errors=True)
        self._save(job, state, size)
        self.cache.finish(job.id)
        with job.lock:
            job.state = state
        with self._lock:
            self._jobs.pop(job.id, None)
        log.info("consumer retrieval %s: %s", job.id, state)

    def _audit(self, job: Job, p: SeriesProgress, outcome: str, reason: str,
               count: int = 0) -> None:
        record_access(self.index, AccessRecord(
            job.principal, ACTION_WADO, outcome,
            (f"{reason}: {count} instances" if outcome == ALLOWED else reason)[:255],
            study_uid=job.plan.study_uid, series_uid=p.uid, patient_ins=job.patient_ins,
            kos_uid=job.plan.kos_uid, client_address=job.client_address))


def row_status(row: ConsumerRetrieval) -> dict:
    return {"id": row.id, "state": row.state, "study": row.study_instance_uid,
            "series": json.loads(row.series or "[]")}


def session_retrieval(index: InstanceIndex, session_key: str, *, kos_uid: str = "",
                      study_uid: str = "") -> ConsumerRetrieval | None:
    """The session's latest retrieval of a KOS or of a study, or None."""
    q = select(ConsumerRetrieval).where(ConsumerRetrieval.session_sha256 == session_key)
    if kos_uid:
        q = q.where(ConsumerRetrieval.kos_uid == kos_uid)
    if study_uid:
        q = q.where(ConsumerRetrieval.study_instance_uid == study_uid)
    with index.read() as s:
        row = s.scalar(q.order_by(ConsumerRetrieval.id.desc()).limit(1))
        if row is not None:
            s.expunge(row)
        return row
