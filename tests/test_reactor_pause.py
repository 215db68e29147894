"""adapters/pacs/reactor.py: while :func:`reactor_paused` says the reactor is held, the
reactor thread makes no pass over its message queue (the race of pynetdicom's own pause:
going on at an ``_is_paused`` left set by a pass that is just ending)."""

from __future__ import annotations

import threading
import time

from adapters.pacs.reactor import reactor_paused


class FakeAssociation:
    """The part of a pynetdicom 3 association the pause uses, with a reactor thread that
    loops as ``Association._run_reactor`` does: sleep, checkpoint, one read of the queue."""

    def __init__(self) -> None:
        self._reactor_checkpoint = threading.Event()
        self._reactor_checkpoint.set()
        self._is_paused = False
        self.is_established = True
        self.passes = 0  # reads of the queue
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            time.sleep(0.001)
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            self.passes += 1  # here pynetdicom would take a message off the queue

    def stop(self) -> None:
        self._stop = True
        self._reactor_checkpoint.set()
        self.thread.join(5)


def test_no_pass_over_the_queue_while_held() -> None:
    assoc = FakeAssociation()
    try:
        for i in range(200):
            with reactor_paused(assoc) as paused:
                assert paused
                before = assoc.passes
                time.sleep(0.003)  # longer than a pass of the loop
                assert assoc.passes == before, "the reactor read its queue while held"
            if i % 2:  # else straight on: the flag of the pass just released is still set
                time.sleep(0.0005 * (i % 3))  # meet the loop at different points
    finally:
        assoc.stop()


def test_an_ended_association_is_not_waited_for() -> None:
    assoc = FakeAssociation()
    assoc.stop()  # the reactor is gone
    assoc._is_paused = False
    assoc.is_established = False
    start = time.monotonic()
    with reactor_paused(assoc, timeout=5) as paused:
        assert not paused
    assert time.monotonic() - start < 1
    assert assoc._reactor_checkpoint.is_set()  # left as found
