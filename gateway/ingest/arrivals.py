"""C-STORE data sets on their way into this process: the request's command set has arrived,
its data set is still arriving, its ingest has not begun.

A group commit's leader (:class:`gateway.index.group_commit.GroupCommitter`) waits a moment
(``gather_delay``) for rows it knows are coming, so that concurrent associations share one
flush and one index commit instead of taking one each. The Ingestor counts the ingests under
way; this counts, per association, the instance announced by its C-STORE command and not yet
handed to the ingest, so that a leader also waits for a data set a few hundred microseconds
from complete (bench/RESULTS.md, "Ingest at Orthanc's rate"). An announcement is forgotten
when its ingest begins, or after ``max_age`` (an association aborted mid-instance): the count
can only make a leader wait, never longer than ``gather_delay``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable


class Arrivals:
    def __init__(self, max_age: float = 0.05) -> None:
        self.max_age = max_age
        self._since: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def announced(self, key: Hashable) -> None:
        """A C-STORE command arrived on association ``key``: its data set follows."""
        with self._lock:
            self._since[key] = time.monotonic()

    def handed_over(self, key: Hashable) -> None:
        """Association ``key``'s data set is complete and goes to the ingest (or is refused)."""
        with self._lock:
            self._since.pop(key, None)

    def count(self) -> int:
        """Data sets announced, not handed over, and announced less than ``max_age`` ago."""
        since = self._since
        if not since:
            return 0
        with self._lock:
            oldest = time.monotonic() - self.max_age
            for key in [k for k, t in since.items() if t < oldest]:
                del since[key]
            return len(since)


ARRIVALS = Arrivals()
"""This process's (one per DICOM worker; the SCP's associations announce, the Ingestor reads)."""
