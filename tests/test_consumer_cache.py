"""The consumer's cache bookkeeping (R17, gateway/consumer/cache.py) and the KOS reading
(gateway/consumer/retrieve.py), on both index back-ends: eviction order, the studies in use
and being retrieved kept, the limit, the sweep of interrupted retrievals, purge; a document
that is not a usable KOS is refused with a reason."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from test_kos import build

from gateway.consumer.cache import CacheFull, StudyCache, purge
from gateway.consumer.retrieve import KosUnreadable, read_kos
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.models import ConsumerRetrieval
from gateway.index.store import InstanceIndex

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def index(database_url: str) -> InstanceIndex:
    engine = create_index_engine(database_url)
    upgrade(engine)
    idx = InstanceIndex(engine)
    yield idx
    engine.dispose()


def _row(index: InstanceIndex, root: Path, size: int, used: datetime, state: str = "complete",
         viewed: datetime | None = None) -> int:
    with index.write() as s:
        row = ConsumerRetrieval(session_sha256="s" * 64, subject="899999000002",
                                kos_uid="1.2.3", study_instance_uid="1.2.3.4",
                                patient_ins="279035121518989", state=state, series="[]",
                                bytes=size, created_at=used, updated_at=used,
                                last_used_at=used, viewed_at=viewed)
        s.add(row)
        s.flush()
        rid = row.id
    folder = root / str(rid) / "1.2.3.4.1"
    folder.mkdir(parents=True)
    (folder / "1.2.3.4.1.1.dcm").write_bytes(b"x" * size)
    return rid


def _ids(index: InstanceIndex) -> set[int]:
    with index.read() as s:
        return set(s.scalars(ConsumerRetrieval.__table__.select().with_only_columns(
            ConsumerRetrieval.id)))


def test_eviction_order_in_use_and_limit(index: InstanceIndex, tmp_path: Path) -> None:
    root = tmp_path / "consumer-cache"
    now = T0 + timedelta(hours=1)
    cache = StudyCache(index, root, 1000, timedelta(minutes=30), now=lambda: now)
    old_in_use = _row(index, root, 300, T0, viewed=now - timedelta(minutes=5))
    old = _row(index, root, 300, T0 + timedelta(minutes=1))
    newer = _row(index, root, 300, T0 + timedelta(minutes=2))
    running = _row(index, root, 0, T0, state="retrieving")
    cache.start(running)
    assert cache.used() == 900
    assert cache.make_room(running, 100) == []  # fits exactly
    # 200 more: the least recently used not in use goes (old), not old_in_use (viewed).
    assert cache.make_room(running, 200) == [old]
    assert not (root / str(old)).exists() and (root / str(old_in_use)).exists()
    # 600 more: even without newer it would not fit: full, and nothing is evicted for nothing.
    with pytest.raises(CacheFull):
        cache.make_room(running, 600)
    assert _ids(index) == {old_in_use, newer, running}
    # 300 more: newer goes; the one being retrieved and the one in use stay.
    assert cache.make_room(running, 300) == [newer]
    assert _ids(index) == {old_in_use, running}
    assert cache.finish(running) == 600


def test_sweep_and_purge(index: InstanceIndex, tmp_path: Path) -> None:
    root = tmp_path / "consumer-cache"
    cache = StudyCache(index, root, 10_000, timedelta(minutes=30), now=lambda: T0)
    done = _row(index, root, 10, T0)
    stopped = _row(index, root, 10, T0, state="retrieving")
    (root / str(stopped) / ".partial").mkdir()
    (root / "stray").mkdir()
    assert cache.sweep_interrupted() == 1
    with index.read() as s:
        assert s.get(ConsumerRetrieval, stopped).state == "failed"
    assert not (root / str(stopped) / ".partial").exists()
    assert purge(index, root) == (2, 20)
    assert _ids(index) == set() and list(root.iterdir()) == []
    del done


def test_read_kos_and_refusals() -> None:
    kos = build(series_count=2, per_series=2)
    buf = io.BytesIO()
    kos.save_as(buf, enforce_file_format=True)
    plan = read_kos(buf.getvalue())
    assert plan.kos_uid == "2.25.1" and plan.patient_id == "279035121518989"
    assert len(plan.series) == 2 and all(len(s.sop_uids) == 2 for s in plan.series)
    assert all(s.retrieve_url.startswith("https://drimbox.example.fr/") for s in plan.series)
    with pytest.raises(KosUnreadable, match="pas un objet DICOM"):
        read_kos(b"%PDF-1.4 not dicom")
    other = Dataset()
    other.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    other.SOPInstanceUID = "1.2.3"
    buf = io.BytesIO()
    other.file_meta = Dataset()
    other.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    other.file_meta.MediaStorageSOPClassUID = other.SOPClassUID
    other.file_meta.MediaStorageSOPInstanceUID = other.SOPInstanceUID
    other.save_as(buf, enforce_file_format=True)
    with pytest.raises(KosUnreadable, match="pas un KOS"):
        read_kos(buf.getvalue())


def test_finished_bytes_read_once_not_per_instance(index: InstanceIndex, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The finished studies' byte sum is read from the index once, not for every instance a
    retrieval keeps; read again after STORED_BYTES_TTL (another process's change), when a
    retrieval finishes, and before any decision to evict or refuse (decided on the index's
    figures, not the kept one)."""
    from sqlalchemy import delete, event

    from gateway.consumer import cache as cache_module

    sums: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001, ANN002
        if "sum(" in statement.lower():
            sums.append(statement)

    event.listen(index.engine, "before_cursor_execute", count)
    clock = [1000.0]
    monkeypatch.setattr(cache_module.time, "monotonic", lambda: clock[0])
    root = tmp_path / "consumer-cache"
    cache = StudyCache(index, root, 1000, timedelta(minutes=30), now=lambda: T0)
    first = _row(index, root, 300, T0)
    running = _row(index, root, 0, T0, state="retrieving")
    cache.start(running)
    for _ in range(50):  # 50 instances of 2 bytes
        assert cache.make_room(running, 2) == []
    assert len(sums) == 1 and cache.used() == 400

    # Another process finishes a study of 200 bytes and purges the first one. The kept figure
    # (300) would make 650 more bytes overflow: the decision reads the index (200 finished +
    # 100 running + 650 fit) and evicts nothing.
    other = _row(index, root, 200, T0 + timedelta(minutes=1))
    with index.write() as s:
        s.execute(delete(ConsumerRetrieval).where(ConsumerRetrieval.id == first))
    sums.clear()
    assert cache.make_room(running, 650) == []
    assert len(sums) == 1 and _ids(index) == {other, running}
    # From the fresh figure on: kept again until the TTL has passed.
    sums.clear()
    cache.make_room(running, 1)
    assert sums == []
    with index.write() as s:
        s.get(ConsumerRetrieval, other).bytes = 100  # changed behind its back
    clock[0] += cache_module.STORED_BYTES_TTL + 1
    cache.make_room(running, 1)
    assert len(sums) == 1 and cache.used() == 100 + 752

    # The retrieval finishes: its row's bytes join the sum, read again at the next instance.
    with index.write() as s:
        row = s.get(ConsumerRetrieval, running)
        row.bytes, row.state = 752, "complete"
    assert cache.finish(running) == 752
    second = _row(index, root, 0, T0, state="retrieving")
    cache.start(second)
    sums.clear()
    assert cache.make_room(second, 10) == []
    assert len(sums) == 1 and cache.used() == 100 + 752 + 10
    event.remove(index.engine, "before_cursor_execute", count)


