"""The one path by which an instance enters the gateway (C-STORE, ``drimbox import``, STOW-RS).

:meth:`Ingestor.ingest` takes the encoded dataset exactly as received and either keeps it or
refuses it with an :class:`IngestRejected` naming a :class:`Rejection`. Keeping means, in this
order: header read, dataset found whole (:mod:`gateway.ingest.completeness`: no element cut short,
Pixel Data complete, present in an image, VR form as the transfer syntax says), header
checked, file written under ``storage/`` (staged, then an atomic rename; for a C-STORE the
staged file and its SHA-256 are made on a helper thread while the header is read:
:class:`_EarlyWrite`), then made durable and its index
row committed, one flush and one commit shared with concurrent ingests
(:class:`~gateway.index.group_commit.GroupCommitter`, :mod:`gateway.ingest.recovery`). Only
then does it return, so a caller that acknowledges after :meth:`ingest` returns never
acknowledges an instance that a crash could lose.

Re-sent instances: identical bytes are :attr:`Outcome.ALREADY_PRESENT` (no second copy);
different bytes follow ``duplicate_policy`` (``replace`` swaps file and index row in one
commit, then removes the old file; ``refuse`` raises :attr:`Rejection.DUPLICATE_CONFLICT`).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError, OperationalError

from gateway import __version__
from gateway.index.group_commit import GroupCommitter
from gateway.index.store import InstanceIndex, StoredFile, StoredInstance
from gateway.ingest.arrivals import ARRIVALS
from gateway.ingest.completeness import (
    DatasetDefect,
    PixelDataMissing,
    WrongVREncoding,
    check_complete,
)
from gateway.ingest.header import HeaderError, InstanceHeader, read_header
from gateway.ingest.recovery import RecoveryMark, marks_dir
from gateway.ingest.storage import FileStore, StorageFullError, storage_key, syncfs_available
from gateway.ingest.uids import is_safe_uid

if TYPE_CHECKING:
    from gateway.ingest.iocm import RejectionHandler

log = logging.getLogger(__name__)

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"

#: Our Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.247598373340412357393349934546006375712"
IMPLEMENTATION_VERSION_NAME = f"DRIMBOX_{__version__}"[:16]


class Outcome(enum.Enum):
    STORED = "stored"
    ALREADY_PRESENT = "already present"
    REPLACED = "replaced"
    KEPT_EXISTING = "kept existing"
    """Same SOP Instance UID, other content, policy ``keep``: the stored copy stays."""
    RESTORED = "restored"
    """The file of an evicted instance, back from the PACS, identical to what the index
    recorded (:mod:`gateway.ingest.retention`)."""


class Rejection(enum.Enum):
    """Why an instance was not kept. Each face maps these to its own status codes."""

    UNPARSEABLE = "dataset cannot be parsed"
    INCOMPLETE = "dataset is truncated or corrupt"
    PIXEL_DATA_MISSING = "an image without pixel data"
    VR_ENCODING = "dataset is not encoded in its transfer syntax's VR form"
    MISSING_ATTRIBUTE = "a required attribute is missing"
    INVALID_UID = "a UID is malformed"
    SOP_CLASS_MISMATCH = "SOP Class UID does not match the request"
    SOP_INSTANCE_MISMATCH = "SOP Instance UID does not match the request"
    DUPLICATE_CONFLICT = "an instance with this SOP Instance UID and other content is stored"
    OUT_OF_RESOURCES = "out of resources"
    PROCESSING_FAILURE = "processing failure"


class IngestRejected(Exception):
    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Incoming:
    """An encoded dataset and what its transport says about it."""

    dataset: bytes | memoryview
    transfer_syntax_uid: str
    source: str
    """Calling AE title, ``import``, ``stow``..."""
    expected_sop_class_uid: str | None = None
    """From the C-STORE command (Affected SOP Class UID) or the file meta information."""
    expected_sop_instance_uid: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: Outcome
    header: InstanceHeader
    size: int


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, ts_uid: str, source: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1) for our files.

    Encoded by hand (explicit VR little endian, PS3.5 7.1.2) rather than through pydicom's
    :func:`~pydicom.filewriter.write_file_meta_info`, which costs ~0.5 ms per instance on the
    C-STORE path; ``tests/test_ingest_units.py`` checks the bytes are the same as pydicom's.
    """
    elements = [
        _meta_element(0x0001, b"OB", b"\x00\x01"),  # FileMetaInformationVersion
        _meta_element(0x0002, b"UI", _ui(sop_class_uid)),
        _meta_element(0x0003, b"UI", _ui(sop_instance_uid)),
        _meta_element(0x0010, b"UI", _ui(ts_uid)),
        _IMPLEMENTATION_ELEMENTS,
    ]
    if source and len(source) <= 16 and source.isprintable() and source.isascii():
        elements.append(_meta_element(0x0016, b"AE", _padded(source.encode("ascii"), b" ")))
    group = b"".join(elements)
    length = _meta_element(0x0000, b"UL", struct.pack("<I", len(group)))
    return _PREAMBLE + length + group


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _ui(uid: str) -> bytes:
    return _padded(uid.encode("ascii"), b"\x00")


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group-2 element: 2-byte length for UL/UI/SH/AE, 4-byte for OB (PS3.5 7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


_IMPLEMENTATION_ELEMENTS = _meta_element(
    0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)
) + _meta_element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" "))


