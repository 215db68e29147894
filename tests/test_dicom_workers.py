"""``drimbox serve`` with DICOM worker processes (``dicom_workers``, gateway/ingest/workers.py).

* with 2 workers, concurrent associations are spread over both processes, and /metrics sums
  the counters of every process;
* ``kill -9`` of the main process leaves no worker alive and nothing listening on the port;
* a worker that dies is replaced and the gateway keeps storing;
* ``dicom_workers = 0`` keeps the DICOM SCP in the main process.

Each test runs on both index back-ends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from dicom_factory import write_corpus
from dimse_client import open_index
from peers import require_tool, storescu

_ASSOC = re.compile(r"INFO \[(\d+)\] gateway\.ingest\.dimse: association from")
_WORKERS = re.compile(r"worker process\(es\), PIDs \[([\d, ]+)\]")


def _association_pids(gw) -> list[int]:
    return [int(m.group(1)) for m in _ASSOC.finditer(gw.log_path.read_text(errors="replace"))]


def _worker_pids(gw) -> list[int]:
    found = _WORKERS.findall(gw.log_path.read_text(errors="replace"))
    assert found, gw.log()
    return [int(p) for p in found[-1].split(",")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by anyone) is not alive either.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _send_concurrently(chunks: list[list[Path]], port: int) -> None:
    errors: list[BaseException] = []

    def send(files: list[Path]) -> None:
        try:
            storescu(files, port)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_two_workers_share_concurrent_associations(gateway_factory, tmp_path: Path) -> None:
    """4 storescu at once, twice: both worker processes take associations (the less busy
    worker accepts first), every instance is indexed once, and /metrics adds up the
    counters of both processes."""
    gw = gateway_factory(DRIMBOX_DICOM_WORKERS="2").start()
    workers = _worker_pids(gw)
    assert len(workers) == 2 and gw.proc is not None and gw.proc.pid not in workers
    chunks = [write_corpus(tmp_path / f"c{i}", 30, studies=1, seed=500 * i) for i in range(4)]
    _send_concurrently(chunks, gw.dicom_port)
    _send_concurrently(chunks, gw.dicom_port)  # identical re-sends: success, nothing new

    pids = _association_pids(gw)
    assert len(pids) == 8
    assert set(pids) == set(workers), f"associations by PID: {pids}, workers {workers}"
    counts = open_index(gw.database_url).counts()
    assert (counts.studies, counts.instances) == (4, 120)
    metrics = gw.metrics()
    assert 'drimbox_instances_received_total{source="dimse"} 240.0' in metrics
    assert "drimbox_associations_total 8.0" in metrics
    assert "drimbox_associations_active 0.0" in metrics
    assert gw.stop() == 0, gw.log()
    for pid in workers:
        assert not _alive(pid)


def test_sigkill_of_serve_leaves_no_worker_listening(gateway_factory) -> None:
    """``kill -9`` of the main process: its workers die with it (PR_SET_PDEATHSIG), the port
    refuses connections, and a new gateway starts on the same port at once."""
    gw = gateway_factory(DRIMBOX_DICOM_WORKERS="2").start()
    workers = _worker_pids(gw)
    port = gw.dicom_port
    gw.kill()

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    # A killed multi-threaded process shows as a zombie as soon as its main thread is gone,
    # but its files (the listening socket) close only when its last thread has: poll both.
    deadline = time.monotonic() + 10
    while (any(_alive(p) for p in workers) or listening()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "a DICOM worker outlived its parent"
    assert not listening(), "something still listens on the port 10 s after the kill"

    again = gateway_factory(DRIMBOX_DICOM_WORKERS="2")
    again.dicom_port = port
    again.start()
    echo = subprocess.run([require_tool("echoscu"), "-aec", "DRIMBOX", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    assert set(_worker_pids(again)).isdisjoint(workers)


def test_a_dead_worker_is_replaced(gateway_factory, tmp_path: Path) -> None:
    """A worker killed from outside is logged and replaced; the gateway goes on storing and
    the counters of the dead worker still count."""
    gw = gateway_factory(DRIMBOX_DICOM_WORKERS="2").start()
    files = write_corpus(tmp_path / "c", 10, studies=1)
    storescu(files[:5], gw.dicom_port)
    first = _worker_pids(gw)
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    log = ""
    while time.monotonic() < deadline:
        log = gw.log_path.read_text(errors="replace")
        if log.count("died with exit code -9; starting another") == 2 and len(
            re.findall(r"DICOM worker \d ready", log)
        ) == 4:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"workers not replaced:\n{gw.log()}")
    storescu(files[5:], gw.dicom_port)
    assert open_index(gw.database_url).counts().instances == 10
    metrics = gw.metrics()
    assert 'drimbox_instances_received_total{source="dimse"} 10.0' in metrics
    assert "drimbox_associations_active 0.0" in metrics
    assert gw.stop() == 0, gw.log()


def test_zero_workers_keeps_the_scp_in_the_main_process(gateway_factory, tmp_path: Path) -> None:
    """``dicom_workers = 0``: no worker process, associations handled by ``serve`` itself."""
    gw = gateway_factory(DRIMBOX_DICOM_WORKERS="0").start()
    files = write_corpus(tmp_path / "c", 6, studies=1)
    storescu(files, gw.dicom_port)
    assert gw.proc is not None
    assert set(_association_pids(gw)) == {gw.proc.pid}
    assert 'drimbox_instances_received_total{source="dimse"} 6.0' in gw.metrics()
    assert gw.stop() == 0, gw.log()
