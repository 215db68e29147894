"""Unit tests of the fast pieces of the ingest path (the ingest benchmark's work).

Each fast piece is checked against the slow reference it replaced: the file meta encoder
against pydicom's writer, the raw header reader against pydicom's converted values, the
group commit against its durability contract (nobody returns before the commit holding its
row, directories are synced before that commit), the batched index writes against both
back-ends.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from dicom_factory import iter_corpus, make_instance, to_bytes
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.identity.codecs import ins_from_dicom
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.group_commit import GroupCommitter
from gateway.index.store import InstanceIndex, StoredFile
from gateway.ingest.header import InstanceHeader, read_header
from gateway.ingest.ingestor import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    file_meta_bytes,
)
from gateway.ingest.storage import FileStore

# -- file meta ---------------------------------------------------------------------------


def _pydicom_file_meta(sop_class: str, sop_instance: str, ts: str, source: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source and len(source) <= 16 and source.isprintable():
        meta.SourceApplicationEntityTitle = source
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "args",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1", "STORESCU"),
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2", "ODD"),
        ("1.2.840.10008.5.1.4.1.1.4", "2.25.1234567", "1.2.840.10008.1.2.5", ""),
        ("1.2", "1.2.3.45", "1.2.840.10008.1.2.4.50", "import"),
        ("1.2", "1.2.3", "1.2.840.10008.1.2.1", "SIXTEEN_CHARS_AE"),
        ("1.2", "1.2.3", "1.2.840.10008.1.2.1", "SEVENTEEN_CHARS_A"),
    ],
)
def test_file_meta_matches_pydicom(args: tuple[str, str, str, str]) -> None:
    assert file_meta_bytes(*args) == _pydicom_file_meta(*args)


# -- header ------------------------------------------------------------------------------


def _reference_header(data: bytes, ts: str) -> InstanceHeader:
    """What read_header returned before the raw fast path: pydicom's converted values."""
    uid = UID(ts)
    ds = read_dataset(io.BytesIO(data), uid.is_implicit_VR, uid.is_little_endian)

    def text(kw: str) -> str:
        v = ds.get(kw)
        return "" if v is None else str(v).strip()

    def num(kw: str) -> int | None:
        v = ds.get(kw)
        try:
            return None if v in (None, "") else int(v)
        except (TypeError, ValueError):
            return None

    seq = ds.get("IssuerOfAccessionNumberSequence")
    issuer = ""
    if seq:
        issuer = str(seq[0].get("LocalNamespaceEntityID", "") or "").strip() or str(
            seq[0].get("UniversalEntityID", "") or ""
        ).strip()
    return InstanceHeader(
        sop_class_uid=text("SOPClassUID"),
        sop_instance_uid=text("SOPInstanceUID"),
        study_instance_uid=text("StudyInstanceUID"),
        series_instance_uid=text("SeriesInstanceUID"),
        patient_id=text("PatientID"),
        issuer_of_patient_id=text("IssuerOfPatientID"),
        patient_name=text("PatientName"),
        patient_birth_date=text("PatientBirthDate"),
        patient_sex=text("PatientSex"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        accession_number=text("AccessionNumber"),
        accession_number_issuer=issuer,
        referring_physician_name=text("ReferringPhysicianName"),
        study_description=text("StudyDescription"),
        study_id=text("StudyID"),
        modality=text("Modality"),
        series_number=num("SeriesNumber"),
        series_description=text("SeriesDescription"),
        body_part_examined=text("BodyPartExamined"),
        instance_number=num("InstanceNumber"),
        performed_procedure_step_start_date=text("PerformedProcedureStepStartDate"),
        performed_procedure_step_start_time=text("PerformedProcedureStepStartTime"),
        rows=num("Rows"),
        columns=num("Columns"),
        bits_allocated=num("BitsAllocated"),
        number_of_frames=num("NumberOfFrames"),
        **_reference_ins(ds),
    )


def _reference_ins(ds: Dataset) -> dict[str, str]:
    ids = ins_from_dicom(ds)
    if ids.ins is None:
        return {"ins_refusal": ids.ins_refusal or ""}
    return {"ins_matricule": ids.ins.matricule, "ins_oid": ids.ins.oid}


def _dataset_bytes(ds: Dataset) -> tuple[bytes, str]:
    raw = to_bytes(ds)
    group_len = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_len :], str(ds.file_meta.TransferSyntaxUID)


