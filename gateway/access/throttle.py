"""Failures per client address, and the lock-out that follows too many (R22: abuse limits).

A :class:`FailureThrottle` counts one kind of failure (a PSC login that fails, a wrong birth
date on a share link) per key, the client's address, within a sliding ``window``. At the
``limit``-th failure the key is locked for ``lock`` seconds: :meth:`FailureThrottle.locked`
then answers how long is left, which the HTTP face turns into 429 with ``Retry-After``.
A success does not wipe the failures (a wrong guess followed by the right one still counts);
they age out of the window.

It lives in the memory of the HTTP process (one per gateway); a restart forgets it, which the
per-link lock of share links (kept in the index, :mod:`gateway.access.share_links`) does not.
Its size is bounded: beyond ``max_keys`` addresses the oldest are forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailureThrottle:
    def __init__(self, limit: int, window: float, lock: float, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0 or lock <= 0:
            raise ValueError("limit, window and lock must be positive")
        self.limit, self.window, self.lock = limit, window, lock
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: dict[str, float] = {}
        self._mutex = threading.Lock()

    def locked(self, key: str) -> float:
        """Seconds left before ``key`` may try again; 0 when it is not locked."""
        now = self.clock()
        with self._mutex:
            until = self._locked_until.get(key, 0.0)
            if until <= now:
                self._locked_until.pop(key, None)
                return 0.0
            return until - now

    def failure(self, key: str) -> float:
        """Count one failure of ``key``; the lock's seconds when this one locks it, else 0."""
        now = self.clock()
        with self._mutex:
            times = self._failures.pop(key, None) or deque()
            while times and times[0] <= now - self.window:
                times.popleft()
            times.append(now)
            self._failures[key] = times  # most recent last: the oldest go first
            while len(self._failures) > self.max_keys:
                old, _ = self._failures.popitem(last=False)
                self._locked_until.pop(old, None)
            if len(times) >= self.limit:
                times.clear()
                self._locked_until[key] = now + self.lock
                return self.lock
            return 0.0
