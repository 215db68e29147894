"""Durability and association policy of ``drimbox serve``.

* disk full: 0xA700, nothing half-written, index unchanged (a real, small tmpfs as data dir);
* SIGKILL in the middle of a storescu run (one association, and four at once): everything
  acknowledged survives the restart, readable and byte-identical, and the index points only
  at complete files;
* index rows lost with the last group's flush are rebuilt from the files at the next start;
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
from dicom_factory import dataset_bytes, make_instance, write_corpus
from dimse_client import associate, encode_dataset, open_index, snapshot, store_dataset
from peers import in_ci, require_tool, storescu_profile
from pydicom import dcmread
from pydicom.uid import CTImageStorage

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
    """When the data file system fills up in the middle of writing an
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


# -- storescu run observed response by response ---------------------------------------------

_SENDING = re.compile(r"^I: Sending file: (.+)$")
_SUCCESS = "I: Received Store Response (Success)"


class StorescuRun:
    """dcmtk ``storescu -v`` in one association, its log read as it goes: :attr:`acked` holds
    the files for which the gateway's success response has been received."""

    def __init__(self, files: list[Path], port: int, workdir: Path, aet: str = "STORESCU") -> None:
        exe = require_tool("storescu")
        profile = workdir / "storescu-durability.cfg"
        storescu_profile(files, profile)
        self.total = len(files)
        self.acked: list[Path] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [exe, "-v", "-xf", str(profile), "Test", "-aet", aet, "-aec", "DRIMBOX",
             "-to", "30", "-ts", "60", "127.0.0.1", str(port), *map(str, files)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        current: Path | None = None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            with self._cond:
                self.lines.append(line)
                if m := _SENDING.match(line):
                    current = Path(m.group(1))
                elif line.startswith(_SUCCESS):
                    assert current is not None
                    self.acked.append(current)
                    current = None
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_acked(self, n: int, timeout: float = 60) -> int:
        """Block until at least ``n`` success responses were seen; return how many."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.acked) < n:
                if self.proc.poll() is not None and not self._reader.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            got = len(self.acked)
        assert got >= n, f"only {got} acknowledgements:\n" + "\n".join(self.lines[-20:])
        return got

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc

    def log(self) -> str:
        return "\n".join(self.lines[-30:])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A few hundred mixed instances (6 SOP class / transfer syntax kinds, 3 studies), written
    once for the module: the tests only read them."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), 240, studies=3)


def _sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _check_index_points_at_complete_files(gw) -> dict[str, str]:
    """Every indexed row's file exists, is a readable Part 10 file, and holds exactly the
    bytes (hash and size) the index recorded. Returns SOP Instance UID -> SHA-256."""
    rows = open_index(gw.database_url).all_instances()
    for row in rows:
        path = gw.data_dir / "storage" / row.storage_key
        assert path.is_file(), f"indexed {row.sop_instance_uid} has no file"
        data = dataset_bytes(path)
        assert len(data) == row.size
        assert hashlib.sha256(data).hexdigest() == row.sha256, f"{path} is not what was indexed"
        ds = dcmread(path)
        assert ds.SOPInstanceUID == row.sop_instance_uid
        ds.get("PixelData") or ds.get("EncapsulatedDocument")  # the whole file parses
    return {r.sop_instance_uid: r.sha256 for r in rows}


def test_sigkill_mid_run_loses_nothing_acknowledged(gateway_factory, tmp_path: Path,
                                                   corpus: list[Path]) -> None:
    """``kill -9`` of the gateway while storescu sends a few hundred
    instances; after a restart on the same data dir and index, every instance storescu saw
    acknowledged is indexed, readable and byte-identical; no index row points to a missing or
    partial file; staging is emptied at start-up; re-sending the lot then completes."""
    files = corpus
    gw = gateway_factory().start()
    run = StorescuRun(files, gw.dicom_port, tmp_path)
    acked_at_kill = run.wait_acked(50)
    gw.kill()
    rc = run.finish()
    assert rc != 0, "storescu should have lost its association"
    assert acked_at_kill <= len(run.acked) < len(files), "the kill was not mid-run"

    # What a crash may leave in staging (plus a half-written file of our own) goes at start-up.
    staging = gw.data_dir / "staging"
    (staging / "0123456789abcdef.tmp").write_bytes(b"\x00" * 1000)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (staging / f"{dead.pid}-0123456789abcdef.tmp").write_bytes(b"\x00" * 1000)
    # A file in flight for another live writer (`drimbox import` sharing the data directory)
    # is not a leftover: start-up keeps it.
    writer = subprocess.Popen(["sleep", "600"])
    in_flight = staging / f"{writer.pid}-fedcba9876543210.tmp"
    in_flight.write_bytes(b"\x01" * 10)
    try:
        restarted = gateway_factory().start()
        assert list(staging.iterdir()) == [in_flight]
    finally:
        writer.kill()
        writer.wait()
    in_flight.unlink()

    indexed = _check_index_points_at_complete_files(restarted)
    for f in run.acked:
        uid = _sop_uid(f)
        assert uid in indexed, f"{f.name} was acknowledged but is not indexed"
        assert indexed[uid] == hashlib.sha256(dataset_bytes(f)).hexdigest()

    # The gateway is usable after the crash: the whole folder goes through.
    again = StorescuRun(files, restarted.dicom_port, tmp_path)
    assert again.finish() == 0, again.log()
    assert len(again.acked) == len(files)
    indexed = _check_index_points_at_complete_files(restarted)
    assert len(indexed) == len(files)
    assert restarted.stop() == 0


def test_sigkill_during_four_associations_loses_nothing_acknowledged(
        gateway_factory, tmp_path: Path, corpus: list[Path]) -> None:
    """``kill -9`` while four storescu associations send at once (two DICOM worker
    processes, group commits shared between associations, one flush per group): after a
    restart every instance any of them saw acknowledged is indexed and byte-identical, and
    no row points at a missing or partial file."""
    gw = gateway_factory(DRIMBOX_DICOM_WORKERS="2").start()
    runs = []
    for k in range(4):
        workdir = tmp_path / f"assoc{k}"
        workdir.mkdir()
        runs.append(StorescuRun(corpus[k::4], gw.dicom_port, workdir, aet=f"STORESCU{k}"))
    for run in runs:
        run.wait_acked(10)
    gw.kill()
    for run in runs:
        run.finish()
    acked = [f for run in runs for f in run.acked]
    assert len(acked) < len(corpus), "the kill was not mid-run"

    restarted = gateway_factory().start()
    indexed = _check_index_points_at_complete_files(restarted)
    for f in acked:
        uid = _sop_uid(f)
        assert uid in indexed, f"{f.name} was acknowledged but is not indexed"
        assert indexed[uid] == hashlib.sha256(dataset_bytes(f)).hexdigest()
        assert (restarted.data_dir / "storage").is_dir()
    assert restarted.stop() == 0


def test_rows_lost_with_the_last_flush_are_rebuilt_from_the_files(
        gateway_factory, tmp_path: Path, corpus: list[Path]) -> None:
    """What a power cut may leave with one flush per group (gateway/ingest/recovery.py): the
    files of the last group on disk, their index rows (committed without a flush of their
    own) lost, and a file of a group never flushed cut short. A process killed without its
    clean stop leaves its recovery mark; the next start indexes each whole file no row names
    (byte-identical, as acknowledged) and removes the cut one. Simulated on the index only:
    rows deleted, a cut copy written, and the mark's time moved back (an older time on disk
    is what a lost ``pwrite`` of the mark leaves)."""
    gw = gateway_factory().start()
    started = time.time()
    run = StorescuRun(corpus[:40], gw.dicom_port, tmp_path)
    assert run.finish() == 0, run.log()
    gw.kill()
    marks = list((gw.data_dir / "marks").glob("*.mark"))
    if gw.database_url.startswith("postgresql"):
        assert marks == []  # PostgreSQL flushes its own commits: nothing to rebuild
        restarted = gateway_factory().start()
        assert len(_check_index_points_at_complete_files(restarted)) == 40
        assert restarted.stop() == 0
        return
    assert len(marks) == 1, "a killed writer leaves its recovery mark"
    marks[0].write_bytes(f"{started:.6f}".encode().ljust(32))

    index = open_index(gw.database_url)
    rows = index.all_instances()
    lost = rows[-5:]  # the last group's rows, as a power cut may lose them
    with index.engine.begin() as conn:
        for row in lost:
            conn.exec_driver_sql("DELETE FROM instances WHERE sop_instance_uid = ?",
                                 (row.sop_instance_uid,))
    whole = gw.data_dir / "storage" / rows[0].storage_key
    cut_key = rows[0].storage_key.replace(rows[0].sop_instance_uid, rows[0].sop_instance_uid
                                          + ".9")
    cut = gw.data_dir / "storage" / cut_key
    cut.write_bytes(whole.read_bytes()[:3000])  # a file whose data never reached the disk
    index.engine.dispose()

    restarted = gateway_factory().start()
    log = restarted.log_path.read_text(errors="replace")
    assert "5 re-indexed, 1 not whole removed" in log, log[-3000:]
    indexed = _check_index_points_at_complete_files(restarted)
    assert len(indexed) == 40
    for row in lost:
        assert indexed[row.sop_instance_uid] == row.sha256
    assert not cut.exists(), "a file that is not whole was never acknowledged: removed"
    assert list((gw.data_dir / "marks").glob("*.mark")) == []
    assert restarted.stop() == 0
    assert list((gw.data_dir / "marks").glob("*.mark")) == []  # a clean stop leaves none


def test_sigterm_lets_the_running_association_finish(gateway_factory, tmp_path: Path,
                                                     corpus: list[Path]) -> None:
    """SIGTERM while storescu is sending: the association in flight runs
    to its end (storescu exits 0, every instance indexed), then the gateway exits with 0."""
    files = corpus
    gw = gateway_factory().start()
    assert gw.proc is not None
    run = StorescuRun(files, gw.dicom_port, tmp_path)
    acked_at_term = run.wait_acked(30)
    gw.proc.send_signal(signal.SIGTERM)
    rc = run.finish()
    assert rc == 0, run.log()
    assert acked_at_term < len(files), "the signal came after the association had ended"
    assert len(run.acked) == len(files)
    # Wait for the exit the first SIGTERM causes (Gateway.stop would send a second one).
    assert gw.proc.wait(timeout=60) == 0, gw.log()
    gw.proc = None
    indexed = _check_index_points_at_complete_files(gw)
    assert set(indexed) == {_sop_uid(f) for f in files}
    assert list((gw.data_dir / "staging").iterdir()) == []


# -- association policy ---------------------------------------------------------------------


def _echo(port: int, aet: str, aec: str) -> subprocess.CompletedProcess[str]:
    exe = require_tool("echoscu")
    return subprocess.run([exe, "-v", "-aet", aet, "-aec", aec, "-to", "10", "127.0.0.1",
                           str(port)], capture_output=True, text=True, timeout=30)


def test_association_policy_calling_and_called_ae(gateway_factory, tmp_path: Path) -> None:
    """With DRIMBOX_RESTRICT_CALLERS=true only the calling AE titles in
    DRIMBOX_PEERS get an association (C-ECHO and C-STORE); a wrong called AE title is rejected
    (check_called_ae defaults to true)."""
    gw = gateway_factory(
        DRIMBOX_RESTRICT_CALLERS="true",
        DRIMBOX_PEERS='[{"ae_title":"MODALITY","host":"127.0.0.1","port":104}]',
    ).start()
    ok = _echo(gw.dicom_port, "MODALITY", "DRIMBOX")
    assert ok.returncode == 0, ok.stderr

    unknown = _echo(gw.dicom_port, "INTRUDER", "DRIMBOX")
    assert unknown.returncode != 0
    assert "Association Rejected" in unknown.stderr, unknown.stderr
    wrong_called = _echo(gw.dicom_port, "MODALITY", "NOTDRIMBOX")
    assert wrong_called.returncode != 0
    assert "Association Rejected" in wrong_called.stderr, wrong_called.stderr

    files = write_corpus(tmp_path / "corpus", 3, studies=1)
    refused = StorescuRun(files, gw.dicom_port, tmp_path, aet="INTRUDER")
    assert refused.finish() != 0
    assert refused.acked == []
    assert open_index(gw.database_url).counts().instances == 0
    assert not any((gw.data_dir / "storage").rglob("*.dcm"))

    accepted = StorescuRun(files, gw.dicom_port, tmp_path, aet="MODALITY")
    assert accepted.finish() == 0, accepted.log()
    assert open_index(gw.database_url).counts().instances == 3
    assert "drimbox_associations_rejected_total 3.0" in gw.metrics()
