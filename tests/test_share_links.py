"""Patient share links, the CD replacement: made with ``drimbox share`` (a
real CLI process) or ``POST /admin/share-links`` (a staff member logged in through a real
``drimbox psc-sim``), opened over real HTTP against ``drimbox serve`` with
``dicomweb_auth = psc``. Both index back-ends: the links, their attempt counters and locks,
and the sessions they open live in the index.

Time passing (expiry, the end of a lock) is simulated by moving the row's timestamps.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import launcher
import pytest
from dimse_client import open_index
from psc_support import STAFF, PscSim, psc_env, seed_study
from sqlalchemy import select, update

from gateway.index.models import AuditEvent, ShareLink, ViewerSession

BIRTH = "19800215"


@pytest.fixture
def site(tmp_path: Path, gateway_factory) -> Iterator:
    """A gateway wired to a PSC simulator, with two patients' studies: A is shared, B not."""
    sim = PscSim(tmp_path)
    gw = gateway_factory(**psc_env(sim, DRIMBOX_SHARE_MAX_ATTEMPTS="5",
                                   DRIMBOX_SHARE_LOCK_MINUTES="15"))
    sim.start(gw.url)
    gw.start()
    a = seed_study(gw.dicom_port, birth_date=BIRTH, patient_id="1800215000001")
    b = seed_study(gw.dicom_port, birth_date="19620704", patient_id="2620704000002",
                   description="SCANNER THORAX")
    yield gw, sim, a, b
    sim.stop()


def cli(gw, *args: str) -> subprocess.CompletedProcess[str]:
    """``drimbox share ...`` run beside the gateway's data (its QR code files land there)."""
    return launcher.run(["share", *args], env=gw.env, cwd=gw.data_dir.parent, timeout=60)


def rows(gw, model, *where):  # noqa: ANN001, ANN201
    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            return list(s.execute(select(model).where(*where)).scalars())
    finally:
        index.engine.dispose()


def set_row(gw, link_id: str, **values) -> None:  # noqa: ANN003
    index = open_index(gw.database_url)
    try:
        with index.write() as s:
            s.execute(update(ShareLink).where(ShareLink.id == link_id).values(**values))
    finally:
        index.engine.dispose()


def share_audit(gw, action: str = "share-open") -> list[tuple[str, str, str]]:
    return [(e.outcome, e.reason, e.subject) for e in sorted(
        rows(gw, AuditEvent, AuditEvent.action == action), key=lambda e: e.id)]


def link_id_of(gw, study: str) -> str:
    (link,) = rows(gw, ShareLink, ShareLink.study_instance_uid == study)
    return link.id


def staff_client(gw) -> httpx.Client:
    """A browser logged in as centre staff (roles viewer, admin) through the simulator."""
    client = httpx.Client(timeout=30)
    authorize = client.get(f"{gw.url}/auth/login").headers["location"]
    parts = urlsplit(authorize)
    authorize = urlunsplit(parts._replace(query=parts.query + "&" + urlencode(
        {"login_hint": STAFF})))
    callback = client.get(authorize).headers["location"]
    assert client.get(callback).status_code == 303
    r = client.post(f"{gw.url}/auth/activity", data={"activity": "R499999000000101"})
    assert r.status_code == 303
    return client


