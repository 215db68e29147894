"""Abuse limits per client address (R22), over real HTTP against ``drimbox serve``: share-link
openings that fail (unknown links, wrong birth dates, over every link) and PSC logins that fail
lock the address out for a while, with 429 and ``Retry-After``, audited ``rate_limited``; other
addresses are not affected. The counting itself (window, lock, bounded memory) is unit-tested
on :class:`gateway.access.throttle.FailureThrottle`. The DICOM side's limit per calling AE is
in tests/test_dimse_admission.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from psc_support import PscSim, psc_env, seed_study
from test_share_links import BIRTH, cli, share_audit

from gateway.access.throttle import FailureThrottle

OTHER_ADDRESS = "127.0.0.2"  # another address of the loopback network


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_failures_lock_within_the_window_then_age_out() -> None:
    clock = Clock()
    t = FailureThrottle(3, window=60, lock=300, clock=clock)
    assert t.failure("a") == 0 and t.failure("a") == 0 and not t.locked("a")
    clock.t += 61  # the first two aged out of the window
    assert t.failure("a") == 0 and t.failure("a") == 0
    assert t.failure("a") == 300  # the third within 60 s locks
    assert t.locked("a") == 300 and not t.locked("b")
    clock.t += 299
    assert t.locked("a") == pytest.approx(1)
    clock.t += 1
    assert not t.locked("a")
    assert t.failure("a") == 0  # the count started again after the lock


def test_memory_is_bounded() -> None:
    t = FailureThrottle(2, window=60, lock=60, max_keys=100, clock=Clock())
    for n in range(1000):
        t.failure(f"10.0.{n // 256}.{n % 256}")
    assert len(t._failures) == 100  # noqa: SLF001 - the bound is the point
    with pytest.raises(ValueError):
        FailureThrottle(0, 60, 60)


@pytest.fixture
def site(tmp_path: Path, gateway_factory) -> Iterator:
    sim = PscSim(tmp_path)
    gw = gateway_factory(**psc_env(sim, DRIMBOX_SHARE_MAX_FAILURES_PER_ADDRESS="4",
                                   DRIMBOX_LOGIN_MAX_FAILURES_PER_ADDRESS="3",
                                   DRIMBOX_FAILURE_LOCK_MINUTES="10"))
    sim.start(gw.url)
    gw.start()
    yield gw, sim
    sim.stop()


def _from(address: str) -> httpx.Client:
    return httpx.Client(timeout=30, transport=httpx.HTTPTransport(local_address=address))


def test_share_link_guessing_locks_the_address(site) -> None:
    gw, _sim = site
    study = seed_study(gw.dicom_port, birth_date=BIRTH, patient_id="1800215000001")
    url = cli(gw, study, "--days", "7").stdout.strip()
    assert url.startswith(f"{gw.url}/share/")
    with _from("127.0.0.1") as guesser, _from(OTHER_ADDRESS) as patient:
        for n in range(3):  # unknown links (token guessing) and wrong dates, all counted
            assert guesser.get(f"{gw.url}/share/{'x' * 43}{n}").status_code == 404
        assert guesser.post(url, data={"birth_date": "01/01/1970"}).status_code == 403
        # Locked out: even the right date on a real link, for the lock's time.
        r = guesser.post(url, data={"birth_date": "15/02/1980"})
        assert r.status_code == 429 and 590 <= int(r.headers["retry-after"]) <= 600
        assert "Trop de tentatives" in r.text
        assert guesser.get(url).status_code == 429
        # Another address opens its link.
        assert patient.post(url, data={"birth_date": "15/02/1980"}).status_code == 303
    reasons = [reason for outcome, reason, _ in share_audit(gw)]
    assert reasons.count("rate_limited") == 2 and reasons.count("unknown") == 3


def test_failed_logins_lock_the_address(site) -> None:
    gw, _sim = site
    with _from("127.0.0.1") as client, _from(OTHER_ADDRESS) as other:
        for _ in range(3):  # a callback with no login under way: a failed login
            assert client.get(f"{gw.url}/auth/callback?code=x&state=y").status_code == 400
        r = client.get(f"{gw.url}/auth/login")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 590
        assert client.get(f"{gw.url}/auth/callback?code=x&state=y").status_code == 429
        assert other.get(f"{gw.url}/auth/login").status_code == 302  # to PSC
