"""The OHIF viewer at /viewer: served files, generated configuration, the
single-page-app fallback, and real headless Chromium loading it from a ``drimbox serve``
child process. Screenshots are kept in test-artifacts/.

SQLite only: the index back-end makes no difference to what the browser sees, and each
browser test takes tens of seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import Browser
from conftest import ARTIFACTS
from dicom_factory import make_instance, to_bytes
from peers import in_ci
from pydicom.uid import generate_uid

from gateway.config import DEFAULT_VIEWER_DIR as VIEWER_DIR


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # overrides conftest's two back-ends
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


@pytest.fixture
def viewer_files() -> Path:
    if not (VIEWER_DIR / "index.html").is_file():
        msg = f"OHIF viewer files missing in {VIEWER_DIR}: run `make setup`"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return VIEWER_DIR


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def app_config(text: str) -> dict:
    m = re.search(r"window\.config = (\{\n.*?\n\});\n", text, re.S)
    assert m, text[:300]
    return json.loads(m.group(1))


def test_viewer_files_config_and_spa_fallback(viewer_files: Path, gateway_factory) -> None:
    gw = gateway_factory().start()
    base = gw.url
    r = httpx.get(f"{base}/viewer")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "window.PUBLIC_URL = '/viewer/'" in html
    assert re.findall(r'(?:src|href)="/(?!viewer/)', html) == []  # every asset under /viewer/
    bundle = re.search(r'src="/viewer/(app\.bundle\.[0-9a-f]+\.js)"', html).group(1)

    config = app_config(httpx.get(f"{base}/viewer/app-config.js").text)
    assert config["routerBasename"] == "/viewer"
    (source,) = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert source["configuration"][root] == f"{base}/dicom-web"

    js = httpx.get(f"{base}/viewer/{bundle}")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert '__webpack_require__.p = "/viewer/";' in js.text
    assert "url(/viewer/" in httpx.get(f"{base}/viewer/app.bundle.css").text
    assert '"/assets/' not in httpx.get(f"{base}/viewer/manifest.json").text
    wasm = next(p.name for p in viewer_files.glob("*.wasm"))
    w = httpx.get(f"{base}/viewer/{wasm}")
    assert w.headers["content-type"] == "application/wasm"
    assert w.content == (viewer_files / wasm).read_bytes()

    # Reloading any route of the app serves index.html; a missing asset is a 404.
    for route in ("/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/local"):
        page = httpx.get(f"{base}{route}")
        assert page.status_code == 200 and "window.PUBLIC_URL" in page.text, route
    assert httpx.get(f"{base}/viewer/no-such-chunk.js").status_code == 404
    assert httpx.get(f"{base}/viewer/..%2F..%2Fpyproject.toml").status_code == 404
    # The deep link of the DRIMbox spec goes to OHIF's viewer route.
    deep = httpx.get(f"{base}/viewer?StudyInstanceUIDs=1.2.3")
    assert deep.status_code == 302
    assert deep.headers["location"] == f"{base}/viewer/viewer?StudyInstanceUIDs=1.2.3"


def test_viewer_behind_trusted_proxy_with_prefix(viewer_files: Path, gateway_factory) -> None:
    gw = gateway_factory(DRIMBOX_TRUSTED_PROXIES='["127.0.0.1"]').start()
    hdrs = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.chu.example",
            "X-Forwarded-Prefix": "/drimbox"}
    html = httpx.get(f"{gw.url}/viewer/", headers=hdrs).text
    assert "window.PUBLIC_URL = '/drimbox/viewer/'" in html
    assert 'src="/drimbox/viewer/app-config.js"' in html
    config = app_config(httpx.get(f"{gw.url}/viewer/app-config.js", headers=hdrs).text)
    assert config["routerBasename"] == "/drimbox/viewer"
    assert config["dataSources"][0]["configuration"]["qidoRoot"] == (
        "https://pacs.chu.example/drimbox/dicom-web"
    )
    bundle = re.search(r'src="/drimbox/viewer/(app\.bundle\.[0-9a-f]+\.js)"', html).group(1)
    assert '__webpack_require__.p = "/drimbox/viewer/";' in httpx.get(
        f"{gw.url}/viewer/{bundle}", headers=hdrs).text
    # The same headers from an untrusted peer change nothing.
    plain = gateway_factory().start()
    assert "window.PUBLIC_URL = '/viewer/'" in httpx.get(f"{plain.url}/viewer/",
                                                           headers=hdrs).text


def test_viewer_files_missing_503(gateway_factory, tmp_path: Path) -> None:
    empty = tmp_path / "no-viewer"
    empty.mkdir()
    gw = gateway_factory(DRIMBOX_VIEWER_DIR=str(empty)).start()
    for route in ("/viewer", "/viewer/", "/viewer/app-config.js", "/viewer/viewer"):
        r = httpx.get(f"{gw.url}{route}")
        assert r.status_code == 503, route
        assert "make setup" in r.text


def test_chromium_loads_the_viewer_shell(viewer_files: Path, gateway_factory,
                                         browser: Browser) -> None:
    """OHIF starts from /viewer: its study list renders and it queries our QIDO root."""
    gw = gateway_factory().start()
    browser.goto(f"{gw.url}/viewer")
    browser.wait_for('document.querySelector(\'[data-cy="num-studies"]\') !== null', 90,
                     "OHIF's study list")
    browser.wait_for(
        "performance.getEntriesByType('resource').some(e => e.name.startsWith("
        f"{json.dumps(gw.url + '/dicom-web/studies?')}))",
        30, "a QIDO-RS request to our /dicom-web",
    )
    browser.screenshot(ARTIFACTS / "viewer-study-list.png")
    viewer_errors = [(u, s) for u, s in browser.http_errors() if "/viewer" in u]
    assert viewer_errors == []  # every file of the build was found under /viewer/
    assert any(u.startswith(f"{gw.url}/viewer/app.bundle.") and s == 200
               for u, s in browser.responses)
    assert browser.errors == []


# A canvas of the viewport with more than 1 % of its pixels not black.
DRAWN = """(() => {
  for (const c of document.querySelectorAll('[data-cy="viewport-pane"] canvas, canvas.cornerstone-canvas')) {
    if (!c.width || !c.height) continue;
    const ctx = c.getContext('2d');
    if (!ctx) continue;
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let lit = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] | d[i + 1] | d[i + 2]) lit++;
    if (lit > c.width * c.height / 100) return lit;
  }
  return null;
})()"""


def test_chromium_draws_a_stored_study(viewer_files: Path, gateway_factory,
                                       browser: Browser) -> None:
    """A study sent by STOW-RS opens from the deep link and its image is drawn."""
    gw = gateway_factory().start()
    study, series = generate_uid(), generate_uid()
    parts = [to_bytes(make_instance(study_uid=study, series_uid=series, instance_number=i,
                                    rows=256, cols=256, seed=i)) for i in range(1, 4)]
    boundary = "viewer-test"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p
                    + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    r = httpx.post(f"{gw.url}/dicom-web/studies", content=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text

    browser.goto(f"{gw.url}/viewer?StudyInstanceUIDs={study}")
    try:
        browser.wait_for('document.querySelector(\'[data-cy="viewport-grid"]\') !== null', 90,
                         "OHIF's viewport grid")
        lit = browser.wait_for(DRAWN, 90, "a drawn image in the viewport")
    finally:
        browser.screenshot(ARTIFACTS / "viewer-study.png")
    assert lit > 0
    assert browser.evaluate("location.pathname") == "/viewer/viewer"
    ours = [(u, s) for u, s in browser.responses if u.startswith(f"{gw.url}/dicom-web/studies")]
    assert ours and all(s == 200 for _, s in ours), ours
    assert [(u, s) for u, s in browser.http_errors() if "/viewer" in u] == []