def _odd_instances() -> list[Dataset]:
    out = []
    latin = make_instance(patient_name="HÉLÈNE^ÉLODIE", transfer_syntax=ExplicitVRLittleEndian)
    latin.StudyDescription = "Scanner thoracique injecté"
    out.append(latin)
    multi = make_instance(transfer_syntax=ImplicitVRLittleEndian)
    multi.PatientName = ["DOE^JOHN", "ALIAS^JACK"]
    multi.StudyDescription = "  padded  "
    out.append(multi)
    odd = make_instance()
    odd.InstanceNumber = "12 "
    odd.SeriesNumber = None
    del odd.PatientSex
    odd.PatientID = ""
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "HOPITAL"
    odd.IssuerOfAccessionNumberSequence = [issuer]
    out.append(odd)
    return out


def test_read_header_matches_pydicom_values() -> None:
    datasets = list(iter_corpus(12, studies=2)) + _odd_instances()
    for ds in datasets:
        data, ts = _dataset_bytes(ds)
        if ts == "1.2.840.10008.1.2.1.99":  # deflated: reference would need inflating
            continue
        assert read_header(memoryview(data), ts) == _reference_header(data, ts)


def test_read_header_decodes_latin1_through_pydicom() -> None:
    data, ts = _dataset_bytes(_odd_instances()[0])
    header = read_header(data, ts)
    assert header.patient_name == "HÉLÈNE^ÉLODIE"
    assert header.study_description == "Scanner thoracique injecté"


# -- storage key paths -------------------------------------------------------------------


