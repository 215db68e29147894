"""``drimbox store check``: does the file store agree with the index?

An instance is acknowledged only once its file is durable *and* its index row committed, so a
crash between the two can leave a file under ``storage/`` that no row names (an *orphan*: it
was never acknowledged, and re-sending the instance makes it whole). The rows a power cut
took with the last group's flush are not orphans: ``drimbox store check`` first runs the
recovery that indexes their files again (:mod:`gateway.ingest.recovery`). Nothing else should ever
differ; this check finds out:

* **orphans** — files no index row names, older than ``min_age`` seconds (a younger file may
  belong to a commit in flight). ``repair`` deletes them: they were never acknowledged.
* **missing** — rows whose file is gone (a disk or an operator problem): reported, never
  "repaired" by dropping the row; the instance must be sent again.
* **evicted** — rows whose file the retention task removed on purpose (storage as a cache of
  the PACS, :mod:`gateway.ingest.retention`): the PACS holds them and WADO-RS fetches them
  back. Listed, never counted as a problem.
* **damaged** — the file's dataset is not the bytes the index recorded (size, and with
  ``verify`` the SHA-256), or, with ``verify``, it is not whole
  (:func:`gateway.ingest.completeness.check_complete`, the check every ingest path makes now: a copy
  cut short that an earlier version acknowledged has a matching hash but is still damaged):
  reported.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.index.store import InstanceIndex
from gateway.ingest.completeness import DatasetDefect, check_complete
from gateway.ingest.part10 import split_part10
from gateway.ingest.storage import FileStore


@dataclass
class StoreReport:
    files: int = 0
    rows: int = 0
    orphans: list[str] = field(default_factory=list)
    orphans_removed: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    evicted: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.orphans and self.orphans_removed < len(self.orphans)) and not (
            self.missing or self.damaged)

    def as_dict(self) -> dict:
        return {"files": self.files, "rows": self.rows, "orphans": self.orphans,
                "orphans_removed": self.orphans_removed, "missing": self.missing,
                "damaged": self.damaged, "evicted": self.evicted, "clean": self.clean}


def _read_dataset(path: Path) -> tuple[memoryview, str]:
    """The stored file's dataset bytes and their transfer syntax."""
    data = path.read_bytes()
    part10 = split_part10(data)
    return memoryview(data)[part10.dataset_offset:], part10.transfer_syntax_uid


def check_store(store: FileStore, index: InstanceIndex, *, repair: bool = False,
                verify: bool = False, min_age: float = 300.0) -> StoreReport:
    report = StoreReport()
    rows = index.all_instances()
    report.rows = len(rows)
    by_key = {r.storage_key: r for r in rows}
    now = time.time()
    for path in sorted(store.storage_dir.rglob("*.dcm")):
        report.files += 1
        key = path.relative_to(store.storage_dir).as_posix()
        row = by_key.get(key)
        if row is None:
            if now - path.stat().st_mtime < min_age:
                continue
            report.orphans.append(key)
            if repair:
                path.unlink(missing_ok=True)
                report.orphans_removed += 1
            continue
        if verify:
            try:
                dataset, transfer_syntax = _read_dataset(path)
            except (OSError, ValueError) as exc:
                report.damaged.append(f"{key}: unreadable ({exc})")
                continue
            if (len(dataset), hashlib.sha256(dataset).hexdigest()) != (row.size, row.sha256):
                report.damaged.append(f"{key}: content differs from the index")
                continue
            try:
                check_complete(dataset, transfer_syntax)
            except DatasetDefect as exc:
                report.damaged.append(f"{key}: incomplete ({exc})")
        elif path.stat().st_size < row.size:
            report.damaged.append(f"{key}: shorter than the {row.size} bytes indexed")
    for key, row in by_key.items():
        if not os.path.exists(store.path_of(key)):
            target = report.evicted if row.evicted else report.missing
            target.append(f"{row.sop_instance_uid} ({key})")
    return report
