"""``drimbox backup verify SRC``: is a backup set whole and readable?

Every problem is named, one per line:

* ``missing  <path>``: a file the manifest (``SHA256SUMS``) lists is not in the set;
* ``damaged  <path>: sha256 <found>, manifest <expected>``: its bytes changed;
* ``index    <what>``: the index copy cannot be read (SQLite ``integrity_check``, or
  ``pg_restore`` reading the whole dump), its Alembic revision is not the one recorded, or
  it names an instance file the set does not hold (``index    names <path>, not in the
  backup``);
* ``manifest <what>``: ``backup.json`` or ``SHA256SUMS`` unreadable.

Files in the set the manifest does not list are noted (``unlisted <path>``), not counted as
problems: a restore ignores them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gateway.backup.database import POSTGRESQL, read_copy
from gateway.backup.layout import (
    FILES,
    METADATA,
    SOURCES,
    SUMS,
    BackupRefused,
    hash_file,
    read_metadata,
    read_sums,
)


@dataclass
class VerifyReport:
    path: str
    files: int = 0
    bytes: int = 0
    backend: str = ""
    revision: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return asdict(self) | {"ok": self.ok}


def dump_major(meta: dict) -> int | None:
    """The major version of the pg_dump that wrote a set's index (PostgreSQL)."""
    version = str(meta.get("index", {}).get("pg_dump_version", ""))
    head = version.split(".")[0]
    return int(head) if head.isdigit() else None


def verify_backup(set_dir: Path, pg_bin_dir: Path | None = None) -> VerifyReport:
    """Check one set; :class:`BackupRefused` when ``set_dir`` is not a backup at all."""
    meta = read_metadata(set_dir)
    index = meta.get("index") or {}
    report = VerifyReport(str(set_dir), backend=str(index.get("backend", "")))
    try:
        sums = read_sums(set_dir / SUMS)
    except (OSError, ValueError) as exc:
        report.problems.append(f"manifest {SUMS} unreadable: {exc}")
        return report
    for rel in sorted(sums):
        path = set_dir / rel
        try:
            size, digest = hash_file(path)
        except FileNotFoundError:
            report.problems.append(f"missing  {rel}")
            continue
        except OSError as exc:
            report.problems.append(f"damaged  {rel}: unreadable ({exc.strerror})")
            continue
        report.files += 1
        report.bytes += size
        if digest != sums[rel]:
            report.problems.append(f"damaged  {rel}: sha256 {digest}, manifest {sums[rel]}")
    own = {METADATA, SUMS, SOURCES}
    for folder, dirs, files in os.walk(set_dir):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(folder) / name).relative_to(set_dir).as_posix()
            if rel not in sums and rel not in own:
                report.notes.append(f"unlisted {rel}")

    dump = str(index.get("file", ""))
    if dump not in sums:
        report.problems.append(f"index    {dump or 'the index copy'} is not in the manifest")
        return report
    if not (set_dir / dump).is_file():
        return report  # already reported missing
    try:
        revision, keys = read_copy(set_dir / dump, report.backend, pg_bin_dir,
                                   dump_major(meta) if report.backend == POSTGRESQL else None)
    except ValueError as exc:
        report.problems.append(f"index    {dump} unreadable: {exc}")
        return report
    except BackupRefused as exc:
        report.problems.append(f"index    {dump} not checked: {exc}")
        return report
    report.revision = revision
    if revision != index.get("alembic_revision"):
        report.problems.append(f"index    {dump} is at revision {revision}, backup.json says "
                               f"{index.get('alembic_revision')}")
    absent = [k for k in keys if f"{FILES}/storage/{k}" not in sums]
    for key in absent[:50]:
        report.problems.append(f"index    names {FILES}/storage/{key}, not in the backup")
    if len(absent) > 50:
        report.problems.append(f"index    names {len(absent) - 50} more files not in the backup")
    return report
