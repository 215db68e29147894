"""The index on both back-ends (SQLite WAL and PostgreSQL): schema, upserts, replacement."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.index.engine import create_index_engine, current_revision, head_revision, upgrade
from gateway.index.models import Base
from gateway.index.store import InstanceIndex, StoredFile
from gateway.ingest.header import InstanceHeader


@pytest.fixture
def index(database_url: str) -> InstanceIndex:
    engine = create_index_engine(database_url)
    upgrade(engine)
    yield InstanceIndex(engine)
    engine.dispose()


def header(n: int, study: str = "1.2.3", series: str = "1.2.3.1") -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"1.2.3.1.{n}",
        study_instance_uid=study,
        series_instance_uid=series,
        patient_id="248092700000000",
        issuer_of_patient_id="ASIP-SANTE-INS-NIR",
        patient_name="DUPONT^JEAN",
        modality="CT",
        instance_number=n,
    )


def stored(n: int, sha: str = "a") -> StoredFile:
    return StoredFile("1.2.840.10008.1.2.1", sha * 64, 100 + n, f"k/{n}.{sha}", "TEST")


def test_migrations_match_the_models(index: InstanceIndex) -> None:
    """`drimbox db upgrade` builds exactly the schema the code uses (no missing migration)."""
    assert current_revision(index.engine) == head_revision() == "0013"
    with index.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_record_and_find(index: InstanceIndex) -> None:
    assert index.record(header(1), stored(1)) is None
    assert index.record(header(2), stored(2)) is None
    found = index.find_instance("1.2.3.1.2")
    assert found is not None
    assert (found.study_instance_uid, found.series_instance_uid, found.size) == (
        "1.2.3",
        "1.2.3.1",
        102,
    )
    assert index.find_instance("9.9") is None
    c = index.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (1, 1, 1, 2)


def test_replacement_switches_row_and_drops_emptied_series(index: InstanceIndex) -> None:
    index.record(header(1), stored(1, "a"))
    moved = replace(header(1), study_instance_uid="1.2.4", series_instance_uid="1.2.4.1")
    previous = index.record(moved, stored(1, "b"))
    assert previous is not None and previous.storage_key == "k/1.a"
    now = index.find_instance("1.2.3.1.1")
    assert now is not None and now.storage_key == "k/1.b" and now.study_instance_uid == "1.2.4"
    c = index.counts()
    assert (c.studies, c.series, c.instances) == (1, 1, 1)


def test_concurrent_writers_create_one_study(index: InstanceIndex) -> None:
    """Eight threads racing to create the same patient/study/series: one of each, no error."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(10):
                n = t * 100 + i
                index.record(header(n), stored(n))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors and "IntegrityError" in type(errors[0]).__name__:
        pytest.fail(f"upsert race not handled: {errors[0]}")
    assert not errors, errors
    c = index.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (1, 1, 1, 80)


def test_mark_stable_and_reopen(index: InstanceIndex) -> None:
    """Quiet studies become stable once; a new instance reopens them."""
    import time

    from gateway.manifest.stability import StabilityMonitor

    index.record(header(1), stored(1))
    assert index.mark_stable(3600) == []  # not quiet for an hour yet
    time.sleep(0.02)
    assert index.mark_stable(0.01) == ["1.2.3"]
    assert index.mark_stable(0.01) == []  # announced once
    time.sleep(0.02)
    index.record(header(2), stored(2))  # a new instance reopens the study
    assert index.mark_stable(3600) == []
    seen: list[list[str]] = []
    monitor = StabilityMonitor(index, quiet_seconds=0.01)
    monitor.subscribe(lambda uids: 1 / 0)  # a failing listener does not stop the others
    monitor.subscribe(seen.append)
    time.sleep(0.02)
    assert monitor.check_once() == ["1.2.3"]
    assert seen == [["1.2.3"]]


