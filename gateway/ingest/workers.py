"""DICOM worker processes: ``drimbox serve`` with ``dicom_workers = N`` (N >= 1).

Why. One Python process tops out at about 200 C-STOREs a second of 512 KiB CT slices: each
costs ~5 ms of CPU under the GIL (~2 ms pynetdicom, ~3 ms ingest), so several associations
cannot use a second core. Several processes each run a pynetdicom AE and the ingest path;
the HTTP app stays in the main process.

How. The main process binds and listens on the DICOM port itself (so ``dicom_port = 0``
works and a port already in use fails start-up as before), then starts the workers
(``multiprocessing`` *spawn*: a fresh interpreter, no forked threads or locks) and hands
each the listening socket. All workers accept from that one socket: the kernel queues the
connections once and whichever worker is free first takes the next one. (``SO_REUSEPORT``
with one socket per worker was not used: it spreads connections by a hash of the client
address and port, so 4 associations from one modality land all on one of 2 workers 1 time
in 8, and it silently lets a stray process with the same user share the port.) The shared
socket is non-blocking in the workers: a worker woken for a connection another one took
gets ``EAGAIN`` and goes back to waiting.

Order at start: the main process clears staging and upgrades the index (``Runtime.build``)
*before* any worker exists; workers never clear staging (another worker's files are in
flight there). Every worker runs its own group commit; SQLite writers of different
processes queue on ``BEGIN IMMEDIATE`` (busy timeout), PostgreSQL needs nothing.

Life cycle. A worker dies with the main process: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, and
it exits at once if the main process was already gone when it started; so ``kill -9`` of
``serve`` leaves nothing listening. SIGTERM to the main process stops HTTP, then every
worker gets SIGTERM, stops accepting, lets its associations finish (``shutdown_grace``) and
exits 0. A worker that dies otherwise is logged and replaced.

Metrics. Counters and the association gauge are kept per process by ``prometheus_client``'s
multiprocess mode in ``<data_dir>/prometheus-multiproc`` (emptied at start) and summed at
``/metrics``. ``PROMETHEUS_MULTIPROC_DIR`` must be set before ``prometheus_client`` is
imported, hence :func:`prepare_multiprocess_metrics` (this module imports nothing heavy at
the top).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger(__name__)

METRICS_DIR_NAME = "prometheus-multiproc"
PR_SET_PDEATHSIG = 1
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
#: Seconds a worker has to import, connect to the index and start accepting.
START_TIMEOUT = 60.0


def prepare_multiprocess_metrics(data_dir: Path) -> Path:
    """Empty ``<data_dir>/prometheus-multiproc`` and point ``prometheus_client`` at it.

    Must run before ``prometheus_client`` is imported (it reads the variable at import)."""
    if "prometheus_client" in __import__("sys").modules:
        raise RuntimeError("prometheus_client was imported before the multiprocess directory")
    path = (data_dir / METRICS_DIR_NAME).resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def listen_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """The DICOM listening socket, bound as pynetdicom's server binds it (SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:  # not Linux: the workers could outlive us
        raise SystemExit(f"DICOM worker: cannot tie this process to its parent: {exc}") from None
    if os.getppid() != parent_pid:  # the parent died before prctl
        os._exit(1)


def worker_main(
    number: int,
    settings: Settings,
    sock: socket.socket,
    ready: multiprocessing.connection.Connection,
    parent_pid: int,
    shared: bool = True,
) -> None:
    """One DICOM worker: accept associations on ``sock`` until SIGTERM, then drain."""
    _die_with_parent(parent_pid)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: parent decides
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    logging.getLogger("pynetdicom").setLevel(
        logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
    )
    from gateway.ingest import query_retrieve
    from gateway.ingest.dimse import DicomService
    from gateway.runtime import Runtime

    runtime = Runtime.build(settings, migrate=False, clear_staging=False,
                            prepare_instances=False)
    dicom = DicomService(settings, runtime.ingestor,
                         query_retrieve=query_retrieve.build(settings, runtime))
    dicom.start(listen_socket=sock, shared=shared)
    log.info("DICOM worker %d ready", number)
    ready.send("ready")
    ready.close()
    while not stop.wait(3600):
        pass
    log.info("DICOM worker %d: draining associations (up to %.0f s)", number,
             settings.shutdown_grace)
    dicom.stop()
    runtime.close()
    log.info("DICOM worker %d stopped", number)


