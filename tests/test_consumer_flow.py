# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""DRIM-M flow B end to end, with nothing stood in (SPEC 1.3; R3, R7, R8, R10, R22): what a
consumer DRIMbox does against this gateway as a Source.

* A Source ``drimbox serve`` with a DMP (a real ``drimbox dmp-sim`` over mutual TLS) and
  ``dicomweb_auth = psc`` against a real ``drimbox psc-sim`` (introspection, as R10 says).
* storescu sends a study; it becomes stable and the publication outbox publishes its KOS.
* The consumer, with its own PSC client: ITI-18 FindDocuments by INS and ITI-43 retrieve of
  the KOS (``adapters.dmp.client.DmpClient``); pydicom reads the KOS for each series'
  RetrieveURL and the referenced SOP Instance UIDs; an access token from psc-sim by the
  authorization code flow with PKCE (no test-token endpoint: ``--test-tokens`` is off); then
  WADO-RS at each RetrieveURL with ``Authorization: Bearer`` and ``KOS-SOPInstanceUID``.
* Instances stored after the publication (auto-publication switched off, so no new KOS
  replaces the first) are not returned, neither in a referenced series nor in a new one.
* ``drimbox unpublish``: the same request is refused (403) and audited, and the DMP's
  Approved query no longer lists the KOS.

Both index back-ends (``gateway_factory`` runs each test on SQLite and PostgreSQL).
"""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from access_support import CLIENT_ID, PscSim, gateway_psc_env, start_psc_sim
from dmp_support import Sim, pki, sim, vihf_for  # noqa: F401
from peers import storescu
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select
from test_dicomweb_access import _late, _send, sop_uids_of_multipart
from test_manifest_e2e import INS, ROOT, cli, stored_instances, write_study
from test_publication_e2e import PATIENT_ID, IndexView, dmp_env, of_study

from gateway.index.models import AuditEvent
from gateway.manifest.kos import referenced_instances

CONSUMER_ID, CONSUMER_SECRET = "drimbox-conso", "conso-secret"
CONSUMER_CALLBACK = "https://conso.example/auth/callback"  # never followed: the code is read
PRACTITIONER = "899999000002"  # a test practitioner of psc-sim with one activity
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
KOS_HEADER = "KOS-SOPInstanceUID"


@pytest.fixture
def psc() -> PscSim:
    s = start_psc_sim(f"{CONSUMER_ID}:{CONSUMER_SECRET}:{CONSUMER_CALLBACK}", test_tokens=False)
    yield s
    s.stop()


@pytest.fixture
def view(database_url: str) -> IndexView:
    v = IndexView(database_url)
    yield v
    v.close()


# -- the consumer DRIMbox's side ---------------------------------------------------------------


def consumer_access_token(psc: PscSim, practitioner: str) -> str:
    """The consumer's PSC login: authorization code + PKCE S256 with ``login_hint`` (psc-sim
    then skips its page), the code exchanged at the token endpoint with the consumer's own
    client credentials. The access token names the consumer's client (``azp``)."""
    conf = httpx.get(f"{psc.issuer}/.well-known/wallet-openid-configuration", timeout=10).json()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()) \
        .rstrip(b"=").decode()
    state = secrets.token_urlsafe(16)
    query = {"response_type": "code", "client_id": CONSUMER_ID,
             "redirect_uri": CONSUMER_CALLBACK, "scope": "openid scope_all",
             "acr_values": "eidas1", "state": state, "nonce": secrets.token_urlsafe(16),
             "code_challenge": challenge, "code_challenge_method": "S256",
             "login_hint": practitioner}
    r = httpx.get(f"{conf['authorization_endpoint']}?{urlencode(query)}", timeout=10)
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CONSUMER_CALLBACK
    answer = parse_qs(back.query)
    assert answer["state"] == [state]
    r = httpx.post(conf["token_endpoint"], auth=(CONSUMER_ID, CONSUMER_SECRET), timeout=10,
                   data={"grant_type": "authorization_code", "code": answer["code"][0],
                         "redirect_uri": CONSUMER_CALLBACK, "code_verifier": verifier})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def kos_from_dmp(sim: Sim, study: str) -> Dataset:
    """ITI-18 FindDocuments by INS (Approved), then ITI-43 of the study's one KOS."""
    vihf = vihf_for(PATIENT_ID)
    with sim.client() as dmp:
        found = of_study([e for e in dmp.find_documents(PATIENT_ID, vihf)
                          if e.mime_type == "application/dicom"], study)
        assert len(found) == 1, found
        data = dmp.retrieve_document(found[0].repository_unique_id, found[0].unique_id, vihf)
    kos = dcmread(io.BytesIO(data))
    assert str(kos.SOPInstanceUID) == found[0].unique_id
    return kos


