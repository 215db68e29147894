"""The operator console (docs/console.md) over real HTTP: a ``drimbox serve`` child process
with a real ``drimbox psc-sim``; httpx plays the browser. Who gets in (no session: the PSC
login; a practitioner without a staff role: 403; ``viewer`` looks, ``admin`` acts), the
anti-CSRF token and the confirmation step of every action, each action audited, escaping
of what the index holds (a patient name with markup), the search and audit filters, the
language, and ``console_auth = none`` for loopback development. Both index back-ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from dicom_factory import make_instance
from dimse_client import associate, open_index, store_dataset
from psc_support import OUTSIDER, STAFF, PscSim, psc_env
from pydicom.uid import generate_uid
from sqlalchemy import select
from test_viewer_login import audit as audit_rows
from test_viewer_login import begin_login, psc_answer

from dicomweb.session_cookies import form_token
from gateway.access.audit import AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.config import Settings
from gateway.index.models import ConsumerRetrieval, OutboxItem, ShareLink

EVIL = "<script>alert(1)</script>^EVIL"
EVIL_SHOWN = "&lt;script&gt;alert(1)&lt;/script&gt; EVIL"


def store(port: int, *, name: str, patient_id: str, accession: str, modality: str,
          study_date: str, birth_date: str = "19800215") -> str:
    study, series = generate_uid(), generate_uid()
    ds = make_instance(study_uid=study, series_uid=series, patient_id=patient_id,
                       patient_name=name, accession=accession, modality=modality)
    ds.StudyDate = study_date
    ds.PatientBirthDate = birth_date
    assoc = associate(port, [str(ds.SOPClassUID)], calling="MODALITY")
    try:
        assert store_dataset(assoc, ds).Status == 0
    finally:
        assoc.release()
    return study


def start_site(tmp_path: Path, gateway_factory, roles: dict[str, list[str]]):  # noqa: ANN001, ANN201
    sim = PscSim(tmp_path)
    gw = gateway_factory(**psc_env(sim, DRIMBOX_STAFF_ROLES=json.dumps(roles)))
    sim.start(gw.url)
    try:
        gw.start()
    except BaseException:
        sim.stop()
        raise
    return gw, sim


@pytest.fixture
def site(tmp_path: Path, gateway_factory) -> Iterator:
    gw, sim = start_site(tmp_path, gateway_factory, {STAFF: ["viewer", "admin"]})
    try:
        evil = store(gw.dicom_port, name=EVIL, patient_id="248092700000000", accession="ACC-EVIL",
                     modality="CT", study_date="20261120")
        plain = store(gw.dicom_port, name="DUPONT^JEAN", patient_id="1800215000001",
                      accession="ACC-PLAIN", modality="MR", study_date="20250103")
        yield gw, sim, evil, plain
    finally:
        sim.stop()


def login(client: httpx.Client, gw, who: str, next_path: str = "/") -> str:  # noqa: ANN001
    """Through the PSC simulator; returns the session cookie."""
    r = client.get(psc_answer(client, begin_login(client, gw, next_path), who))
    assert r.status_code == 303, r.text
    if "/auth/activity" in r.headers["location"]:
        r = client.post(f"{gw.url}/auth/activity",
                        data={"activity": "R499999000000101", "next": next_path})
        assert r.status_code == 303
    assert r.headers["location"] == f"{gw.url}{next_path}"
    return client.cookies["drimbox-session"]


def csrf_of(page: str) -> str:
    tokens = set(re.findall(r"name=csrf value='([^']+)'", page))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def share_rows(gw) -> list[ShareLink]:  # noqa: ANN001
    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            return list(s.scalars(select(ShareLink)))
    finally:
        index.engine.dispose()


def test_without_a_session_the_console_sends_to_the_psc_login(site) -> None:
    gw, _, evil, _ = site
    with httpx.Client(timeout=30) as anonymous:
        for path in ("/", "/console/studies?name=x", f"/console/studies/{evil}",
                     "/console/outbox", "/console/audit", "/console/shares"):
            r = anonymous.get(gw.url + path)
            assert r.status_code == 302, path
            assert r.headers["location"].startswith(f"{gw.url}/auth/login?next=%2F"), path
        r = anonymous.post(f"{gw.url}/console/studies/{evil}/publish",
                           data={"csrf": "x", "confirm": "yes"})
        assert r.status_code == 302
        assert anonymous.get(f"{gw.url}/console/live.json").status_code == 401
        assert anonymous.get(f"{gw.url}/console/static/console.css").status_code == 200
    assert audit_rows(gw, "publish") == []


def test_a_practitioner_without_a_staff_role_is_refused(site) -> None:
    gw, _, evil, _ = site
    with httpx.Client(timeout=30) as browser:
        login(browser, gw, OUTSIDER)  # one activity, no role in staff_roles
        for path in ("/", f"/console/studies/{evil}", "/console/audit"):
            r = browser.get(gw.url + path)
            assert r.status_code == 403, path
            assert "Accès refusé" in r.text and "<html lang=fr>" in r.text
            assert EVIL_SHOWN not in r.text and evil not in r.text  # nothing of the index
        assert browser.get(f"{gw.url}/console/live.json").status_code == 403
    refused = [(e.subject, e.outcome, e.reason) for e in audit_rows(gw, "console")]
    assert (OUTSIDER, "denied", "staff_role_required: home") in refused


def test_admin_searches_sees_escaped_names_and_acts_with_csrf_and_confirmation(site) -> None:
    gw, _, evil, plain = site
    with httpx.Client(timeout=30) as browser:
        session = login(browser, gw, STAFF)
        home = browser.get(f"{gw.url}/")
        assert home.status_code == 200 and "<html lang=fr>" in home.text
        assert "class=skip href='#main'" in home.text and "id=listeners" in home.text
        assert home.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in home.headers["content-security-policy"]
        assert "data-count='studies_received'>2<" in home.text

        # Search: the name with markup is text, never markup.
        found = browser.get(f"{gw.url}/console/studies", params={"name": "script"})
        assert EVIL_SHOWN in found.text and "<script>alert" not in found.text
        assert f"data-study='{evil}'" in found.text and plain not in found.text

        def shown(**params: str) -> list[str]:
            page = browser.get(f"{gw.url}/console/studies", params=params).text
            return re.findall(r"data-study='([^']+)'", page)

        assert shown(ins="1800215000001") == [plain]
        assert shown(accession="ACC-EVIL") == [evil]
        assert shown(modality="mr") == [plain]
        assert shown(date_from="2026-01-01") == [evil]
        assert shown(date_to="2025-12-31") == [plain]
        assert shown(name="dupont jean") == [plain]
        assert shown(name="%") == []  # LIKE wildcards are searched as text
        assert sorted(shown()) == sorted([evil, plain])  # no filter: the latest studies

        page = browser.get(f"{gw.url}/console/studies/{evil}")
        assert page.status_code == 200
        assert EVIL_SHOWN in page.text and "<script>alert" not in page.text
        assert "id=publishable>non : " in page.text  # and why
        assert f"/viewer?StudyInstanceUIDs={evil}" in page.text
        token = csrf_of(page.text)
        assert token == form_token(session, "console") and session not in page.text

        # An action without the token (a third-party form) or with a wrong one: 403, nothing.
        for forged in ({"confirm": "yes", "days": "7"},
                       {"csrf": "0" * 64, "confirm": "yes", "days": "7"}):
            r = browser.post(f"{gw.url}/console/studies/{evil}/share", data=forged)
            assert r.status_code == 403 and "anti-CSRF" in r.text
        # With the token: first the confirmation page (nothing done yet), then the act.
        confirm = browser.post(f"{gw.url}/console/studies/{evil}/share",
                               data={"csrf": token, "days": "7"})
        assert confirm.status_code == 200 and "name=confirm value='yes'" in confirm.text
        assert share_rows(gw) == []
        made = browser.post(f"{gw.url}/console/studies/{evil}/share",
                            data={"csrf": token, "days": "7", "confirm": "yes"})
        assert made.status_code == 200, made.text
        (url,) = re.findall(r"<code id=share-url>([^<]+)</code>", made.text)
        assert url.startswith(f"{gw.url}/share/")
        assert "id=share-qr src='data:image/svg+xml;base64," in made.text and "alt='QR code" in made.text
        assert browser.get(url + "/handout").status_code == 200
        (link,) = share_rows(gw)
        assert link.created_by == STAFF

        # Revoke it, from the shares page; make another there, for a study named by its UID.
        shares = browser.get(f"{gw.url}/console/shares")
        assert f"id='revoke-{link.id}'" in shares.text
        r = browser.post(f"{gw.url}/console/shares/{link.id}/revoke",
                         data={"csrf": csrf_of(shares.text), "confirm": "yes"})
        assert r.status_code == 200 and link.id in r.text
        assert browser.get(url).status_code == 410  # revoked: at once
        confirm = browser.post(f"{gw.url}/console/shares",
                               data={"csrf": token, "study_uid": plain, "days": "3"})
        assert f"name=study_uid value='{plain}'" in confirm.text
        made = browser.post(f"{gw.url}/console/shares",
                            data={"csrf": token, "study_uid": plain, "days": "3",
                                  "confirm": "yes"})
        assert made.status_code == 200 and "id=share-qr" in made.text
        assert {s.study_instance_uid for s in share_rows(gw)} == {evil, plain}

        # Publish a study the publication refuses: nothing queued, the reason shown, audited.
        r = browser.post(f"{gw.url}/console/studies/{evil}/publish",
                         data={"csrf": token, "confirm": "yes"})
        assert r.status_code == 409 and "Rien n&#x27;a été mis en file" in r.text
        r = browser.post(f"{gw.url}/console/outbox/999/retry",
                         data={"csrf": token, "confirm": "yes"})
        assert r.status_code == 409 and "no outbox row 999" in r.text

        # The audit page filters; every act is there with its outcome.
        audit = browser.get(f"{gw.url}/console/audit", params={"action": "share-create"})
        assert re.findall(r"data-action='([^']+)'", audit.text) == ["share-create"] * 4
        denied = browser.get(f"{gw.url}/console/audit",
                             params={"outcome": "denied", "subject": STAFF})
        actions = re.findall(r"data-action='([^']+)' data-outcome='denied'", denied.text)
        assert set(actions) == {"share-create", "publish", "outbox-retry"}
        assert "data-outcome='allowed'" not in denied.text
        future = browser.get(f"{gw.url}/console/audit", params={"since": "2999-01-01"})
        assert "data-action=" not in future.text
        kpi = browser.get(f"{gw.url}/console/audit/export", params={"format": "kpi"})
        assert kpi.status_code == 200 and "Type_Appel" in kpi.text.splitlines()[0]
        fhir = browser.get(f"{gw.url}/console/audit/export", params={"format": "fhir"})
        assert fhir.json()["resourceType"] == "Bundle"

        english = browser.get(f"{gw.url}/console/studies", params={"lang": "en"})
        assert "<html lang=en>" in english.text and ">Studies<" in english.text
        assert "<html lang=en>" in browser.get(f"{gw.url}/").text  # remembered (cookie)
    acts = [(e.action, e.outcome, e.study_instance_uid == evil)
            for e in audit_rows(gw, "share-create") + audit_rows(gw, "share-revoke")]
    assert acts == [("share-create", "denied", True), ("share-create", "denied", True),
                    ("share-create", "allowed", True), ("share-create", "allowed", False),
                    ("share-revoke", "allowed", True)]
    assert [e.reason for e in audit_rows(gw, "share-create")][:2] == [
        "csrf_token_mismatch", "csrf_token_mismatch"]
    views = [(e.subject, e.reason) for e in audit_rows(gw, "console")
             if e.study_instance_uid == evil]
    assert (STAFF, "study") in views


def test_viewer_role_looks_but_cannot_act(tmp_path: Path, gateway_factory) -> None:
    gw, sim = start_site(tmp_path, gateway_factory, {OUTSIDER: ["viewer"]})
    try:
        study = store(gw.dicom_port, name="MARTIN^ANNE", patient_id="2620704000002",
                      accession="ACC-V", modality="CT", study_date="20261120")
        with httpx.Client(timeout=30) as browser:
            session = login(browser, gw, OUTSIDER)
            page = browser.get(f"{gw.url}/console/studies/{study}")
            assert page.status_code == 200 and "MARTIN ANNE" in page.text
            assert "id=viewer-only" in page.text and "id='publish'" not in page.text
            assert "/console/audit/export" not in browser.get(f"{gw.url}/console/audit").text
            token = form_token(session, "console")  # even with the right token
            r = browser.post(f"{gw.url}/console/studies/{study}/publish",
                             data={"csrf": token, "confirm": "yes"})
            assert r.status_code == 403 and "admin" in r.text
            r = browser.get(f"{gw.url}/console/audit/export")
            assert r.status_code == 403
    finally:
        sim.stop()
    (refused,) = audit_rows(gw, "publish")
    assert (refused.subject, refused.outcome, refused.reason) == (
        OUTSIDER, "denied", "admin_role_required")


def seed_activity(gw) -> None:  # noqa: ANN001
    """A refused publication (the DMP's code and text), a consumer retrieval and export."""
    now = datetime.now(UTC)
    index = open_index(gw.database_url)
    try:
        with index.write() as s:
            s.add(OutboxItem(kind="publish", study_instance_uid="1.2.3.4", kos_uid="1.2.3.4.5",
                             ins_matricule="279035121518989", ins_oid="1.2.250.1.213.1.4.10",
                             state="refused", attempts=1, created_at=now, next_attempt_at=now,
                             done_at=now, error_code="XDSNonIdenticalHash",
                             error_text="hash <b>differs</b>"))
            s.add(ConsumerRetrieval(session_sha256="0" * 64, subject="899999000001",
                                    kos_uid="1.2.9.9", study_instance_uid="1.2.9.8",
                                    patient_ins="279035121518989", state="partial", bytes=2_500_000,
                                    created_at=now, updated_at=now, last_used_at=now))
        record_access(index, AccessRecord(Principal(kind="practitioner", subject="899999000001"),
                                          "consumer_export", "denied", "2 sent, 1 failed",
                                          study_uid="1.2.9.8"))
    finally:
        index.engine.dispose()


def test_console_auth_none_opens_on_loopback_only(tmp_path: Path, gateway_factory) -> None:
    """Development on loopback without a login (as admin); also the consumer page, the last
    errors, a refused row's DMP code and its retry."""
    with pytest.raises(ValueError, match="console_auth = none"):
        Settings(http_host="0.0.0.0", http_tls="proxy", console_auth="none",
                 public_url="https://drimbox.example")
    gw = gateway_factory(DRIMBOX_CONSOLE_AUTH="none", DRIMBOX_ROLES="both").start()
    seed_activity(gw)
    with httpx.Client(timeout=30) as browser:
        home = browser.get(f"{gw.url}/")
        assert home.status_code == 200 and "mode développement" in home.text
        assert "drimbox-console" in browser.cookies
        assert "Consommatrice : <span class=ok>actif" in home.text
        assert "XDSNonIdenticalHash hash &lt;b&gt;differs&lt;/b&gt;" in home.text  # last errors
        page = browser.get(f"{gw.url}/console/shares")
        assert page.status_code == 200
        live = browser.get(f"{gw.url}/console/live.json?view=home").json()
        assert "data-count='refused'><a href='/console/outbox?state=refused'>1<" in live["outbox"]
        consumer = browser.get(f"{gw.url}/console/consumer").text
        assert "data-state='partial'" in consumer and "2.5 MB" in consumer
        assert "2 sent, 1 failed" in consumer

        outbox_page = browser.get(f"{gw.url}/console/outbox", params={"state": "refused"})
        assert "<strong class=bad>XDSNonIdenticalHash</strong>" in outbox_page.text
        row_id = re.findall(r"data-row='(\d+)' data-state='refused'", outbox_page.text)[0]
        token = csrf_of(outbox_page.text)
        r = browser.post(f"{gw.url}/console/outbox/{row_id}/retry",
                         data={"csrf": token, "confirm": "yes"})
        assert r.status_code == 200 and f"#{row_id}" in r.text
        rows = browser.get(f"{gw.url}/console/live.json",
                           params={"view": "outbox"}).json()["outbox-rows"]
        assert f"data-row='{row_id}' data-state='pending'" in rows
    (retried,) = audit_rows(gw, "outbox-retry")
    assert (retried.subject, retried.outcome, retried.study_instance_uid) == (
        "console-dev", "allowed", "1.2.3.4")
    # Off by default: the same gateway without the setting wants a login.
    assert gw.stop() == 0
    other = gateway_factory().start()
    r = httpx.get(f"{other.url}/")
    assert r.status_code == 302 and "/auth/login" in r.headers["location"]


def test_a_first_make_run_is_told_how_to_open_the_console(gateway_factory) -> None:
    """A first ``make run`` has no PSC: ``/`` leads to a page that says so and how to go on
    (the sandbox, or the console without login on loopback), not to a bare error."""
    gw = gateway_factory().start()
    try:
        r = httpx.get(gw.url + "/", follow_redirects=True, timeout=30)
        assert r.status_code == 404 and r.url.path == "/auth/login"
        assert "Pro Santé Connect n'est pas configuré" in r.text
        assert "make sandbox" in r.text and "DRIMBOX_CONSOLE_AUTH=none" in r.text
    finally:
        gw.stop()
