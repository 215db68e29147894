"""Reading and writing the index in domain terms (headers, stored-instance facts).

:class:`InstanceIndex` is the only place that writes index rows. Concurrent associations
may create the same patient, study or series at the same moment: rows are created with
``INSERT ... ON CONFLICT DO NOTHING`` and read back, so the race has one winner and no error.

Ingest speed: :meth:`InstanceIndex.record` is on the C-STORE path (one call per instance,
before the acknowledgement), so its common case costs one transaction of two Core statements
(``INSERT`` the instance, ``UPDATE`` the study's ``updated_at``): the patient / study / series
primary keys of recent series are kept in a small in-process cache (:class:`_ParentCache`).
A stale entry (the series was removed by a replacement in this or another process) makes the
foreign key fail; the cache is then cleared and the caller's retry takes the full path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.index.engine import begin_raw_write
from gateway.index.models import Instance, Patient, Series, Study
from gateway.index.prepared import Prepared, PreparedWrite, as_sqlalchemy_error

if TYPE_CHECKING:
    from gateway.ingest.header import InstanceHeader

#: The columns of a :class:`StoredInstance`, joined up to its study.
_STORED_INSTANCES = (
    select(
        Instance.sop_instance_uid,
        Instance.sop_class_uid,
        Study.study_instance_uid,
        Series.series_instance_uid,
        Instance.transfer_syntax_uid,
        Instance.sha256,
        Instance.size,
        Instance.storage_key,
        Instance.evicted_at.is_not(None),
        Instance.source,
    )
    .join(Series, Instance.series_pk == Series.id)
    .join(Study, Series.study_pk == Study.id)
)
_FIND_INSTANCE = _STORED_INSTANCES.where(Instance.sop_instance_uid == bindparam("uid"))
# The ingest's per-instance statements, compiled once (gateway.index.prepared).
_FIND_INSTANCE_PREPARED = Prepared(_FIND_INSTANCE)
_TOUCH_STUDY_PREPARED = PreparedWrite(
    update(Study).where(Study.id == bindparam("pk"))
    .values(updated_at=bindparam("now", type_=Study.__table__.c.updated_at.type)))
_INSTANCE_COLUMNS = ("sop_instance_uid", "series_pk", "sop_class_uid", "instance_number",
                     "transfer_syntax_uid", "size", "sha256", "storage_key", "received_at",
                     "source", "rows", "columns", "bits_allocated", "number_of_frames",
                     "evicted_at")


def _insert_new_instance(dialect_insert: Any) -> PreparedWrite:
    """INSERT of a new instance row, nothing if its SOP Instance UID is indexed already;
    RETURNING tells whether the row went in (rowcount is -1 with psycopg here)."""
    return PreparedWrite(
        dialect_insert(Instance)
        .values({name: bindparam(name, type_=Instance.__table__.c[name].type)
                 for name in _INSTANCE_COLUMNS})
        .on_conflict_do_nothing(index_elements=[Instance.sop_instance_uid])
        .returning(Instance.id))


def _instance_values(
    header: InstanceHeader, stored: StoredFile, series_pk: int, now: datetime
) -> dict:
    return {
        "series_pk": series_pk,
        "sop_class_uid": header.sop_class_uid,
        "instance_number": header.instance_number,
        "transfer_syntax_uid": stored.transfer_syntax_uid,
        "size": stored.size,
        "sha256": stored.sha256,
        "storage_key": stored.storage_key,
        "received_at": now,
        "source": stored.source,
        "rows": header.rows,
        "columns": header.columns,
        "bits_allocated": header.bits_allocated,
        "number_of_frames": header.number_of_frames,
        "evicted_at": None,  # a new file: never evicted
    }


def _chunks(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


class _ParentCache:
    """Series Instance UID -> (series pk, study pk) of series indexed recently.

    Bounded (cleared when full: a gateway receives a few series at a time) and thread-safe.
    An entry is only a hint: a wrong one fails on a foreign key, never silently.
    """

    def __init__(self, limit: int = 4096) -> None:
        self._items: dict[str, tuple[int, int]] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, series_uid: str) -> tuple[int, int] | None:
        return self._items.get(series_uid)

    def put(self, series_uid: str, pks: tuple[int, int]) -> None:
        with self._lock:
            if len(self._items) >= self._limit:
                self._items.clear()
            self._items[series_uid] = pks

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """What the index knows of one stored instance."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    sha256: str
    size: int
    storage_key: str
    evicted: bool = False
    """The file was evicted (storage as a cache of the PACS): the row stays, the file is gone."""
    source: str = ""
    """Where the stored copy came from (the Source AE Title of its Part 10 header)."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """The facts about a file just written for an instance."""

    transfer_syntax_uid: str
    sha256: str
    size: int
    storage_key: str
    source: str


@dataclass(frozen=True, slots=True)
class IndexCounts:
    patients: int
    studies: int
    series: int
    instances: int


class InstanceIndex:
    """The patient / study / series / instance index over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(writer=True)
        self._dialect = engine.dialect.name
        self._parents = _ParentCache()
        self._insert_instance = _insert_new_instance(
            postgresql.insert if self._dialect == "postgresql" else sqlite.insert)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session

    # -- queries -------------------------------------------------------------------------

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        rows = _FIND_INSTANCE_PREPARED.rows_raw(self.engine, uid=sop_instance_uid)
        if not rows:
            return None
        row = rows[0]
        return StoredInstance(*row[:8], evicted=bool(row[8]), source=row[9])

    def counts(self) -> IndexCounts:
        with self.read() as s:
            return IndexCounts(
                patients=s.scalar(select(func.count()).select_from(Patient)) or 0,
                studies=s.scalar(select(func.count()).select_from(Study)) or 0,
                series=s.scalar(select(func.count()).select_from(Series)) or 0,
                instances=s.scalar(select(func.count()).select_from(Instance)) or 0,
            )

    def all_instances(self) -> list[StoredInstance]:
        with self.read() as s:
            rows = s.execute(_STORED_INSTANCES.order_by(Instance.id)).all()
        return [StoredInstance(*r) for r in rows]

    def indexed_keys(self, keys: list[str]) -> set[str]:
        """Which of these storage keys (``<study>/<series>/<sop>.<hash12>.dcm``) an index row
        names (looked up by SOP Instance UID, the unique column)."""
        sops = {k.rsplit("/", 1)[-1].rsplit(".", 2)[0] for k in keys}
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(sops), 500):
                found.update(conn.execute(
                    select(Instance.storage_key).where(Instance.sop_instance_uid.in_(chunk))
                ).scalars())
        return found & set(keys)

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite database file, or None (PostgreSQL, or an in-memory database)."""
        if self._dialect != "sqlite":
            return None
        database = self.engine.url.database
        return database if database and database != ":memory:" else None

    # -- writes --------------------------------------------------------------------------

    def record(self, header: InstanceHeader, stored: StoredFile) -> StoredInstance | None:
        """Index a newly stored instance, or switch an existing one to the new file.

        Returns the previous :class:`StoredInstance` when one was replaced (its file is now
        unreferenced and the caller removes it), else ``None``. Commits before returning.
        """
        now = datetime.now(UTC)
        parents = self._parents.get(header.series_instance_uid)
        if parents is not None:
            try:
                if self._insert_new(header, stored, parents, now):
                    return None
            except IntegrityError:
                # A cached parent row is gone (FK) or the instance appeared meanwhile
                # (unique): forget the cache and let the caller retry on the full path.
                self._parents.clear()
                raise
        return self._record_full(header, stored, now)

    def record_many(
        self, items: list[tuple[InstanceHeader, StoredFile]], *, flush: bool = True
    ) -> list[StoredInstance | None | Exception]:
        """:meth:`record` for several instances, with one commit for the common case.

        New instances of series already in the parent cache are inserted in one transaction;
        the others (new series, re-sent or replaced instances, or all of them if that
        transaction fails) go through :meth:`record` one by one. Returns, per item, what
        :meth:`record` would return or the exception it would raise.

        ``flush=False`` (SQLite only): that one transaction is committed without flushing
        the log (``synchronous=NORMAL``): the caller keeps the files from which a lost row is
        rebuilt (:mod:`gateway.ingest.recovery`).
        """
        results: list[StoredInstance | None | Exception] = [None] * len(items)
        fast = []
        for i, (header, stored) in enumerate(items):
            parents = self._parents.get(header.series_instance_uid)
            if parents is None:  # the first of a series creates its parents (and caches them)
                results[i] = self._record_one(header, stored)
            else:
                fast.append((i, header, stored, parents))
        if not fast:
            return results
        now = datetime.now(UTC)
        leftovers: list[int] = []
        relaxed = not flush and self._dialect == "sqlite"
        try:
            self._insert_many(fast, leftovers, now, relaxed)
        except IntegrityError:
            self._parents.clear()
            leftovers = [i for i, *_ in fast]
        for i in leftovers:
            results[i] = self._record_one(*items[i])
        return results

    def _insert_many(self, fast: list, leftovers: list[int], now: datetime,
                     relaxed: bool) -> None:
        """:meth:`record_many`'s one transaction, on a pooled DBAPI connection (a SQLAlchemy
        Connection and its events cost as much CPU as SQLite's commit, under the interpreter
        lock the association threads need: bench/RESULTS.md "Ingest at Orthanc's rate");
        begun as the engine's writers begin theirs (:func:`begin_raw_write`)."""
        engine = self.engine
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                if relaxed:  # the setting belongs to the connection: FULL again after
                    cursor.execute("PRAGMA synchronous=NORMAL")
                try:
                    begin_raw_write(engine, raw)
                    for i, header, stored, (series_pk, _study_pk) in fast:
                        inserted = self._insert_instance.execute_on_cursor(
                            engine, cursor, sop_instance_uid=header.sop_instance_uid,
                            **_instance_values(header, stored, series_pk, now),
                        ).fetchone() is not None
                        if not inserted:
                            leftovers.append(i)  # already indexed: record() decides
                    for study_pk in sorted({parents[1] for *_, parents in fast}):
                        _TOUCH_STUDY_PREPARED.execute_on_cursor(engine, cursor,
                                                                pk=study_pk, now=now)
                    raw.commit()
                except BaseException:
                    raw.rollback()
                    raise
                finally:
                    if relaxed:
                        cursor.execute("PRAGMA synchronous=FULL")
            finally:
                cursor.close()
        except engine.dialect.loaded_dbapi.Error as exc:
            raise as_sqlalchemy_error(engine, exc) from None
        finally:
            raw.close()  # back to the pool: the writers' file lock released (engine.py)

    def _record_one(
        self, header: InstanceHeader, stored: StoredFile
    ) -> StoredInstance | None | Exception:
        try:
            return self.record(header, stored)
        except Exception as exc:  # handed to the caller of this item
            return exc

    def _insert_new(
        self, header: InstanceHeader, stored: StoredFile, parents: tuple[int, int], now: datetime
    ) -> bool:
        """The common case in one short transaction: a new instance of a known series.

        Returns ``False`` (nothing written) when the SOP Instance UID is already indexed.
        """
        series_pk, study_pk = parents
        with self._writer.connect() as conn:  # BEGIN (IMMEDIATE on SQLite) on first use
            inserted = self._insert_instance.execute(
                conn, sop_instance_uid=header.sop_instance_uid,
                **_instance_values(header, stored, series_pk, now),
            ).first() is not None
            if not inserted:
                conn.rollback()
                return False
            _TOUCH_STUDY_PREPARED.execute(conn, pk=study_pk, now=now)
            conn.commit()
        return True

    def _record_full(
        self, header: InstanceHeader, stored: StoredFile, now: datetime
    ) -> StoredInstance | None:
        """Create the parents as needed, insert or replace the instance row."""
        now = datetime.now(UTC)
        with self._write() as s:
            patient_pk = self._ensure_patient(s, header)
            study_pk = self._ensure_study(s, header, patient_pk, now)
            series_pk = self._ensure_series(s, header, study_pk, now)
            self._parents.put(header.series_instance_uid, (series_pk, study_pk))
            previous = s.execute(
                select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
            ).scalar_one_or_none()
            values = _instance_values(header, stored, series_pk, now)
            s.execute(update(Study).where(Study.id == study_pk).values(updated_at=now))
            if previous is None:
                s.add(Instance(sop_instance_uid=header.sop_instance_uid, **values))
                return None
            replaced = self.find_in_session(s, previous)
            old_series_pk = previous.series_pk
            s.execute(update(Instance).where(Instance.id == previous.id).values(**values))
            if old_series_pk != series_pk:
                self._parents.clear()  # a series or study row may be deleted
                self._drop_if_empty(s, old_series_pk)
            return replaced

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction (SQLite: ``BEGIN IMMEDIATE``), committed on exit: for callers
        that change rows next to the instances in one commit (the publication outbox)."""
        with self._write() as s:
            yield s

    def mark_stable(self, quiet_seconds: float, now: datetime | None = None,
                    on_stable: Callable[[Session, list[str]], None] | None = None) -> list[str]:
        """Mark stable the studies quiet for ``quiet_seconds`` that are not stable yet.

        Returns their Study Instance UIDs ("study completeness"). A study is stable
        while ``stable_at >= updated_at``; an instance arriving later bumps ``updated_at`` and
        so reopens it, and it is marked again once quiet. ``on_stable(session, uids)`` runs in
        the same transaction (the publication outbox row is written with the change
        that causes it); if it raises, nothing is marked.
        """
        now = now or datetime.now(UTC)
        cutoff = now - timedelta(seconds=quiet_seconds)
        with self._write() as s:
            uids = list(
                s.scalars(
                    select(Study.study_instance_uid).where(
                        (Study.updated_at <= cutoff)
                        & ((Study.stable_at.is_(None)) | (Study.stable_at < Study.updated_at))
                    )
                )
            )
            if uids:
                s.execute(
                    update(Study)
                    .where(Study.study_instance_uid.in_(uids))
                    .values(stable_at=now)
                )
                if on_stable is not None:
                    on_stable(s, uids)
        return uids

    @staticmethod
    def find_in_session(s: Session, inst: Instance) -> StoredInstance:
        series = s.get(Series, inst.series_pk)
        assert series is not None
        study = s.get(Study, series.study_pk)
        assert study is not None
        return StoredInstance(
            inst.sop_instance_uid,
            inst.sop_class_uid,
            study.study_instance_uid,
            series.series_instance_uid,
            inst.transfer_syntax_uid,
            inst.sha256,
            inst.size,
            inst.storage_key,
            inst.evicted_at is not None,
            inst.source,
        )

    def _insert_ignore(self, s: Session, model: type, values: dict) -> None:
        dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        s.execute(dialect_insert(model).values(**values).on_conflict_do_nothing())

    def _get_or_create(self, s: Session, model: type, key, values: dict) -> tuple[int, bool]:
        """The primary key of the row matching ``key``, inserted from ``values`` when missing
        (a concurrent insert of the same row is not an error); and whether it was missing."""
        pk = s.scalar(select(model.id).where(key))
        if pk is not None:
            return pk, False
        self._insert_ignore(s, model, values)
        pk = s.scalar(select(model.id).where(key))
        assert pk is not None
        return pk, True

    def _ensure_patient(self, s: Session, h: InstanceHeader) -> int:
        key = (Patient.patient_id == h.patient_id) & (
            Patient.issuer_of_patient_id == h.issuer_of_patient_id
        )
        values = {
            "patient_id": h.patient_id,
            "issuer_of_patient_id": h.issuer_of_patient_id,
            "patient_name": h.patient_name,
            "patient_birth_date": h.patient_birth_date,
            "patient_sex": h.patient_sex,
        }
        return self._get_or_create(s, Patient, key, values)[0]

    def _ensure_study(self, s: Session, h: InstanceHeader, patient_pk: int, now: datetime) -> int:
        values = {
            "study_instance_uid": h.study_instance_uid,
            "patient_pk": patient_pk,
            "study_date": h.study_date,
            "study_time": h.study_time,
            "accession_number": h.accession_number,
            "accession_number_issuer": h.accession_number_issuer,
            "referring_physician_name": h.referring_physician_name,
            "study_description": h.study_description,
            "study_id": h.study_id,
            "created_at": now,
            "updated_at": now,
            "ins_matricule": h.ins_matricule,
            "ins_oid": h.ins_oid,
            "ins_refusal": h.ins_refusal,
        }
        pk, created = self._get_or_create(
            s, Study, Study.study_instance_uid == h.study_instance_uid, values
        )
        if not created and h.ins_matricule:
            # A study first seen without a usable INS gets it from a later instance.
            s.execute(
                update(Study)
                .where((Study.id == pk) & (Study.ins_matricule == ""))
                .values(ins_matricule=h.ins_matricule, ins_oid=h.ins_oid, ins_refusal="")
            )
        return pk

    def _ensure_series(self, s: Session, h: InstanceHeader, study_pk: int, now: datetime) -> int:
        values = {
            "series_instance_uid": h.series_instance_uid,
            "study_pk": study_pk,
            "modality": h.modality,
            "series_number": h.series_number,
            "series_description": h.series_description,
            "body_part_examined": h.body_part_examined,
            "performed_procedure_step_start_date": h.performed_procedure_step_start_date,
            "performed_procedure_step_start_time": h.performed_procedure_step_start_time,
            "created_at": now,
        }
        return self._get_or_create(
            s, Series, Series.series_instance_uid == h.series_instance_uid, values
        )[0]

    @staticmethod
    def _drop_if_empty(s: Session, series_pk: int) -> None:
        s.flush()
        if s.scalar(select(func.count()).where(Instance.series_pk == series_pk)):
            return
        study_pk = s.scalar(select(Series.study_pk).where(Series.id == series_pk))
        s.execute(delete(Series).where(Series.id == series_pk))
        if study_pk is not None and not s.scalar(
            select(func.count()).select_from(Series).where(Series.study_pk == study_pk)
        ):
            s.execute(delete(Study).where(Study.id == study_pk))
