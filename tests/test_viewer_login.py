"""PSC login of the viewer (R15) over real HTTP: a ``drimbox serve`` child
process with ``dicomweb_auth = psc`` against a real ``drimbox psc-sim``, httpx playing the
browser (cookies kept, redirects followed by hand so each hop is checked). Both index
back-ends: sessions and pending logins live in the index.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from dimse_client import open_index
from psc_support import OUTSIDER, STAFF, PscSim, psc_env, seed_study
from sqlalchemy import select

from gateway.index.models import AuditEvent, PendingLogin, ViewerSession


@pytest.fixture(params=["json", "jwt"])
def psc_gateway(request: pytest.FixtureRequest, tmp_path: Path, gateway_factory) -> Iterator:
    sim = PscSim(tmp_path, userinfo=request.param)
    gw = gateway_factory(**psc_env(sim))
    sim.start(gw.url)
    gw.start()
    yield gw, sim
    sim.stop()


def audit(gw, action: str) -> list[AuditEvent]:
    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            return list(s.execute(select(AuditEvent).where(AuditEvent.action == action)
                                  .order_by(AuditEvent.id)).scalars())
    finally:
        index.engine.dispose()


def with_param(url: str, **params: str) -> str:
    parts = urlsplit(url)
    q = parts.query + "&" + urlencode(params)
    return urlunsplit(parts._replace(query=q))


def begin_login(client: httpx.Client, gw, next_path: str = "/viewer") -> str:
    """The viewer redirects to our login, which redirects to PSC: return PSC's URL."""
    r = client.get(f"{gw.url}{next_path}")
    assert r.status_code == 302, r.text
    assert r.headers["location"].startswith(f"{gw.url}/auth/login?next=")
    r = client.get(r.headers["location"])
    assert r.status_code == 302
    return r.headers["location"]


def psc_answer(client: httpx.Client, authorize_url: str, practitioner: str) -> str:
    """PSC logs the practitioner in (login_hint: no page) and sends back to our callback."""
    r = client.get(with_param(authorize_url, login_hint=practitioner))
    assert r.status_code == 302, r.text
    return r.headers["location"]


