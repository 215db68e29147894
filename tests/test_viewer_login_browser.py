"""The viewer behind Pro Santé Connect, in a real browser (R15):
headless Chromium opens ``/viewer`` of a ``drimbox serve`` with ``dicomweb_auth = psc``, is
sent to a real ``drimbox psc-sim``, clicks a test practitioner on its login page, picks an
activity on our page, and OHIF then lists and draws the study; the logout link OHIF shows in
its header leads to our confirmation page, whose button ends the session. A
patient opens a share link the same way, with a birth date, and sees only that study.

SQLite only (as tests/test_viewer.py): the back-end makes no difference to the browser, and
both back-ends are covered by tests/test_viewer_login.py and tests/test_share_links.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import launcher
import pytest
from browser import Browser
from conftest import ARTIFACTS
from peers import in_ci
from psc_support import STAFF, PscSim, psc_env, seed_study
from test_viewer import DRAWN

from gateway.config import DEFAULT_VIEWER_DIR as VIEWER_DIR


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # overrides conftest's two back-ends
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


@pytest.fixture
def site(tmp_path: Path, gateway_factory) -> Iterator:
    if not (VIEWER_DIR / "index.html").is_file():
        msg = f"OHIF viewer files missing in {VIEWER_DIR}: run `make setup`"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    sim = PscSim(tmp_path)
    gw = gateway_factory(**psc_env(sim))
    sim.start(gw.url)
    gw.start()
    shared = seed_study(gw.dicom_port, birth_date="19800215", patient_id="1800215000001",
                        description="IRM GENOU DROIT", instances=3, rows=256)
    other = seed_study(gw.dicom_port, birth_date="19620704", patient_id="2620704000002",
                       description="SCANNER THORAX", instances=1, rows=256)
    yield gw, sim, shared, other
    sim.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def text_shown(needle: str) -> str:
    return f"document.body && document.body.innerText.includes({json.dumps(needle)})"


def cookies(browser: Browser) -> dict[str, str]:
    return {c["name"]: c["value"] for c in browser.call("Network.getAllCookies")["cookies"]}


def test_practitioner_logs_in_sees_the_study_and_logs_out(site, browser: Browser) -> None:
    gw, sim, shared, other = site
    browser.goto(f"{gw.url}/viewer")
    # Sent to PSC (the simulator's login page), where the practitioner is chosen.
    browser.wait_for(f"document.querySelector('#login-{STAFF}') !== null", 30,
                     "the PSC simulator's login page")
    assert browser.evaluate("location.origin") == sim.base
    browser.evaluate(f"document.querySelector('#login-{STAFF}').click()")
    # Back on our activity page: two activities, pick the radiology practice.
    browser.wait_for("document.querySelector('#activity-R499999000000101') !== null", 30,
                     "the activity choice")
    assert browser.evaluate("location.pathname") == "/auth/activity"
    browser.evaluate("document.querySelector('#activity-R499999000000101').click()")

    # OHIF's study list shows both studies of the centre (role viewer).
    try:
        browser.wait_for(text_shown("IRM GENOU DROIT"), 90, "the study in OHIF's study list")
        browser.wait_for(text_shown("SCANNER THORAX"), 30, "the other study in the list")
    finally:
        browser.screenshot(ARTIFACTS / "viewer-login-study-list.png")
    assert browser.evaluate("location.pathname") == "/viewer"
    session = cookies(browser)["drimbox-session"]
    assert all("." not in v for v in cookies(browser).values())  # no JWT in the browser

    browser.goto(f"{gw.url}/viewer?StudyInstanceUIDs={shared}")
    try:
        lit = browser.wait_for(DRAWN, 90, "a drawn image of the study")
    finally:
        browser.screenshot(ARTIFACTS / "viewer-login-study.png")
    assert lit > 0
    ours = [(u, s) for u, s in browser.responses if u.startswith(f"{gw.url}/dicom-web/")]
    assert ours and all(s == 200 for _, s in ours), ours[-5:]

    # Logout from OHIF's header (our whiteLabeling link) to the confirmation page, whose
    # button posts the logout: through PSC's end-session endpoint, back to "logged out".
    browser.wait_for("document.querySelector('#drimbox-logout') !== null", 30,
                     "the logout link in OHIF's header")
    browser.evaluate("document.querySelector('#drimbox-logout').click()")
    browser.wait_for("document.querySelector('button#logout') !== null", 30,
                     "the logout confirmation page")
    assert browser.evaluate("location.pathname") == "/auth/logout"
    assert cookies(browser)["drimbox-session"] == session  # a GET changes nothing
    browser.evaluate("document.querySelector('button#logout').click()")
    browser.wait_for("document.querySelector('#login-again') !== null", 30,
                     "the logged-out page")
    assert "drimbox-session" not in cookies(browser)
    # (The hop through PSC's end_session_endpoint is a redirect, which DevTools does not
    # report as a response: tests/test_viewer_login.py checks and follows it.)
    assert browser.evaluate("location.href") == f"{gw.url}/auth/logged-out"
    stale = httpx.get(f"{gw.url}/dicom-web/studies", cookies={"drimbox-session": session})
    assert stale.status_code == 401
    browser.goto(f"{gw.url}/viewer")
    browser.wait_for(f"document.querySelector('#login-{STAFF}') !== null", 30,
                     "the PSC login page again")


def test_patient_opens_a_share_link_and_sees_only_that_study(site, browser: Browser,
                                                             tmp_path: Path) -> None:
    gw, _, shared, other = site
    made = launcher.run(["share", shared, "--days", "7",
                           "--qr-dir", str(tmp_path / "qr")], env=gw.env, timeout=60)
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip()
    browser.goto(url)
    browser.wait_for("document.querySelector('#birth_date') !== null", 30, "the birth-date form")
    browser.evaluate("document.querySelector('#birth_date').value = '1980-02-15';"
                     "document.querySelector('#open').click()")
    try:
        lit = browser.wait_for(DRAWN, 90, "the shared study drawn in the viewer")
    finally:
        browser.screenshot(ARTIFACTS / "viewer-share-link.png")
    assert lit > 0
    assert browser.evaluate("location.pathname") == "/viewer/viewer"
    assert browser.evaluate("document.querySelector('#drimbox-logout') === null")  # no PSC login
    share = cookies(browser)["drimbox-share"]
    # The share session reads its study and is refused the other one.
    assert httpx.get(f"{gw.url}/dicom-web/studies/{other}/series",
                     cookies={"drimbox-share": share}).status_code == 403
    listed = httpx.get(f"{gw.url}/dicom-web/studies", cookies={"drimbox-share": share}).json()
    assert [s["0020000D"]["Value"][0] for s in listed] == [shared]
    refused = [(u, s) for u, s in browser.responses
               if u.startswith(f"{gw.url}/dicom-web/") and s != 200]
    assert refused == []
