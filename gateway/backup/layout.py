"""What a backup set holds, how it is named and how its manifest is written.

A destination folder (``drimbox backup create DEST``) holds one folder per backup, named by
its UTC time, ``drimbox-20250301T020000Z``::

    DEST/
      drimbox-20250301T020000Z/
        backup.json       what the set is: format, time, index back-end and Alembic
                          revision, counts, the earlier set it builds on. No setting, no
                          database URL, no host or user name, no secret.
        index.sqlite      the index (SQLite), or
        index.pgdump      the index (PostgreSQL, pg_dump custom format)
        files/storage/<study>/<series>/<sop>.<hash12>.dcm    every instance the index names
        files/rejected/...                                   IOCM rejection notes and the
                                                             instances they rejected
        files/whitelist/last-good.xml                        the last good ANS whitelist
        SHA256SUMS        SHA-256 of the index copy and of every file (``sha256sum -c``
                          reads it), the manifest ``drimbox backup verify`` checks
        sources.tsv       each file's size and modification time in ``data_dir`` when it
                          was copied: the next backup copies only files that changed
      .partial-drimbox-.../   a backup being written (renamed when complete)
      .lock                   held while a backup is written

Left out of ``data_dir`` (:data:`SKIPPED`): the staging area (files being written, never
indexed), the series metadata cache (rebuilt on demand), the consumer's cache of retrieved
studies (fetched again from the Source when needed), the metrics and recovery marks of
running processes, and the live SQLite files (the index is copied through SQLite's backup API instead). Left out of
the index (:data:`EXCLUDED_TABLES`), rows only, the tables stay: viewer sessions and logins
under way (they hold PSC tokens; users log in again), the consumer's patient contexts and
retrievals (tied to those sessions and to the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime
from pathlib import Path

FORMAT = "drimbox-backup/1"
METADATA = "backup.json"
SUMS = "SHA256SUMS"
SOURCES = "sources.tsv"
FILES = "files"
SQLITE_DUMP = "index.sqlite"
PG_DUMP = "index.pgdump"
PARTIAL_PREFIX = ".partial-"
LOCK = ".lock"
SET_PREFIX = "drimbox-"
_SET_NAME = re.compile(r"^drimbox-\d{8}T\d{6}Z(?:-\d+)?$")

#: Folders of ``data_dir`` copied whole (``storage/`` is copied by the index's keys).
COPIED_TREES = ("rejected", "whitelist")
#: Folders of ``data_dir`` left out, and why.
SKIPPED = {
    "staging": "files being written, never indexed",
    "metadata": "series metadata cache, rebuilt on demand",
    "consumer-cache": "the consumer's cache of retrieved studies, fetched again when needed",
    "prometheus-multiproc": "metrics of the running processes",
    "marks": "recovery marks of the running processes",
}
#: Tables whose rows are left out of the index copy (the tables themselves are kept).
EXCLUDED_TABLES = ("viewer_sessions", "pending_logins", "consumer_contexts",
                   "consumer_retrievals")

CHUNK = 1 << 20


class BackupRefused(Exception):
    """The operation cannot start as asked (exit status 2): the message says why."""


class BackupFailed(Exception):
    """The operation started and failed (exit status 1): the message says why."""


def hash_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def copy_hashed(src: Path, dst: Path) -> tuple[int, str]:
    """Copy ``src`` to a new file ``dst`` (mode 0640), hashing what is written: (size,
    SHA-256). An existing ``dst`` is unlinked first, never truncated: it may be a hard link
    shared with an earlier backup. Durability is the caller's (one ``os.sync`` for a set)."""
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as f:  # first: a source that is gone leaves nothing behind
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.unlink(missing_ok=True)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                size += len(chunk)
        finally:
            os.close(fd)
    return size, h.hexdigest()


def plain_relpath(rel: str) -> bool:
    """A relative path the manifest can hold as is: no newline, backslash, ``..`` or
    absolute part (the gateway names its files from UIDs and hex digests only)."""
    return (bool(rel) and not rel.startswith("/") and "\n" not in rel and "\\" not in rel
            and "\r" not in rel and ".." not in rel.split("/"))


# -- the manifest files ------------------------------------------------------------------------

def write_sums(path: Path, sums: dict[str, str]) -> None:
    """``SHA256SUMS`` in ``sha256sum`` format, sorted by path."""
    with open(path, "w", encoding="utf-8") as f:
        for rel in sorted(sums):
            f.write(f"{sums[rel]}  {rel}\n")


def read_sums(path: Path) -> dict[str, str]:
    """Path -> SHA-256 from a ``SHA256SUMS`` file; ``ValueError`` naming a bad line."""
    sums: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            digest, sep, rel = line[:64], line[64:66], line[66:]
            if (sep not in ("  ", " *") or not re.fullmatch(r"[0-9a-f]{64}", digest)
                    or not plain_relpath(rel)):
                raise ValueError(f"{path.name} line {n} is not '<sha256>  <path>'")
            sums[rel] = digest
    return sums


def write_sources(path: Path, sources: dict[str, tuple[int, int]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rel in sorted(sources):
            size, mtime_ns = sources[rel]
            f.write(f"{rel}\t{size}\t{mtime_ns}\n")


def read_sources(path: Path) -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime_ns) of each file's original; empty when unreadable (the next
    backup then copies everything: never wrong, only slower)."""
    out: dict[str, tuple[int, int]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rel, size, mtime = line.rstrip("\n").split("\t")
                out[rel] = (int(size), int(mtime))
    except (OSError, ValueError):
        return {}
    return out


def write_metadata(path: Path, meta: dict) -> None:
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_metadata(set_dir: Path) -> dict:
    """``backup.json`` of a set; :class:`BackupRefused` when it is not a backup we read."""
    try:
        meta = json.loads((set_dir / METADATA).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupRefused(f"{set_dir} is not a DRIMbox backup (no {METADATA})") from None
    except (OSError, ValueError) as exc:
        raise BackupRefused(f"{set_dir / METADATA} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BackupRefused(f"{set_dir / METADATA}: not a {FORMAT} backup "
                            f"(format {meta.get('format') if isinstance(meta, dict) else '?'})")
    return meta


# -- sets in a destination ---------------------------------------------------------------------

def list_sets(dest: Path) -> list[Path]:
    """The complete backup sets in ``dest``, oldest first."""
    if not dest.is_dir():
        return []
    return sorted(p for p in dest.iterdir()
                  if p.is_dir() and _SET_NAME.match(p.name) and (p / METADATA).is_file())


def resolve_set(src: Path) -> Path:
    """``src`` itself when it is a set, else the newest set in it."""
    if (src / METADATA).is_file():
        return src
    sets = list_sets(src)
    if not sets:
        raise BackupRefused(f"{src} holds no DRIMbox backup (no {METADATA}, no "
                            f"{SET_PREFIX}* folder)")
    return sets[-1]


def new_set_name(dest: Path, now: datetime) -> str:
    base = f"{SET_PREFIX}{now:%Y%m%dT%H%M%SZ}"
    name, n = base, 1
    while (dest / name).exists() or (dest / f"{PARTIAL_PREFIX}{name}").exists():
        n += 1
        name = f"{base}-{n}"
    return name
