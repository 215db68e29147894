"""Pure logic of the ingest path: UID checks, storage keys, durable writes, header reading."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest
from dicom_factory import dataset_bytes, make_instance
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)

from gateway.ingest.header import HeaderError, read_header
from gateway.ingest.storage import FileStore, StorageFullError, storage_key
from gateway.ingest.uids import is_conformant_uid, is_safe_uid

SHA = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("uid", "safe", "conformant"),
    [
        ("1.2.840.10008.1.2", True, True),
        ("1.2.840.010008", True, False),  # leading zero: accepted, not conformant
        ("0.0", True, True),
        ("1" * 64, True, True),
        ("1" * 65, False, False),
        ("", False, False),
        ("1..2", False, False),
        ("1.2.", False, False),
        ("../../etc/passwd", False, False),
        ("1.2/3", False, False),
        ("1.2.3\x00", False, False),
        (None, False, False),
    ],
)
def test_uid_rules(uid: object, safe: bool, conformant: bool) -> None:
    assert is_safe_uid(uid) is safe
    assert is_conformant_uid(uid) is conformant


def test_storage_key_refuses_anything_but_uids_and_hashes() -> None:
    assert storage_key("1.2", "1.2.3", "1.2.3.4", SHA) == f"1.2/1.2.3/1.2.3.4.{SHA[:12]}.dcm"
    for bad in ("..", "1.2/..", "/etc", "1.2 ", "x"):
        with pytest.raises(ValueError):
            storage_key(bad, "1.2.3", "1.2.3.4", SHA)
        with pytest.raises(ValueError):
            storage_key("1.2", "1.2.3", bad, SHA)
    with pytest.raises(ValueError):
        storage_key("1.2", "1.2.3", "1.2.3.4", "../" + SHA[3:])


def test_path_of_stays_inside_the_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    with pytest.raises(ValueError):
        store.path_of("../index.sqlite")


def test_put_is_atomic_and_staging_cleared(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    (store.staging_dir / "crash-leftover.tmp").write_bytes(b"partial")
    store.prepare()
    assert list(store.staging_dir.iterdir()) == []
    key = storage_key("1.2", "1.2.3", "1.2.3.4", SHA)
    assert store.put(key, [b"abc", memoryview(b"def")]) == 6
    assert store.path_of(key).read_bytes() == b"abcdef"
    assert list(store.staging_dir.iterdir()) == []
    store.delete(key)
    assert not store.exists(key)


def test_disk_full_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data) -> int:  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    key = storage_key("1.2", "1.2.3", "1.2.3.4", SHA)
    with pytest.raises(StorageFullError):
        store.put(key, [b"a" * 10, b"b" * 10])
    assert not store.exists(key)
    assert list(store.staging_dir.iterdir()) == []


@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless]
)
def test_read_header_from_raw_dataset(tmp_path: Path, ts: str) -> None:
    ds = make_instance(sop_class=MRImageStorage, transfer_syntax=ts, accession="A42",
                       instance_number=7, series_number=3)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    h = read_header(dataset_bytes(path), ts)
    assert h.sop_instance_uid == ds.SOPInstanceUID
    assert h.study_instance_uid == ds.StudyInstanceUID
    assert h.sop_class_uid == MRImageStorage
    assert (h.patient_id, h.issuer_of_patient_id, h.patient_name) == (
        "248092700000000", "ASIP-SANTE-INS-NIR", "DUPONT^JEAN")
    assert (h.accession_number, h.modality, h.instance_number, h.series_number) == ("A42", "MR", 7, 3)


def test_read_header_refuses_garbage() -> None:
    rng = random.Random(2)
    for _ in range(50):
        junk = bytes(rng.getrandbits(8) for _ in range(1000))
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            with pytest.raises(HeaderError):
                read_header(junk, ts)
    with pytest.raises(HeaderError):
        read_header(b"", ExplicitVRLittleEndian)
    with pytest.raises(HeaderError):
        read_header(b"not deflate", DeflatedExplicitVRLittleEndian)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_read_header_qido_attributes_without_pixel_data(tmp_path: Path, ts: str) -> None:
    """Rows, Columns, BitsAllocated, NumberOfFrames and the performed procedure step
    start are indexed for QIDO-RS; the pixel data itself is never read (a dataset cut right
    after the Pixel Data tag still parses)."""
    ds = make_instance(sop_class=MRImageStorage, transfer_syntax=ts, rows=32, cols=48)
    ds.NumberOfFrames = 1
    ds.PerformedProcedureStepStartDate = "20261119"
    ds.PerformedProcedureStepStartTime = "0930"
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = dataset_bytes(path)
    h = read_header(raw, ts)
    assert (h.rows, h.columns, h.bits_allocated, h.number_of_frames) == (32, 48, 16, 1)
    assert (h.performed_procedure_step_start_date, h.performed_procedure_step_start_time) == (
        "20261119", "0930")
    pixel_tag = bytes.fromhex("e07f1000")  # (7FE0,0010) little endian
    element_header = 8 if ts == ImplicitVRLittleEndian else 12  # tag, (VR,) length
    cut = raw[: raw.rindex(pixel_tag) + element_header]
    assert read_header(cut, ts).rows == 32


def test_a_full_disk_when_placing_a_staged_file_is_said_as_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C-STORE path stages the file first and places it after (``FileStore.place``): a
    full disk there is :class:`StorageFullError` too (the DIMSE face answers Out of
    Resources), as it is when the file is written in one go (``put``)."""
    store = FileStore(tmp_path)
    store.prepare()
    tmp, _ = store.stage([b"a" * 10])
    key = storage_key("1.2.3", "1.2.3.4", "1.2.3.4.5", "ab" * 32)

    def full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "makedirs", full)
    with pytest.raises(StorageFullError):
        store.place(tmp, key)
    assert not store.exists(key)
