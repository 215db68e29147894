"""Whether a process of this host still runs: staging files (:mod:`gateway.ingest.storage`) and
outbox claims (:mod:`gateway.publication.outbox`) name their writer's pid, and a dead writer's leftovers
are taken over."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
