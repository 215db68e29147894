# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""The consumer's DMP search (R16; SPEC 1.3 flow B step 4) end to end, nothing stood in:

* a Source ``drimbox serve`` (its own data dir and index, same back-end as the consumer)
  publishes a study sent by storescu to a real ``drimbox dmp-sim`` over mutual TLS; a second
  Source (another centre) publishes over the same protocol (ITI-41, signed, with its VIHF);
* a consumer ``drimbox serve`` (``roles = consumer``) with the same dmp-sim and a real
  ``drimbox psc-sim``: appel contextuel, PSC login, then ``GET /consumer`` runs TD0.2 and
  ITI-18 with a VIHF of the practitioner's activity and lists the priors; the filters (GET
  parameters) narrow the list; another patient's and a masked document never appear;
* failures: consent false (no DMP call at all), no DMP, opposition, the DMP down or answering
  HTTP 500, a VIHF the DMP refuses (SOAP fault): a clear message on a 200 page, and an audit
  row ``dmp_search`` for each search.

Both index back-ends (``database_url``); each test has a dmp-sim of its own (a known content).
"""

from __future__ import annotations

import html
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Gateway, _pg_database
from dmp_support import Sim, pki, start_sim  # noqa: F401
from peers import storescu
from psc_support import OUTSIDER, PscSim, psc_env
from test_consumer_entry import PATIENT, Browser, audit, login_through_psc
from test_dmp_consumer_queries import KNEE, OTHER_CENTRE, US, fresh_ins, publish, set_state
from test_manifest_e2e import INS, INS_TEST_OID, write_study
from test_publication_e2e import IndexView, dmp_env

from adapters.dmp import patients
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import Code

CONSENT = "InformationEtConsentement"
#: The consumer waits for the DMP as long as a real one may take; the Source's 4 s (dmp_env) is
#: for its retry tests, and a loaded machine can exceed it.
SLOW_DMP = {"DRIMBOX_DMP_TIMEOUT": "30"}


@pytest.fixture
def dmp(tmp_path: Path, pki) -> Iterator[Sim]:  # noqa: ANN001
    (tmp_path / "dmp").mkdir()
    s = start_sim(tmp_path / "dmp", pki)
    yield s
    s.proc.terminate()
    try:
        s.proc.wait(10)
    except subprocess.TimeoutExpired:
        s.proc.kill()


@pytest.fixture
def source_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """The Source's own index, on the same back-end as the consumer's."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'source-index.sqlite'}"
    else:
        yield from _pg_database()


@pytest.fixture
def consumer(tmp_path: Path, gateway_factory, dmp: Sim) -> Iterator[tuple[Gateway, PscSim]]:
    psc = PscSim(tmp_path)
    gw = gateway_factory(**{**dmp_env(dmp, **SLOW_DMP),
                            **psc_env(psc, DRIMBOX_ROLES="consumer")})
    psc.start(gw.url)
    gw.start()
    yield gw, psc
    psc.stop()


def open_page(gw: Gateway, *, consent: bool = True, ins: str = INS) -> Browser:
    """Appel contextuel for the patient, then the practitioner's PSC login (one activity)."""
    browser = Browser()
    r = browser.send("POST", f"{gw.url}/consumer/context", data={
        **PATIENT, "Patient.identifier.value": ins,
        "Patient.identifier.system": f"urn:oid:{INS_TEST_OID}",
        CONSENT: "true" if consent else "false"})
    assert r.status_code == 303, r.text
    r = login_through_psc(browser, gw, OUTSIDER)
    assert r.status_code == 303 and r.headers["location"] == f"{gw.url}/consumer", r.text
    return browser


def page(browser: Browser, gw: Gateway, **filters: str) -> str:
    r = browser.send("GET", f"{gw.url}/consumer", params=filters)
    assert r.status_code == 200, r.text
    assert "identity-banner" in r.text
    return r.text


