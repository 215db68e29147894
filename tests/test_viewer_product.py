"""The viewer as a patient meets it through a share link (real ``drimbox serve`` with PSC,
real ``drimbox share``, headless Chromium): OHIF in French, no guided tour, no
"investigational use" dialog, the centre's name in its header, and a "Télécharger l'examen"
link giving the study as DICOM media (a zip with a DICOMDIR that pydicom reads, referencing
every stored instance byte for byte), audited and refused outside the share session's study.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import httpx
import launcher
from browser import Browser
from conftest import ARTIFACTS
from dimse_client import open_index
from pydicom import dcmread
from pydicom.fileset import FileSet
from sqlalchemy import select
from psc_support import STAFF
from test_consumer_entry import HOSPITAL, PATIENT, consumer, login_through_psc  # noqa: F401
from test_consumer_entry import Browser as EntryBrowser
from test_viewer import DRAWN
from test_viewer_login_browser import browser, cookies, database_url, site  # noqa: F401

from gateway.index.models import AuditEvent
from gateway.ingest.storage import FileStore

CENTRE = "CABINET DE RADIOLOGIE TEST"  # psc_env's institution_name


def stored_files(gw, study: str) -> dict[str, bytes]:  # noqa: ANN001
    """SOP Instance UID -> the gateway's stored file."""
    index = open_index(gw.database_url)
    store = FileStore(gw.data_dir)
    try:
        return {r.sop_instance_uid: store.path_of(r.storage_key).read_bytes()
                for r in index.all_instances() if r.study_instance_uid == study}
    finally:
        index.engine.dispose()


def download_audit(gw) -> list[tuple[str, str, str, str]]:  # noqa: ANN001
    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            return [(e.outcome, e.reason, e.principal_kind, e.study_instance_uid)
                    for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "download")
                                       .order_by(AuditEvent.id))]
    finally:
        index.engine.dispose()


def media_of(zipped: bytes, tmp: Path) -> dict[str, bytes]:
    """SOP Instance UID -> file, as the DICOMDIR of the zip references them."""
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert archive.namelist()[0] == "DICOMDIR"
        archive.extractall(tmp)
    fs = FileSet(dcmread(tmp / "DICOMDIR"))
    found = {}
    for instance in fs:
        found[instance.SOPInstanceUID] = Path(instance.path).read_bytes()
        assert instance.ReferencedTransferSyntaxUIDInFile == dcmread(instance.path).file_meta \
            .TransferSyntaxUID
    return found