def test_path_of_refuses_escapes(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    expected = tmp_path.resolve() / "storage/1.2/3.4/5.6.abc.dcm"
    assert store.path_of("1.2/3.4/5.6.abc.dcm") == expected
    for bad in ("../x", "1.2/../../x", "", ".", "/etc/passwd", "1.2/../.."):
        with pytest.raises(ValueError):
            store.path_of(bad)


# -- group commit ------------------------------------------------------------------------


def _header(n: int, series: str = "1.2.3.1") -> InstanceHeader:
    return InstanceHeader("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.4.{n}", "1.2.3", series)


def _stored(n: int) -> StoredFile:
    return StoredFile("1.2.840.10008.1.2.1", f"{n:064x}", 10, f"k{n}", "T")


class _FakeIndex:
    """record_many that logs calls and can be held back to observe who waits."""

    def __init__(self, log: list) -> None:
        self.log = log
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail: set[str] = set()

    def record_many(self, items, flush=True):  # noqa: ANN001, ANN201
        self.entered.set()
        self.release.wait(10)
        self.log.append(("commit", [h.sop_instance_uid for h, _ in items]))
        return [ValueError(h.sop_instance_uid) if h.sop_instance_uid in self.fail else None
                for h, _ in items]


def test_group_commit_returns_only_after_the_commit_holding_the_row() -> None:
    log: list = []
    index = _FakeIndex(log)
    gc = GroupCommitter(index, lambda paths: log.append(("flush", sorted(map(str, paths)))))
    index.release.clear()
    returned = threading.Event()
    t = threading.Thread(target=lambda: (gc.record(_header(1), _stored(1)), returned.set()))
    t.start()
    assert index.entered.wait(5)
    time.sleep(0.1)
    assert not returned.is_set()  # commit still running: no acknowledgement possible
    index.release.set()
    t.join(5)
    assert returned.is_set()
    assert log[-1] == ("commit", ["1.2.3.4.1"])


def test_group_commit_batches_waiters_and_flushes_once_first() -> None:
    log: list = []
    index = _FakeIndex(log)
    gc = GroupCommitter(index, lambda paths: log.append(("flush", sorted(map(str, paths)))))
    index.release.clear()
    leader = threading.Thread(target=gc.record, args=(_header(0), _stored(0), Path("/d/a/0")))
    leader.start()
    assert index.entered.wait(5)
    # While the leader commits, five more arrive: they must share the next commit.
    followers = [
        threading.Thread(
            target=gc.record, args=(_header(i), _stored(i), Path(f"/d/{'ab'[i % 2]}/{i}"))
        )
        for i in range(1, 6)
    ]
    for f in followers:
        f.start()
    deadline = time.monotonic() + 5
    while len(gc._queue) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    index.release.set()
    for th in [leader, *followers]:
        th.join(5)
    assert log[0] == ("flush", ["/d/a/0"])
    assert log[1] == ("commit", ["1.2.3.4.0"])
    # one flush for the five files of the second group, before its commit
    assert log[2] == ("flush", ["/d/a/2", "/d/a/4", "/d/b/1", "/d/b/3", "/d/b/5"])
    assert log[3][0] == "commit" and sorted(log[3][1]) == [f"1.2.3.4.{i}" for i in range(1, 6)]
    assert gc.batches == 2


def test_group_commit_leader_waits_briefly_for_rows_on_their_way() -> None:
    """Two associations of one DICOM worker: the leader waits (at most ``gather_delay``) for
    the row of an ingest already under way, so both share one flush; with none on its way
    it does not wait; a row that never comes costs at most the delay."""
    log: list = []
    index = _FakeIndex(log)
    index.release.set()
    gc = GroupCommitter(index, lambda paths: log.append(("flush", sorted(map(str, paths)))))
    gc.gather_delay = 0.5
    on_the_way = [1]
    gc.in_flight = lambda: on_the_way[0]

    def second() -> None:
        time.sleep(0.1)
        on_the_way[0] = 0  # its row is queued next
        gc.record(_header(1), _stored(1), Path("/d/a/1"))

    other = threading.Thread(target=second)
    other.start()
    started = time.monotonic()
    gc.record(_header(0), _stored(0), Path("/d/a/0"))
    other.join(5)
    assert log[0] == ("flush", ["/d/a/0", "/d/a/1"])  # one flush for both
    assert gc.batches == 1
    assert time.monotonic() - started < 0.45

    log.clear()
    started = time.monotonic()
    gc.record(_header(2), _stored(2), Path("/d/a/2"))  # nothing on its way: no wait
    assert time.monotonic() - started < 0.2
    on_the_way[0] = 1  # announced, never comes (refused): the leader waits the delay only
    started = time.monotonic()
    gc.record(_header(3), _stored(3), Path("/d/a/3"))
    assert 0.45 <= time.monotonic() - started < 2
    assert [e[0] for e in log] == ["flush", "commit", "flush", "commit"]


def test_group_commit_errors_are_per_row_and_sync_failure_commits_nothing() -> None:
    log: list = []
    index = _FakeIndex(log)
    index.fail = {"1.2.3.4.2"}
    gc = GroupCommitter(index, lambda dirs: None)
    assert gc.record(_header(1), _stored(1)) is None
    with pytest.raises(ValueError):
        gc.record(_header(2), _stored(2))

    def broken_sync(paths) -> None:  # noqa: ANN001
        raise OSError("EIO")

    gc2 = GroupCommitter(index, broken_sync)
    before = len(log)
    with pytest.raises(OSError):
        gc2.record(_header(3), _stored(3), Path("/d"))
    assert len(log) == before  # no commit after a failed flush


# -- batched index writes (both back-ends) -----------------------------------------------


def _index(url: str) -> InstanceIndex:
    engine = create_index_engine(url)
    upgrade(engine)
    return InstanceIndex(engine)


def test_record_many_one_commit_duplicates_and_stale_cache(database_url: str) -> None:
    index = _index(database_url)
    try:
        # The first row of a series takes the full path and fills the parent cache.
        assert index.record(_header(0), _stored(0)) is None
        batch = [(_header(i), _stored(i)) for i in range(1, 6)]
        batch.append((_header(3), _stored(3)))  # same instance twice in one batch
        results = index.record_many(batch)
        assert results[:5] == [None] * 5
        assert results[5] is not None and results[5].storage_key == "k3"  # already indexed
        assert index.counts().instances == 6

        # A stale cached parent (series deleted elsewhere) falls back to the full path.
        with index.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM instances")
            conn.exec_driver_sql("DELETE FROM series")
        results = index.record_many([(_header(10), _stored(10)), (_header(11), _stored(11))])
        assert results == [None, None]
        counts = index.counts()
        assert (counts.series, counts.instances) == (1, 2)
    finally:
        index.engine.dispose()


def test_group_commit_with_real_index_concurrent(database_url: str) -> None:
    index = _index(database_url)
    try:
        gc = GroupCommitter(index, lambda dirs: None)
        errors: list[BaseException] = []

        def send(base: int) -> None:
            try:
                for i in range(base, base + 25):
                    gc.record(_header(i, series=f"1.2.3.{base}"), _stored(i))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(b,)) for b in (100, 200, 300, 400)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        counts = index.counts()
        assert (counts.series, counts.instances) == (4, 100)
        assert gc.batches <= 100
    finally:
        index.engine.dispose()