def priors(text: str) -> list[dict[str, str]]:
    rows = []
    for doc, cells in re.findall(r"<tr class=prior data-document='([^']*)'>(.*?)</tr>", text):
        row = {k: html.unescape(v) for k, v in re.findall(
            r"<td data-field=(\w+)>([^<]*)</td>", cells)}
        row["document"] = doc
        row["link"] = re.search(r"href='([^']*)'", cells).group(1)
        rows.append(row)
    return rows


def problem(text: str) -> str:
    m = re.search(r"<p id=dmp-problem role=alert data-problem='([^']*)'>([^<]*)</p>", text)
    return m.group(1) if m else ""


def patients_calls(sim: Sim) -> int:
    """TD0.2 requests the simulator received (its access log)."""
    return sim.log.read_text(errors="replace").count("POST /patients")


def test_priors_of_the_patient_from_two_sources_filtered(
        tmp_path: Path, dmp: Sim, consumer, source_database_url: str) -> None:
    """Two Sources' exams of the patient, newest first with modality, region, description,
    author and centre, each linking to its retrieval; the filters narrow the list; a masked
    document and another patient's never appear; every search audited (filters, never names)."""
    gw, _psc = consumer
    # Source 1: a gateway publishes the study storescu sends (flow A).
    source = Gateway(tmp_path / "source-data", source_database_url, **dmp_env(dmp))
    source.start()
    try:
        study, files = write_study(tmp_path / "study", per_series=1)
        storescu(files, source.dicom_port)
        view = IndexView(source_database_url)
        try:
            (row,) = view.wait_done(study)
        finally:
            view.close()
    finally:
        source.stop()
    ins = Ins(INS, INS_TEST_OID)
    # Source 2, another centre, over the same protocol: an older ultrasound of the knee; and a
    # document masked to professionals; and another patient's exam.
    with dmp.client() as c:
        theirs = publish(c, ins, events=(US, KNEE), author=OTHER_CENTRE, created="20200505050505",
                         publisher={"structure_id": "300099999"})
        masked = publish(c, ins, author=OTHER_CENTRE, created="20210101010101",
                         flags=(Code("MASQUE_PS", "1.2.250.1.213.1.1.4.13", "Masque"),),
                         publisher={"structure_id": "300099999"})
        elsewhere = publish(c, fresh_ins())

    browser = open_page(gw)
    try:
        text = page(browser, gw)
        listed = priors(text)
        assert [p["document"] for p in listed] == [row.kos_uid, theirs]  # newest first
        ours, other = listed
        assert {"CT", "MR"} <= set(ours["modality"].split(", "))
        assert ours["centre"] == "CENTRE IMAGERIE TEST"
        assert ours["link"] == f"{gw.url}/consumer/studies/{row.kos_uid}"
        assert (other["modality"], other["region"], other["author"], other["centre"]) == (
            "US", "Genou", "Jacques BIDEAULT", "CH AUTRE VILLE")
        assert other["date"] == "05/05/2020 05:05"
        assert ours["description"] and other["description"]
        assert masked not in text and elsewhere not in text
        # The filters (GET parameters) narrow the DMP query.
        assert [p["document"] for p in priors(page(browser, gw, modality="US"))] == [theirs]
        assert [p["document"] for p in priors(page(browser, gw, region="72696002"))] == [theirs]
        assert [p["document"] for p in priors(page(browser, gw, modality="CT"))] == [row.kos_uid]
        empty = page(browser, gw, modality="MG")
        assert priors(empty) == [] and "Aucun examen ne correspond aux filtres" in empty
        assert [p["document"] for p in priors(page(browser, gw, to="2020-12-31"))] == [theirs]
        assert [p["document"] for p in priors(page(browser, gw, accession="ACN108"))] == [
            row.kos_uid]
        assert [p["document"] for p in priors(page(
            browser, gw, accession="ACN108", accession_issuer="1.2.250.1.213.4.5.2.5"))] == [
            row.kos_uid]
        bad = page(browser, gw, modality="ZZ", **{"from": "2024-13-01"})
        assert problem(bad) == "bad_filters" and priors(bad) == []
        assert "data-filter='modality'" in bad and "data-filter='from'" in bad
        browser.assert_no_trait_in_urls()
    finally:
        browser.close()

    rows = audit(gw, "dmp_search")
    assert [(a.outcome, a.reason) for a in rows] == [
        ("allowed", "found=2"), ("allowed", "found=1 modality=US"),
        ("allowed", "found=1 region=72696002"), ("allowed", "found=1 modality=CT"),
        ("allowed", "found=0 modality=MG"), ("allowed", "found=1 to=2020-12-31"),
        ("allowed", "found=1 accession=yes"), ("allowed", "found=1 accession=yes"),
        ("denied", "bad_filters: from,modality")]
    assert all((a.subject, a.patient_ins, a.activity) == (OUTSIDER, INS, "R499999000000202")
               for a in rows)
    assert all("PAT-TROIS" not in repr(a.__dict__) for a in rows)


