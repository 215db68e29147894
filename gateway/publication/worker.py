"""What every outbox worker shares (the DMP publication's, :mod:`gateway.publication.outbox`, and
MSSanté's, :mod:`gateway.mssante.delivery`): a daemon thread that runs :meth:`run_once` until
nothing is due, then waits ``poll_interval`` or a :meth:`nudge`; a worker id
``host:pid:nonce`` written on the rows it claims; and, at start, the release of rows claimed by
a process of this host that is gone (a SIGKILL, a crash), which are then due again at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from sqlalchemy.orm import Session

from gateway.index.store import InstanceIndex
from gateway.ingest.processes import alive

log = logging.getLogger(__name__)


class OutboxThread:
    """Subclasses give :meth:`run_once` (claim and carry one row; False when nothing was due),
    :meth:`claimants` and :meth:`release_claims` (their table's)."""

    thread_name = "outbox"

    def __init__(self, index: InstanceIndex, poll_interval: float) -> None:
        self.index = index
        self.poll_interval = poll_interval
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what a subclass gives ------------------------------------------------------------

    def run_once(self) -> bool:
        raise NotImplementedError

    def claimants(self, s: Session) -> list[str]:
        raise NotImplementedError

    def release_claims(self, s: Session, workers: list[str]) -> int:
        raise NotImplementedError

    def after_pass(self) -> None:
        """Called after each pass of the thread (metrics)."""

    # -- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def nudge(self, *_: object) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # noqa: BLE001 - the index may be briefly unreachable
                log.exception("%s pass failed; will retry", self.thread_name)
                worked = False
            self.after_pass()
            if not worked:
                self._wake.wait(self.poll_interval)
                self._wake.clear()

    def recover(self) -> int:
        """Release rows claimed by processes of this host that are gone: due again at once."""
        mine_host, my_pid = f"{self.host}:", os.getpid()
        with self.index.write() as s:
            dead = []
            for claimant in self.claimants(s):
                if not claimant.startswith(mine_host):
                    continue
                try:
                    _, pid, _nonce = claimant.rsplit(":", 2)
                    pid_n = int(pid)
                except ValueError:
                    continue
                if claimant != self.worker_id and (pid_n == my_pid or not alive(pid_n)):
                    dead.append(claimant)
            n = self.release_claims(s, dead)
        if n:
            log.warning("%s: %d row(s) claimed by a process that died are due again",
                        self.thread_name, n)
        return n
