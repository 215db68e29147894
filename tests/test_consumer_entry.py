"""The consumer's entry (R13, R14, R15; SPEC 1.3 flow B steps 1-3) over real HTTP: a
``drimbox serve`` child process with ``roles = consumer`` against a real ``drimbox psc-sim``,
httpx playing the browser (redirects followed by hand, every Location header checked). Both
index back-ends: contexts, sessions and pending logins live in the index.

Values: the ANS test INS ``279035121518989`` (test OID ``1.2.250.1.213.1.4.10``; SPEC section 4)
with an invented birth name holding an apostrophe (HTML escaping); the parameter names of the
ANS test server (see tests/test_consumer_context.py).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from dimse_client import open_index
from psc_support import OUTSIDER, STAFF, PscSim, psc_env
from sqlalchemy import select
from test_consumer_context import BAD, GOOD, pairs
from test_viewer_login import psc_answer

from gateway.access.audit_export import fhir_audit_bundle, kpi_csv
from gateway.index.models import AuditEvent, ConsumerContext, ViewerSession

CABINET, HOSPITAL = "R499999000000101", "R499999000000202"
PATIENT = {**GOOD, "Patient.name.family": "D'ARTAGNAN", "Patient.name.given": "JEAN-LOUIS MARIE",
           "Patient.gender": "M"}
#: What must never appear in a URL (Location headers, links).
SECRETS = ("279035121518989", "ARTAGNAN", "JEAN-LOUIS", "1979", "51215", "IPP-000123")


@pytest.fixture
def consumer(tmp_path: Path, gateway_factory) -> Iterator:
    sim = PscSim(tmp_path)
    gw = gateway_factory(**psc_env(sim, DRIMBOX_ROLES="consumer"))
    sim.start(gw.url)
    gw.start()
    yield gw, sim
    sim.stop()


class Browser:
    """httpx with every Location header kept, to show that no trait travels in a URL."""

    def __init__(self) -> None:
        self.client = httpx.Client(timeout=30)
        self.locations: list[str] = []

    def send(self, method: str, url: str, **kw) -> httpx.Response:  # noqa: ANN003
        r = self.client.request(method, url, **kw)
        if "location" in r.headers:
            self.locations.append(r.headers["location"])
        return r

    def assert_no_trait_in_urls(self) -> None:
        for url in self.locations:
            for secret in SECRETS:
                assert secret not in unquote(url), (secret, url)

    def close(self) -> None:
        self.client.close()


def login_through_psc(browser: Browser, gw, practitioner: str) -> httpx.Response:
    """From ``GET /consumer`` without a session: our login, PSC, back to the callback; return
    the callback's answer."""
    r = browser.send("GET", f"{gw.url}/consumer")
    assert r.status_code == 302, r.text
    assert r.headers["location"] == f"{gw.url}/auth/login?next=%2Fconsumer"
    r = browser.send("GET", r.headers["location"])
    assert r.status_code == 302
    callback = psc_answer(browser.client, r.headers["location"], practitioner)
    browser.locations.append(callback)
    return browser.send("GET", callback)


def trait(page: str, name: str) -> str:
    (value,) = re.findall(rf"<dd data-trait='{name}'>([^<]*)</dd>", page)
    return value


def kpi_count(lines: list[str], action: str, status: str) -> int:
    """Calls of one type and status in the KPI file, whatever the day."""
    rows = [line.split(";") for line in lines[1:]]
    return sum(int(n) for _day, kind, n, st in rows if kind == action and st == status)


def audit(gw, action: str) -> list[AuditEvent]:
    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            return list(s.execute(select(AuditEvent).where(AuditEvent.action == action)
                                  .order_by(AuditEvent.id)).scalars())
    finally:
        index.engine.dispose()


