"""``drimbox backup create DEST``: a consistent backup while the gateway serves.

Order, which makes the copy consistent: the index is copied first
(:func:`gateway.backup.database.take_copy`), then exactly the instance files *that copy*
names, then the folders copied whole (:data:`~gateway.backup.layout.COPIED_TREES`). A file
the index copy names always exists (a file is durable before its row commits), unless it was
removed after the copy: an instance replaced by a corrected one, or moved aside by an IOCM
rejection note. Then the index is copied again and only what changed is copied (at most
:data:`ATTEMPTS` rounds). Instances that arrive after the index copy are not in the backup
(the next one has them); the restored store holds no file its index does not name.

Incremental: when ``DEST`` holds an earlier complete set, a file whose size and modification
time in ``data_dir`` are those the earlier set recorded (``sources.tsv``) is not read again:
it is hard-linked to the earlier set's copy (copied when the file system cannot link). Every
set is whole on its own (restore and verify need no other set), deleting an old set frees
only what no newer set shares, and a damaged shared copy is damaged in every set that
shares it (``drimbox backup verify`` finds it; ``--full`` starts afresh).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway import __version__
from gateway.backup.database import SQLITE, backend_of, sqlite_path, take_copy
from gateway.backup.layout import (
    COPIED_TREES,
    EXCLUDED_TABLES,
    FILES,
    FORMAT,
    LOCK,
    METADATA,
    PARTIAL_PREFIX,
    SKIPPED,
    SOURCES,
    SUMS,
    BackupFailed,
    BackupRefused,
    copy_hashed,
    hash_file,
    list_sets,
    new_set_name,
    plain_relpath,
    read_sources,
    read_sums,
    write_metadata,
    write_sources,
    write_sums,
)
from gateway.config import Settings
from gateway.ingest.storage import FileStore, fsync_dir

#: Rounds of "copy the index, copy its files" before giving up on files that keep vanishing.
ATTEMPTS = 5


@dataclass
class CreateReport:
    name: str
    path: str
    backend: str
    revision: str | None
    instances: int
    files: int
    bytes: int
    copied: int
    copied_bytes: int
    linked: int
    base: str | None
    attempts: int
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Entry:
    source: tuple[int, int]  # size, mtime_ns in data_dir when copied
    size: int
    sha256: str
    linked: bool


class _Copier:
    """The files of the set being written, kept across rounds."""

    def __init__(self, work: Path, base: Path | None) -> None:
        self.work = work
        self.base = base
        self.base_sums: dict[str, str] = {}
        self.base_sources: dict[str, tuple[int, int]] = {}
        if base is not None:
            try:
                self.base_sums = read_sums(base / SUMS)
            except (OSError, ValueError):
                self.base = None  # unreadable: copy everything
            else:
                self.base_sources = read_sources(base / SOURCES)
        self.entries: dict[str, _Entry] = {}

    def sync(self, wanted: dict[str, Path], required: set[str]) -> list[str]:
        """Make the set hold exactly ``wanted`` (set path -> source file); returns the
        required paths whose source is gone."""
        missing = []
        for rel, src in wanted.items():
            try:
                st = os.stat(src)
            except FileNotFoundError:
                if rel in required:
                    missing.append(rel)
                continue
            source = (st.st_size, st.st_mtime_ns)
            known = self.entries.get(rel)
            if known is not None and known.source == source:
                continue
            dst = self.work / rel
            if self._link(rel, source, dst):
                self.entries[rel] = _Entry(source, source[0], self.base_sums[rel], True)
                continue
            try:
                size, digest = copy_hashed(src, dst)
            except FileNotFoundError:
                self.entries.pop(rel, None)
                if rel in required:
                    missing.append(rel)
                continue
            self.entries[rel] = _Entry(source, size, digest, False)
        for rel in [r for r in self.entries if r not in wanted]:
            (self.work / rel).unlink(missing_ok=True)
            del self.entries[rel]
        return missing

    def _link(self, rel: str, source: tuple[int, int], dst: Path) -> bool:
        if self.base is None or self.base_sources.get(rel) != source or rel not in self.base_sums:
            return False
        earlier = self.base / rel
        try:
            if earlier.stat().st_size != source[0]:
                return False
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            os.link(earlier, dst)
        except OSError:
            return False  # gone, or no hard links here (another file system): copy
        return True


@contextmanager
def _locked(dest: Path):  # noqa: ANN202
    fd = os.open(dest / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupRefused(f"another drimbox backup is writing into {dest}") from None
        yield
    finally:
        os.close(fd)


def _trees(data_dir: Path, warnings: list[str]) -> dict[str, Path]:
    """Set path -> file, for the folders of ``data_dir`` copied whole (no symbolic link
    followed)."""
    out: dict[str, Path] = {}
    for tree in COPIED_TREES:
        for folder, dirs, files in os.walk(data_dir / tree):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                if path.is_symlink() or not path.is_file():
                    continue
                rel = f"{FILES}/{path.relative_to(data_dir).as_posix()}"
                if plain_relpath(rel):
                    out[rel] = path
                else:
                    warnings.append(f"not backed up: {path} (a name the manifest cannot hold)")
    return out


def _unknown_entries(data_dir: Path, index_file: Path | None) -> list[str]:
    known = {"storage", *COPIED_TREES, *SKIPPED}
    if index_file is not None and index_file.parent == data_dir:
        known |= {index_file.name + s
                  for s in ("", "-wal", "-shm", "-journal", "-writer.lock")}
    return [f"not backed up: {p} (unknown to this version of drimbox)"
            for p in sorted(data_dir.iterdir()) if p.name not in known]


def create_backup(settings: Settings, dest: Path, *, full: bool = False,
                  keep: int | None = None, now: datetime | None = None) -> CreateReport:
    """Write a new complete set into ``dest``; :class:`BackupRefused` when it cannot start,
    :class:`BackupFailed` when it fails (nothing is left of the set then)."""
    data_dir = Path(settings.data_dir).resolve()
    dest = Path(dest).resolve()
    if not data_dir.is_dir():
        raise BackupRefused(f"the data directory {data_dir} does not exist")
    if dest == data_dir or data_dir in dest.parents:
        raise BackupRefused(f"the destination {dest} is inside the data directory {data_dir}")
    if keep is not None and keep < 1:
        raise BackupRefused("--keep must be at least 1")
    url = settings.effective_database_url
    index_file = sqlite_path(url).resolve() if backend_of(url) == SQLITE else None
    store = FileStore(data_dir)
    warnings = _unknown_entries(data_dir, index_file)
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(dest):
        for stale in dest.glob(f"{PARTIAL_PREFIX}*"):  # a backup that died: never complete
            shutil.rmtree(stale, ignore_errors=True)
        earlier = list_sets(dest)
        base = earlier[-1] if earlier and not full else None
        when = now or datetime.now(UTC)
        name = new_set_name(dest, when)
        work = dest / f"{PARTIAL_PREFIX}{name}"
        work.mkdir(mode=0o700)
        try:
            copier = _Copier(work, base)
            for attempt in range(1, ATTEMPTS + 1):
                copy = take_copy(url, work, settings.pg_bin_dir)
                wanted: dict[str, Path] = {}
                for key in copy.storage_keys:
                    try:
                        path = store.path_of(key)
                    except ValueError:
                        raise BackupFailed(f"the index names a file outside the store: "
                                           f"{key!r}") from None
                    wanted[f"{FILES}/storage/{path.relative_to(store.storage_dir).as_posix()}"
                           ] = path
                required = set(wanted)
                tree_warnings: list[str] = []
                wanted.update(_trees(data_dir, tree_warnings))
                missing = copier.sync(wanted, required)
                if not missing:
                    break
            else:
                raise BackupFailed(
                    f"{len(missing)} file(s) the index names vanished at each of {ATTEMPTS} "
                    f"attempts (e.g. {missing[0]}): is something deleting the store? "
                    "Run `drimbox store check`")
            warnings += tree_warnings
            entries = copier.entries
            sums = {rel: e.sha256 for rel, e in entries.items()}
            dump_size, sums[copy.file] = hash_file(work / copy.file)
            write_sums(work / SUMS, sums)
            write_sources(work / SOURCES, {rel: e.source for rel, e in entries.items()})
            copied = [e for e in entries.values() if not e.linked]
            report = CreateReport(
                name=name, path=str(dest / name), backend=copy.backend,
                revision=copy.revision, instances=len(copy.storage_keys), files=len(entries),
                bytes=sum(e.size for e in entries.values()), copied=len(copied),
                copied_bytes=sum(e.size for e in copied), linked=len(entries) - len(copied),
                base=base.name if base else None, attempts=attempt, warnings=warnings)
            write_metadata(work / METADATA, {
                "format": FORMAT,
                "name": name,
                "created_at": when.isoformat(timespec="seconds"),
                "drimbox_version": __version__,
                "index": {"backend": copy.backend, "file": copy.file,
                          "alembic_revision": copy.revision, "bytes": dump_size,
                          "rows_left_out": list(EXCLUDED_TABLES), **copy.details},
                "files": {"instances": report.instances, "count": report.files,
                          "bytes": report.bytes, "copied": report.copied,
                          "copied_bytes": report.copied_bytes, "linked": report.linked},
                "base": report.base,
                "left_out_of_data_dir": SKIPPED,
            })
            os.sync()  # every file of the set on disk before the set is named complete
            os.rename(work, dest / name)
            fsync_dir(dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if keep is not None:
            for old in list_sets(dest)[:-keep]:
                shutil.rmtree(old)
                report.pruned.append(old.name)
    return report