def test_share_link_viewer_is_french_without_tour_or_banner_and_downloads_the_exam(
        site, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    gw, _, shared, other = site
    made = launcher.run(["share", shared, "--days", "7", "--qr-dir", str(tmp_path / "qr")],
                        env=gw.env, timeout=60)
    assert made.returncode == 0, made.stderr
    browser.goto(made.stdout.strip())
    browser.wait_for("document.querySelector('#birth_date') !== null", 30, "the birth-date form")
    browser.evaluate("document.querySelector('#birth_date').value = '1980-02-15';"
                     "document.querySelector('#open').click()")
    try:
        assert browser.wait_for(DRAWN, 90, "the shared study drawn in the viewer") > 0
        browser.wait_for("document.querySelector('#drimbox-download') !== null", 30,
                         "the download link in OHIF's header")
    finally:
        browser.screenshot(ARTIFACTS / "viewer-product-share.png")
    text = browser.evaluate("document.body.innerText")
    # French: OHIF's own strings, translated by its i18n (the study browser's tabs).
    assert browser.evaluate("[document.documentElement.lang, window.localStorage"
                            ".getItem('i18nextLng')]") == ["fr", "fr"]
    assert "Études" in text and "Studies" not in text, text[:600]
    assert "nov. 2026" in text and "Nov" not in text, text[:600]  # French dates
    # No tour (Shepherd's step) and no investigational-use dialog.
    assert browser.evaluate("document.querySelector('.shepherd-element') === null")
    assert "basicViewerTour" in browser.evaluate("localStorage.getItem('shownTours')")
    assert "investigational" not in text.lower()
    # The centre's name and the download link, in OHIF's header.
    assert browser.evaluate("document.querySelector('#drimbox-centre').textContent") == CENTRE
    assert browser.evaluate("document.querySelector('#drimbox-download').textContent") == \
        "Télécharger l'examen"
    href = browser.evaluate("document.querySelector('#drimbox-download').href")
    assert href == f"{gw.url}/download/studies/{shared}"

    # The download, with the browser's share session: the study as DICOM media.
    share = cookies(browser)["drimbox-share"]
    r = httpx.get(href, cookies={"drimbox-share": share}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"].startswith("attachment")
    stored = stored_files(gw, shared)
    assert len(stored) == 3
    assert media_of(r.content, tmp_path / "media") == stored  # every instance, byte for byte

    # Outside the share session's scope: the other study is refused; no session, 401.
    refused = httpx.get(f"{gw.url}/download/studies/{other}", cookies={"drimbox-share": share})
    assert refused.status_code == 403
    assert httpx.get(href).status_code == 401
    audit = download_audit(gw)
    assert ("allowed", "share_study", "share", shared) in audit
    assert ("denied", "study_not_shared", "share", "") in audit \
        or ("denied", "study_not_shared", "share", other) in audit
    assert any(outcome == "denied" and kind == "anonymous" for outcome, _, kind, _ in audit)


def test_staff_viewer_has_centre_name_and_no_download_link(site) -> None:  # noqa: F811
    """Only a share session gets the download link; the config is French and tour-free."""
    gw, *_ = site
    js = httpx.get(f"{gw.url}/viewer/app-config.js").text
    assert "drimbox-download" not in js and "drimbox-centre" in js
    assert '"investigationalUseDialog": {\n    "option": "never"\n  }' in js
    assert "i18nextLng" in js and "basicViewerTour" in js


def test_consumer_viewer_carries_the_identity_banner(consumer, browser: Browser) -> None:  # noqa: F811
    """R14 where the viewer is served: a consumer session with a current appel contextuel gets
    the strict INS traits in OHIF's header (``app-config.js``, never cached), audited as a
    consumer view; another session, none."""
    gw, _sim = consumer
    chromium, browser = browser, EntryBrowser()
    try:
        r = browser.send("POST", f"{gw.url}/consumer/context",
                         data={**PATIENT, "Situation": HOSPITAL})
        assert r.status_code == 303, r.text
        assert login_through_psc(browser, gw, STAFF).status_code == 303
        assert browser.send("GET", f"{gw.url}/consumer").status_code == 200
        js = browser.send("GET", f"{gw.url}/viewer/app-config.js")
        session = browser.client.cookies.get("drimbox-session")
    finally:
        browser.close()
    assert js.status_code == 200 and js.headers["cache-control"] == "no-store"
    m = re.search(r"var traits = (\[.*\]);", js.text)
    assert m, js.text[:500]
    traits = {t[0]: t[2] for t in json.loads(m.group(1))}
    assert traits == {
        "birth-name": "D'ARTAGNAN", "first-given-name": "JEAN-LOUIS",
        "birth-date": "12/03/1979", "gender": "Masculin", "birthplace": "51215"}
    assert "279035121518989" not in js.text  # the INS itself stays on the consumer page
    assert "identity-banner" not in httpx.get(f"{gw.url}/viewer/app-config.js").text
    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            (row,) = s.scalars(select(AuditEvent).where(AuditEvent.reason == "viewer_banner"))
    finally:
        index.engine.dispose()
    assert (row.action, row.subject, row.patient_ins) == ("consumer_view", STAFF,
                                                         "279035121518989")
    # In Chromium, OHIF served alone (not framed): the strip along the window's bottom.
    chromium.call("Network.setCookie", name="drimbox-session", value=session, url=gw.url)
    chromium.goto(f"{gw.url}/viewer")
    try:
        shown = chromium.wait_for(
            "document.querySelector('#identity-banner [data-trait=\"birth-name\"]')"
            " && document.querySelector('#identity-banner').innerText", 60,
            "the identity banner around OHIF")
    finally:
        chromium.screenshot(ARTIFACTS / "viewer-product-consumer.png")
    assert "D'ARTAGNAN" in shown and "12/03/1979" in shown
    assert chromium.evaluate("getComputedStyle(document.querySelector('#identity-banner'))"
                             ".position") == "fixed"