def test_appel_contextuel_psc_login_and_banner(consumer) -> None:
    """A good appel contextuel: 303 to the consumer page, through the PSC login (Situation
    pre-selects the hospital among the practitioner's two activities, so no choice page), back
    to the page, which shows the strict INS traits (R14), escaped, the rest on demand."""
    gw, _sim = consumer
    browser = Browser()
    try:
        r = browser.send("POST", f"{gw.url}/consumer/context",
                         data={**PATIENT, "Situation": HOSPITAL})
        assert r.status_code == 303, r.text
        assert r.headers["location"] == f"{gw.url}/consumer"
        pending = browser.client.cookies.get("drimbox-context")
        assert pending and pending not in r.text
        r = login_through_psc(browser, gw, STAFF)
        assert r.status_code == 303 and r.headers["location"] == f"{gw.url}/consumer"
        page = browser.send("GET", f"{gw.url}/consumer")
        assert page.status_code == 200, page.text
        assert "drimbox-context" not in browser.client.cookies  # claimed, cookie cleared
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-frame-options"] == "DENY"
        # Shown by default: birth name, first birth first name, birth date, sex, birthplace.
        banner, details = page.text.split("<details id=identity-more>", 1)
        assert trait(banner, "birth-name") == "D&#x27;ARTAGNAN"
        assert trait(banner, "first-given-name") == "JEAN-LOUIS"
        assert trait(banner, "birth-date") == "12/03/1979"
        assert trait(banner, "gender") == "Masculin"
        assert trait(banner, "birthplace") == "51215"
        assert "279035121518989" not in banner
        # On demand: INS, its OID, all birth first names, used name and first name.
        assert trait(details, "ins") == "279035121518989"
        assert trait(details, "ins-oid") == "1.2.250.1.213.1.4.10 (INS-NIR-TEST)"
        assert trait(details, "birth-given-names") == "JEAN-LOUIS MARIE"
        assert trait(details, "used-name") == trait(details, "used-given-name") == "non transmis"
        assert f"data-activity='{HOSPITAL}'" in page.text
        # A reload shows the same context (kept with the session, not in the URL).
        again = browser.send("GET", f"{gw.url}/consumer")
        assert trait(again.text, "birth-name") == "D&#x27;ARTAGNAN"
        browser.assert_no_trait_in_urls()
        session = browser.client.cookies.get("drimbox-session")
    finally:
        browser.close()

    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            (ctx,) = s.execute(select(ConsumerContext)).scalars()
            (row,) = s.execute(select(ViewerSession)).scalars()
            assert ctx.session_sha256 == row.id_sha256 and ctx.pending_sha256 is None
            assert ctx.source == "appel-contextuel" and session not in ctx.traits
            assert row.activity == HOSPITAL
    finally:
        index.engine.dispose()
    (login,) = audit(gw, "login")
    assert login.activity == HOSPITAL and login.reason == "activity_preselected"
    (received,) = audit(gw, "consumer_context")
    assert received.outcome == "allowed" and received.patient_ins == "279035121518989"
    views = audit(gw, "consumer_view")
    assert [v.reason for v in views] == ["context", "context"]
    assert all(v.subject == STAFF and v.patient_ins == "279035121518989" for v in views)
    for row in audit(gw, "consumer_context") + views:  # never the names nor the birth date
        assert "ARTAGNAN" not in repr(row.__dict__) and "1979-03-12" not in repr(row.__dict__)
    # R22: the KPI file counts the appel contextuel (Nombre_Appel, Statut_Appel); the FHIR
    # export names the patient by INS only.
    index = open_index(gw.database_url)
    try:
        kpi = kpi_csv(index).splitlines()
        bundle = fhir_audit_bundle(index, "DRIMBOX").model_dump_json()
    finally:
        index.engine.dispose()
    assert kpi_count(kpi, "consumer_context", "succes") == 1, kpi
    assert "279035121518989" in bundle and "ARTAGNAN" not in bundle


