"""Taking our own response off a pynetdicom association while its reactor thread runs.

pynetdicom's association thread (its *reactor*) polls the association's DIMSE message queue
between two passes of a checkpoint (``Association._reactor_checkpoint``; it sets
``_is_paused`` while it waits there). Code that sends a request on the association and then
reads the response from that queue must first hold the reactor at the checkpoint, or the
reactor may take the response (and drop it as unexpected). pynetdicom's own ``send_*``
methods clear the checkpoint and go on at the first ``_is_paused`` they see, but that flag
may still be set from the previous pass, while the reactor is just leaving the checkpoint:
it then reads the queue once more. That race lost a response in a benchmark's client.

:func:`reactor_paused` holds the checkpoint and waits for a pause that is certainly the
reactor waiting there; :func:`exchange` sends one request and takes its response inside it.
Used by the PACS client and export (around pynetdicom's own C-FIND and C-MOVE senders too),
the C-MOVE/C-GET sub-operations of the Query/Retrieve SCP and the
Storage Commitment report on the request's association. These rely on pynetdicom 3's private
attributes (``_reactor_checkpoint``, ``_is_paused``), as its own senders do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: How long a flag already set when we clear the checkpoint is watched before it is trusted:
#: a reactor leaving an earlier pass clears it within microseconds.
SETTLE = 0.002


@contextmanager
def reactor_paused(assoc: Any, timeout: float = 5.0) -> Iterator[bool]:
    """Hold ``assoc``'s reactor at its checkpoint; yields True once it waits there, False if
    it did not within ``timeout`` s (busy serving a request) or the association ended."""
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    try:
        deadline = time.monotonic() + timeout
        ran_since = False  # the reactor was seen running after the checkpoint was cleared
        paused = False
        while assoc.is_established and time.monotonic() < deadline:
            if assoc._is_paused:
                if ran_since:
                    paused = True  # it arrived at the cleared checkpoint: a real pause
                    break
                time.sleep(SETTLE)  # set already: a real pause, or a pass just ending
                if assoc._is_paused:
                    paused = True  # still (or again) waiting: real either way
                    break
            ran_since = True
            time.sleep(0.0001)
        yield paused and bool(assoc._is_paused)
    finally:
        checkpoint.set()


def exchange(assoc: Any, request: Any, context_id: int) -> Any:
    """Send a DIMSE request on ``assoc`` and return its response (None if the association
    ended or the DIMSE timeout passed), the reactor held meanwhile."""
    with reactor_paused(assoc):
        assoc.dimse.send_msg(request, context_id)
        _, response = assoc.dimse.get_msg(block=True)
    return response
