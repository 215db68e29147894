"""Durable instance storage on the local file system.

Layout under ``<data_dir>``::

    staging/<pid>-<random>.tmp    files being written (never indexed; a dead writer's are
                                  removed at start-up)
    storage/<study>/<series>/<sop>.<hash12>.dcm

A file is written to ``staging/``, flushed and fsync'ed, renamed atomically into
``storage/`` and the directory entry fsync'ed: after :meth:`FileStore.put` returns, the file
survives a crash or power loss. The ingest path writes without those flushes
(``put(..., sync=False)``) and makes a whole group of files durable at once with
:meth:`FileStore.flush` (one ``syncfs``: see :mod:`gateway.ingest.recovery`). The storage key embeds the first 12 hex digits of the
content hash, so a replacement never overwrites the file it replaces (the index switches to the
new key in one transaction, then the old file is removed).

Paths are built only from UIDs that pass :func:`gateway.ingest.uids.is_safe_uid` and from our own
hex digests; anything else raises :class:`ValueError` before touching the disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.ingest.processes import alive
from gateway.ingest.uids import is_safe_uid


def _linux_call(name: str, *argtypes: type):  # a ctypes function or None
    """A libc system call wrapper on Linux (``None`` elsewhere or when libc lacks it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


#: ``syncfs(2)``: flush every dirty page and inode of one file system in one go.
_syncfs = _linux_call("syncfs", ctypes.c_int)
#: ``sync_file_range(2)``: start writing a file's pages back without waiting.
_sync_file_range = _linux_call("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                               ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2


_MAX_REMEMBERED_DIRS = 20_000
"""Series directories remembered as existing (a bound: a gateway receives a few at a time)."""


def syncfs_available() -> bool:
    return _syncfs is not None


class StorageFullError(OSError):
    """The file system has no room (ENOSPC / EDQUOT)."""


def _raise_if_full(exc: OSError) -> None:
    """Raise :class:`StorageFullError` in place of a "no space" or "quota" ``OSError``."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, StorageFullError):
        raise StorageFullError(exc.errno, "no space left for the instance") from exc


def storage_key(study_uid: str, series_uid: str, sop_uid: str, sha256_hex: str) -> str:
    """The relative path of an instance's file, from validated UIDs and its content hash."""
    for name, uid in (("study", study_uid), ("series", series_uid), ("instance", sop_uid)):
        if not is_safe_uid(uid):
            raise ValueError(f"{name} UID {uid!r} is not a valid UID")
    if len(sha256_hex) != 64 or any(c not in "0123456789abcdef" for c in sha256_hex):
        raise ValueError("content hash must be a lower-case SHA-256 hex digest")
    return f"{study_uid}/{series_uid}/{sop_uid}.{sha256_hex[:12]}.dcm"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _writer_alive(staging_name: str) -> bool:
    """Whether the process that named this staging file still runs (``<pid>-<hex>.tmp``)."""
    pid_text, sep, _ = staging_name.partition("-")
    if not sep or not pid_text.isdigit():
        return False  # an older layout's file: its writer is long gone
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # left by an earlier process that had our pid; we have none in flight yet
    return alive(pid)


class FileStore:
    """Files of instances under one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir).resolve()
        self.storage_dir = self.root / "storage"
        self.staging_dir = self.root / "staging"
        self._storage_prefix = str(self.storage_dir) + os.sep
        self._dir_lock = threading.Lock()
        self._known_dirs: set[Path] = set()
        """Directories whose entries are durable (created and fsync'ed by :meth:`put`)."""
        self._seen_dirs: set[Path] = set()
        """Directories created without a flush (``put(..., sync=False)``)."""

    def prepare(self, clear_staging: bool = True) -> None:
        """Create the layout and remove what a crashed writer left in staging (never indexed).

        Staging files carry their writer's process id: only those of processes that no longer
        run are removed, so a ``serve`` starting while ``drimbox import`` (or another worker)
        writes never deletes a file in flight. ``clear_staging=False`` skips the sweep.
        """
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        if not clear_staging:
            return
        for leftover in self.staging_dir.iterdir():
            if leftover.is_file() and not _writer_alive(leftover.name):
                leftover.unlink(missing_ok=True)

    def path_of(self, key: str) -> Path:
        """The absolute path of a storage key; refuses keys that would leave the store.

        A lexical check (no ``resolve()``: its ``lstat`` per path component cost ~0.1 ms per
        instance on the C-STORE path): keys are built by :func:`storage_key` from validated
        UIDs, and nothing but the gateway creates entries under ``storage/``.
        """
        path = os.path.normpath(os.path.join(self._storage_prefix, key))
        if not path.startswith(self._storage_prefix) or path == self._storage_prefix:
            raise ValueError(f"storage key {key!r} escapes the store")
        return Path(path)

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def put(
        self, key: str, chunks: Iterable[bytes | memoryview], *, sync_dir: bool = True,
        sync: bool = True,
    ) -> int:
        """Write ``chunks`` durably at ``key``; return the number of bytes written.

        With ``sync_dir=False`` the file's content is durable but its directory entry is not
        yet: the caller must pass the parent directory to :meth:`sync_dirs` before relying on
        it. With ``sync=False`` nothing is flushed (neither the file nor its directory): the
        caller makes it durable later, with :meth:`flush` or :meth:`sync_files`, before
        relying on it (the ingest path does this once for a whole group commit).
        Raises :class:`StorageFullError` when the disk is full; nothing is left behind then.
        """
        final = self.path_of(key)
        tmp, size = self.stage(chunks, sync=sync)
        try:
            if sync:
                self._ensure_dir(final.parent)
                os.replace(tmp, final)
                if sync_dir:
                    fsync_dir(final.parent)
            else:
                self.place(tmp, key)
        except OSError as exc:
            self.discard(tmp)
            _raise_if_full(exc)
            raise
        return size

    def stage(self, chunks: Iterable[bytes | memoryview], *, sync: bool = False,
              digest: Any = None, start_writeback: bool = False) -> tuple[Path, int]:
        """Write ``chunks`` to a new file under ``staging/`` (named after this process, so a
        start after a crash removes it); return its path and size. ``digest`` (a ``hashlib``
        object) is fed every chunk but the first (the Part 10 header) as it is written.
        ``start_writeback``: the kernel starts writing the pages to disk at once, without
        waiting (``sync_file_range``), so that the flush that follows (the group commit's
        ``syncfs``) finds less to write: not a flush, nothing is promised by it.
        Raises :class:`StorageFullError` when the disk is full; nothing is left behind then."""
        tmp = self.staging_dir / f"{os.getpid()}-{uuid.uuid4().hex}.tmp"
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for number, chunk in enumerate(chunks):
                    view = memoryview(chunk)
                    if digest is not None and number:
                        digest.update(view)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                        size += n
                if sync:
                    os.fsync(fd)
                elif start_writeback and _sync_file_range is not None:
                    _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a hint: errors ignored
            finally:
                os.close(fd)
        except OSError as exc:
            self.discard(tmp)
            _raise_if_full(exc)
            raise
        return tmp, size

    def place(self, tmp: Path, key: str) -> None:
        """Move a staged file to ``key`` (its directory created as needed), without flushing:
        the caller makes it durable with :meth:`flush` or :meth:`sync_files` before relying
        on it."""
        final = self.path_of(key)
        try:
            if final.parent not in self._known_dirs and final.parent not in self._seen_dirs:
                # created now, made durable by the caller's flush (so not in _known_dirs)
                os.makedirs(final.parent, exist_ok=True)
                if len(self._seen_dirs) > _MAX_REMEMBERED_DIRS:
                    self._seen_dirs.clear()
                self._seen_dirs.add(final.parent)
            os.replace(tmp, final)
        except OSError as exc:
            _raise_if_full(exc)
            raise

    @staticmethod
    def discard(tmp: Path) -> None:
        """Remove a staged file that will not be placed (best effort)."""
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass

    def flush(self) -> None:
        """Make everything written under the data directory durable: one ``syncfs`` of its
        file system (files, renames, new directories, and an index kept beside them).
        Raises :class:`OSError` when the flush fails (nothing may be acknowledged then)."""
        if _syncfs is None:
            raise OSError(errno.ENOSYS, "syncfs is not available on this system")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs: {os.strerror(err)}")
        finally:
            os.close(fd)

    def sync_files(self, paths: Iterable[Path]) -> None:
        """fsync each file, then each distinct parent directory once (per-file flushes: the
        ``files`` flush mode, and systems without ``syncfs``)."""
        paths = list(paths)
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.sync_dirs({p.parent for p in paths})

    def sync_dirs(self, directories: Iterable[Path]) -> None:
        """fsync each directory once: makes the entries renamed into them durable."""
        for d in set(directories):
            fsync_dir(d)

    def delete(self, key: str) -> None:
        """Remove a stored file (missing is fine)."""
        path = self.path_of(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    def open(self, key: str):
        return open(self.path_of(key), "rb")

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        with self._dir_lock:
            missing = []
            d = directory
            while not d.exists():
                missing.append(d)
                d = d.parent
            for d in reversed(missing):
                try:
                    d.mkdir()
                except FileExistsError:
                    pass
                fsync_dir(d.parent)
            self._known_dirs.add(directory)
