"""Viewer sessions in the index (R15; :mod:`gateway.access.sessions`): lifetime, idle timeout,
single-use pending logins, activity choice limited to the practitioner's own. A clock the
test moves stands for time passing. Both index back-ends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from gateway.access.sessions import Activity, SessionStore, digest
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.models import ViewerSession
from gateway.index.store import InstanceIndex


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def index(database_url: str) -> Iterator[InstanceIndex]:
    engine = create_index_engine(database_url)
    upgrade(engine)
    yield InstanceIndex(engine)
    engine.dispose()


def store(index: InstanceIndex, clock: Clock) -> SessionStore:
    return SessionStore(index, timedelta(hours=8), timedelta(minutes=30), now=clock)


def test_sessions_end_when_idle_or_old_and_at_logout(index: InstanceIndex) -> None:
    clock = Clock()
    sessions = store(index, clock)
    raw = sessions.create("practitioner", "899999000001", activity="R1")
    with index.read() as s:
        assert s.get(ViewerSession, raw) is None  # the cookie value is not a key
        assert s.get(ViewerSession, digest(raw)).subject == "899999000001"
    # Used every 20 minutes: alive (each use moves the idle deadline) until 8 h have passed.
    for _ in range(23):
        clock.now += timedelta(minutes=20)
        assert sessions.find(raw) is not None
    clock.now += timedelta(minutes=20)  # 8 h since creation
    assert sessions.find(raw) is None
    assert sessions.find(raw) is None  # and the row is gone

    idle = sessions.create("practitioner", "899999000001", activity="R1")
    clock.now += timedelta(minutes=31)
    assert sessions.find(idle) is None

    ended = sessions.create("practitioner", "899999000002", activity="R2")
    assert sessions.end(ended).subject == "899999000002"
    assert sessions.find(ended) is None and sessions.end(ended) is None
    assert sessions.find("") is None and sessions.find("x" * 1000) is None


def test_activity_must_be_one_of_the_practitioners(index: InstanceIndex) -> None:
    sessions = store(index, Clock())
    acts = (Activity("R1", "CABINET (SA07)"), Activity("R2", "CH (SA01)"))
    raw = sessions.create("practitioner", "899999000001", activities=acts)
    assert sessions.find(raw).needs_activity
    assert sessions.choose_activity(raw, "R9") is None
    assert sessions.find(raw).needs_activity
    assert sessions.choose_activity(raw, "R2") == acts[1]
    info = sessions.find(raw)
    assert not info.needs_activity and info.activity == "R2" and info.activities == acts


def test_pending_login_is_used_once_and_expires(index: InstanceIndex) -> None:
    clock = Clock()
    sessions = store(index, clock)
    raw = sessions.start_login("state", "nonce", "verifier", "/viewer")
    pending = sessions.take_login(raw)
    assert (pending.state, pending.nonce, pending.code_verifier, pending.return_to) == (
        "state", "nonce", "verifier", "/viewer")
    assert sessions.take_login(raw) is None
    late = sessions.start_login("s2", "n2", "v2", "/viewer")
    clock.now += timedelta(minutes=11)
    assert sessions.take_login(late) is None
