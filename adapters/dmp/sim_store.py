"""The DMP simulator's registry and repository: one SQLite file (``drimbox dmp-sim --db``).

Each accepted ITI-41 is stored in one transaction (submission set, entries with their
registry-assigned entryUUID, event codes, reference ids, document bytes, associations), so a
submission is either wholly there or absent — which is what "store, then drop the response"
fault injection relies on.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS submission_sets (
    unique_id TEXT PRIMARY KEY, entry_uuid TEXT NOT NULL, patient_id TEXT NOT NULL,
    source_id TEXT NOT NULL, xml TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    entry_uuid TEXT PRIMARY KEY, unique_id TEXT NOT NULL, patient_id TEXT NOT NULL,
    status TEXT NOT NULL, mime_type TEXT NOT NULL, hash TEXT NOT NULL, size INTEGER NOT NULL,
    creation_time TEXT NOT NULL, service_start TEXT, service_stop TEXT,
    event_codes TEXT NOT NULL, reference_ids TEXT NOT NULL, ss_unique_id TEXT NOT NULL,
    xml TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_patient ON entries (patient_id, status);
CREATE INDEX IF NOT EXISTS entries_uid ON entries (unique_id);
CREATE TABLE IF NOT EXISTS documents (
    unique_id TEXT PRIMARY KEY, mime_type TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS publishers (
    entry_uuid TEXT PRIMARY KEY, subject TEXT NOT NULL, structure TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
    xml TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    entry_uuid: str
    unique_id: str
    patient_id: str
    status: str
    mime_type: str
    hash: str
    size: int
    creation_time: str
    service_start: str
    service_stop: str
    event_codes: list[str]
    reference_ids: list[str]
    xml: str


class SimStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------------------ reads

    def _entries(self, where: str, args: tuple) -> list[StoredEntry]:
        rows = self._db.execute(
            "SELECT entry_uuid, unique_id, patient_id, status, mime_type, hash, size, "
            "creation_time, service_start, service_stop, event_codes, reference_ids, xml "
            f"FROM entries WHERE {where} ORDER BY creation_time, rowid", args).fetchall()
        return [StoredEntry(*r[:10], json.loads(r[10]), json.loads(r[11]), r[12]) for r in rows]

    def by_patient(self, patient_id: str) -> list[StoredEntry]:
        return self._entries("patient_id = ?", (patient_id,))

    def by_entry_uuid(self, entry_uuid: str) -> StoredEntry | None:
        r = self._entries("entry_uuid = ?", (entry_uuid,))
        return r[0] if r else None

    def by_unique_id(self, unique_id: str) -> list[StoredEntry]:
        return self._entries("unique_id = ?", (unique_id,))

    def publisher(self, entry_uuid: str) -> tuple[str, str] | None:
        """(VIHF NameID, Identifiant_Structure) of who published the entry over ITI-41."""
        r = self._db.execute("SELECT subject, structure FROM publishers WHERE entry_uuid = ?",
                             (entry_uuid,)).fetchone()
        return (r[0], r[1]) if r else None

    def submission_set_exists(self, unique_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM submission_sets WHERE unique_id = ?",
                                (unique_id,)).fetchone() is not None

    def document(self, unique_id: str) -> tuple[str, bytes] | None:
        r = self._db.execute("SELECT mime_type, data FROM documents WHERE unique_id = ?",
                             (unique_id,)).fetchone()
        return (r[0], bytes(r[1])) if r else None

    def association_targets(self, source: str, kind: str) -> list[str]:
        """Targets of the ``kind`` associations whose source is ``source`` (e.g. the entry an
        RPLC replaced: the FHIR face's ``relatesTo``)."""
        rows = self._db.execute("SELECT target FROM associations WHERE source = ? AND type = ?",
                                (source, kind)).fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        return {t: self._db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("submission_sets", "entries", "documents", "associations")}

    # ----------------------------------------------------------------------------- writes

    def commit_submission(self, ss: tuple[str, str, str, str, str],
                          entries: list[StoredEntry], ss_unique_id: str,
                          documents: list[tuple[str, str, bytes]],
                          associations: list[tuple[str, str, str, str, str]],
                          deprecate: list[str],
                          publisher: tuple[str, str] | None = None) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if ss[0]:
                    db.execute("INSERT INTO submission_sets VALUES (?,?,?,?,?)", ss)
                for e in entries:
                    db.execute(
                        "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (e.entry_uuid, e.unique_id, e.patient_id, e.status, e.mime_type, e.hash,
                         e.size, e.creation_time, e.service_start, e.service_stop,
                         json.dumps(e.event_codes), json.dumps(e.reference_ids), ss_unique_id,
                         e.xml))
                    if publisher is not None:
                        db.execute("INSERT INTO publishers VALUES (?,?,?)",
                                   (e.entry_uuid, *publisher))
                for d in documents:
                    db.execute("INSERT INTO documents VALUES (?,?,?)", d)
                for a in associations:
                    db.execute("INSERT INTO associations VALUES (?,?,?,?,?)", a)
                for u in deprecate:
                    db.execute("UPDATE entries SET status = 'Deprecated' WHERE entry_uuid = ?", (u,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def set_status(self, entry_uuid: str, status: str,
                   ss: tuple[str, str, str, str, str] | None = None) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if ss:
                    self._db.execute("INSERT INTO submission_sets VALUES (?,?,?,?,?)", ss)
                self._db.execute("UPDATE entries SET status = ? WHERE entry_uuid = ?",
                                 (status, entry_uuid))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def delete(self, entry_uuids: list[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for u in entry_uuids:
                self._db.execute("DELETE FROM entries WHERE entry_uuid = ?", (u,))
            self._db.execute("COMMIT")