def _beside(sqlite_file: str | None, data_dir) -> bool:
    """Whether the SQLite index lies on the data directory's file system (one ``syncfs``
    then flushes both)."""
    if sqlite_file is None:
        return False
    try:
        return os.stat(os.path.dirname(os.path.abspath(sqlite_file))).st_dev == os.stat(
            data_dir).st_dev
    except OSError:
        return False


def _check_header(h: InstanceHeader, incoming: Incoming) -> None:
    for keyword, value in (
        ("SOPClassUID", h.sop_class_uid),
        ("SOPInstanceUID", h.sop_instance_uid),
        ("StudyInstanceUID", h.study_instance_uid),
        ("SeriesInstanceUID", h.series_instance_uid),
    ):
        if not value:
            raise IngestRejected(Rejection.MISSING_ATTRIBUTE, f"{keyword} is missing or empty")
        if not is_safe_uid(value):
            raise IngestRejected(Rejection.INVALID_UID, f"{keyword} {value[:80]!r} is not a UID")
    if incoming.expected_sop_class_uid and h.sop_class_uid != incoming.expected_sop_class_uid:
        raise IngestRejected(
            Rejection.SOP_CLASS_MISMATCH,
            f"dataset SOPClassUID {h.sop_class_uid} differs from {incoming.expected_sop_class_uid}",
        )
    if (
        incoming.expected_sop_instance_uid
        and h.sop_instance_uid != incoming.expected_sop_instance_uid
    ):
        raise IngestRejected(
            Rejection.SOP_INSTANCE_MISMATCH,
            f"dataset SOPInstanceUID {h.sop_instance_uid} differs from "
            f"{incoming.expected_sop_instance_uid[:64]}",
        )


def _check_complete(incoming: Incoming) -> None:
    """Refuse a dataset that is not whole (:mod:`gateway.ingest.completeness`): before the store or
    the index is looked at, so a cut copy never replaces a good one."""
    try:
        check_complete(incoming.dataset, incoming.transfer_syntax_uid)
    except PixelDataMissing as exc:
        raise IngestRejected(Rejection.PIXEL_DATA_MISSING, str(exc)) from None
    except WrongVREncoding as exc:
        raise IngestRejected(Rejection.VR_ENCODING, str(exc)) from None
    except DatasetDefect as exc:
        raise IngestRejected(Rejection.INCOMPLETE, str(exc)) from None


