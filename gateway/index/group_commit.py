"""Group commit: index rows of instances received at the same time share one transaction.

Every kept instance costs durable writes before its acknowledgement: its file (fsync), its
directory entry (fsync of the directory) and its index row (a commit, i.e. a WAL fsync on
SQLite with ``synchronous=FULL``). With several associations sending at once, the directory
fsyncs and the commits of instances that arrive together can be shared.

:class:`GroupCommitter` does it without a thread of its own (leader / follower): a caller of
:meth:`GroupCommitter.record` queues its row; if no commit is running it becomes the leader,
takes every queued row, fsyncs each distinct directory once, writes the rows in one
transaction (:meth:`InstanceIndex.record_many`) and wakes the callers whose rows it
committed. Rows queued meanwhile wait for the next leader. Nobody returns before the commit
that holds its row, so "acknowledged means on disk and in the index" is unchanged; with one
association the caller is always its own leader and nothing waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.index.store import InstanceIndex, StoredFile, StoredInstance
from gateway.ingest.header import InstanceHeader


@dataclass(eq=False)
class _Pending:
    header: InstanceHeader
    stored: StoredFile
    directory: Path | None
    done: bool = False
    result: StoredInstance | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Shares directory fsyncs and index commits between concurrent :meth:`record` calls."""

    def __init__(
        self,
        index: InstanceIndex,
        sync_dirs: Callable[[Iterable[Path]], None],
        max_batch: int = 64,
    ) -> None:
        self.index = index
        self._sync_dirs = sync_dirs
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._leading = False
        self.batches = 0
        """Commits made (for tests and metrics)."""

    def record(
        self, header: InstanceHeader, stored: StoredFile, directory: Path | None = None
    ) -> StoredInstance | None:
        """Make ``directory`` (the file's parent, if its entry is not yet synced) and the
        index row durable; same result and exceptions as :meth:`InstanceIndex.record`."""
        item = _Pending(header, stored, directory)
        with self._cond:
            self._queue.append(item)
        while True:
            with self._cond:
                while not item.done and self._leading:
                    self._cond.wait()
                if item.done:
                    return self._outcome(item)
                self._leading = True
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

    @staticmethod
    def _outcome(item: _Pending) -> StoredInstance | None:
        if item.error is not None:
            raise item.error
        return item.result

    def _commit(self, batch: list[_Pending]) -> None:
        self.batches += 1
        try:
            self._sync_dirs({it.directory for it in batch if it.directory is not None})
        except BaseException as exc:  # nothing is committed: every row fails the same way
            for it in batch:
                it.error = exc
            return
        try:
            results = self.index.record_many([(it.header, it.stored) for it in batch])
        except BaseException as exc:
            results = [exc] * len(batch)
        for it, res in zip(batch, results, strict=True):
            if isinstance(res, BaseException):
                it.error = res
            else:
                it.result = res