class WorkerPool:
    """Starts ``settings.dicom_workers`` DICOM workers on one listening socket, replaces
    those that die, and stops them all (each draining its associations) on :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.dicom_workers
        self.sock = listen_socket(settings.host, settings.dicom_port)
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, Any] = {}  # worker number -> Process
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.pid is not None]

    def _launch(self, number: int) -> tuple[Any, Any]:
        ready_r, ready_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=worker_main,
            args=(number, self.settings, self.sock, ready_w, os.getpid(), self.count > 1),
            name=f"drimbox-dicom-{number}",
            daemon=False,
        )
        proc.start()
        ready_w.close()
        self._procs[number] = proc
        return proc, ready_r

    @staticmethod
    def _await_ready(number: int, proc: Any, ready_r: Any, deadline: float) -> None:
        try:
            while True:
                if ready_r.poll(0.1):
                    try:
                        ready_r.recv()
                    except EOFError:  # the worker exited before it was ready
                        pass
                    else:
                        return
                if not proc.is_alive() or time.monotonic() > deadline:
                    proc.kill()
                    proc.join(5)
                    raise RuntimeError(
                        f"DICOM worker {number} did not start (exit code {proc.exitcode})"
                    )
        finally:
            ready_r.close()

    def start(self) -> None:
        """Start every worker and return once all accept associations.

        The workers are created from this (the main) thread: PR_SET_PDEATHSIG fires when
        the *thread* that created a child ends, and the main thread lasts until exit."""
        try:
            launched = {n: self._launch(n) for n in range(1, self.count + 1)}
            deadline = time.monotonic() + START_TIMEOUT
            for number, (proc, ready_r) in launched.items():
                self._await_ready(number, proc, ready_r, deadline)
        except BaseException:
            self._terminate_all(grace=5)
            self.sock.close()
            raise
        log.info("DICOM SCP %s on %s:%d: %d worker process(es), PIDs %s",
                 self.settings.ae_title, self.settings.host, self.port, self.count, self.pids)
        self._monitor = threading.Thread(target=self._watch, name="dicom-workers", daemon=True)
        self._monitor.start()

    def _watch(self) -> None:
        """Replace a worker that died while we were not stopping. Replacements are
        children of this thread, which therefore lives until they have exited."""
        from prometheus_client import multiprocess

        while not self._stopping.is_set():
            sentinels = {p.sentinel: n for n, p in self._procs.items()}
            ready = multiprocessing.connection.wait([*sentinels, self._wake_r])
            if self._stopping.is_set():
                break
            for s in ready:
                number = sentinels.get(s)
                if number is None:
                    continue
                dead = self._procs[number]
                dead.join()
                multiprocess.mark_process_dead(dead.pid)
                log.error("DICOM worker %d (PID %s) died with exit code %s; starting another",
                          number, dead.pid, dead.exitcode)
                try:
                    proc, ready_r = self._launch(number)
                    self._await_ready(number, proc, ready_r, time.monotonic() + START_TIMEOUT)
                except RuntimeError:
                    log.exception("cannot replace DICOM worker %d", number)
                    time.sleep(1)
        self._terminate_all(self.settings.shutdown_grace)

    def _terminate_all(self, grace: float) -> None:
        from prometheus_client import multiprocess

        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()  # SIGTERM: stop accepting, drain
        deadline = time.monotonic() + grace + 15
        for number, proc in self._procs.items():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("DICOM worker %d did not stop in time; killing it", number)
                proc.kill()
                proc.join(5)
            elif proc.exitcode not in (0, -signal.SIGTERM):  # -SIGTERM: stopped before ready
                log.warning("DICOM worker %d exited with code %s", number, proc.exitcode)
            if proc.pid is not None:
                multiprocess.mark_process_dead(proc.pid)

    def stop(self) -> int:
        """Stop accepting, let every worker drain, wait for them all. Returns the number of
        workers that did not exit cleanly (0 on a clean stop)."""
        self._stopping.set()
        self._wake_w.send("stop")
        if self._monitor is not None:
            self._monitor.join()
        else:
            self._terminate_all(self.settings.shutdown_grace)
        self.sock.close()  # the workers shut the shared socket down when they stopped
        return sum(1 for p in self._procs.values() if p.exitcode not in (0, -signal.SIGTERM))