class _EarlyWrite:
    """The file of a C-STORE written and hashed on a helper thread while the association's
    thread reads and checks the header (R4: the acknowledgement still waits for the flush
    and the index commit). Both halves cost about as much CPU (writing 0.5 MB into the page
    cache and SHA-256 release the interpreter; the header walk holds it), so with one
    association on two cores an instance's wall time drops by the shorter of the two
    (bench/RESULTS.md "Ingest at Orthanc's rate"). Possible only when the request names
    the SOP Class and Instance UIDs, from which the Part 10 header is made before the
    dataset is read; a dataset found to disagree is refused and its file removed."""

    def __init__(self, pool: ThreadPoolExecutor, store: FileStore, meta: bytes,
                 dataset: bytes | memoryview) -> None:
        self._store = store
        self._placed = False
        self._future: Future[tuple[Path, str]] = pool.submit(self._write, meta, dataset)

    def _write(self, meta: bytes, dataset: bytes | memoryview) -> tuple[Path, str]:
        digest = hashlib.sha256()
        tmp, _size = self._store.stage((meta, dataset), digest=digest, start_writeback=True)
        return tmp, digest.hexdigest()

    def result(self) -> tuple[Path, str] | None:
        """The staged file and the dataset's SHA-256, or ``None`` if writing it failed (the
        caller then goes the sequential way, which says why)."""
        try:
            return self._future.result()
        except Exception:  # noqa: BLE001 - retried (and reported) by the sequential path
            return None

    def place(self, key: str) -> None:
        staged = self._future.result()
        self._store.place(staged[0], key)
        self._placed = True

    def release(self) -> None:
        """Wait for the helper (it reads the caller's buffer) and remove an unplaced file."""
        staged = self.result()
        if staged is not None and not self._placed:
            self._store.discard(staged[0])


class _OnTheWay:
    """One ingest counted among those under way whose row is not queued yet (the group
    commit's leader waits a moment for them: :attr:`GroupCommitter.in_flight`), until
    :meth:`end`, which only the first call does."""

    __slots__ = ("_ingestor",)

    def __init__(self, ingestor: Ingestor) -> None:
        ingestor._count_in_flight(+1)
        self._ingestor: Ingestor | None = ingestor

    def end(self) -> None:
        if self._ingestor is not None:
            self._ingestor._count_in_flight(-1)
            self._ingestor = None


