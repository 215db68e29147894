# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""R17 "show in a DICOM viewer", in headless Chromium: the clinician's software posts the
appel contextuel (from another site), the practitioner logs in at PSC (the simulator's page),
opens the retrieval page of a prior study published by Source A, waits for it to complete,
and opens it: OHIF, same origin, framed under the identity banner, reads the study from the
consumer's DICOMweb (``/consumer/dicom-web``) and draws it. SQLite only (the HTTP tests in
tests/test_consumer_retrieve.py cover both back-ends). Screenshot:
``test-artifacts/consumer-retrieved-study.png``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser
from conftest import ARTIFACTS
from dmp_support import Sim, pki, sim  # noqa: F401
from peers import in_ci
from test_consumer_browser import Lps
from test_consumer_context import GOOD
from test_consumer_retrieve import PRACTITIONER, World, make_world
from test_viewer import DRAWN

from gateway.config import DEFAULT_VIEWER_DIR as VIEWER_DIR


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # overrides conftest's two back-ends
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


def require_ohif() -> None:
    """OHIF's built files are there (``make setup``): skip without them, fail under CI."""
    if not (VIEWER_DIR / "index.html").is_file():
        msg = f"OHIF viewer files missing in {VIEWER_DIR}: run `make setup`"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def world(tmp_path: Path, gateway_factory, sim: Sim) -> Iterator[World]:
    require_ohif()
    yield from make_world(tmp_path, gateway_factory, sim)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def open_patient_from_lps(browser: Browser, world: World, params: dict[str, str]) -> None:
    """The LPS (a page on another site) posts the appel contextuel to B; the practitioner logs
    in on the PSC simulator's page; the browser ends on B's consumer page, under the banner."""
    lps = Lps(f"{world.b.url}/consumer/context")
    try:
        lps.params = dict(params)
        browser.goto(lps.url)
        browser.wait_for(f"document.querySelector('#login-{PRACTITIONER}') !== null", 30,
                         "the PSC simulator's login page")
        browser.evaluate(f"document.querySelector('#login-{PRACTITIONER}').click()")
        browser.wait_for("document.querySelector('#identity-banner') !== null", 30,
                         "the consumer page")
    finally:
        lps.close()


def wait_retrieved(browser: Browser) -> None:
    """On the retrieval page: its progress reaches the viewer link, the study complete."""
    browser.wait_for("document.querySelector('#viewer-link') !== null", 90,
                     "the retrieval page's progress reaching the viewer link")
    assert browser.evaluate("document.querySelector('#retrieval').dataset.state") == "complete", \
        browser.evaluate("document.querySelector('#retrieval').innerText")


def draw_in_ohif(browser: Browser, screenshot: Path) -> int:
    """From the retrieval page: the viewer link, OHIF in the frame under the banner, an image
    drawn (its lit pixels); the page's screenshot in ``screenshot`` whatever happens."""
    browser.evaluate("document.querySelector('#viewer-link').click()")
    frame = "document.querySelector('#viewer').contentDocument"
    drawn = DRAWN.replace("document.querySelectorAll", f"{frame}.querySelectorAll")
    try:
        browser.wait_for(f"{frame} && {frame}.querySelector('[data-cy=\"viewport-grid\"]')"
                         " !== null", 90, "OHIF's viewport grid in the frame")
        return browser.wait_for(drawn, 90, "a drawn image in the viewport")
    finally:
        browser.screenshot(screenshot)


def test_retrieved_study_drawn_in_ohif_under_the_banner(world: World, browser: Browser) -> None:
    study, kos_uid = world.publish("shown", per_series=2)
    open_patient_from_lps(browser, world, GOOD)
    browser.goto(f"{world.b.url}/consumer/studies/{kos_uid}")
    wait_retrieved(browser)
    lit = draw_in_ohif(browser, ARTIFACTS / "consumer-retrieved-study.png")
    assert lit > 0
    assert browser.evaluate("document.querySelector(\"[data-trait='birth-name']\")"
                            ".textContent") == GOOD["Patient.name.family"]
    ours = [(u, s) for u, s in browser.responses
            if u.startswith(f"{world.b.url}/consumer/dicom-web/studies/{study}")]
    assert ours and all(s == 200 for _, s in ours), [(u[-80:], s) for u, s in ours if s != 200]
    assert not [(u, s) for u, s in browser.responses
                if u.startswith(f"{world.b.url}/dicom-web/")]  # not the Source's own data
    assert json.dumps(browser.errors).count("consumer/dicom-web") == 0