def open_link(url: str, birth_date: str, client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(url, data={"birth_date": birth_date}, timeout=30)


def study_uids(response: httpx.Response) -> list[str]:
    return [s["0020000D"]["Value"][0] for s in response.json()]


def test_cli_link_opens_only_its_study_until_revoked(site, tmp_path: Path) -> None:
    gw, _, a, b = site
    made = cli(gw, a, "--days", "7", "--qr-dir", str(tmp_path / "qr"))
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip()
    assert url.startswith(f"{gw.url}/share/") and len(url.rsplit("/", 1)[1]) >= 43
    link_id = link_id_of(gw, a)
    png, svg = tmp_path / "qr" / f"share-{link_id}.png", tmp_path / "qr" / f"share-{link_id}.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()
    token = url.rsplit("/", 1)[1]
    (row,) = rows(gw, ShareLink, ShareLink.id == link_id)
    assert token not in row.token_sha256 and len(row.token_sha256) == 64  # hash only
    listed = cli(gw, "list")
    assert listed.returncode == 0 and link_id in listed.stdout and "active" in listed.stdout
    assert token not in listed.stdout

    # The printable handout: the centre, the exam, the QR code; no identity.
    handout = httpx.get(url + "/handout")
    assert handout.status_code == 200
    assert "CABINET DE RADIOLOGIE TEST" in handout.text and "20/11/2026" in handout.text
    assert "IRM GENOU DROIT" in handout.text and "<svg" in handout.text and url in handout.text
    for identity in ("DUPONT", "JEAN", "1800215000001", "1980", "15/02"):
        assert identity not in handout.text
    assert handout.headers["referrer-policy"] == "no-referrer"

    form = httpx.get(url)
    assert form.status_code == 200 and 'name="birth_date"' in form.text.replace("=birth_date",
                                                                                '="birth_date"')
    with httpx.Client(timeout=30) as patient:
        r = open_link(url, "15/02/1980", patient)
        assert r.status_code == 303
        assert r.headers["location"] == f"{gw.url}/viewer?StudyInstanceUIDs={a}"
        cookie = patient.cookies.get("drimbox-share")
        assert cookie

        # Its study, and nothing else: searches are narrowed to it, other studies refused.
        assert study_uids(patient.get(f"{gw.url}/dicom-web/studies")) == [a]
        # A search naming another study finds nothing (the search is scoped, R10).
        other = patient.get(f"{gw.url}/dicom-web/studies", params={"StudyInstanceUID": b})
        assert other.status_code in (200, 204) and (other.status_code == 204
                                                    or study_uids(other) == [])
        series = patient.get(f"{gw.url}/dicom-web/studies/{a}/series")
        assert series.status_code == 200 and len(series.json()) == 1
        assert patient.get(f"{gw.url}/dicom-web/studies/{a}/metadata").status_code == 200
        wado = patient.get(f"{gw.url}/dicom-web/studies/{a}",
                           headers={"Accept": "multipart/related; type=\"application/dicom\""})
        assert wado.status_code == 200 and len(wado.content) > 2 * 64 * 64
        for path in (f"/dicom-web/studies/{b}", f"/dicom-web/studies/{b}/metadata",
                     f"/dicom-web/studies/{b}/series"):
            assert patient.get(f"{gw.url}{path}").status_code == 403, path
        all_instances = patient.get(f"{gw.url}/dicom-web/instances")
        assert {i["0020000D"]["Value"][0] for i in all_instances.json()} == {a}
        assert patient.get(f"{gw.url}/viewer").status_code in (200, 503)  # no login asked
        assert patient.post(f"{gw.url}/admin/share-links",
                            json={"study_uid": b}).status_code == 403

        # Revocation: at once, for the open session too.
        revoked = cli(gw, "revoke", link_id)
        assert revoked.returncode == 0, revoked.stderr
        assert patient.get(f"{gw.url}/dicom-web/studies").status_code == 401
        assert rows(gw, ViewerSession, ViewerSession.share_link_id == link_id) == []
    r = httpx.get(url)
    assert r.status_code == 410
    assert open_link(url, "1980-02-15").status_code == 410
    assert httpx.get(url + "/handout").status_code == 410
    assert cli(gw, "revoke", "nosuchlink").returncode == 1

    assert share_audit(gw) == [("allowed", "", link_id), ("denied", "revoked", link_id),
                               ("denied", "revoked", link_id), ("denied", "revoked", link_id)]
    revocations = [(o, r) for o, r, _ in share_audit(gw, "share-revoke")]
    assert revocations == [("allowed", f"link {link_id}")]


def test_admin_endpoints_and_expired_link(site) -> None:
    gw, _, a, b = site
    assert httpx.post(f"{gw.url}/admin/share-links", json={"study_uid": a}).status_code == 401
    with closing(staff_client(gw)) as staff:
        r = staff.post(f"{gw.url}/admin/share-links", json={"study_uid": a, "days": 2})
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["url"].startswith(f"{gw.url}/share/") and made["status"] == "active"
        assert staff.post(f"{gw.url}/admin/share-links",
                          json={"study_uid": "1.2.3.4"}).status_code == 422
        assert staff.post(f"{gw.url}/admin/share-links",
                          json={"study_uid": a, "days": 0}).status_code == 422
        listed = staff.get(f"{gw.url}/admin/share-links").json()
        assert [x["id"] for x in listed] == [made["id"]] and "url" not in listed[0]

        # Expired: refused with 410, even with the right birth date; nothing opens.
        set_row(gw, made["id"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
        assert httpx.get(made["url"]).status_code == 410
        r = open_link(made["url"], "1980-02-15")
        assert r.status_code == 410 and "drimbox-share" not in r.cookies
        assert staff.get(f"{gw.url}/admin/share-links").json()[0]["status"] == "expired"

        other = staff.post(f"{gw.url}/admin/share-links", json={"study_uid": b}).json()
        assert staff.delete(f"{gw.url}/admin/share-links/{other['id']}").status_code == 204
        assert staff.delete(f"{gw.url}/admin/share-links/nosuch").status_code == 404
        assert open_link(other["url"], "1962-07-04").status_code == 410
    assert share_audit(gw) == [("denied", "expired", made["id"]),
                               ("denied", "expired", made["id"]),
                               ("denied", "revoked", other["id"])]
    created = rows(gw, AuditEvent, AuditEvent.action == "share-create")
    assert {(e.outcome, e.subject) for e in created} == {("allowed", STAFF), ("denied", STAFF)}


def test_wrong_birth_dates_lock_the_link_across_restarts(site) -> None:
    gw, _, a, _ = site
    url = cli(gw, a, "--days", "1", "--qr-dir", str(gw.data_dir.parent / "qr")).stdout.strip()
    link_id = link_id_of(gw, a)
    for left in (4, 3, 2, 1):
        r = open_link(url, "1980-02-16")
        assert r.status_code == 403 and f"Essais restants : {left}" in r.text
        assert "drimbox-share" not in r.cookies
    assert open_link(url, "not a date").status_code == 400  # not counted: not a date
    r = open_link(url, "1980-02-14")  # the fifth wrong date locks
    assert r.status_code == 429 and 890 <= int(r.headers["retry-after"]) <= 900
    # Locked: even the right date is refused, and the lock survives a restart.
    r = open_link(url, "1980-02-15")
    assert r.status_code == 429 and "drimbox-share" not in r.cookies
    gw.stop()
    gw.start()
    assert httpx.get(url).status_code == 429
    assert open_link(url, "1980-02-15").status_code == 429
    (row,) = rows(gw, ShareLink, ShareLink.id == link_id)
    assert row.locked_until is not None

    # Once the lock has ended the right date opens the study.
    set_row(gw, link_id, locked_until=datetime.now(UTC) - timedelta(seconds=1))
    with httpx.Client(timeout=30) as patient:
        r = open_link(url, "1980-02-15", patient)
        assert r.status_code == 303
        assert study_uids(patient.get(f"{gw.url}/dicom-web/studies")) == [a]

    assert [(o, r) for o, r, _ in share_audit(gw)] == (
        [("denied", "wrong_birth_date")] * 4 + [("denied", "bad_birth_date"),
                                                ("denied", "locked"), ("denied", "locked"),
                                                ("denied", "locked"), ("denied", "locked"),
                                                ("allowed", "")])
    assert {s for _, _, s in share_audit(gw)} == {link_id}


def test_unknown_link_and_study_without_birth_date(site) -> None:
    gw, _, _, _ = site
    r = httpx.get(f"{gw.url}/share/{'x' * 43}")
    assert r.status_code == 404
    assert share_audit(gw) == [("denied", "unknown", "unknown")]
    no_birth = seed_study(gw.dicom_port, birth_date="", patient_id="3000000000003")
    made = cli(gw, no_birth, "--days", "3")
    assert made.returncode == 1 and "PatientBirthDate" in made.stderr
    assert cli(gw, "1.2.3.999", "--days", "3").returncode == 1