def test_fast_insert_writes_the_row_the_orm_reads(index: InstanceIndex) -> None:
    """The ingest's precompiled insert (gateway.index.prepared.PreparedWrite) stores every
    column as the ORM would: the row read back through the ORM has each value, the
    timestamps as aware datetimes, and the study's ``updated_at`` moves; a second insert of
    the same SOP Instance UID is told apart (nothing written)."""
    from sqlalchemy import select

    from gateway.index.models import Instance, Study

    index.record(header(1), stored(1))  # the series' parents, cached
    with index.read() as s:
        before = s.scalar(select(Study.updated_at))
    h = replace(header(2), rows=512, columns=256, bits_allocated=16, number_of_frames=3)
    assert index.record_many([(h, stored(2, "b"))], flush=False) == [None]
    with index.read() as s:
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == "1.2.3.1.2")).one()
        after = s.scalar(select(Study.updated_at))
        values = {c: getattr(row, c) for c in (
            "sop_class_uid", "instance_number", "transfer_syntax_uid", "size", "sha256",
            "storage_key", "source", "rows", "columns", "bits_allocated", "number_of_frames",
            "evicted_at")}
        received = row.received_at
    assert values == {
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "instance_number": 2,
        "transfer_syntax_uid": "1.2.840.10008.1.2.1", "size": 102, "sha256": "b" * 64,
        "storage_key": "k/2.b", "source": "TEST", "rows": 512, "columns": 256,
        "bits_allocated": 16, "number_of_frames": 3, "evicted_at": None}
    assert received.utcoffset() is not None or index.engine.dialect.name == "sqlite"
    assert after > before
    found = index.find_instance("1.2.3.1.2")
    assert found is not None and (found.evicted, found.source, found.sha256) == (
        False, "TEST", "b" * 64)
    # the same UID again: the fast insert writes nothing and record() decides (a replacement)
    previous = index.record_many([(h, stored(2, "c"))], flush=False)[0]
    assert previous is not None and previous.sha256 == "b" * 64
    assert index.counts().instances == 2


def _sqlite_writers(tmp_path):  # noqa: ANN001, ANN202
    """Two engines on one SQLite index (as two processes see it), migrated."""
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    first, second = create_index_engine(url), create_index_engine(url)
    upgrade(first)
    return first, second


def _writer_in_a_thread(engine, events: list[str], began: str):  # noqa: ANN001, ANN202
    """A writer Connection of ``engine`` in a thread of its own, started: ``began`` is
    appended to ``events`` once it holds the writers' lock."""
    import threading

    def write() -> None:
        with engine.execution_options(writer=True).connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE: waits for the file lock
            events.append(began)
            conn.commit()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_raw_write_takes_its_turn_with_the_other_writers(tmp_path) -> None:  # noqa: ANN001
    """The ingest's group commit runs on a pooled DBAPI connection (``begin_raw_write``):
    it queues on the same writers' file lock as the engine's writer Connections, holds it
    until its connection is back in the pool, and a writer of another engine (another
    process) then goes on."""
    import threading
    import time

    from gateway.index.engine import begin_raw_write

    first, second = _sqlite_writers(tmp_path)
    other = second.execution_options(writer=True)
    events: list[str] = []

    raw = first.raw_connection()
    begin_raw_write(first, raw)
    assert raw.info["writer_lock_held"]
    thread = _writer_in_a_thread(second, events, "second began")
    time.sleep(0.3)
    assert events == []  # queued behind the raw writer, though it has committed
    raw.commit()
    time.sleep(0.2)
    assert events == []  # the lock goes with the connection's return to the pool
    events.append("first returned")
    raw.close()
    thread.join(5)
    assert events == ["first returned", "second began"]

    # and a raw writer waits for a Connection writer
    events.clear()
    with other.connect() as conn:
        conn.exec_driver_sql("SELECT 1")

        def raw_writer() -> None:
            r = first.raw_connection()
            try:
                begin_raw_write(first, r)
                events.append("raw began")
                r.commit()
            finally:
                r.close()

        thread = threading.Thread(target=raw_writer)
        thread.start()
        time.sleep(0.3)
        assert events == []
        events.append("connection done")
        conn.commit()
    thread.join(5)
    assert events == ["connection done", "raw began"]


def test_writers_take_turns_and_a_nested_writer_does_not_wait_for_itself(tmp_path) -> None:  # noqa: ANN001
    """SQLite writers of the gateway queue on ``index.sqlite-writer.lock`` (woken at once,
    instead of SQLite's sleep-and-retry): a second engine's writer (another process's) waits
    until the first one's connection is back in the pool; a thread writing through a second
    connection while its first transaction is open is not made to wait for itself (SQLite's
    own lock answers it, as it did before the file lock)."""
    import time

    from sqlalchemy.exc import OperationalError

    first, second = _sqlite_writers(tmp_path)
    assert (tmp_path / "index.sqlite-writer.lock").exists()
    writer = first.execution_options(writer=True)
    other = second.execution_options(writer=True)
    events: list[str] = []

    with writer.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        thread = _writer_in_a_thread(second, events, "second began")
        time.sleep(0.3)
        assert events == []  # queued behind the first writer
        events.append("first done")
        conn.commit()
    thread.join(5)
    assert events == ["first done", "second began"]

    # nested in one thread: the inner BEGIN IMMEDIATE meets SQLite's lock (busy timeout
    # shortened here), it does not hang on the file lock
    with writer.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        nested = other.execution_options(writer=True)
        with nested.connect() as inner:
            inner.connection.driver_connection.execute("PRAGMA busy_timeout=200")
            with pytest.raises(OperationalError, match="locked"):
                inner.exec_driver_sql("SELECT 1")
        conn.commit()
    first.dispose()
    second.dispose()
