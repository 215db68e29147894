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