class Ingestor:
    """Keeps instances: header and completeness checks, durable file, index commit, in that
    order."""

    def __init__(
        self,
        store: FileStore,
        index: InstanceIndex,
        duplicate_policy: str = "replace",
        commit_batch_max: int = 64,
        flush_mode: str = "filesystem",
    ) -> None:
        if duplicate_policy not in ("replace", "refuse", "keep"):
            raise ValueError(f"unknown duplicate policy {duplicate_policy!r}")
        if flush_mode not in ("filesystem", "files"):
            raise ValueError(f"unknown flush mode {flush_mode!r}")
        self.store = store
        self.index = index
        self.duplicate_policy = duplicate_policy
        # One flush and one index commit per group of concurrent ingests (group commit);
        # each ingest still returns only after the flush and commit that hold its row.
        if flush_mode == "filesystem" and syncfs_available():
            flush_index = not _beside(index.sqlite_file, store.root)
            self.committer = GroupCommitter(
                index, lambda _paths: store.flush(), max_batch=commit_batch_max,
                flush_index=flush_index,
                mark=None if flush_index else RecoveryMark(marks_dir(store)))
        else:
            self.committer = GroupCommitter(index, store.sync_files, max_batch=commit_batch_max)
        self.rejections: RejectionHandler | None = None
        """IOCM rejection notes (:mod:`gateway.ingest.iocm`): set by the runtime."""
        self._writers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ingest-write")
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self.committer.in_flight = lambda: self._in_flight + ARRIVALS.count()

    def close(self) -> None:
        """Clean stop: flush what the last commits left unflushed, then drop the recovery mark
        (none left means nothing to recover at the next start)."""
        self._writers.shutdown(wait=True)
        mark = self.committer.mark
        if mark is not None and mark.opened:
            self.store.flush()
            mark.close()

    def _rejection_note(self, header: InstanceHeader, incoming: Incoming) -> bool:
        """Apply an IOCM rejection note (kept aside, not indexed); False for another KOS."""
        from gateway.ingest.iocm import read_rejection_note

        try:
            note = read_rejection_note(incoming.dataset, incoming.transfer_syntax_uid)
        except Exception as exc:  # noqa: BLE001 - a KOS we cannot read is refused below
            raise IngestRejected(Rejection.UNPARSEABLE, f"key object selection: {exc}") from None
        if note is None:
            return False
        meta = file_meta_bytes(header.sop_class_uid, header.sop_instance_uid,
                               incoming.transfer_syntax_uid, incoming.source)
        try:
            assert self.rejections is not None
            self.rejections.handle(note, incoming.dataset, meta)
        except OSError as exc:
            raise IngestRejected(Rejection.OUT_OF_RESOURCES, f"rejection note: {exc}") from None
        except ValueError as exc:  # gateway.ingest.iocm.NoteRefused: nothing was changed
            log.warning("IOCM rejection note %s refused: %s", header.sop_instance_uid, exc)
            raise IngestRejected(Rejection.PROCESSING_FAILURE, str(exc)) from None
        except Exception as exc:
            log.exception("IOCM rejection note %s could not be applied", header.sop_instance_uid)
            raise IngestRejected(Rejection.PROCESSING_FAILURE,
                                 f"rejection note could not be applied: {exc}") from None
        return True

    def ingest(self, incoming: Incoming) -> IngestResult:
        # Before any byte of the file is written: the recovery mark moves up to this time
        # once the row is durable, and recovery looks at files modified since a mark
        # (gateway.ingest.recovery), so the file's own time must not come before it.
        written_at = time.time()
        on_the_way = _OnTheWay(self)
        early = self._write_early(incoming)
        try:
            return self._ingest(incoming, early, written_at, on_the_way)
        finally:
            on_the_way.end()  # if still counted: refused or already present, no row will come
            if early is not None:
                early.release()

    def _count_in_flight(self, change: int) -> None:
        with self._in_flight_lock:
            self._in_flight += change

    def _write_early(self, incoming: Incoming) -> _EarlyWrite | None:
        sop_class, sop_instance = (incoming.expected_sop_class_uid,
                                   incoming.expected_sop_instance_uid)
        if not (sop_class and sop_instance and is_safe_uid(sop_class)
                and is_safe_uid(sop_instance)):
            return None
        meta = file_meta_bytes(sop_class, sop_instance, incoming.transfer_syntax_uid,
                               incoming.source)
        try:
            return _EarlyWrite(self._writers, self.store, meta, incoming.dataset)
        except RuntimeError:  # the pool is shut down (the gateway is stopping)
            return None

    def _ingest(self, incoming: Incoming, early: _EarlyWrite | None,
                written_at: float, on_the_way: _OnTheWay) -> IngestResult:
        try:
            header = read_header(incoming.dataset, incoming.transfer_syntax_uid)
        except HeaderError as exc:
            raise IngestRejected(Rejection.UNPARSEABLE, str(exc)) from None
        _check_complete(incoming)
        _check_header(header, incoming)

        size = len(incoming.dataset)
        if header.sop_class_uid == KOS_SOP_CLASS and self.rejections is not None:
            if self._rejection_note(header, incoming):
                return IngestResult(Outcome.STORED, header, size)
        existing = self.index.find_instance(header.sop_instance_uid)
        staged = early.result() if early is not None else None
        if staged is None:
            early = None
            digest = hashlib.sha256(incoming.dataset).hexdigest()
        else:
            digest = staged[1]
        if existing is not None and existing.evicted:
            return self._restore(header, incoming, existing, digest, size)
        if existing is not None and existing.sha256 == digest and self.store.exists(
            existing.storage_key
        ):
            return IngestResult(Outcome.ALREADY_PRESENT, header, size)
        if existing is not None and existing.sha256 != digest and self.duplicate_policy == "keep":
            return IngestResult(Outcome.KEPT_EXISTING, header, size)
        if (
            existing is not None
            and existing.sha256 != digest
            and self.duplicate_policy == "refuse"
        ):
            raise IngestRejected(
                Rejection.DUPLICATE_CONFLICT,
                f"SOPInstanceUID {header.sop_instance_uid} is stored with other content",
            )

        key = storage_key(
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
            digest,
        )
        meta = file_meta_bytes(
            header.sop_class_uid,
            header.sop_instance_uid,
            incoming.transfer_syntax_uid,
            incoming.source,
        )
        try:
            if early is not None:
                early.place(key)
            else:
                self.store.put(key, (meta, incoming.dataset), sync=False)
        except StorageFullError as exc:
            raise IngestRejected(Rejection.OUT_OF_RESOURCES, str(exc)) from None
        except OSError as exc:
            raise IngestRejected(Rejection.PROCESSING_FAILURE, f"storage: {exc}") from None

        stored = StoredFile(incoming.transfer_syntax_uid, digest, size, key, incoming.source)
        on_the_way.end()  # its row is queued next: the leader need not wait for it any more
        previous = self._record(header, stored, key, written_at)
        if previous is not None and previous.storage_key != key:
            self.store.delete(previous.storage_key)
            return IngestResult(Outcome.REPLACED, header, size)
        if previous is not None:
            return IngestResult(Outcome.ALREADY_PRESENT, header, size)
        return IngestResult(Outcome.STORED, header, size)

    def _restore(self, header: InstanceHeader, incoming: Incoming, existing: StoredInstance,
                 digest: str, size: int) -> IngestResult:
        """An evicted instance comes back (the PACS answering our C-MOVE, or any sender): kept
        only if it is the very dataset the index recorded (SHA-256, size, transfer syntax,
        place in the study), written under its recorded key with the Part 10 header of the
        original copy (its Source AE Title), so the file is byte for byte the one evicted.
        Another object under that SOP Instance UID is refused whatever ``duplicate_policy``:
        the index, the cached metadata and the published manifest describe the recorded one."""
        from datetime import UTC, datetime

        from gateway.index.retention import mark_restored

        same = (existing.sha256, existing.size, existing.transfer_syntax_uid,
                existing.study_instance_uid, existing.series_instance_uid) == (
            digest, size, incoming.transfer_syntax_uid, header.study_instance_uid,
            header.series_instance_uid)
        if not same:
            log.warning("evicted instance %s received from %s with other content than the "
                        "index recorded: refused", header.sop_instance_uid, incoming.source)
            raise IngestRejected(
                Rejection.DUPLICATE_CONFLICT,
                f"SOPInstanceUID {header.sop_instance_uid} is evicted and this copy differs from "
                "the one the index recorded (SHA-256, size or transfer syntax)")
        meta = file_meta_bytes(header.sop_class_uid, header.sop_instance_uid,
                               incoming.transfer_syntax_uid, existing.source)
        try:
            self.store.put(existing.storage_key, (meta, incoming.dataset))
        except StorageFullError as exc:
            raise IngestRejected(Rejection.OUT_OF_RESOURCES, str(exc)) from None
        except OSError as exc:
            raise IngestRejected(Rejection.PROCESSING_FAILURE, f"storage: {exc}") from None
        try:
            mark_restored(self.index, header.sop_instance_uid, existing.storage_key,
                          datetime.now(UTC))
        except Exception as exc:
            log.exception("index write failed (restoring %s)", header.sop_instance_uid)
            raise IngestRejected(Rejection.PROCESSING_FAILURE,
                                 f"index: {type(exc).__name__}") from None
        log.info("evicted instance %s restored (from %s)", header.sop_instance_uid,
                 incoming.source)
        return IngestResult(Outcome.RESTORED, header, size)

    def _record(
        self,
        header: InstanceHeader,
        stored: StoredFile,
        key: str,
        written_at: float,
    ) -> StoredInstance | None:
        attempts = 3
        for attempt in range(attempts):
            try:
                # flushes the file, then commits the row (both shared with others)
                return self.committer.record(header, stored, self.store.path_of(key),
                                             written_at)
            except IntegrityError:
                # Another association created the same row first: read it again.
                if attempt == attempts - 1:
                    self._forget(key, header.sop_instance_uid)
                    raise IngestRejected(
                        Rejection.PROCESSING_FAILURE, "index conflict persisted"
                    ) from None
            except OperationalError as exc:
                self._forget(key, header.sop_instance_uid)
                full = "full" in str(exc).lower()
                raise IngestRejected(
                    Rejection.OUT_OF_RESOURCES if full else Rejection.PROCESSING_FAILURE,
                    f"index: {type(exc.orig).__name__}",
                ) from None
            except Exception as exc:
                self._forget(key, header.sop_instance_uid)
                log.exception("index write failed")
                raise IngestRejected(
                    Rejection.PROCESSING_FAILURE, f"index: {type(exc).__name__}"
                ) from None
        raise AssertionError("unreachable")

    def _forget(self, key: str, sop_instance_uid: str) -> None:
        """Remove a file written for an index commit that failed, unless the index uses it
        (the same bytes may have been indexed by a concurrent association)."""
        try:
            current = self.index.find_instance(sop_instance_uid)
        except Exception:
            log.warning("index unreachable; keeping unindexed file %s", key)
            return
        if current is not None and current.storage_key == key:
            return
        try:
            self.store.delete(key)
        except OSError:
            log.warning("could not remove unindexed file %s", key)
