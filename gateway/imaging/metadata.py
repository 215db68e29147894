"""Instance metadata in the DICOM JSON model (PS3.18 F.2), precomputed per series.

What is served: each instance's full dataset as pydicom's ``to_json_dict`` encodes it, except
that every non-empty value of a binary VR (OB, OD, OF, OL, OV, OW, UN; Pixel Data among them)
becomes a ``BulkDataURI``::

    <public URL>/dicom-web/studies/<st>/series/<se>/instances/<sop>/bulkdata/<tag>
    .../instances/<sop>/bulkdata/<sequence tag>/<item index>/<tag>      (inside sequences)

tags as 8 upper-case hex digits, item indexes from 0, nested as deep as the sequences go. The
File Meta Information (group 0002) is not part of the dataset and is not served.

Caching. A series' metadata (a JSON array of its instances, ordered by Instance Number) is
computed once, gzip-compressed and written atomically to
``<data_dir>/metadata/<study>/<series>_<digest>.json.gz``. The digest covers the series'
*version* from the index (:class:`gateway.index.lookup.SeriesVersion`: count, highest row id,
latest arrival, total size), the public URL (the URIs embed it) and :data:`FORMAT_VERSION`, so
a request checks freshness with one grouped SQL query and a ``stat``: an added, replaced or
removed instance changes the version, the next request (or the warmer) recomputes, and older
files of the series are removed. A study's metadata is the concatenation of its series'
arrays, kept the same way as ``study_<digest>.json.gz`` (digest of its series' digests). The
digests are the HTTP entity tags. Files are only ever named from index UIDs (validated at
ingest) and hex digests.

:class:`MetadataWarmer`, fed by the ingest path, computes each arriving instance's JSON at
once (kept in memory by storage key, within :data:`FRAGMENT_BUDGET`) and rebuilds a series'
file once no instance of it arrived for ``quiet`` seconds (the series is "stable"): the
first viewer request finds the files ready, or at worst a build that only concatenates. A
request never depends on the warmer; it computes whatever is missing itself.

Empty values of a multi-valued string (``ORIGINAL\\\\AXIAL``, ``1\\\\2`` in a DS) are ``null``
(PS3.18 F.2: an empty value in a multi-valued attribute is encoded as null), keeping the
other values at their positions; pydicom would write ``""`` for text, and fail on an empty
IS, DS or PN value (the attribute would be left out).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import logging
import mmap
import os
import struct
import threading
import time
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from gateway.index.lookup import (
    InstanceRef,
    SeriesVersion,
    find_instance,
    series_instances,
    series_versions,
)
from gateway.index.store import InstanceIndex
from gateway.ingest.storage import FileStore
from gateway.ingest.uids import is_safe_uid

log = logging.getLogger(__name__)

#: Bumped whenever the JSON we produce changes, so that older cache files are not served.
FORMAT_VERSION = "2"

#: Binary VRs whose values are always sent as BulkDataURIs (never InlineBinary).
BULK_THRESHOLD = 0

#: Memory kept for per-instance JSON computed ahead of series builds.
FRAGMENT_BUDGET = 128 * 1024 * 1024

_SUFFIX = ".json.gz"


def _url_join(base: str, *segments: str) -> str:
    return "/".join((base, *segments))


def dataset_json(ds: Dataset, instance_url: str) -> dict[str, Any]:
    """The DICOM JSON object of ``ds``, binary values as BulkDataURIs under ``instance_url``."""
    return _elements_json(ds, f"{instance_url}/bulkdata")


def _elements_json(ds: Dataset, bulk_base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):  # iterating a Dataset itself yields elements, not tags
        key = f"{tag:08X}"
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                out[key] = {
                    "vr": "SQ",
                    "Value": [
                        _elements_json(item, _url_join(bulk_base, key, str(i)))
                        for i, item in enumerate(elem.value)
                    ],
                }
            elif elem.VR in _STRING_VRS and elem.VM > 1:
                out[key] = _multi_valued_json(elem)
            else:
                uri = _url_join(bulk_base, key)
                out[key] = elem.to_json_dict(lambda _e, uri=uri: uri, BULK_THRESHOLD)
        except Exception as exc:  # noqa: BLE001 - one bad element must not hide the rest
            log.warning("metadata: element %s not encodable (%s); left out", key, exc)
    return out


_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM",
                         "UC", "UI"})
"""String VRs that may hold several values (LT, ST, UT, UR hold one: a backslash is text)."""
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _json_value(vr: str, value: Any) -> Any:
    """One value of a multi-valued string in DICOM JSON; ``None`` (null) when empty."""
    text = str(value).strip() if vr != "PN" else str(value)
    if text == "":
        return None
    if vr in ("IS", "DS"):
        # as pydicom writes single values: IS an integer, DS a float; a bad number raises
        # and the element is left out, as before
        return int(float(text)) if vr == "IS" else float(text)
    if vr == "PN":
        return {name: group for name, group in zip(_PN_GROUPS, text.split("="), strict=False)
                if group} or None
    return value


def _multi_valued_json(elem: Any) -> dict[str, Any]:
    return {"vr": elem.VR, "Value": [_json_value(elem.VR, v) for v in elem.value]}


def read_instance_json(path: Path, instance_url: str) -> dict[str, Any]:
    ds = dcmread(path)
    return dataset_json(ds, instance_url)


@dataclass(frozen=True, slots=True)
class CachedJson:
    """A metadata representation: gzip bytes of a JSON array and its entity tag."""

    etag: str
    gzipped: bytes

    def plain(self) -> bytes:
        return gzip.decompress(self.gzipped)


def restricted(doc: CachedJson, sop_instance_uids: frozenset[str]) -> CachedJson | None:
    """``doc`` cut down to the instances in ``sop_instance_uids`` (R10: a consumer sees the
    metadata of its KOS's instances only), with an entity tag of its own; None when none is
    left."""
    items = [item for item in json.loads(doc.plain())
             if item.get("00080018", {}).get("Value", [None])[0] in sop_instance_uids]
    if not items:
        return None
    body = json.dumps(items, separators=(",", ":")).encode()
    scope = hashlib.sha256("\\".join(sorted(sop_instance_uids)).encode()).hexdigest()
    return CachedJson(_digest(doc.etag, "scope", scope), _gzip(body))


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def _array_body(gzipped: bytes) -> bytes:
    """The elements of a cached JSON array, without its brackets ('' for an empty array)."""
    plain = zlib.decompress(gzipped, wbits=31)
    return plain[1:-1]


class MetadataCache:
    """Series and study metadata, computed on demand and kept under ``cache_dir``."""

    def __init__(
        self,
        store: FileStore,
        index: InstanceIndex,
        cache_dir: Path,
        instance_url: Callable[[str, str, str], str],
    ) -> None:
        """``instance_url(study, series, sop)`` is the public URL of an instance (the HTTP
        face's URL builder); BulkDataURIs hang below it."""
        self.store = store
        self.index = index
        self.cache_dir = Path(cache_dir).resolve()
        self._instance_url = instance_url
        # Part of every digest: a change of public URL must not serve URIs of the old one.
        self.base = instance_url("1", "2", "3")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._fragments: OrderedDict[str, bytes] = OrderedDict()
        self._fragment_bytes = 0
        self._fragments_guard = threading.Lock()
        self.builds = 0
        """Series arrays computed since start (for tests and logs)."""

    # -- URLs --------------------------------------------------------------------------------

    def instance_url(self, ref: InstanceRef) -> str:
        return self._instance_url(
            ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid
        )

    # -- public ----------------------------------------------------------------------------

    def series(self, study_uid: str, series_uid: str) -> CachedJson | None:
        """The series' metadata, or ``None`` when the study holds no such series."""
        versions = series_versions(self.index, study_uid, series_uid)
        if not versions:
            return None
        return self._series(versions[0])

    def study(self, study_uid: str) -> CachedJson | None:
        """The study's metadata (all its series), or ``None`` when the study is unknown."""
        versions = series_versions(self.index, study_uid)
        if not versions:
            return None
        digests = [self._series_digest(v) for v in versions]
        etag = _digest(FORMAT_VERSION, "study", study_uid, *digests)
        path = self._dir(study_uid) / f"study_{etag}{_SUFFIX}"
        cached = self._read(path, etag)
        if cached is not None:
            return cached
        with self._exclusive(f"study:{study_uid}"):
            cached = self._read(path, etag)
            if cached is not None:
                return cached
            bodies = [_array_body(self._series(v).gzipped) for v in versions]
            data = _gzip(b"[" + b",".join(b for b in bodies if b) + b"]")
            _write_atomically(path, data)
            self._remove_others(path.parent, "study_", path.name)
            return CachedJson(etag, data)

    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> CachedJson | None:
        """One instance's metadata (a one-element array), computed from its file."""
        ref = find_instance(self.index, study_uid, series_uid, sop_uid)
        if ref is None:
            return None
        etag = _digest(FORMAT_VERSION, self.base, ref.sop_instance_uid, ref.sha256)
        try:
            fragment = self._fragment(ref)
        except FileNotFoundError:
            # Evicted (storage as a cache of the PACS): its series' cached array holds it.
            fragment = self._from_series(ref)
        data = b"[" + fragment + b"]"
        return CachedJson(etag, gzip.compress(data, compresslevel=1, mtime=0))

    def _from_series(self, ref: InstanceRef) -> bytes:
        doc = self.series(ref.study_instance_uid, ref.series_instance_uid)
        for item in json.loads(doc.plain()) if doc is not None else ():
            if item.get("00080018", {}).get("Value", [None])[0] == ref.sop_instance_uid:
                return json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
        raise FileNotFoundError(ref.storage_key)

    def prepare_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> None:
        """Compute one instance's JSON ahead of its series (called as instances arrive)."""
        ref = find_instance(self.index, study_uid, series_uid, sop_uid)
        if ref is not None:
            self._fragment(ref)

    def warm(self, study_uid: str, series_uid: str) -> None:
        """Bring the series' and its study's files up to date (background warming)."""
        if self.series(study_uid, series_uid) is not None:
            self.study(study_uid)

    # -- internals -------------------------------------------------------------------------

    def _series_digest(self, v: SeriesVersion) -> str:
        return _digest(FORMAT_VERSION, self.base, v.study_instance_uid, v.series_instance_uid,
                       v.token())

    def _dir(self, study_uid: str) -> Path:
        if not is_safe_uid(study_uid):
            raise ValueError(f"{study_uid!r} is not a UID")
        return self.cache_dir / study_uid

    def _series(self, v: SeriesVersion) -> CachedJson:
        if not is_safe_uid(v.series_instance_uid):
            raise ValueError(f"{v.series_instance_uid!r} is not a UID")
        etag = self._series_digest(v)
        path = self._dir(v.study_instance_uid) / f"{v.series_instance_uid}_{etag}{_SUFFIX}"
        cached = self._read(path, etag)
        if cached is not None:
            return cached
        with self._exclusive(f"series:{v.series_instance_uid}"):
            cached = self._read(path, etag)
            if cached is not None:
                return cached
            started = time.perf_counter()
            data = _gzip(self._build_series(v.study_instance_uid, v.series_instance_uid))
            _write_atomically(path, data)
            self._remove_others(path.parent, f"{v.series_instance_uid}_", path.name)
            self.builds += 1
            log.info(
                "metadata of series %s computed: %d instances, %d bytes gzip, %.3f s",
                v.series_instance_uid, v.instances, len(data), time.perf_counter() - started,
            )
            return CachedJson(etag, data)

    def _build_series(self, study_uid: str, series_uid: str) -> bytes:
        for attempt in range(3):
            parts = []
            try:
                for ref in series_instances(self.index, study_uid, series_uid):
                    parts.append(self._fragment(ref))
            except FileNotFoundError:
                # An instance was replaced while we read: list the series again.
                if attempt == 2:
                    raise
                continue
            return b"[" + b",".join(parts) + b"]"
        raise AssertionError("unreachable")

    def _fragment(self, ref: InstanceRef) -> bytes:
        """The encoded JSON object of one instance, remembered by storage key (which changes
        with the content) within :data:`FRAGMENT_BUDGET` bytes, least recently used out."""
        key = ref.storage_key
        with self._fragments_guard:
            data = self._fragments.get(key)
            if data is not None:
                self._fragments.move_to_end(key)
                return data
        doc = read_instance_json(self.store.path_of(key), self.instance_url(ref))
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        with self._fragments_guard:
            if key not in self._fragments:
                self._fragments[key] = data
                self._fragment_bytes += len(data)
            while self._fragment_bytes > FRAGMENT_BUDGET and self._fragments:
                _, old = self._fragments.popitem(last=False)
                self._fragment_bytes -= len(old)
        return data

    @staticmethod
    def _read(path: Path, etag: str) -> CachedJson | None:
        try:
            return CachedJson(etag, path.read_bytes())
        except FileNotFoundError:
            return None

    @staticmethod
    def _remove_others(directory: Path, prefix: str, keep: str) -> None:
        for old in directory.glob(f"{prefix}*{_SUFFIX}"):
            if old.name != keep:
                old.unlink(missing_ok=True)

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def _exclusive(self, key: str) -> Iterator[None]:
        """One builder of ``key`` at a time, across threads and processes (the DICOM worker
        processes each warm the series they received: the second one waits, then reads the
        file the first one wrote instead of building it again)."""
        with self._lock(key):
            directory = self.cache_dir / ".locks"
            directory.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha256(key.encode()).hexdigest()[:32]
            fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock


class IngestActivity:
    """When the last instance arrived, in any process of this data directory.

    One 8-byte file (``metadata/ingest-activity``) mapped into memory by every process (the
    main process and each DICOM worker): an ingest writes ``time.monotonic()`` into it (the
    clock is the host's, the same in every process; no system call), each process's warmer
    reads it. So a worker that has just finished a series does not rebuild its metadata while
    another worker's association is still sending (bench/RESULTS.md "Ingest at
    Orthanc's rate")."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def note(self, now: float) -> None:
        struct.pack_into("d", self._map, 0, now)

    def last(self) -> float:
        return struct.unpack_from("d", self._map, 0)[0]


class MetadataWarmer:
    """Keeps metadata ready: each arriving instance's JSON is computed ahead of its series
    (so that the series build is a concatenation), and a series is rebuilt once it has been
    quiet for ``quiet`` seconds.

    Ingest comes first: while instances keep arriving (one less than ``busy_gap`` seconds
    after the other, in this process or, through ``activity``, in any other of the data
    directory) the per-instance work and the series builds wait, unless the oldest has waited
    ``max_delay`` seconds. On a saturated machine the JSON of an instance (a second read of its file) cost
    about a fifth of the C-STORE path's CPU when done at once (bench/RESULTS.md); done in
    the gap after a burst it costs the same CPU without slowing the modality."""

    def __init__(
        self,
        warm: Callable[[str, str], None],
        prepare: Callable[[str, str, str], None] | None = None,
        quiet: float = 0.5,
        busy_gap: float = 0.2,
        max_delay: float = 60.0,
        activity: IngestActivity | None = None,
    ) -> None:
        self._warm = warm
        self._activity = activity
        self._prepare = prepare
        self.quiet = quiet
        self.busy_gap = busy_gap
        self.max_delay = max_delay
        self._pending: dict[tuple[str, str], float] = {}
        self._pending_since: dict[tuple[str, str], float] = {}
        self._instances: deque[tuple[str, str, str]] = deque()
        self._last_touch = 0.0
        self._oldest_instance = 0.0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def touched(self, study_uid: str, series_uid: str, sop_uid: str | None = None) -> None:
        """An instance of the series was stored (called from the ingest path; never blocks)."""
        with self._cond:
            if self._stopped:
                return
            now = time.monotonic()
            self._pending[(study_uid, series_uid)] = now
            self._pending_since.setdefault((study_uid, series_uid), now)
            self._last_touch = now
            if self._activity is not None:
                self._activity.note(now)
            if sop_uid is not None and self._prepare is not None:
                if not self._instances:
                    self._oldest_instance = now
                self._instances.append((study_uid, series_uid, sop_uid))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="metadata-warmer", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._pending.clear()
            self._pending_since.clear()
            self._instances.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _last_arrival(self, now: float) -> float:
        if self._activity is None:
            return self._last_touch
        shared = self._activity.last()
        # a value ahead of the clock was written before the host restarted: ignore it
        return max(self._last_touch, shared if shared <= now else 0.0)

    def _next(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]] | None:
        """Wait for work: arrived instances first, then series that became quiet; neither while
        instances keep arriving anywhere (unless waiting ``max_delay`` already)."""
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                busy_for = self.busy_gap - (now - self._last_arrival(now))
                if self._instances:
                    if busy_for <= 0 or now - self._oldest_instance >= self.max_delay:
                        batch = list(self._instances)
                        self._instances.clear()
                        return batch, []
                    self._cond.wait(busy_for)  # instances still arriving: ingest first
                    continue
                due = [k for k, t in self._pending.items() if now - t >= self.quiet]
                if due and busy_for > 0:
                    due = [k for k in due if now - self._pending_since[k] >= self.max_delay]
                    if not due:
                        self._cond.wait(busy_for)  # another series still arriving
                        continue
                if due:
                    for k in due:
                        del self._pending[k]
                        del self._pending_since[k]
                    return [], due
                wait = min((self.quiet - (now - t) for t in self._pending.values()),
                           default=None)
                self._cond.wait(wait)
            return None

    def _run(self) -> None:
        while (work := self._next()) is not None:
            instances, series = work
            for study_uid, series_uid, sop_uid in instances:
                started = time.perf_counter()
                try:
                    assert self._prepare is not None
                    self._prepare(study_uid, series_uid, sop_uid)
                except Exception:  # the series build computes it anyway
                    log.warning("metadata of instance %s not prepared", sop_uid, exc_info=True)
                # Yield the interpreter to the ingest threads: at most a third of the time.
                time.sleep(min(0.05, 2 * (time.perf_counter() - started)))
            for study_uid, series_uid in series:
                try:
                    self._warm(study_uid, series_uid)
                except Exception:  # the next request computes it anyway
                    log.exception("metadata warming of series %s failed", series_uid)
