"""Wall and CPU time of each phase of the C-STORE ingest, in every gateway process.

Loaded by Python at start-up when this folder is on ``PYTHONPATH`` (``bench/ingest_phases.sh``
does it), and only when ``INGEST_PHASES`` names a folder: once the gateway's modules are
imported, chosen functions are wrapped so that each call adds its wall time and its thread's
CPU time to a per-process table, written every 2 s to ``$INGEST_PHASES/phases-<pid>.txt``.
A measuring tool for developers (a few microseconds per call): never in the product.
"""

import os

if os.environ.get("INGEST_PHASES"):
    import sys
    import threading
    import time

    _OUT = os.environ["INGEST_PHASES"]
    _TOTALS: dict = {}
    _LOCK = threading.Lock()

    def _wrap(owner, name):
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
                with _LOCK:
                    row = _TOTALS.setdefault(name, [0, 0.0, 0.0])
                    row[0] += 1
                    row[1] += wall
                    row[2] += cpu

        setattr(owner, name, timed)

    def _install() -> None:
        from gateway.index.group_commit import GroupCommitter
        from gateway.index.store import InstanceIndex
        from gateway.ingest import header, ingestor
        from gateway.ingest.storage import FileStore

        for owner, name in (
            (ingestor.Ingestor, "ingest"),  # the whole ingest of one instance
            (ingestor, "read_header"), (header, "read_header_pydicom"),
            (ingestor, "check_complete"),
            (ingestor._EarlyWrite, "_write"),  # file + SHA-256, on the helper thread
            (ingestor._EarlyWrite, "result"),  # the association's thread waiting for it
            (InstanceIndex, "find_instance"),
            (FileStore, "place"), (FileStore, "put"),
            (GroupCommitter, "record"),  # flush + index commit, shared with others
            (FileStore, "flush"), (InstanceIndex, "record_many"),
        ):
            _wrap(owner, name)

    def _report() -> None:
        with _LOCK:
            rows = sorted(_TOTALS.items(), key=lambda kv: -kv[1][1])
        if rows:
            with open(os.path.join(_OUT, f"phases-{os.getpid()}.txt"), "w") as f:
                f.writelines(f"{name:20s} n={n:6d}  wall {wall / n * 1e3:7.3f} ms"
                            f"  cpu {cpu / n * 1e3:7.3f} ms\n" for name, (n, wall, cpu) in rows)

    def _run() -> None:
        wanted = ("gateway.ingest.ingestor", "gateway.index.store", "prometheus_client")
        while not all(m in sys.modules for m in wanted):  # after prometheus' multiprocess set-up
            time.sleep(0.05)
        time.sleep(0.5)
        _install()
        while True:
            time.sleep(2)
            _report()

    threading.Thread(target=_run, name="phases", daemon=True).start()
