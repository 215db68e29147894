"""Fetching evicted instances back from the PACS before WADO-RS answers (storage as a cache of
the PACS; :mod:`gateway.ingest.retention` evicts).

:meth:`Restorer.ensure_local` is called by every WADO-RS route that reads instance files
(instances, series, study, frames, bulk data, rendered, thumbnails) with the instances it is
about to send, before the response starts. When some are evicted it asks the PACS for their
study by C-MOVE with our own AE title as destination, as the DRIM-M reference implementation
does (SPEC.md section 1.3, flow B step 7): the PACS sends the instances to our C-STORE SCP, where the
ingest path (:meth:`gateway.ingest.ingestor.Ingestor._restore`) keeps a copy only if it is
the dataset the index recorded (SHA-256, size) and clears its eviction mark. When the C-MOVE
is over, the instances still evicted did not come back identical: :class:`RestoreFailed`
(502), never a partial answer. The PACS unreachable or failing the C-MOVE:
:class:`RestoreFailed` with status 503 and a ``Retry-After``.

Concurrent requests for the same study share one C-MOVE: the first starts it, the others wait
for its result (success or the same failure). A study being fetched back is never evicted
(:meth:`busy`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.index.retention import evicted_instances, evicted_of_study
from gateway.index.store import InstanceIndex
from gateway.reports.workflow import PacsMoveFailed, PacsUnavailable, StudyLocator

log = logging.getLogger(__name__)

#: Called by the request that ran the C-MOVE: (outcome ``allowed`` / ``failed``, detail).
MoveAudit = Callable[[str, str], None]


class RestoreFailed(Exception):
    """Evicted instances could not be fetched back: ``status`` is 503 (the PACS unreachable,
    retry later: ``retry_after`` seconds) or 502 (the PACS answered, but not with the
    recorded instances)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class _Attempt:
    done: threading.Event = field(default_factory=threading.Event)
    error: RestoreFailed | None = None


class Restorer:
    def __init__(self, index: InstanceIndex, pacs: StudyLocator | None,
                 retry_after: int = 60) -> None:
        self.index = index
        self.pacs = pacs
        self.retry_after = retry_after
        self._guard = threading.Lock()
        self._attempts: dict[str, _Attempt] = {}
        self.moves = 0
        """C-MOVEs started since the process started."""

    def busy(self, study_uid: str) -> bool:
        with self._guard:
            return study_uid in self._attempts

    def ensure_local(self, study_uid: str, sop_instance_uids: list[str] | None,
                     audit: MoveAudit | None = None) -> int:
        """Make sure the files of these instances of one study (``None``: all of them) are in
        the store; returns how many had to be fetched back. Raises :class:`RestoreFailed`."""
        if sop_instance_uids is None:
            evicted = evicted_of_study(self.index, study_uid)
        else:
            evicted = evicted_instances(self.index, sop_instance_uids)
        if not evicted:
            return 0
        if self.pacs is None:
            raise RestoreFailed(503, f"{len(evicted)} instance(s) of study {study_uid} are "
                                     "evicted and no PACS is configured to fetch them back",
                                self.retry_after)
        with self._guard:
            attempt = self._attempts.get(study_uid)
            mine = attempt is None
            if mine:
                attempt = self._attempts[study_uid] = _Attempt()
        assert attempt is not None
        if not mine:
            attempt.done.wait()
            if attempt.error is not None:
                raise attempt.error
            still = evicted_instances(self.index, evicted)
            if still:  # evicted again meanwhile, or not part of that move: try our own
                return self.ensure_local(study_uid, sop_instance_uids, audit)
            return len(evicted)
        try:
            self._move(study_uid, evicted, audit)
        except RestoreFailed as exc:
            attempt.error = exc
            raise
        finally:
            with self._guard:
                self._attempts.pop(study_uid, None)
            attempt.done.set()
        return len(evicted)

    def _move(self, study_uid: str, evicted: list[str], audit: MoveAudit | None) -> None:
        assert self.pacs is not None
        self.moves += 1
        of_study = evicted_of_study(self.index, study_uid)  # the C-MOVE sends the whole study
        log.info("study %s: %d evicted instance(s) asked, C-MOVE from the PACS", study_uid,
                 len(evicted))
        failure = ""
        try:
            self.pacs.retrieve_study(study_uid)
        except PacsMoveFailed as exc:
            failure = f" ({exc})"  # the PACS answered: what came back is judged below
        except PacsUnavailable as exc:
            message = (f"study {study_uid}: {len(evicted)} instance(s) are evicted and the PACS "
                       f"could not send them back ({exc}); retry later")
            log.warning("%s", message)
            if audit is not None:
                audit("failed", f"C-MOVE failed: {exc}"[:255])
            raise RestoreFailed(503, message, self.retry_after) from exc
        still = sorted(evicted_instances(self.index, evicted))
        if still:
            named = ", ".join(still[:3]) + (", ..." if len(still) > 3 else "")
            message = (f"study {study_uid}: {len(still)} of {len(evicted)} evicted instance(s) "
                       "did not come back from the PACS as the index recorded them (missing in "
                       f"the PACS, or another object under the same UID): {named}{failure}")
            log.error("%s", message)
            if audit is not None:
                audit("failed", f"C-MOVE: {len(still)} of {len(evicted)} not restored "
                                 f"({named}){failure}"[:255])
            raise RestoreFailed(502, message)
        restored = len(of_study) - len(evicted_instances(self.index, of_study))
        if audit is not None:
            audit("allowed", f"C-MOVE: {restored} instance(s) restored")
        log.info("study %s: %d instance(s) restored from the PACS", study_uid, restored)
