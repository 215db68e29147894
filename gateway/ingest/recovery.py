"""One flush per group commit, and the recovery that makes it safe.

The rule (R-numbers in docs/requirements.md; brief: "an acknowledged instance is on disk and in
the index before the success status leaves") used to cost three flushes per instance: the
file's ``fsync``, its directory's, and the index commit's (SQLite ``synchronous=FULL``). Now a
group of instances received together costs one (:class:`~gateway.index.group_commit.GroupCommitter`):

1. each file is written and renamed into ``storage/`` without a flush;
2. the group's leader calls :meth:`FileStore.flush` (``syncfs``): every file of the group, its
   directory entry, and every index commit made *before* it are now on disk;
3. the group's rows are committed without a flush of their own (SQLite ``synchronous=NORMAL``
   on that transaction, only when the index file lies on the data directory's file system);
4. the statuses leave.

After step 4 a group's files are durable, their rows not necessarily: they become durable with
the next group's flush (or the next ``FULL`` commit of anything else). A power cut in between
can lose those rows, never the files. The files are self-describing (Part 10, the content hash
in their name), so the rows are rebuilt from them: each writing process keeps a *mark* file
``data/marks/<pid>-<hex>.mark`` holding a time ``T`` such that every file written before ``T``
has a durable row. The leader moves ``T`` forward after each flush (one ``pwrite``, no flush:
an older ``T`` on disk only means more to check). A clean stop flushes and removes the mark. A
mark left by a dead process means an unclean stop: :func:`recover` (run by ``serve`` and
every command that opens the data directory first) looks at the files written since the
oldest such ``T`` and indexes each whole one that no row names; one that is not whole (cut by
the power cut, so never acknowledged) is removed.

With PostgreSQL (a server with its own log), or a SQLite file on another file system, the
rows are committed with a flush as before, after the files' one ``syncfs``, and no mark is
needed. ``ingest_flush = files`` (or a system without ``syncfs``) flushes file by file as
before (``fsync`` of each file and directory, then a ``FULL`` commit).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gateway.index.store import InstanceIndex, StoredFile
from gateway.ingest.completeness import DatasetDefect, check_complete
from gateway.ingest.header import HeaderError, read_header
from gateway.ingest.part10 import Part10Error, split_part10
from gateway.ingest.processes import alive
from gateway.ingest.storage import FileStore, fsync_dir, storage_key

log = logging.getLogger(__name__)

MARGIN_SECONDS = 2.0
"""Taken off a mark's time: file times and ``time.time()`` need not agree to the tick."""

_MARK_SIZE = 32


def marks_dir(store: FileStore) -> Path:
    return store.root / "marks"


class RecoveryMark:
    """This process's mark: files written since its time may lack a durable index row."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.mark"
        self._fd: int | None = None

    def open(self, since: float) -> None:
        """Create the mark durably (file and directory entry) before any row relies on it."""
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        os.pwrite(fd, _encode(since), 0)
        os.fsync(fd)
        fsync_dir(self.directory)
        self._fd = fd

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def advance(self, since: float) -> None:
        """Every file written before ``since`` has a durable row (no flush: see module doc)."""
        if self._fd is not None:
            os.pwrite(self._fd, _encode(since), 0)

    def close(self) -> None:
        """Clean stop: the caller has flushed every commit; the mark goes."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        self.path.unlink(missing_ok=True)
        fsync_dir(self.directory)


def _encode(since: float) -> bytes:
    return f"{since:.6f}".encode("ascii").ljust(_MARK_SIZE, b" ")


def _decode(data: bytes) -> float | None:
    try:
        return float(data.decode("ascii").strip() or "nan")
    except (UnicodeDecodeError, ValueError):
        return None


def stale_marks(store: FileStore) -> list[tuple[Path, float]]:
    """Marks of processes that no longer run, with their times (0 when unreadable: everything
    is checked)."""
    directory = marks_dir(store)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob("*.mark"):
        pid_text = path.name.partition("-")[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and alive(int(pid_text)):
            continue
        since = _decode(path.read_bytes()[:_MARK_SIZE])
        found.append((path, since if since is not None and since == since else 0.0))
    return found


@dataclass
class RecoveryReport:
    since: float | None = None
    files_checked: int = 0
    reindexed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    """Files that were not whole (never acknowledged), removed."""


def recover(store: FileStore, index: InstanceIndex) -> RecoveryReport:
    """After an unclean stop: index the whole files written since the oldest stale mark that
    no row names; remove the ones that are not whole. Then remove the stale marks."""
    report = RecoveryReport()
    marks = stale_marks(store)
    if not marks:
        return report
    since = min(t for _, t in marks) - MARGIN_SECONDS
    report.since = since
    started = time.monotonic()
    for directory in _directories_changed_since(store.storage_dir, since):
        recent = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".dcm") and entry.is_file(follow_symlinks=False):
                    if entry.stat(follow_symlinks=False).st_mtime >= since:
                        recent.append(entry.name)
        if not recent:
            continue
        prefix = os.path.relpath(directory, store.storage_dir).replace(os.sep, "/")
        keys = [f"{prefix}/{name}" for name in recent]
        indexed = index.indexed_keys(keys)
        for key in keys:
            report.files_checked += 1
            if key not in indexed:
                _reindex(store, index, key, report)
    for path, _ in marks:
        path.unlink(missing_ok=True)
    fsync_dir(marks_dir(store))
    log.warning(
        "recovery after an unclean stop: %d file(s) written since the last durable index "
        "commit checked, %d re-indexed, %d not whole removed (%.1f s)",
        report.files_checked, len(report.reindexed), len(report.removed),
        time.monotonic() - started)
    return report


def _directories_changed_since(root: Path, since: float):  # noqa: ANN202 - a generator
    """Series directories (``storage/<study>/<series>``) whose entries changed since ``since``:
    a file renamed into a directory sets its modification time. Every series directory is
    looked at (one ``stat`` each); only the changed ones are listed."""
    if not root.is_dir():
        return
    with os.scandir(root) as studies:
        study_dirs = [e.path for e in studies if e.is_dir(follow_symlinks=False)]
    for study in study_dirs:
        with os.scandir(study) as series:
            for entry in series:
                if entry.is_dir(follow_symlinks=False) and (
                    entry.stat(follow_symlinks=False).st_mtime >= since
                ):
                    yield Path(entry.path)


def _reindex(store: FileStore, index: InstanceIndex, key: str, report: RecoveryReport) -> None:
    path = store.path_of(key)
    try:
        data = path.read_bytes()
        part10 = split_part10(data)
        dataset = memoryview(data)[part10.dataset_offset:]
        ts = part10.transfer_syntax_uid
        header = read_header(dataset, ts)
        check_complete(dataset, ts)
        digest = hashlib.sha256(dataset).hexdigest()
        if key != storage_key(header.study_instance_uid, header.series_instance_uid,
                              header.sop_instance_uid, digest):
            raise DatasetDefect("content differs from its UIDs and hash in the file's name")
    except (OSError, Part10Error, HeaderError, DatasetDefect, ValueError) as exc:
        log.warning("recovery: %s is not whole (%s): never acknowledged, removed", key, exc)
        store.delete(key)
        report.removed.append(key)
        return
    source = str(part10.meta.get("SourceApplicationEntityTitle", "") or "").strip() or "recovered"
    stored = StoredFile(ts, digest, len(dataset), key, source)
    previous = index.record(header, stored)
    if previous is not None and previous.storage_key != key:
        store.delete(previous.storage_key)  # the replacement was acknowledged, not its row
    report.reindexed.append(key)
