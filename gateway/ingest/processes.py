"""Whether a process of this host still runs: staging files (:mod:`gateway.ingest.storage`) and
outbox claims (:mod:`gateway.publication.outbox`) name their writer's pid, and a dead writer's leftovers
are taken over."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie (dead, not yet reaped by its parent: a process killed a
    moment ago) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it exists
    return state not in (b"Z", b"X")
