"""``drimbox backup restore SRC``: a backup set back into an empty data directory and index.

Refused (:class:`~gateway.backup.layout.BackupRefused`, exit status 2) before anything is
written when the data directory is not empty, the index is not empty (the SQLite file
exists; a PostgreSQL database with tables), the set's index back-end is not the configured
one, or the set was made by a newer drimbox (an Alembic revision this code does not know).

Then: the index copy's SHA-256 is checked (a damaged index copy stops the restore, nothing
written), the index is restored (file copy, or ``pg_restore`` into the existing empty
database), every file is copied into ``data_dir`` and checked against the manifest as it is
written (a damaged or missing file is left out and named; the rest goes on, exit status 1),
the index is brought to this code's Alembic head, and the store's layout is prepared.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway.backup.database import POSTGRESQL, backend_of, check_empty, load_copy, pg_tool
from gateway.backup.layout import (
    FILES,
    SUMS,
    BackupFailed,
    BackupRefused,
    copy_hashed,
    hash_file,
    read_metadata,
    read_sums,
    resolve_set,
)
from gateway.backup.verify import dump_major
from gateway.config import Settings
from gateway.index.engine import create_index_engine, current_revision, known_revision, upgrade
from gateway.ingest.storage import FileStore


@dataclass
class RestoreReport:
    path: str
    data_dir: str
    backend: str
    revision_in_backup: str | None
    revision: str | None = None
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def _check_target(data_dir: Path) -> None:
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupRefused(f"the data directory {data_dir} is not empty: restore only into "
                            "an empty one (move the old one aside first)")


def restore_backup(settings: Settings, src: Path) -> RestoreReport:
    set_dir = resolve_set(Path(src).resolve())
    meta = read_metadata(set_dir)
    index = meta.get("index") or {}
    backend, dump = str(index.get("backend", "")), str(index.get("file", ""))
    revision = index.get("alembic_revision")
    url = settings.effective_database_url
    if backend != backend_of(url):
        raise BackupRefused(f"{set_dir.name} holds a {backend or 'unknown'} index; the "
                            f"configured index (database_url) is {backend_of(url)}")
    if revision and not known_revision(str(revision)):
        raise BackupRefused(f"{set_dir.name} was made by a newer drimbox (index revision "
                            f"{revision}): restore it with that version or newer")
    data_dir = Path(settings.data_dir).resolve()
    _check_target(data_dir)
    check_empty(url)
    major = dump_major(meta) if backend == POSTGRESQL else None
    if major is not None and (tool := pg_tool("pg_restore", settings.pg_bin_dir)).major < major:
        raise BackupRefused(f"pg_restore {tool.version} ({tool.path}) cannot read a dump of "
                            f"pg_dump {major}: install a newer client or set pg_bin_dir")
    try:
        sums = read_sums(set_dir / SUMS)
    except (OSError, ValueError) as exc:
        raise BackupFailed(f"{set_dir / SUMS} unreadable: {exc}; nothing restored") from None
    if dump not in sums:
        raise BackupFailed(f"{set_dir.name}: the index copy is not in {SUMS}; nothing restored")
    try:
        _, digest = hash_file(set_dir / dump)
    except OSError as exc:
        raise BackupFailed(f"{set_dir / dump}: {exc.strerror}; nothing restored") from None
    if digest != sums[dump]:
        raise BackupFailed(f"the index copy {set_dir / dump} is damaged (sha256 {digest}, "
                           f"manifest {sums[dump]}); nothing restored: use another backup")

    report = RestoreReport(str(set_dir), str(data_dir), backend, revision)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    load_copy(set_dir / dump, backend, url, settings.pg_bin_dir)
    prefix = f"{FILES}/"
    for rel in sorted(r for r in sums if r.startswith(prefix)):
        target = data_dir / rel[len(prefix):]
        try:
            size, digest = copy_hashed(set_dir / rel, target)
        except FileNotFoundError:
            report.problems.append(f"missing  {rel}: not in the backup, not restored")
            continue
        if digest != sums[rel]:
            target.unlink()
            report.problems.append(f"damaged  {rel}: sha256 {digest}, manifest {sums[rel]}; "
                                   "not restored")
            continue
        report.files += 1
        report.bytes += size
    engine = create_index_engine(url)
    try:
        upgrade(engine)
        report.revision = current_revision(engine)
    finally:
        engine.dispose()
    FileStore(data_dir).prepare()
    os.sync()
    return report