def test_login_pkce_activity_choice_dicomweb_and_logout(psc_gateway) -> None:
    gw, sim = psc_gateway
    study = seed_study(gw.dicom_port, birth_date="19800215", patient_id="1800215000001")
    with httpx.Client(timeout=30) as browser:
        # Without a session: DICOMweb is 401, the viewer sends to the login.
        assert browser.get(f"{gw.url}/dicom-web/studies").status_code == 401
        authorize = begin_login(browser, gw)
        q = parse_qs(urlsplit(authorize).query)
        assert authorize.startswith(f"{sim.base}/auth?")
        assert q["scope"] == ["openid scope_all"] and q["acr_values"] == ["eidas1"]
        assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
        assert q["redirect_uri"] == [f"{gw.url}/auth/callback"]
        assert q["state"][0] and q["nonce"][0] and q["client_id"] == ["drimbox"]
        login_cookie = next(c for c in browser.cookies.jar if c.name == "drimbox-login")
        assert login_cookie.has_nonstandard_attr("HttpOnly")
        assert login_cookie.value not in authorize  # only its hash is stored

        callback = psc_answer(browser, authorize, STAFF)
        r = browser.get(callback)
        # Two activities: the practitioner must choose before reading anything.
        assert r.status_code == 303
        assert r.headers["location"].startswith(f"{gw.url}/auth/activity?next=")
        session = browser.cookies.get("drimbox-session")
        assert session and "drimbox-login" not in browser.cookies
        assert browser.get(f"{gw.url}/dicom-web/studies").status_code == 401
        page = browser.get(r.headers["location"])
        assert page.status_code == 200
        assert "CABINET DE RADIOLOGIE TEST" in page.text and "CENTRE HOSPITALIER TEST" in page.text
        r = browser.post(f"{gw.url}/auth/activity",
                         data={"activity": "R499999000000101", "next": "/viewer"})
        assert r.status_code == 303 and r.headers["location"] == f"{gw.url}/viewer"

        found = browser.get(f"{gw.url}/dicom-web/studies")
        assert found.status_code == 200
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [study]
        assert browser.get(f"{gw.url}/viewer").status_code in (200, 503)  # 503: no OHIF files

        # The session lives server-side, keyed by the hash of the cookie; no PSC token
        # reached the browser.
        index = open_index(gw.database_url)
        try:
            with index.read() as s:
                (row,) = s.execute(select(ViewerSession)).scalars()
                assert row.subject == STAFF and row.activity == "R499999000000101"
                assert row.id_sha256 != session and session not in row.id_sha256
                assert s.execute(select(PendingLogin)).first() is None  # used once
        finally:
            index.engine.dispose()
        for c in browser.cookies.jar:
            assert "." not in c.value or c.value.count(".") < 2, "a JWT in a cookie"

        # GET /auth/logout only shows a confirmation form (a link or an image on another site
        # cannot log the user out); the form carries the session's anti-CSRF token.
        page = browser.get(f"{gw.url}/auth/logout")
        assert page.status_code == 200 and "drimbox-session" in browser.cookies
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        (csrf,) = re.findall(r"name=csrf value='([0-9a-f]{64})'", page.text)
        assert csrf not in session and session not in page.text
        assert browser.get(f"{gw.url}/dicom-web/studies").status_code == 200
        # A POST without the token (what a third-party form could send) or with another
        # session's token is refused, and the session stays.
        for forged in ({}, {"csrf": "0" * 64}):
            r = browser.post(f"{gw.url}/auth/logout", data=forged)
            assert r.status_code == 403 and "drimbox-session" in browser.cookies
        assert browser.get(f"{gw.url}/dicom-web/studies").status_code == 200

        r = browser.post(f"{gw.url}/auth/logout", data={"csrf": csrf})
        assert r.status_code == 303
        end = urlsplit(r.headers["location"])
        assert f"{end.scheme}://{end.netloc}{end.path}" == (
            f"{sim.issuer}/protocol/openid-connect/logout")
        assert parse_qs(end.query)["post_logout_redirect_uri"] == [f"{gw.url}/auth/logged-out"]
        assert "drimbox-session" not in browser.cookies
        # PSC ends its session and comes back to us.
        back = browser.get(r.headers["location"])
        assert back.status_code == 302
        assert back.headers["location"] == f"{gw.url}/auth/logged-out"

    # The old cookie is dead.
    stale = httpx.get(f"{gw.url}/dicom-web/studies", cookies={"drimbox-session": session})
    assert stale.status_code == 401
    again = httpx.get(f"{gw.url}/viewer", cookies={"drimbox-session": session})
    assert again.status_code == 302 and "/auth/login" in again.headers["location"]

    logins = audit(gw, "login")
    assert [(e.outcome, e.subject, e.reason) for e in logins] == [
        ("allowed", STAFF, "activity_to_choose")]
    (chosen,) = audit(gw, "activity")
    assert chosen.outcome == "allowed" and chosen.activity == "R499999000000101"
    assert [(e.subject, e.outcome, e.reason) for e in audit(gw, "logout")] == [
        (STAFF, "denied", "csrf_token_mismatch"), (STAFF, "denied", "csrf_token_mismatch"),
        (STAFF, "allowed", "")]
    # Without a session, GET and POST lead to the logged-out page.
    for r in (httpx.get(f"{gw.url}/auth/logout"), httpx.post(f"{gw.url}/auth/logout")):
        assert r.status_code == 303 and r.headers["location"] == f"{gw.url}/auth/logged-out"


def test_single_activity_is_chosen_and_roles_come_from_staff_roles(psc_gateway) -> None:
    gw, _ = psc_gateway
    with httpx.Client(timeout=30) as browser:
        authorize = begin_login(browser, gw, "/viewer?StudyInstanceUIDs=1.2.3")
        r = browser.get(psc_answer(browser, authorize, OUTSIDER))
        assert r.status_code == 303
        assert r.headers["location"] == f"{gw.url}/viewer?StudyInstanceUIDs=1.2.3"
        # Logged in, but not centre staff: no role lets them browse the centre's studies.
        r = browser.get(f"{gw.url}/dicom-web/studies")
        assert r.status_code == 403
        assert browser.post(f"{gw.url}/admin/share-links",
                            json={"study_uid": "1.2.3"}).status_code == 403
    (login,) = audit(gw, "login")
    assert login.subject == OUTSIDER and login.activity == "R499999000000202"