def test_ingest_flushes_before_commit_and_returns_after(
    database_url: str, tmp_path: Path
) -> None:
    """The acknowledgement rule at the Ingestor level, with group commit in the path: one
    flush of the file system (the file, its directory and, SQLite beside the data, the
    earlier commits), then the commit, flushed by itself only where the flush does not
    cover the index (PostgreSQL)."""
    from gateway.ingest.ingestor import Incoming, Ingestor

    store = FileStore(tmp_path / "data")
    store.prepare()
    index = _index(database_url)
    order: list[str] = []
    real_flush, real_many = store.flush, index.record_many

    def flush() -> None:
        order.append("flush")
        real_flush()

    def record_many(items, flush=True):  # noqa: ANN001, ANN201
        order.append(f"commit flush={flush}")
        return real_many(items, flush=flush)

    store.flush = flush  # type: ignore[method-assign]
    index.record_many = record_many  # type: ignore[method-assign]
    try:
        ingestor = Ingestor(store, index)
        ds = make_instance()
        data, ts = _dataset_bytes(ds)
        result = ingestor.ingest(Incoming(dataset=data, transfer_syntax_uid=ts, source="T"))
        stored = index.find_instance(str(ds.SOPInstanceUID))
        assert stored is not None  # committed before ingest() returned
        path = store.path_of(stored.storage_key)
        assert path.is_file() and path.read_bytes().endswith(data)
        postgres = database_url.startswith("postgresql")
        assert order == ["flush", f"commit flush={postgres}"]
        assert result.outcome.value == "stored"
        mark_files = list((store.root / "marks").glob("*.mark"))
        assert len(mark_files) == (0 if postgres else 1)  # rows rebuilt from files if lost
        ingestor.close()
        assert not list((store.root / "marks").glob("*.mark"))  # clean stop: nothing to recover
    finally:
        index.engine.dispose()


def test_the_recovery_time_of_a_c_store_comes_before_its_file(tmp_path: Path,
                                                              monkeypatch) -> None:  # noqa: ANN001
    """A C-STORE's file is written on a helper thread while its header is read; the time the
    recovery mark moves up to (``written_at``) is taken before that write, so recovery, which
    looks at files modified since a mark, always sees the file (gateway.ingest.recovery).
    The header read is slowed down so that a time taken after it would come 0.3 s late."""
    import os
    import time

    import gateway.ingest.ingestor as ingestor_module
    from gateway.index.group_commit import GroupCommitter
    from gateway.ingest.ingestor import Incoming, Ingestor

    store = FileStore(tmp_path / "data")
    store.prepare()
    index = _index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    real_read = ingestor_module.read_header

    def slow_read(*args):  # noqa: ANN002, ANN202
        time.sleep(0.3)
        return real_read(*args)

    monkeypatch.setattr(ingestor_module, "read_header", slow_read)
    seen: list[tuple[Path, float]] = []
    real_record = GroupCommitter.record

    def record(self, header, stored, path, written_at):  # noqa: ANN001, ANN202
        seen.append((path, written_at))
        return real_record(self, header, stored, path, written_at)

    monkeypatch.setattr(GroupCommitter, "record", record)
    ds = make_instance()
    data, ts = _dataset_bytes(ds)
    ingestor = Ingestor(store, index)
    try:
        ingestor.ingest(Incoming(dataset=data, transfer_syntax_uid=ts, source="T",
                                 expected_sop_class_uid=str(ds.SOPClassUID),
                                 expected_sop_instance_uid=str(ds.SOPInstanceUID)))
    finally:
        ingestor.close()
    (path, written_at), = seen
    # the file system's clock is coarse (a few ms behind time.time())
    assert os.stat(path).st_mtime >= written_at - 0.05
