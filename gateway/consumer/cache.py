"""The consumer's cache of retrieved studies (R17): bounded, least recently used out.

A retrieval (:class:`gateway.index.models.ConsumerRetrieval`) keeps its files under
``<data_dir>/consumer-cache/<id>/<series>/<sop>.dcm``. An instance is first written under
``<id>/.partial/`` and moved into its series folder only once whole and checked; a series is
shown only once every instance the KOS names is there (its state in the row), so nothing half
retrieved is ever served as complete.

Size: ``consumer_cache_max_bytes`` bounds the sum of the rows' ``bytes`` plus what running
retrievals have written so far (:meth:`StudyCache.account`). Before an instance is kept,
:meth:`StudyCache.make_room` evicts whole studies, least recently used first (``last_used_at``:
retrieved or viewed), never one being retrieved, nor one the viewer read within
``consumer_cache_in_use_minutes`` (``viewed_at``); when that is not enough it raises
:class:`CacheFull`. ``drimbox consumer cache purge`` empties it (:func:`purge`).

The finished studies' bytes (a sum over the rows) are read from the index once, then kept:
they change here only when a retrieval finishes or a study is evicted, which read them again,
and at most :data:`STORED_BYTES_TTL` seconds after another process changed them (a purge
only lowers them). A decision to evict or to refuse always reads them afresh. (Read for
every instance, that sum was the largest cost of a retrieval after the network.)
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, func, select

from gateway.access.sessions import aware
from gateway.index.models import ConsumerRetrieval
from gateway.index.store import InstanceIndex

log = logging.getLogger("drimbox.consumer.cache")

RETRIEVING = "retrieving"
COMPLETE = "complete"
PARTIAL = "partial"
FAILED = "failed"
FINISHED = (COMPLETE, PARTIAL, FAILED)
#: Seconds the finished studies' byte sum is kept between two readings (see the module).
STORED_BYTES_TTL = 2.0


class CacheFull(Exception):
    """No room for an instance, even after evicting every study that may go."""


def cache_root(data_dir: Path) -> Path:
    return data_dir / "consumer-cache"


class StudyCache:
    def __init__(self, index: InstanceIndex, root: Path, max_bytes: int,
                 in_use: timedelta,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.index = index
        self.root = root
        self.max_bytes = max_bytes
        self.in_use = in_use
        self.now = now
        self._lock = threading.Lock()
        self._live: dict[int, int] = {}  # retrieval id -> bytes written so far (running)
        self._stored: tuple[float, int] | None = None  # (monotonic read time, bytes) of the rest

    def folder(self, retrieval_id: int) -> Path:
        return self.root / str(int(retrieval_id))

    def partial_folder(self, retrieval_id: int) -> Path:
        return self.folder(retrieval_id) / ".partial"

    def instance_path(self, retrieval_id: int, series_uid: str, sop_uid: str) -> Path:
        return self.folder(retrieval_id) / series_uid / f"{sop_uid}.dcm"

    def retrieved_files(self, retrieval_id: int) -> list[Path]:
        """The Part 10 files of a retrieval's series folders (never its ``.partial/`` files).
        Only a ``complete`` retrieval holds every instance its KOS names: callers that hand
        the study on (the export to the PACS) check the row's state first."""
        return sorted(p for p in self.folder(retrieval_id).glob("*/*.dcm")
                      if p.parent.name != ".partial" and p.is_file())

    # -- accounting ---------------------------------------------------------------------------

    def start(self, retrieval_id: int) -> None:
        with self._lock:
            self._live[retrieval_id] = 0

    def finish(self, retrieval_id: int) -> int:
        """The bytes a running retrieval wrote (it stops counting as live: its row's bytes
        join the finished studies' sum, read again next time)."""
        with self._lock:
            self._stored = None
            return self._live.pop(retrieval_id, 0)

    def used(self) -> int:
        with self._lock:
            return self._stored_bytes(fresh=True) + sum(self._live.values())

    def _stored_bytes(self, fresh: bool = False) -> int:
        """The finished (not running) studies' bytes; under ``self._lock``."""
        now = time.monotonic()
        if fresh or self._stored is None or now - self._stored[0] > STORED_BYTES_TTL:
            with self.index.read() as s:
                stored = s.scalar(
                    select(func.coalesce(func.sum(ConsumerRetrieval.bytes), 0))
                    .where(ConsumerRetrieval.id.not_in(list(self._live) or [-1]))) or 0
            self._stored = (now, int(stored))
        return self._stored[1]

    def make_room(self, retrieval_id: int, size: int) -> list[int]:
        """Count ``size`` more bytes for the running retrieval ``retrieval_id``, evicting what
        must go first; return the evicted retrieval ids. Raises :class:`CacheFull` (and then
        evicts nothing) when even every study that may go would not make the room."""
        with self._lock:  # one decision at a time: two retrievals never evict the same room
            live = sum(self._live.values())
            used = self._stored_bytes() + live
            victims: list[int] = []
            if used + size > self.max_bytes:
                used = self._stored_bytes(fresh=True) + live  # decide on the index's figures
            if used + size > self.max_bytes:
                for rid, nbytes in self._victims(exclude=set(self._live) | {retrieval_id}):
                    victims.append(rid)
                    used -= nbytes
                    if used + size <= self.max_bytes:
                        break
                else:
                    raise CacheFull(f"{used + size} bytes needed after every eviction, "
                                    f"limit {self.max_bytes}")
            for rid in victims:
                self._remove(rid)
                log.info("consumer cache: evicted retrieval %s (least recently used)", rid)
            if victims:
                self._stored = None
            self._live[retrieval_id] = self._live.get(retrieval_id, 0) + size
            return victims

    def _victims(self, exclude: set[int]) -> list[tuple[int, int]]:
        """(id, bytes) of the studies that may be evicted, least recently used first: finished,
        not read by the viewer within ``in_use``."""
        cutoff = self.now() - self.in_use
        with self.index.read() as s:
            rows = s.execute(select(ConsumerRetrieval.id, ConsumerRetrieval.viewed_at,
                                    ConsumerRetrieval.bytes)
                             .where(ConsumerRetrieval.state.in_(FINISHED))
                             .order_by(ConsumerRetrieval.last_used_at, ConsumerRetrieval.id)
                             ).all()
        return [(rid, int(nbytes or 0)) for rid, viewed_at, nbytes in rows
                if rid not in exclude
                and not (viewed_at is not None
                         and aware(viewed_at) > cutoff)]  # type: ignore[operator]

    def _remove(self, retrieval_id: int) -> None:
        with self.index.write() as s:
            s.execute(delete(ConsumerRetrieval).where(ConsumerRetrieval.id == retrieval_id))
        shutil.rmtree(self.folder(retrieval_id), ignore_errors=True)

    def sweep_interrupted(self) -> int:
        """At start-up: retrievals left ``retrieving`` by a stopped process are failed, their
        partial files removed (their whole series stay readable if the row says so)."""
        with self.index.write() as s:
            rows = list(s.scalars(select(ConsumerRetrieval)
                                  .where(ConsumerRetrieval.state == RETRIEVING)))
            for row in rows:
                row.state = FAILED
                row.updated_at = self.now()
        for row in rows:
            shutil.rmtree(self.partial_folder(row.id), ignore_errors=True)
        return len(rows)


