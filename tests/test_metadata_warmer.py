"""The metadata warmer gives way to ingest in every process of a data directory.

A series' metadata is built once the series is quiet, but not while instances keep arriving
anywhere: the DICOM worker that finished a series must not read and encode 500 files while
another worker's association is still sending (the modality waits on those C-STORE
responses). Two warmers sharing one :class:`IngestActivity` file stand for two processes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gateway.imaging.metadata import IngestActivity, MetadataWarmer


def _warmer(path: Path, built: list, max_delay: float = 60.0) -> MetadataWarmer:
    def warm(study: str, series: str) -> None:
        built.append((series, time.monotonic()))

    return MetadataWarmer(warm, None, quiet=0.2, busy_gap=0.15, max_delay=max_delay,
                          activity=IngestActivity(path))


def _first_build(built: list, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not built and time.monotonic() < deadline:
        time.sleep(0.02)


def _keep_arriving(warmer: MetadataWarmer, seconds: float) -> float:
    """Another process's association: one instance every 30 ms; returns when it stopped."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        warmer.touched("1.2", "1.2.9", f"1.2.9.{n}")
        n += 1
        time.sleep(0.03)
    return time.monotonic()


def test_series_waits_while_another_process_ingests(tmp_path: Path) -> None:
    shared = tmp_path / "ingest-activity"
    built_a: list = []
    built_b: list = []
    a, b = _warmer(shared, built_a), _warmer(shared, built_b)
    try:
        a.touched("1.2", "1.2.1", "1.2.1.1")  # the series that process A has finished
        sender = threading.Thread(target=lambda: stopped.append(_keep_arriving(b, 1.2)))
        stopped: list[float] = []
        sender.start()
        sender.join()
        _first_build(built_a)
        assert built_a, "the quiet series was never built"
        series, at = built_a[0]
        assert series == "1.2.1"
        # not before the other process's instances stopped arriving (~1.2 s after the series
        # became quiet), and soon after
        assert at >= stopped[0], f"built {stopped[0] - at:.2f} s before the other ingest ended"
        assert at - stopped[0] < 2.0
    finally:
        a.stop()
        b.stop()


def test_without_arrivals_a_quiet_series_is_built_at_once(tmp_path: Path) -> None:
    built: list = []
    w = _warmer(tmp_path / "ingest-activity", built)
    try:
        t0 = time.monotonic()
        w.touched("1.2", "1.2.1", "1.2.1.1")
        _first_build(built)
        assert built and built[0][0] == "1.2.1"
        assert built[0][1] - t0 < 1.5  # quiet (0.2 s) plus scheduling, no extra wait
    finally:
        w.stop()


def test_a_series_waits_at_most_max_delay(tmp_path: Path) -> None:
    shared = tmp_path / "ingest-activity"
    built_a: list = []
    a = _warmer(shared, built_a, max_delay=0.5)
    b = _warmer(shared, [])
    try:
        a.touched("1.2", "1.2.1", "1.2.1.1")
        t0 = time.monotonic()
        stopped = _keep_arriving(b, 2.5)
        assert built_a, "max_delay did not bound the wait"
        assert built_a[0][1] < stopped  # built while the other process was still sending
        assert built_a[0][1] - t0 < 2.0
    finally:
        a.stop()
        b.stop()


def test_a_value_from_before_a_restart_is_ignored(tmp_path: Path) -> None:
    """The file outlives the host's monotonic clock: a time ahead of it means nothing."""
    shared = tmp_path / "ingest-activity"
    IngestActivity(shared).note(time.monotonic() + 10_000)
    built: list = []
    w = _warmer(shared, built)
    try:
        t0 = time.monotonic()
        w.touched("1.2", "1.2.1", "1.2.1.1")
        _first_build(built)
        assert built and built[0][1] - t0 < 1.5
    finally:
        w.stop()