def test_each_bad_parameter_is_refused_by_name(consumer) -> None:
    """400 naming each missing, unknown, repeated, empty or malformed parameter (the cases of
    tests/test_consumer_context.py, posted for real); no context kept, no cookie set."""
    gw, _sim = consumer
    with httpx.Client(timeout=30) as client:
        for changes, parameter, kind in BAD:
            r = client.post(f"{gw.url}/consumer/context", data=dict(pairs(changes)))
            assert r.status_code == 400, (parameter, kind)
            named = re.findall(r"data-parameter='([^']*)' data-problem='(\w+)'", r.text)
            assert named == [(parameter.replace("'", "&#x27;"), kind)], (changes, r.text)
            assert "location" not in r.headers and "drimbox-context" not in client.cookies
        # Every problem at once, and a repeated parameter (a list of pairs).
        r = client.post(f"{gw.url}/consumer/context",
                        content="Patient.gender=X&Patient.gender=F&Foo=1",
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400
        named = dict(re.findall(r"data-parameter='([^']*)' data-problem='(\w+)'", r.text))
        assert named["Patient.gender"] == "malformed" or named["Patient.gender"] == "repeated"
        assert named["Foo"] == "unknown" and named["PatientIDIssuer"] == "missing"
        # Not a form.
        r = client.post(f"{gw.url}/consumer/context", json=GOOD)
        assert r.status_code == 415
    index = open_index(gw.database_url)
    try:
        with index.read() as s:
            assert s.execute(select(ConsumerContext)).first() is None
    finally:
        index.engine.dispose()
    refused = audit(gw, "consumer_context")
    assert len(refused) == len(BAD) + 2 and {r.outcome for r in refused} == {"denied"}
    assert refused[0].reason == "bad_parameters: Patient.identifier.value"
    index = open_index(gw.database_url)
    try:
        kpi = kpi_csv(index).splitlines()
    finally:
        index.engine.dispose()
    assert kpi_count(kpi, "consumer_context", "erreur") == len(BAD) + 2


def test_search_form_and_situation_for_a_logged_in_practitioner(consumer) -> None:
    """No appel contextuel: the practitioner logs in from the consumer page (two activities,
    no Situation: the choice page), gets the search form, whose fields are the appel
    contextuel's parameters, posts it with Situation naming their other activity: the banner,
    and the activity switched. A Situation that is not theirs changes nothing."""
    gw, _sim = consumer
    browser = Browser()
    try:
        r = login_through_psc(browser, gw, STAFF)
        assert r.status_code == 303
        assert r.headers["location"].startswith(f"{gw.url}/auth/activity?next=")
        r = browser.send("POST", f"{gw.url}/auth/activity",
                         data={"activity": CABINET, "next": "/consumer"})
        assert r.status_code == 303 and r.headers["location"] == f"{gw.url}/consumer"
        page = browser.send("GET", f"{gw.url}/consumer")
        assert page.status_code == 200 and "id=identity-banner" not in page.text
        (action,) = re.findall(r"<form id=search method=post action='([^']+)'>", page.text)
        assert action == f"{gw.url}/consumer/context"
        fields = set(re.findall(r"name='([^']+)'", page.text.split("<form id=search")[1]))
        fields |= set(re.findall(r"<select name=(\w+)>", page.text))
        assert fields == set(GOOD) | {"Situation"}
        assert f"data-activity='{CABINET}'" in page.text

        r = browser.send("POST", action, data={**PATIENT, "Situation": HOSPITAL})
        assert r.status_code == 303 and r.headers["location"] == f"{gw.url}/consumer"
        page = browser.send("GET", f"{gw.url}/consumer")
        assert trait(page.text, "birth-name") == "D&#x27;ARTAGNAN"
        assert f"data-activity='{HOSPITAL}'" in page.text

        other = {**PATIENT, "Patient.name.family": "PAT-TROIS", "Situation": "R000"}
        browser.send("POST", action, data=other)
        page = browser.send("GET", f"{gw.url}/consumer")
        assert trait(page.text, "birth-name") == "PAT-TROIS"  # the newer context replaces
        assert f"data-activity='{HOSPITAL}'" in page.text
        browser.assert_no_trait_in_urls()
    finally:
        browser.close()
    assert [a.reason for a in audit(gw, "activity")][-1] == "situation"
    assert [v.reason for v in audit(gw, "consumer_view")] == ["search_form", "context",
                                                              "context"]
    index = open_index(gw.database_url)
    try:
        with index.read() as s:  # one current context per session
            assert len(s.execute(select(ConsumerContext)).all()) == 1
    finally:
        index.engine.dispose()


def test_single_activity_and_consent_refused(consumer) -> None:
    """A practitioner with one activity (Situation naming another is ignored) and a patient who
    did not consent: the banner, and a warning that nothing will be searched."""
    gw, _sim = consumer
    browser = Browser()
    try:
        r = browser.send("POST", f"{gw.url}/consumer/context",
                         data={**PATIENT, "InformationEtConsentement": "false",
                               "Situation": CABINET})
        assert r.status_code == 303
        r = login_through_psc(browser, gw, OUTSIDER)
        assert r.status_code == 303 and r.headers["location"] == f"{gw.url}/consumer"
        page = browser.send("GET", f"{gw.url}/consumer")
        assert trait(page.text, "birth-name") == "D&#x27;ARTAGNAN"
        assert "id=no-consent" in page.text and f"data-activity='{HOSPITAL}'" in page.text
    finally:
        browser.close()


def test_without_the_consumer_role_there_is_no_consumer(gateway_factory) -> None:
    """The default role is source: the consumer routes do not exist (404)."""
    gw = gateway_factory().start()
    with httpx.Client(timeout=30) as client:
        assert client.post(f"{gw.url}/consumer/context", data=GOOD).status_code == 404
        assert client.get(f"{gw.url}/consumer").status_code == 404
        assert client.get(f"{gw.url}/healthz").status_code == 200


def test_a_consumer_only_box_opens_nothing_of_the_source(consumer) -> None:
    """``roles = consumer``: the Source's DICOMweb (WADO-URI too), R18 link, share links and
    study admin answer 404, no DICOM SCP listens, and the viewer knows only the retrieved
    studies."""
    gw, _sim = consumer
    with httpx.Client(timeout=30) as client:
        for path in ("/dicom-web/studies", "/dicom-web/studies/1.2.3/metadata",
                     "/wado?requestType=WADO&studyUID=1.2&seriesUID=1.3&objectUID=1.4",
                     "/admin/share-links", "/admin/studies/1.2.3"):
            assert client.get(f"{gw.url}{path}").status_code == 404, path
        assert client.get(f"{gw.url}/consumer").status_code == 302  # to the PSC login
        config = client.get(f"{gw.url}/viewer/app-config.js")
    assert config.status_code == 200, config.text  # the OHIF files (make setup)
    assert '"defaultDataSourceName": "consumer"' in config.text
    assert '"sourceName": "drimbox"' not in config.text
    assert f'"qidoRoot": "{gw.url}/consumer/dicom-web"' in config.text
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", gw.dicom_port), timeout=5).close()