def latest_complete(index: InstanceIndex, uid: str) -> ConsumerRetrieval | None:
    """The latest ``complete`` retrieval of a study, named by its KOS document unique id or its
    Study Instance UID, whatever the session (the operator's ``drimbox consumer export``)."""
    with index.read() as s:
        row = s.scalar(select(ConsumerRetrieval)
                       .where(ConsumerRetrieval.state == COMPLETE,
                              (ConsumerRetrieval.kos_uid == uid)
                              | (ConsumerRetrieval.study_instance_uid == uid))
                       .order_by(ConsumerRetrieval.id.desc()).limit(1))
        if row is not None:
            s.expunge(row)
        return row


def purge(index: InstanceIndex, root: Path, everything: bool = False) -> tuple[int, int]:
    """``drimbox consumer cache purge``: remove every finished retrieval (with ``everything``,
    also those marked retrieving: only when no gateway runs) and stray folders. Returns
    (studies removed, bytes freed)."""
    states = FINISHED + ((RETRIEVING,) if everything else ())
    with index.write() as s:
        rows = s.execute(select(ConsumerRetrieval.id, ConsumerRetrieval.bytes)
                         .where(ConsumerRetrieval.state.in_(states))).all()
        s.execute(delete(ConsumerRetrieval).where(
            ConsumerRetrieval.id.in_([r.id for r in rows] or [-1])))
        kept = set(s.scalars(select(ConsumerRetrieval.id)))
    for rid, _ in rows:
        shutil.rmtree(root / str(rid), ignore_errors=True)
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and (not child.name.isdigit() or int(child.name) not in kept):
                shutil.rmtree(child, ignore_errors=True)
    return len(rows), sum(int(b or 0) for _, b in rows)