def test_no_consent_no_dmp_opposition_and_dmp_down(dmp: Sim, consumer) -> None:
    """Consent false: no DMP call at all; no DMP, opposition, HTTP 500, the DMP stopped: each a
    message on a 200 page and an audit row."""
    gw, _psc = consumer
    # Consent false: the page says so and the DMP is not called at all (no TD0.2).
    before = patients_calls(dmp)
    browser = open_page(gw, consent=False)
    try:
        text = page(browser, gw)
        assert "no-consent" in text and problem(text) == "no_consent"
        assert "id=filters" not in text and priors(text) == []
    finally:
        browser.close()
    assert patients_calls(dmp) == before

    ins = fresh_ins()
    browser = open_page(gw, ins=ins.matricule)
    try:
        assert "Aucun examen d'imagerie" in page(browser, gw)  # TD0.2 open, nothing published
        set_state(dmp, ins, patients.NO_DMP)
        assert problem(page(browser, gw)) == "no_dmp"
        set_state(dmp, ins, patients.REFUSED)
        text = page(browser, gw)
        assert problem(text) == "access_refused" and "opposition" in text
        set_state(dmp, ins, patients.OPEN)
        dmp.inject("http500", 1)
        text = page(browser, gw)
        assert problem(text) == "dmp_unreachable" and "injoignable" in text
        dmp.proc.terminate()
        dmp.proc.wait(10)
        text = page(browser, gw)
        assert problem(text) == "dmp_unreachable"
    finally:
        browser.close()
    rows = audit(gw, "dmp_search")
    assert [(a.outcome, a.reason) for a in rows] == [
        ("denied", "no_consent"), ("allowed", "found=0"), ("denied", "no_dmp"),
        ("denied", "access_refused: R"), ("denied", "dmp_unreachable: DmpTransientError"),
        ("denied", "dmp_unreachable: DmpTransientError")]
    assert rows[0].patient_ins == INS and {a.patient_ins for a in rows[1:]} == {ins.matricule}


def test_a_vihf_the_dmp_refuses_is_a_message(tmp_path: Path, dmp: Sim, gateway_factory) -> None:
    """The consumer signs its VIHF with a certificate the DMP does not trust: the SOAP fault
    (wsse:InvalidSecurityToken) is shown by its code, the page stays a 200."""
    psc = PscSim(tmp_path)
    gw = gateway_factory(**{**dmp_env(dmp, DRIMBOX_DMP_SIGN_CERT=str(dmp.pki.rogue_sign_cert),
                                      DRIMBOX_DMP_SIGN_KEY=str(dmp.pki.rogue_sign_key),
                                      **SLOW_DMP),
                            **psc_env(psc, DRIMBOX_ROLES="consumer")})
    psc.start(gw.url)
    gw.start()
    try:
        browser = open_page(gw)
        try:
            text = page(browser, gw)
        finally:
            browser.close()
    finally:
        psc.stop()
    (row,) = audit(gw, "dmp_search")
    assert problem(text) == "dmp_security" and "wsse:InvalidSecurityToken" in text, row.reason
    assert (row.outcome, row.reason) == ("denied", "dmp_security: wsse:InvalidSecurityToken")
