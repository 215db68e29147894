"""Group commit: instances received at the same time share one flush and one transaction.

Every kept instance must be on disk and in the index before its acknowledgement. The files
are written without a flush; :class:`GroupCommitter` makes a whole group durable at once
(leader / follower, no thread of its own): a caller of :meth:`GroupCommitter.record` queues
its row; if no commit is running it becomes the leader, takes every queued row, calls the
*flush* once for the group (one ``syncfs`` of the data directory's file system, or per-file
``fsync`` in the ``files`` mode: see :mod:`gateway.ingest.recovery`), writes the rows in one
transaction (:meth:`InstanceIndex.record_many`) and wakes the callers whose rows it
committed. Rows queued meanwhile wait for the next leader. Nobody returns before the flush
and the commit that hold its row; with one association the caller is always its own leader
and nothing waits.

When the index commit goes without a flush of its own (``flush_index=False``: SQLite beside
the data), the leader keeps this process's recovery mark (:class:`RecoveryMark`) current:
after each flush, every earlier commit is durable, so the mark moves to the oldest write of
the group being committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from gateway.index.store import InstanceIndex, StoredFile, StoredInstance
from gateway.ingest.header import InstanceHeader



class RecoveryMark(Protocol):
    """This process's recovery mark (:class:`gateway.ingest.recovery.RecoveryMark`)."""

    @property
    def opened(self) -> bool: ...

    def open(self, since: float) -> None: ...

    def advance(self, since: float) -> None: ...


T = TypeVar("T")


@dataclass(eq=False)
class _Pending:
    header: InstanceHeader
    stored: StoredFile
    path: Path | None
    written_at: float
    done: bool = False
    result: StoredInstance | None = None
    error: BaseException | None = None


class SharedCommits(Generic[T]):
    """Leader / follower without a thread of its own: callers queue items; the first that
    finds no commit running takes every queued item (at most ``max_batch``) and commits
    them in :meth:`_commit`; the others wait for the commit that holds theirs. Used for the
    instances' rows (:class:`GroupCommitter`) and the audit rows
    (:class:`gateway.access.audit.AuditCommitter`). Items have a ``done`` flag, which only
    this class sets."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[T] = []
        self._leading = False
        self._gathering = False

    def _enqueue(self, item: T) -> None:
        with self._cond:
            self._queue.append(item)
            if self._gathering:
                self._cond.notify_all()

    def _wait_committed(self, item: T) -> None:
        """Return once the commit holding ``item`` has ended (leading one if need be)."""
        while True:
            with self._cond:
                while not item.done and self._leading:
                    self._cond.wait()
                if item.done:
                    return
                self._leading = True
                self._gather()
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._leading = False
                    for it in batch:
                        it.done = True
                    self._cond.notify_all()

    def _gather(self) -> None:
        """Called by a new leader, the lock held, before it takes the queue: a subclass may
        wait (``self._cond.wait``) for more items to join the group."""

    def _commit(self, batch: list[T]) -> None:
        raise NotImplementedError


class GroupCommitter(SharedCommits[_Pending]):
    """Shares one flush and one index commit between concurrent :meth:`record` calls."""

    def __init__(
        self,
        index: InstanceIndex,
        flush: Callable[[list[Path]], None],
        max_batch: int = 64,
        *,
        flush_index: bool = True,
        mark: RecoveryMark | None = None,
    ) -> None:
        """``flush(paths)`` makes the group's files durable; ``flush_index=False`` commits the
        rows without a flush of their own, relying on ``mark`` (required then)."""
        if not flush_index and mark is None:
            raise ValueError("an index committed without a flush needs a recovery mark")
        super().__init__(max_batch)
        self.index = index
        self._flush = flush
        self.flush_index = flush_index
        self.mark = mark
        self.batches = 0
        """Commits made (for tests and metrics)."""
        self.in_flight: Callable[[], int] | None = None
        """How many ingests of this process are under way and have not queued their row yet
        (set by the Ingestor): a leader that knows others will queue a row in a moment waits
        up to ``gather_delay`` for them,
        so that two associations of one DICOM worker share a flush instead of taking one
        each (each ``syncfs`` also writes what the other worker wrote)."""
        self.gather_delay = 0.002

    def record(
        self, header: InstanceHeader, stored: StoredFile, path: Path | None = None,
        written_at: float | None = None,
    ) -> StoredInstance | None:
        """Make the file at ``path`` (written from ``written_at`` on, without a flush) and the
        index row durable; same result and exceptions as :meth:`InstanceIndex.record`."""
        item = _Pending(header, stored, path,
                        time.time() if written_at is None else written_at)
        self._enqueue(item)
        self._wait_committed(item)
        if item.error is not None:
            raise item.error
        return item.result

    def _gather(self) -> None:
        if self.in_flight is None:
            return
        deadline = time.monotonic() + self.gather_delay
        self._gathering = True
        try:
            while self.in_flight() > 0 and len(self._queue) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.00025))  # woken by a row queued, or looks again
        finally:
            self._gathering = False

    def _commit(self, batch: list[_Pending]) -> None:
        self.batches += 1
        try:
            if self.mark is not None and not self.mark.opened:
                self.mark.open(min(it.written_at for it in batch))
            self._flush([it.path for it in batch if it.path is not None])
            if self.mark is not None:
                # every commit before this flush is on disk now; this group's is not yet
                self.mark.advance(min(it.written_at for it in batch))
        except BaseException as exc:  # nothing is committed: every row fails the same way
            for it in batch:
                it.error = exc
            return
        try:
            results = self.index.record_many([(it.header, it.stored) for it in batch],
                                              flush=self.flush_index)
        except BaseException as exc:
            results = [exc] * len(batch)
        for it, res in zip(batch, results, strict=True):
            if isinstance(res, BaseException):
                it.error = res
            else:
                it.result = res
