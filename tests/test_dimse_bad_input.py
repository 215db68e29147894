"""Bad C-STORE input gets the status the conformance statement promises, with an Error
Comment, and leaves the store and the index exactly as they were.

The requests come from a real pynetdicom SCU over TCP to ``drimbox serve``; :mod:`dimse_client`
sends dataset bytes and command values chosen by the test. Each test runs on both index
back-ends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BACKENDS, Gateway, _pg_database
from dicom_factory import TEST_ROOT, dataset_bytes, make_instance
from dimse_client import (
    all_paths,
    associate,
    encode_dataset,
    raw_c_store,
    snapshot,
    store_dataset,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

CONTEXTS = [CTImageStorage, MRImageStorage]


def _ct(**kw: object) -> Dataset:
    return make_instance(sop_class=CTImageStorage, **kw)  # type: ignore[arg-type]


def _without(keyword: str) -> tuple[Dataset, str]:
    ds = _ct()
    uid = str(ds.SOPInstanceUID)
    delattr(ds, keyword)
    return ds, uid


def _garbage() -> dict:
    uid = generate_uid(TEST_ROOT)
    return dict(context=CTImageStorage, sop_class=CTImageStorage, sop_instance=uid,
                data=b"\xff" * 256)


def _text_garbage() -> dict:
    uid = generate_uid(TEST_ROOT)
    return dict(context=CTImageStorage, sop_class=CTImageStorage, sop_instance=uid,
                data=b"this is not a DICOM data set, only some text of even length!!")


def _missing_sop_instance() -> dict:
    ds, uid = _without("SOPInstanceUID")
    return dict(context=CTImageStorage, sop_class=CTImageStorage, sop_instance=uid,
                data=encode_dataset(ds))


def _request_without_sop_instance() -> dict:
    ds = _ct()
    return dict(context=CTImageStorage, sop_class=CTImageStorage, sop_instance=None,
                data=encode_dataset(ds))


def _missing_study() -> dict:
    ds, uid = _without("StudyInstanceUID")
    return dict(context=CTImageStorage, sop_class=CTImageStorage, sop_instance=uid,
                data=encode_dataset(ds))


def _bad_uid(field: str, value: str) -> Callable[[], dict]:
    def build() -> dict:
        ds = _ct()
        setattr(ds, field, value)
        return dict(context=CTImageStorage, sop_class=CTImageStorage,
                    sop_instance=str(ds.SOPInstanceUID), data=encode_dataset(ds))

    return build


def _sop_class_differs() -> dict:
    ds = make_instance(sop_class=MRImageStorage)
    return dict(context=CTImageStorage, sop_class=CTImageStorage,
                sop_instance=str(ds.SOPInstanceUID), data=encode_dataset(ds))


def _sop_instance_differs() -> dict:
    ds = _ct()
    return dict(context=CTImageStorage, sop_class=CTImageStorage,
                sop_instance=generate_uid(TEST_ROOT), data=encode_dataset(ds))


def _class_not_the_context() -> dict:
    ds = _ct()
    # A CT request (and a CT dataset) on the MR presentation context.
    return dict(context=MRImageStorage, sop_class=CTImageStorage,
                sop_instance=str(ds.SOPInstanceUID), data=encode_dataset(ds))


def _pixel_data_cut() -> dict:
    ds = _ct()
    data = encode_dataset(ds)
    return dict(context=CTImageStorage, sop_class=CTImageStorage,
                sop_instance=str(ds.SOPInstanceUID), data=data[: len(data) - 1000])


def _no_pixel_data() -> dict:
    ds, uid = _without("PixelData")
    return dict(context=CTImageStorage, sop_class=CTImageStorage, sop_instance=uid,
                data=encode_dataset(ds))


CASES: dict[str, tuple[Callable[[], dict], int]] = {
    "garbage-bytes": (_garbage, 0xC000),
    "garbage-text": (_text_garbage, 0xC000),
    "missing-sop-instance-uid": (_missing_sop_instance, 0xC001),
    "missing-study-instance-uid": (_missing_study, 0xC001),
    # pynetdicom drops such a request unanswered; the gateway answers it (gateway/ingest/dimse.py).
    "request-without-affected-sop-instance-uid": (_request_without_sop_instance, 0xC001),
    "sop-instance-uid-not-digits": (_bad_uid("SOPInstanceUID", "1.2.abc"), 0xC002),
    "sop-instance-uid-path-traversal": (_bad_uid("SOPInstanceUID", "../../etc"), 0xC002),
    "study-uid-path-traversal": (
        _bad_uid("StudyInstanceUID", "../../../../../../tmp/drimbox-escape"), 0xC002),
    "series-uid-absolute-path": (_bad_uid("SeriesInstanceUID", "/etc/passwd"), 0xC002),
    "sop-class-differs-from-request": (_sop_class_differs, 0xA900),
    "sop-instance-differs-from-request": (_sop_instance_differs, 0xC003),
    "request-class-not-the-context": (_class_not_the_context, 0x0122),
    "pixel-data-cut-short": (_pixel_data_cut, 0xC004),
    "image-without-pixel-data": (_no_pixel_data, 0xC005),
}


@pytest.fixture(scope="module", params=BACKENDS)
def shared_gateway(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway per back-end for all the bad-input cases (each case compares the store and
    the index before and after its own request, so they need no fresh gateway)."""
    root = tmp_path_factory.mktemp(f"bad-input-{request.param}")
    pg = _pg_database() if request.param == "postgresql" else None
    url = next(pg) if pg else f"sqlite:///{root / 'index.sqlite'}"
    gw = Gateway(root / "data", url)
    try:
        yield gw.start()
    finally:
        if gw.proc is not None:
            gw.stop(signal.SIGKILL)
        if pg:
            pg.close()  # drops the database


