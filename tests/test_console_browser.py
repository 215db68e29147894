# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""The operator console in a real browser: headless Chromium (tests/browser.py, CDP) walks it
as centre staff. Logs in through a real ``drimbox psc-sim``, finds a study by INS, sees why
another is not publishable, publishes the first to a real ``drimbox dmp-sim`` and watches its
outbox row go to done without reloading (the page polls), creates and revokes a share link,
filters the audit trail. Each page gets an accessibility check run in the page (every
control labelled, every image with alt text, a skip link, ``lang``, text contrast of at
least 4.5:1, a visible focus outline after Tab) and a screenshot in ``test-artifacts/console-*.png``; the home page is also drawn
at tablet width without horizontal scrolling.

SQLite only: the back-end makes no difference to the browser (tests/test_console.py runs
both).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser
from conftest import ARTIFACTS
from dmp_support import Sim, pki, sim  # noqa: F401
from peers import storescu
from psc_support import STAFF, PscSim, psc_env
from test_manifest_e2e import INS, write_study
from test_publication_e2e import dmp_env

A11Y = r"""(() => {
  const problems = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    const byFor = el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]');
    if (!(byFor || el.closest('label') || el.getAttribute('aria-label')
          || el.getAttribute('aria-labelledby'))) {
      problems.push('unlabelled control: ' + el.outerHTML.slice(0, 80));
    }
  }
  for (const b of document.querySelectorAll('button')) {
    if (!(b.textContent.trim() || b.getAttribute('aria-label'))) problems.push('unnamed button');
  }
  for (const img of document.querySelectorAll('img')) {
    if (!img.hasAttribute('alt')) problems.push('image without alt: ' + img.src.slice(0, 60));
  }
  if (!document.documentElement.lang) problems.push('no lang attribute');
  if (!document.querySelector('a.skip[href="#main"]') || !document.getElementById('main')) {
    problems.push('no skip link to #main');
  }
  let focusRule = false;
  for (const sheet of document.styleSheets) {
    for (const rule of sheet.cssRules) {
      if ((rule.selectorText || '').includes(':focus-visible')) focusRule = true;
    }
  }
  if (!focusRule) problems.push('no :focus-visible style');
  // Text contrast (WCAG 2 AA, 4.5:1) of every visible text element against its background.
  const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); })
    .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length || el.closest('.skip')) continue;
    const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) problems.push('contrast ' + ratio.toFixed(2) + ': ' + el.tagName + ' '
                                   + el.textContent.trim().slice(0, 30));
  }
  return problems;
})()"""


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # overrides conftest's two back-ends
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


@pytest.fixture
def site(tmp_path: Path, gateway_factory, sim: Sim) -> Iterator:  # noqa: F811
    psc = PscSim(tmp_path)
    gw = gateway_factory(**dmp_env(sim, **psc_env(psc), DRIMBOX_AUTO_PUBLISH="false"))
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    psc.start(gw.url)
    try:
        gw.start()
        study, files = write_study(tmp_path / "study", per_series=1)
        local, local_files = write_study(tmp_path / "local", patient_id="IPP101", ins_oid=None,
                                         issuer="AUT-AFFECTATION", per_series=1)
        storescu(files + local_files, gw.dicom_port)
        yield gw, study, local
    finally:
        psc.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def q(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)})"


def click(browser: Browser, selector: str) -> None:
    browser.wait_for(f"{q(selector)} !== null", 30, selector)
    browser.evaluate(f"{q(selector)}.click()")


def on_page(browser: Browser, path: str, selector: str) -> None:
    browser.wait_for(f"location.pathname === {json.dumps(path)} && {q(selector)} !== null", 30,
                     f"{selector} on {path}")


def press_tab(browser: Browser) -> None:
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key="Tab", code="Tab",
                     windowsVirtualKeyCode=9, nativeVirtualKeyCode=9)


def checked(browser: Browser, name: str) -> None:
    """The page's accessibility check, a visible focus after Tab, and its screenshot."""
    browser.screenshot(ARTIFACTS / f"console-{name}.png")
    assert browser.evaluate(A11Y) == [], name
    browser.evaluate("document.activeElement && document.activeElement.blur()")
    press_tab(browser)
    focus = browser.evaluate(
        "(() => { const a = document.activeElement; const s = getComputedStyle(a);"
        " return [a.tagName, a.className, s.outlineStyle, s.outlineWidth]; })()")
    assert focus[:2] == ["A", "skip"], focus  # the first Tab lands on the skip link
    assert focus[2] != "none" and focus[3] != "0px", focus


