"""Study completeness: a study is *stable* after ``study_stable_seconds`` without a new
instance, the heuristic Orthanc (``StableAge``) and dcm4chee (IAN timeout)
use when no MPPS says the exam is over.

:class:`StabilityMonitor` runs in ``drimbox serve``: every few seconds it marks quiet studies
stable in the index (``studies.stable_at``; durable, so a restart loses no event: studies that
became quiet while the gateway was down are marked at the next pass) and calls each
subscriber with the UIDs that just became stable. The publication workflow subscribes; a
subscriber's failure is logged and does not stop the others. A new instance reopens a study
(``updated_at`` moves past ``stable_at``), which is marked and announced again once quiet.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from gateway.index.store import InstanceIndex

log = logging.getLogger(__name__)

StableListener = Callable[[list[str]], None]
#: Called with the marking transaction's session: its writes commit with the stability mark.
StableHook = Callable[[Session, list[str]], None]


class StabilityMonitor:
    def __init__(self, index: InstanceIndex, quiet_seconds: float,
                 interval: float | None = None) -> None:
        self.index = index
        self.quiet_seconds = quiet_seconds
        self.interval = interval if interval is not None else min(5.0, max(0.2, quiet_seconds / 4))
        self._listeners: list[StableListener] = []
        self._hooks: list[StableHook] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, listener: StableListener) -> None:
        self._listeners.append(listener)

    def subscribe_in_transaction(self, hook: StableHook) -> None:
        """``hook(session, uids)`` runs inside the transaction that marks the studies stable
        (the publication outbox row commits with the stability mark, or neither
        does). A hook that raises rolls the pass back; it is tried again at the next one."""
        self._hooks.append(hook)

    def _run_hooks(self, s: Session, uids: list[str]) -> None:
        for hook in self._hooks:
            hook(s, uids)

    def check_once(self) -> list[str]:
        """One pass: mark and announce the studies that became stable."""
        uids = self.index.mark_stable(self.quiet_seconds,
                                      on_stable=self._run_hooks if self._hooks else None)
        if uids:
            log.info("%d study(ies) became stable", len(uids))
            for listener in self._listeners:
                try:
                    listener(uids)
                except Exception:
                    log.exception("a stable-study listener failed")
        return uids

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception:
                log.exception("stability check failed; will retry")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="study-stability", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