def _no_outside_files() -> set[str]:
    return {p.name for p in Path("/tmp").glob("drimbox-escape*")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_status_and_nothing_kept(shared_gateway: Gateway, case: str) -> None:
    """Each bad input gets its status (conformance list in
    gateway/ingest/dimse.py) with an Error Comment, nothing is written anywhere, the index is
    unchanged, and the association stays usable."""
    gateway = shared_gateway
    tree = gateway.data_dir.parent
    build, expected = CASES[case]
    assoc = associate(gateway.dicom_port, CONTEXTS)
    try:
        first = store_dataset(assoc, _ct())
        assert first.Status == 0x0000
        before = snapshot(gateway.data_dir, gateway.database_url)
        paths_before = all_paths(tree)
        outside_before = _no_outside_files()
        assert before.counts.instances >= 1
        assert len(before.storage) == before.counts.instances

        rsp = raw_c_store(assoc, **build())

        assert rsp.Status == expected, f"0x{rsp.Status:04X} != 0x{expected:04X}"
        assert rsp.ErrorComment, "a failure must carry an Error Comment (0000,0902)"
        assert 0 < len(rsp.ErrorComment) <= 64
        after = snapshot(gateway.data_dir, gateway.database_url)
        assert after == before
        assert after.staging == []
        # No file or directory appeared anywhere in the test's tree, nor outside it.
        # The metadata warmer (gateway/imaging/metadata.py) writes the metadata of the good
        # instances (this case's and the previous cases') 0.5 s after they arrived: on a
        # loaded machine that falls inside this window. It is fed only by kept instances.
        new = {p for p in all_paths(tree) - paths_before
               if not p.endswith((".log", "-wal", "-shm", "-journal"))
               and not p.startswith("data/metadata")}
        assert new == set()
        assert _no_outside_files() == outside_before

        # The gateway answered the next request on the same association normally.
        assert store_dataset(assoc, _ct()).Status == 0x0000
    finally:
        assoc.release()
    final = snapshot(gateway.data_dir, gateway.database_url)
    assert final.counts.instances == before.counts.instances + 1


def test_request_without_affected_sop_instance_uid_answered_at_once(
        shared_gateway: Gateway) -> None:
    """A C-STORE-RQ without Affected SOP Instance UID (0000,1000) is answered at once (not
    after the association times out) with 0xC001 naming the element, and nothing is kept."""
    gateway = shared_gateway
    assoc = associate(gateway.dicom_port, CONTEXTS)
    assoc.dimse_timeout = 10  # the bound of the wait for the answer below
    try:
        before = snapshot(gateway.data_dir, gateway.database_url)
        rsp = raw_c_store(assoc, **_request_without_sop_instance())
        assert rsp.Status == 0xC001, f"0x{rsp.Status:04X}"
        offending = rsp.OffendingElement  # one tag, or a list of them
        assert (offending if isinstance(offending, list) else [offending]) == [0x00001000]
        assert "AffectedSOPInstanceUID" in rsp.ErrorComment
        assert snapshot(gateway.data_dir, gateway.database_url) == before
        assert store_dataset(assoc, _ct()).Status == 0x0000
    finally:
        assoc.release()
    assert "C-STORE from BADSCU refused: request lacks AffectedSOPInstanceUID" in gateway.log()


def _pair() -> tuple[Dataset, Dataset]:
    """Two datasets with the same UIDs and different pixel data (a corrected re-send)."""
    uids = dict(study_uid=generate_uid(TEST_ROOT), series_uid=generate_uid(TEST_ROOT),
                sop_uid=generate_uid(TEST_ROOT))
    return _ct(seed=1, **uids), _ct(seed=2, **uids)


def _stored_dataset_bytes(data_dir: Path, key: str) -> bytes:
    return dataset_bytes(data_dir / "storage" / key)


def test_duplicate_with_other_content_refused(gateway_factory) -> None:
    """With DRIMBOX_DUPLICATE_POLICY=refuse a re-sent SOP Instance UID
    with different content gets 0x0111 and the original bytes stay stored and indexed."""
    gw = gateway_factory(DRIMBOX_DUPLICATE_POLICY="refuse").start()
    original, changed = _pair()
    assoc = associate(gw.dicom_port, CONTEXTS)
    try:
        assert store_dataset(assoc, original).Status == 0x0000
        before = snapshot(gw.data_dir, gw.database_url)
        rsp = store_dataset(assoc, changed)
        assert rsp.Status == 0x0111
        assert rsp.ErrorComment
        # An identical re-send is still a success that stores nothing new.
        assert store_dataset(assoc, original).Status == 0x0000
    finally:
        assoc.release()
    after = snapshot(gw.data_dir, gw.database_url)
    assert after == before
    (row,) = after.rows
    assert row.sha256 == hashlib.sha256(encode_dataset(original)).hexdigest()
    assert _stored_dataset_bytes(gw.data_dir, row.storage_key) == encode_dataset(original)


def test_duplicate_with_other_content_replaces_by_default(gateway) -> None:
    """Under the default policy (replace) the corrected instance is
    stored, the old file removed, and the index holds one row pointing at the new bytes."""
    original, changed = _pair()
    assoc = associate(gateway.dicom_port, CONTEXTS)
    try:
        assert store_dataset(assoc, original).Status == 0x0000
        before = snapshot(gateway.data_dir, gateway.database_url)
        assert store_dataset(assoc, changed).Status == 0x0000
    finally:
        assoc.release()
    after = snapshot(gateway.data_dir, gateway.database_url)
    (old_row,) = before.rows
    (row,) = after.rows
    assert row.sop_instance_uid == old_row.sop_instance_uid
    assert row.sha256 == hashlib.sha256(encode_dataset(changed)).hexdigest() != old_row.sha256
    assert row.storage_key != old_row.storage_key
    assert list(after.storage) == [row.storage_key]  # the old file is gone
    assert not (gateway.data_dir / "storage" / old_row.storage_key).exists()
    assert _stored_dataset_bytes(gateway.data_dir, row.storage_key) == encode_dataset(changed)
    stored = dcmread(gateway.data_dir / "storage" / row.storage_key)
    assert stored.SOPInstanceUID == changed.SOPInstanceUID
    assert stored.PixelData == changed.PixelData
    assert after.counts == before.counts
    assert after.staging == []