def test_staff_walk_through_the_console(site, browser: Browser, sim: Sim) -> None:  # noqa: F811
    gw, study, local = site
    # A French browser (headless Chromium asks for en-US otherwise).
    agent = browser.evaluate("navigator.userAgent")
    browser.call("Network.setUserAgentOverride", userAgent=agent, acceptLanguage="fr-FR,fr")
    # Log in through the PSC simulator (the console sends there), pick an activity.
    browser.goto(f"{gw.url}/")
    click(browser, f"#login-{STAFF}")
    click(browser, "#activity-R499999000000101")
    on_page(browser, "/", "#listeners")
    assert browser.evaluate("document.documentElement.lang") == "fr"
    browser.wait_for("document.body.getAttribute('data-live-updated')", 30, "a live refresh")
    checked(browser, "home")

    # Tablet width: the page reflows, nothing scrolls sideways.
    browser.call("Emulation.setDeviceMetricsOverride", width=768, height=1024,
                 deviceScaleFactor=1, mobile=False)
    try:
        assert browser.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth + 1")
        browser.screenshot(ARTIFACTS / "console-home-tablet.png")
    finally:
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=800,
                     deviceScaleFactor=1, mobile=False)

    # Find the study by INS.
    click(browser, "nav a[href='/console/studies']")
    on_page(browser, "/console/studies", "#f-ins")
    browser.evaluate(f"{q('#f-ins')}.value = {json.dumps(INS)}")
    click(browser, "#search")
    browser.wait_for(f"location.search.includes('ins=') && {q('[data-study]')} !== null", 30,
                     "the search result")
    assert browser.evaluate(
        "[...document.querySelectorAll('[data-study]')].map(r => r.dataset.study)") == [study]
    checked(browser, "studies")

    # The other study: why it is not publishable (no INS in its images).
    browser.goto(f"{gw.url}/console/studies?ins=IPP101")
    on_page(browser, "/console/studies", f"[data-study='{local}'] a")
    click(browser, f"[data-study='{local}'] a")
    on_page(browser, f"/console/studies/{local}", "#publishable")
    reason = browser.evaluate(f"{q('#publishable')}.textContent")
    assert reason.startswith("non : ") and "INS" in reason, reason
    checked(browser, "study-not-publishable")

    # Publish the first one: confirmation, then the outbox row goes to done on its own.
    browser.goto(f"{gw.url}/console/studies/{study}")
    on_page(browser, f"/console/studies/{study}", "#publishable")
    assert browser.evaluate(f"{q('#publishable')}.textContent") == "oui"
    click(browser, "#publish")
    on_page(browser, f"/console/studies/{study}/publish", "#confirm")
    checked(browser, "confirm-publish")
    # The DMP keeps its first two answers past our timeout: the row waits, then goes through.
    sim.inject("timeout", count=2, seconds=8)
    click(browser, "#confirm")
    on_page(browser, f"/console/studies/{study}/publish", "#result")
    assert "mise en file" in browser.evaluate(f"{q('#result')}.textContent")
    click(browser, "nav a[href='/console/outbox']")
    on_page(browser, "/console/outbox", "#outbox-rows")
    first = browser.evaluate(f"{q('#outbox-rows tr[data-row]')}.dataset.state")
    assert first in ("pending", "sending"), first
    try:
        browser.wait_for(f"{q('#outbox-rows tr[data-state=done]')} !== null", 90,
                         "the outbox row done, without a reload")
    finally:
        browser.screenshot(ARTIFACTS / "console-outbox.png")
    assert browser.evaluate("performance.getEntriesByType('navigation').length") == 1
    checked(browser, "outbox-done")
    browser.goto(f"{gw.url}/console/studies/{study}")
    on_page(browser, f"/console/studies/{study}", "#publication-state")
    assert browser.evaluate(f"{q('#publication-state')}.dataset.state") == "published"

    # A share link: created with its QR code and handout, then revoked.
    click(browser, "#share")
    on_page(browser, f"/console/studies/{study}/share", "#confirm")
    click(browser, "#confirm")
    on_page(browser, f"/console/studies/{study}/share", "#share-qr")
    assert browser.evaluate(f"{q('#share-qr')}.alt").startswith("QR code")
    browser.wait_for(f"{q('#share-qr')}.complete && {q('#share-qr')}.naturalWidth > 0", 30,
                     "the QR code drawn")
    checked(browser, "share-created")
    click(browser, "nav a[href='/console/shares']")
    on_page(browser, "/console/shares", "[data-status=active] button")
    checked(browser, "shares")
    click(browser, "[data-status=active] button")
    click(browser, "#confirm")
    browser.wait_for(f"{q('#result')} !== null && {q('#result')}.className === 'ok'", 30,
                     "the revocation done")
    click(browser, "nav a[href='/console/shares']")
    on_page(browser, "/console/shares", "[data-status=revoked]")
    assert browser.evaluate(f"{q('[data-status=active]')} === null")

    # The audit trail, filtered on the publication.
    click(browser, "nav a[href='/console/audit']")
    on_page(browser, "/console/audit", "#f-action")
    browser.evaluate(f"{q('#f-action')}.value = 'publish'")
    click(browser, "#audit-filter")
    browser.wait_for(f"location.search.includes('action=publish') && "
                     f"{q('#audit-events')} !== null", 30, "the filtered audit trail")
    actions = browser.evaluate(
        "[...document.querySelectorAll('#audit-events tbody tr')].map(r => r.dataset.action)")
    assert actions == ["publish"]
    checked(browser, "audit")

    # English on request.
    browser.goto(f"{gw.url}/console/audit?lang=en")
    on_page(browser, "/console/audit", "#f-action")
    assert browser.evaluate("document.documentElement.lang") == "en"
    assert browser.errors == [], browser.errors
