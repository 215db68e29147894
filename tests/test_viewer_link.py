"""Over real HTTP, MLLP and C-STORE: the R18 viewer link of a CR
(``GET /viewer/source?studyUID=&idCDA=``) after a PSC login with a real ``drimbox psc-sim``,
and the admin endpoint ``GET /admin/studies/{uid}`` (401 / 403 / state). Both index
back-ends (sessions, reports and the audit trail live in the index).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hl7_support import STUDY_G, fill, send
from peers import free_port, storescu
from psc_support import OUTSIDER, STAFF, PscSim, psc_env, seed_study
from test_report_publication_e2e import ID_CDA_G, images_g, oru_g
from test_viewer_login import audit, psc_answer


@pytest.fixture
def centre(tmp_path: Path, gateway_factory) -> Iterator:
    """A gateway with PSC login and an HL7 port; exam G stored and reported (CR accepted)."""
    sim = PscSim(tmp_path)
    port = free_port()
    gw = gateway_factory(**psc_env(sim, DRIMBOX_HL7_PORT=str(port)))
    gw.hl7_port = port
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    sim.start(gw.url)
    gw.start()
    storescu(images_g(tmp_path / "g", 2), gw.dicom_port)
    text, _ = fill(oru_g())
    assert send(gw.hl7_port, text)["ack"] == "AA"
    yield gw, sim
    sim.stop()


def link(gw, study: str, id_cda: str) -> str:  # noqa: ANN001
    return f"{gw.url}/viewer/source?studyUID={quote(study)}&idCDA={quote(id_cda)}"


def log_in_through(browser: httpx.Client, gw, url: str, who: str) -> httpx.Response:  # noqa: ANN001
    """Open ``url`` without a session: login, PSC, callback (and the activity choice for a
    practitioner with several); return the answer of ``url`` itself, reached again."""
    r = browser.get(url)
    assert r.status_code == 302 and r.headers["location"] == (
        f"{gw.url}/auth/login?next={quote(url[len(gw.url):], safe='')}"), r.text
    r = browser.get(r.headers["location"])
    r = browser.get(psc_answer(browser, r.headers["location"], who))
    assert r.status_code == 303, r.text
    if "/auth/activity" in r.headers["location"]:
        target = url[len(gw.url):]
        r = browser.post(f"{gw.url}/auth/activity",
                         data={"activity": "R499999000000101", "next": target})
        assert r.status_code == 303
    assert r.headers["location"] == url  # back to the very link
    return browser.get(url)


def test_viewer_link_opens_the_study_only_when_idcda_matches(centre) -> None:
    gw, _sim = centre
    other = seed_study(gw.dicom_port, birth_date="19800215", patient_id="1800215000001")
    with httpx.Client(timeout=30) as browser:
        # A wrong idCDA, after login: 404 as for an unknown study, audited.
        wrong = link(gw, STUDY_G, "1.2.250.1.213.4.5.4.407")  # the CR it replaced
        r = log_in_through(browser, gw, wrong, OUTSIDER)
        assert r.status_code == 404
        # Without the viewer role and without the link, the study is not readable.
        assert browser.get(f"{gw.url}/dicom-web/studies/{STUDY_G}/metadata").status_code == 403
        assert browser.get(link(gw, other, ID_CDA_G)).status_code == 404  # not that study's CR

        # The right idCDA: to the viewer, and the session may now read that study only.
        r = browser.get(link(gw, STUDY_G, ID_CDA_G))
        assert r.status_code == 302
        assert r.headers["location"] == f"{gw.url}/viewer?StudyInstanceUIDs={STUDY_G}"
        assert browser.get(f"{gw.url}/dicom-web/studies/{STUDY_G}/metadata").status_code == 200
        found = browser.get(f"{gw.url}/dicom-web/studies")
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [STUDY_G]
        assert browser.get(f"{gw.url}/dicom-web/studies/{other}/metadata").status_code == 403
        assert browser.get(r.headers["location"]).status_code in (200, 302, 503)  # OHIF or none

        # Missing parameters: 400, audited.
        assert browser.get(f"{gw.url}/viewer/source?studyUID={STUDY_G}").status_code == 400

    rows = [(e.outcome, e.reason, e.study_instance_uid, e.subject)
            for e in audit(gw, "viewer_link")]
    assert rows == [
        ("denied", "id_cda_mismatch", STUDY_G, OUTSIDER),
        ("denied", "id_cda_mismatch", other, OUTSIDER),
        ("allowed", "id_cda_matches", STUDY_G, OUTSIDER),
        ("denied", "bad_request", STUDY_G, OUTSIDER),
    ]


def test_admin_study_endpoint(centre) -> None:
    gw, _sim = centre
    url = f"{gw.url}/admin/studies/{STUDY_G}"
    assert httpx.get(url, timeout=30).status_code == 401
    with httpx.Client(timeout=30) as outsider:
        log_in_through(outsider, gw, f"{gw.url}/viewer", OUTSIDER)
        assert outsider.get(url).status_code == 403
    with httpx.Client(timeout=30) as admin:
        log_in_through(admin, gw, f"{gw.url}/viewer", STAFF)
        r = admin.get(url)
        assert r.status_code == 200, r.text
        state = r.json()
        assert state["study_instance_uid"] == STUDY_G and state["instance_count"] == 2
        assert state["report"]["id_cda"] == ID_CDA_G and state["report"]["received_at"]
        assert state["viewer_link"] == link(gw, STUDY_G, ID_CDA_G)
        assert state["publication"]["state"] == "not published"  # no DMP configured here
        assert admin.get(f"{gw.url}/admin/studies/1.2.3.404").status_code == 404
    decisions = [(e.outcome, e.reason, e.study_instance_uid) for e in audit(gw, "admin")]
    assert decisions[:3] == [("denied", "no_credentials", STUDY_G),
                             ("denied", "admin_role_required", STUDY_G),
                             ("allowed", "admin_role", STUDY_G)]