def retrieve_urls(kos: Dataset) -> dict[str, str]:
    """Series Instance UID → RetrieveURL, as the KOS's evidence names them (R3)."""
    return {str(se.SeriesInstanceUID): str(se.RetrieveURL)
            for item in kos.CurrentRequestedProcedureEvidenceSequence
            for se in item.ReferencedSeriesSequence}


def wado(url: str, token: str, kos_uid: str) -> httpx.Response:
    return httpx.get(url, timeout=60, headers={"Authorization": f"Bearer {token}",
                                               KOS_HEADER: kos_uid, "Accept": DICOM_ACCEPT})


def audit_rows(database_url: str, after: int = 0) -> list:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(AuditEvent.__table__).where(AuditEvent.id > after)
                                .order_by(AuditEvent.id)).all()
    finally:
        engine.dispose()


def last_audit_id(database_url: str) -> int:
    rows = audit_rows(database_url)
    return rows[-1].id if rows else 0


# -- the flow ------------------------------------------------------------------------------------


def test_consumer_finds_the_kos_in_the_dmp_and_retrieves_exactly_its_instances(
        gateway_factory, sim: Sim, psc: PscSim, view: IndexView, tmp_path: Path) -> None:
    """SPEC 1.3 steps 3-6 and R10 against a real publication: the KOS found by INS in the DMP
    opens exactly its instances at the RetrieveURLs it names; later instances stay closed; after
    un-publication the same request is 403 ``kos_withdrawn`` and audited (R22)."""
    gw = gateway_factory(**dmp_env(sim), **gateway_psc_env(
        psc, "introspection", DRIMBOX_PSC_AUDIENCES=f'["{CONSUMER_ID}"]'))
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    gw.start()
    study, files = write_study(tmp_path / "study", per_series=2)
    storescu(files, gw.dicom_port)
    (row,) = view.wait_done(study)  # stable, then published by the outbox

    # Auto-publication off from here, so that later instances get no new KOS (R8 would
    # replace it at the next stability; tests/test_publication_e2e.py covers that).
    gw.stop()
    gw.extra_env["DRIMBOX_AUTO_PUBLISH"] = "false"
    gw.start()
    published = stored_instances(gw, study)
    first = dcmread(sorted(files)[0], stop_before_pixels=True)
    referenced_series = str(first.SeriesInstanceUID)
    new_series = generate_uid(ROOT)
    late = [_late(study, referenced_series, 99, int(first.SeriesNumber), 990),
            _late(study, new_series, 1, 9, 991)]
    _send(tmp_path / "late", late, gw.dicom_port)
    late_uids = {str(ds.SOPInstanceUID) for ds in late}
    assert stored_instances(gw, study) == published | late_uids

    # The consumer: the DMP first, then PSC, then the Source named in the KOS.
    kos = kos_from_dmp(sim, study)
    kos_uid = str(kos.SOPInstanceUID)
    assert kos_uid == row.kos_uid and kos.PatientID == INS
    referenced = referenced_instances(kos)
    assert referenced == published
    urls = retrieve_urls(kos)
    assert referenced_series in urls and new_series not in urls
    assert all(u == f"{gw.url}/dicom-web/studies/{study}/series/{se}" for se, u in urls.items())
    token = consumer_access_token(psc, PRACTITIONER)

    before = last_audit_id(gw.database_url)
    returned: set[str] = set()
    for url in urls.values():
        r = wado(url, token, kos_uid)
        assert r.status_code == 200, r.text
        got = sop_uids_of_multipart(r)
        assert got and not got & returned
        returned |= got
    assert returned == referenced  # the late instance of a referenced series is not there
    assert not returned & late_uids
    # Asked by name, what the KOS does not reference is absent (404, as if it did not exist).
    late_sop = str(late[0].SOPInstanceUID)
    r = wado(f"{urls[referenced_series]}/instances/{late_sop}", token, kos_uid)
    assert r.status_code == 404 and "kos" not in r.text.lower()
    r = wado(f"{gw.url}/dicom-web/studies/{study}/series/{new_series}", token, kos_uid)
    assert r.status_code == 404
    # The whole study at once: the same set.
    r = wado(f"{gw.url}/dicom-web/studies/{study}", token, kos_uid)
    assert r.status_code == 200 and sop_uids_of_multipart(r) == referenced

    rows = audit_rows(gw.database_url, before)
    assert [(a.action, a.outcome, a.reason) for a in rows] == (
        [("wado", "allowed", "kos_scope")] * len(urls)
        + [("wado", "denied", "instance_outside_kos"), ("wado", "denied", "series_outside_kos"),
           ("wado", "allowed", "kos_scope")])
    assert {(a.subject, a.via, a.kos_uid, a.patient_ins, a.study_instance_uid) for a in rows} \
        == {(PRACTITIONER, "bearer-introspection", kos_uid, INS, study)}

    # Un-publication closes access at once, then the DMP deprecates the KOS.
    proc = cli(gw, "unpublish", study, "--reason", "patient request")
    assert proc.returncode == 0, proc.stderr
    before = last_audit_id(gw.database_url)
    url = urls[referenced_series]
    r = wado(url, token, kos_uid)
    assert r.status_code == 403, r.text
    assert "www-authenticate" not in r.headers  # the token is fine; the policy refuses
    (denied,) = audit_rows(gw.database_url, before)
    assert (denied.action, denied.outcome, denied.reason) == ("wado", "denied", "kos_withdrawn")
    assert (denied.subject, denied.kos_uid, denied.patient_ins, denied.study_instance_uid) == (
        PRACTITIONER, kos_uid, INS, study)
    view.wait_done(study, count=2)
    with sim.client() as dmp:
        approved = dmp.find_documents(PATIENT_ID, vihf_for(PATIENT_ID))
    assert of_study(approved, study) == []
    assert wado(url, token, kos_uid).status_code == 403

    # Never a token in the audit trail nor in the gateway's log.
    assert all(token not in str(value) for a in audit_rows(gw.database_url) for value in a)
    assert token not in gw.log_path.read_text(errors="replace")


def test_a_token_of_an_unlisted_consumer_client_is_refused(
        gateway_factory, sim: Sim, psc: PscSim, view: IndexView, tmp_path: Path) -> None:
    """R10: the Source accepts the tokens of the PSC clients it lists (``psc_audiences``); a
    genuine, active token of another client is 401 ``token_wrong_audience`` even with the right
    KOS, and audited."""
    gw = gateway_factory(**dmp_env(sim), **gateway_psc_env(
        psc, "introspection", DRIMBOX_PSC_AUDIENCES=f'["{CLIENT_ID}"]'))
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    gw.start()
    study, files = write_study(tmp_path / "study", per_series=1)
    storescu(files, gw.dicom_port)
    view.wait_done(study)
    kos = kos_from_dmp(sim, study)
    token = consumer_access_token(psc, PRACTITIONER)
    before = last_audit_id(gw.database_url)
    r = wado(next(iter(retrieve_urls(kos).values())), token, str(kos.SOPInstanceUID))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    (denied,) = audit_rows(gw.database_url, before)
    assert (denied.outcome, denied.reason, denied.via) == (
        "denied", "token_wrong_audience", "bearer-introspection")
