"""The appel contextuel in a real browser (R13, R14, R15): headless Chromium, with its own
cookie rules, posts the context from *another site* (a page the clinician's software opens,
served here on ``localhost`` while the gateway is ``127.0.0.1``: a cross-site POST, which
carries none of our SameSite=Lax cookies). The context cookie set by the 303 survives the
PSC login; a second appel contextuel, with a session already open, reaches the banner without
a new login. SQLite only (the HTTP tests in tests/test_consumer_entry.py cover both
back-ends).
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from browser import Browser
from conftest import ARTIFACTS
from psc_support import STAFF, PscSim, psc_env
from test_consumer_entry import HOSPITAL, PATIENT, SECRETS, audit


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # overrides conftest's two back-ends
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


class Lps:
    """The clinician's software: a page on another site whose form posts the appel contextuel
    to the consumer as soon as it loads (what an LPS opens in the browser)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.params: dict[str, str] = {}
        lps = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                inputs = "".join(
                    f"<input type=hidden name='{html.escape(k)}' value='{html.escape(v)}'>"
                    for k, v in lps.params.items())
                body = (f"<!doctype html><meta charset=utf-8><form id=f method=post "
                        f"action='{html.escape(lps.target)}'>{inputs}</form>"
                        "<script>document.getElementById('f').submit()</script>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/lps"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site(tmp_path: Path, gateway_factory) -> Iterator:
    sim = PscSim(tmp_path)
    gw = gateway_factory(**psc_env(sim, DRIMBOX_ROLES="consumer"))
    sim.start(gw.url)
    gw.start()
    lps = Lps(f"{gw.url}/consumer/context")
    yield gw, sim, lps
    lps.close()
    sim.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def shown(trait: str, value: str) -> str:
    return (f"(document.querySelector(\"[data-trait='{trait}']\") || {{}}).textContent"
            f" === {json.dumps(value)}")


def test_cross_site_appel_contextuel_login_and_banner(site, browser: Browser) -> None:
    gw, sim, lps = site
    lps.params = {**PATIENT, "Situation": HOSPITAL}
    browser.goto(lps.url)
    # The 303 and our login sent the browser to PSC (the simulator's login page).
    browser.wait_for(f"document.querySelector('#login-{STAFF}') !== null", 30,
                     "the PSC simulator's login page")
    assert browser.evaluate("location.origin") == sim.base
    browser.evaluate(f"document.querySelector('#login-{STAFF}').click()")
    # Back on the consumer page, the hospital pre-selected by Situation (no choice page).
    try:
        browser.wait_for(shown("birth-name", "D'ARTAGNAN"), 30, "the identity banner")
    finally:
        browser.screenshot(ARTIFACTS / "consumer-banner.png")
    assert browser.evaluate("location.href") == f"{gw.url}/consumer"
    assert browser.evaluate(shown("first-given-name", "JEAN-LOUIS"))
    assert browser.evaluate(shown("birth-date", "12/03/1979"))
    assert browser.evaluate("document.querySelector('#activity').dataset.activity") == HOSPITAL
    # The INS is in the banner's <details>, closed until asked for.
    assert browser.evaluate("document.querySelector('#identity-more').open") is False
    assert not browser.evaluate("document.body.innerText.includes('279035121518989')")
    browser.evaluate("document.querySelector('#identity-more summary').click()")
    browser.wait_for("document.body.innerText.includes('279035121518989')", 10,
                     "the INS shown on demand")

    # A second appel contextuel from the LPS, the session open: no new login.
    lps.params = {**PATIENT, "Patient.name.family": "PAT-TROIS"}
    browser.goto(lps.url)
    browser.wait_for(shown("birth-name", "PAT-TROIS"), 30, "the second patient's banner")
    assert browser.evaluate("location.href") == f"{gw.url}/consumer"
    for url, _status in browser.responses:
        assert not any(secret in url for secret in SECRETS), url
    # Both posts came without the session cookie (SameSite=Lax on a cross-site POST): the
    # audit names the clinician's software, then the practitioner for each page view.
    received = audit(gw, "consumer_context")
    assert [(r.principal_kind, r.subject, r.reason) for r in received] == [
        ("anonymous", "lps", "appel-contextuel")] * 2
    assert {r.subject for r in audit(gw, "consumer_view")} == {STAFF}