def test_part_header_from_the_first_bytes_never_cut(tmp_path: Path) -> None:
    """A retrieved part's UIDs are read from its first bytes when those hold the whole header
    (no file read), from the file otherwise: a head cut anywhere, even inside a UID, never
    gives a shortened UID (a shorter UID could name another instance of the KOS)."""
    from dicom_factory import make_instance

    from gateway.consumer.retrieve import part_header

    ds = make_instance(rows=256, cols=256, sop_uid="1.2.826.0.1.3680043.10.1257.12345678901")
    path = tmp_path / "part.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    want = (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID)
    pixels = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    missing = tmp_path / "not-written"  # reading it would raise: the header came from memory
    got = part_header(data[:pixels + 64], len(data), missing)
    assert (got.SOPInstanceUID, got.SeriesInstanceUID, got.StudyInstanceUID) == want
    sop_at = data.index(str(ds.SOPInstanceUID).encode())
    for cut in (200, sop_at + 5, sop_at + len(str(ds.SOPInstanceUID)) - 1, pixels, pixels + 4):
        got = part_header(data[:cut], len(data), path)
        assert (got.SOPInstanceUID, got.SeriesInstanceUID, got.StudyInstanceUID) == want, cut
        with pytest.raises(OSError):
            part_header(data[:cut], len(data), missing)
    # A part that is whole in memory (no pixel data to stop at) is not read again.
    small = make_instance(sop_class="1.2.840.10008.5.1.4.1.1.104.1")  # encapsulated PDF
    small_path = tmp_path / "small.dcm"
    small.save_as(small_path, enforce_file_format=True)
    whole = small_path.read_bytes()
    assert part_header(whole, len(whole), missing).SOPInstanceUID == small.SOPInstanceUID