def test_callback_refuses_forged_state_missing_login_and_wrong_nonce(psc_gateway) -> None:
    gw, _ = psc_gateway
    with httpx.Client(timeout=30) as browser:
        callback = psc_answer(browser, begin_login(browser, gw), STAFF)
        forged = callback.replace("state=", "state=x")
        r = browser.get(forged)
        assert r.status_code == 400 and "drimbox-session" not in browser.cookies
        # The pending login was used by that attempt: the genuine answer no longer works.
        assert browser.get(callback).status_code == 400

    # A callback in a browser that never started a login (login CSRF) is refused.
    with httpx.Client(timeout=30) as attacker, httpx.Client(timeout=30) as victim:
        callback = psc_answer(attacker, begin_login(attacker, gw), STAFF)
        assert victim.get(callback).status_code == 400

    # The ID token must carry the nonce we sent.
    with httpx.Client(timeout=30) as browser:
        authorize = begin_login(browser, gw)
        q = parse_qs(urlsplit(authorize).query)
        tampered = authorize.replace(f"nonce={q['nonce'][0]}", "nonce=replayed")
        r = browser.get(psc_answer(browser, tampered, STAFF))
        assert r.status_code == 401 and "drimbox-session" not in browser.cookies

    reasons = [(e.outcome, e.reason) for e in audit(gw, "login")]
    assert reasons == [("denied", "state_mismatch"), ("denied", "no_login_under_way"),
                       ("denied", "no_login_under_way"), ("denied", "id_token_wrong_nonce")]


def test_psc_mode_needs_https_off_loopback(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="Secure"):
        load_settings(data_dir=tmp_path, dicomweb_auth="psc", psc_issuer="https://psc.example",
                      psc_client_id="x", psc_client_secret="s", http_host="0.0.0.0")
    s = load_settings(data_dir=tmp_path, dicomweb_auth="psc", psc_issuer="https://psc.example",
                      psc_client_id="x", psc_client_secret="s", http_host="0.0.0.0",
                      http_tls="proxy", public_url="https://drimbox.example")
    assert s.cookies_secure


def test_cookies_are_secure_host_prefixed_behind_https(tmp_path: Path, gateway_factory) -> None:
    """With an https public URL every cookie is ``__Host-``, Secure, HttpOnly, SameSite=Lax,
    path /; PSC is sent back to the https callback."""
    sim = PscSim(tmp_path)
    gw = gateway_factory(**psc_env(sim))
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = f"https://127.0.0.1:{gw.http_port}"
    sim.start(gw.url)
    try:
        gw.start()
        r = httpx.get(f"{gw.url}/auth/login")
        assert r.status_code == 302
        q = parse_qs(urlsplit(r.headers["location"]).query)
        assert q["redirect_uri"] == [f"https://127.0.0.1:{gw.http_port}/auth/callback"]
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("__Host-drimbox-login=")
        attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "secure", "samesite=lax", "path=/"} <= attrs
        assert not any(a.startswith("domain") for a in attrs)
        # /viewer without a session goes to the login (under the public URL).
        v = httpx.get(f"{gw.url}/viewer")
        assert v.status_code == 302
        assert v.headers["location"].startswith(f"https://127.0.0.1:{gw.http_port}/auth/login")
    finally:
        sim.stop()


def test_id_token_below_eidas1_is_refused(tmp_path: Path, gateway_factory) -> None:
    """A provider that authenticated the practitioner below eIDAS substantial (``acr``) does
    not open a session (R15: ``acr_values=eidas1``)."""
    sim = PscSim(tmp_path, acr="eidas0")
    gw = gateway_factory(**psc_env(sim))
    sim.start(gw.url)
    try:
        gw.start()
        with httpx.Client(timeout=30) as browser:
            r = browser.get(psc_answer(browser, begin_login(browser, gw), STAFF))
            assert r.status_code == 401 and "drimbox-session" not in browser.cookies
            assert browser.get(f"{gw.url}/dicom-web/studies").status_code == 401
    finally:
        sim.stop()
    assert [(e.outcome, e.reason) for e in audit(gw, "login")] == [
        ("denied", "id_token_acr_too_low")]
