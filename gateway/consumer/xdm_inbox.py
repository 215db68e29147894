"""The consumer's XDM inbox (R23): archives checked by ``drimbox xdm import`` and kept until a
practitioner follows their KOS from the consumer page.

A retrieval needs the practitioner's Pro Santé Connect session (its token is what the Source
accepts, R17), which a command line has not: the command keeps the checked archive here, and
the consumer page lists the archives of the patient it shows; following one re-checks it and
starts the retrieval like an upload (:mod:`dicomweb.consumer_xdm`).

Layout: ``<data_dir>/xdm-inbox/<KOS uniqueId>.zip`` and its ``.json`` (the patient's INS
matricule and OID, the study, when and from which file it came, the signer). Both are written
aside and renamed into place, the JSON last: a listed entry always has its archive.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.ingest.uids import is_safe_uid

INBOX_DIR = "xdm-inbox"


@dataclass(frozen=True, slots=True)
class InboxItem:
    kos_uid: str
    study_uid: str
    patient_ins: str
    patient_oid: str
    received_at: str
    """ISO 8601, UTC."""
    signer: str = ""
    filename: str = ""


class XdmInbox:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / INBOX_DIR

    def _paths(self, kos_uid: str) -> tuple[Path, Path]:
        if not is_safe_uid(kos_uid):
            raise ValueError(f"{kos_uid!r} is not a UID")
        return self.root / f"{kos_uid}.zip", self.root / f"{kos_uid}.json"

    def put(self, archive: Path, item: InboxItem) -> Path:
        """Keep ``archive`` (already checked) for ``item``; returns where."""
        zip_path, json_path = self._paths(item.kos_uid)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = zip_path.with_suffix(f".zip.{os.getpid()}.partial")
        shutil.copyfile(archive, tmp)
        os.replace(tmp, zip_path)
        tmp = json_path.with_suffix(f".json.{os.getpid()}.partial")
        tmp.write_text(json.dumps(asdict(item), ensure_ascii=False), "utf-8")
        os.replace(tmp, json_path)
        return zip_path

    def items(self) -> list[InboxItem]:
        out = []
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            try:
                item = InboxItem(**json.loads(path.read_text("utf-8")))
            except (OSError, ValueError, TypeError):
                continue  # a damaged entry is not listed
            if is_safe_uid(item.kos_uid) and self._paths(item.kos_uid)[0].is_file():
                out.append(item)
        return sorted(out, key=lambda i: i.received_at, reverse=True)

    def for_patient(self, ins: str, oid: str = "") -> list[InboxItem]:
        """The archives of this patient (INS matricule, and OID when both are known)."""
        return [i for i in self.items() if i.patient_ins == ins
                and (not oid or not i.patient_oid or i.patient_oid == oid)]

    def get(self, kos_uid: str) -> tuple[InboxItem, bytes] | None:
        """The entry and the archive's bytes, or None."""
        if not is_safe_uid(kos_uid):
            return None
        zip_path, json_path = self._paths(kos_uid)
        try:
            item = InboxItem(**json.loads(json_path.read_text("utf-8")))
            return item, zip_path.read_bytes()
        except (OSError, ValueError, TypeError):
            return None
