"""Taking our own response off a pynetdicom association while its reactor thread runs.

pynetdicom's association thread (its *reactor*) polls the association's DIMSE message queue
between two passes of a checkpoint (``Association._reactor_checkpoint``; it sets
``_is_paused`` while it waits there). Code that sends a request on the association and then
reads the response from that queue must first hold the reactor at the checkpoint, or the
reactor may take the response (and drop it as unexpected). pynetdicom's own ``send_*``
methods clear the checkpoint and go on at the first ``_is_paused`` they see, but that flag
may still be set from the previous pass, while the reactor is just leaving the checkpoint:
it then reads the queue once more. That race lost a response in a benchmark's client.

:func:`reactor_paused` holds the checkpoint and waits until the reactor is blocked at it, told
by the checkpoint itself (:class:`Checkpoint`, swapped in for pynetdicom's ``Event``), not by
a flag. Used by the PACS client and export (around pynetdicom's own C-FIND and C-MOVE senders
too; an export's C-STOREs inside one hold), the C-MOVE sub-operations of the Query/Retrieve
SCP (one hold for the whole C-MOVE), the PACS speed test and the Storage Commitment report on
the request's association. These rely on pynetdicom 3's private
attribute ``_reactor_checkpoint``, as its own senders do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Checkpoint(threading.Event):
    """The reactor's checkpoint, which also tells when the reactor is blocked at it: ``held``
    is set while a ``wait`` that found the checkpoint cleared is waiting, and cleared by
    ``set`` itself (a woken waiter may run later). Flag and ``held`` change under the event's
    own lock: a pass that went through before the checkpoint was cleared never looks held."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()

    def set(self) -> None:
        with self._cond:  # type: ignore[attr-defined]
            self.held.clear()  # the waiter woken now is not held any more, even before it runs
            self._flag = True
            self._cond.notify_all()  # type: ignore[attr-defined]

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:  # type: ignore[attr-defined]
            if self._flag:  # type: ignore[attr-defined]
                return True
            self.held.set()
            try:
                return self._cond.wait(timeout)  # type: ignore[attr-defined]
            finally:
                self.held.clear()


def _checkpoint(assoc: Any) -> Checkpoint:
    """``assoc``'s checkpoint as a :class:`Checkpoint` (swapped in while it is set: the reactor
    reads the attribute at each pass, and a pass waiting on the old one has returned)."""
    current = assoc._reactor_checkpoint
    if not isinstance(current, Checkpoint):
        current.wait(5.0)  # held by one of pynetdicom's senders: it sets it when done
        replacement = Checkpoint()
        if current.is_set():
            replacement.set()
        assoc._reactor_checkpoint = current = replacement
    return current


@contextmanager
def reactor_paused(assoc: Any, timeout: float = 5.0) -> Iterator[bool]:
    """Hold ``assoc``'s reactor at its checkpoint; yields True once it waits there, False if
    it did not within ``timeout`` s (busy serving a request) or the association ended."""
    checkpoint = _checkpoint(assoc)
    checkpoint.clear()
    try:
        deadline = time.monotonic() + timeout
        paused = False
        while assoc.is_established and (left := deadline - time.monotonic()) > 0:
            if checkpoint.held.wait(min(left, 0.05)):
                paused = True
                break
        yield paused
    finally:
        checkpoint.set()

