"""Durability and association policy of ``drimbox serve`` (issue #2 acceptance).

* disk full: 0xA700, nothing half-written, index unchanged (a real, small tmpfs as data dir);
* SIGKILL in the middle of a storescu run: everything acknowledged survives the restart,
  readable and byte-identical, and the index points only at complete files;
* SIGTERM during an association: the association completes, then the process exits 0;
* association policy: unknown calling AE (with ``restrict_callers``) and wrong called AE
  are rejected.

Each test runs on both index back-ends (SQLite and PostgreSQL) and talks to the gateway through
real peers (dcmtk ``storescu``/``echoscu``, a pynetdicom SCU).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_factory import TEST_ROOT, dataset_bytes, make_instance, write_corpus
from dimse_client import associate, encode_dataset, open_index, snapshot, store_dataset
from peers import in_ci, require_tool, storescu_profile
from pydicom import dcmread
from pydicom.uid import CTImageStorage, generate_uid

# -- disk full ------------------------------------------------------------------------------


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/data`` as a 1 MiB tmpfs: a real file system that really runs out of space.

    Requested before ``gateway_factory`` so that it is unmounted after the gateway is gone.
    Needs the right to mount (root in CI); without it the test fails under CI, skips elsewhere.
    """
    data = tmp_path / "data"
    data.mkdir()
    mount = _run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(data)])
    if mount.returncode != 0:
        message = f"cannot mount a tmpfs for the disk-full test: {mount.stderr.strip()}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield data
    finally:
        if _run(["umount", str(data)]).returncode != 0:
            _run(["umount", "-l", str(data)])


def test_disk_full_gives_a700_and_keeps_nothing(tiny_data_dir: Path, gateway_factory) -> None:
    """issue #2 acceptance: when the data file system fills up in the middle of writing an
    instance, the C-STORE gets 0xA700 (out of resources) with an Error Comment, no partial file
    is left in staging or storage, the index is unchanged, and the gateway keeps serving."""
    gw = gateway_factory()
    assert gw.data_dir == tiny_data_dir
    # The SQLite index lives outside the tiny file system (PostgreSQL is elsewhere anyway),
    # so the instance file write is what fails.
    assert str(tiny_data_dir) not in gw.database_url
    gw.start()

    # ~720 KB each: the first fits in 1 MiB, the second runs out of space half-way.
    first = make_instance(sop_class=CTImageStorage, rows=600, cols=600, seed=1)
    second = make_instance(sop_class=CTImageStorage, rows=600, cols=600, seed=2)
    small = make_instance(sop_class=CTImageStorage, seed=3)
    assoc = associate(gw.dicom_port, [CTImageStorage])
    try:
        assert store_dataset(assoc, first).Status == 0x0000
        before = snapshot(gw.data_dir, gw.database_url)
        free_before = shutil.disk_usage(tiny_data_dir).free
        assert free_before < len(encode_dataset(second)), "the second instance must not fit"

        rsp = store_dataset(assoc, second)

        assert rsp.Status == 0xA700, f"0x{rsp.Status:04X}"
        assert rsp.ErrorComment
        after = snapshot(gw.data_dir, gw.database_url)
        assert after == before
        assert after.staging == []
        assert shutil.disk_usage(tiny_data_dir).free == free_before  # no hidden leftovers

        # Space for a small instance remains: the gateway goes on storing.
        assert store_dataset(assoc, small).Status == 0x0000
    finally:
        assoc.release()
    rows = open_index(gw.database_url).all_instances()
    assert {r.sop_instance_uid for r in rows} == {first.SOPInstanceUID, small.SOPInstanceUID}
    for row in rows:
        data = dataset_bytes(gw.data_dir / "storage" / row.storage_key)
        assert hashlib.sha256(data).hexdigest() == row.sha256
