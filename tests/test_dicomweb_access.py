"""Token-checked DICOMweb, the R10 KOS-scoped policy and the audit trail, end to end (
items 2, 3, 5): a real ``drimbox serve`` checking tokens against a real ``drimbox psc-sim``
process on loopback (JWT against the JWKS, and a second gateway on the same index checking by
introspection), studies sent with storescu, a real HTTP client, on both index back-ends.

Every refusal has its status (401 with ``WWW-Authenticate`` for token problems, 403 for the
policy, 404 for an instance outside the KOS) and its audit row (outcome denied + reason); the
positive path returns exactly what the KOS references although the study holds more.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import io
import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import launcher
import pytest
from access_support import (
    CLIENT_ID,
    PscSim,
    gateway_psc_env,
    hs256_with_public_key,
    publish_manifest,
    start_psc_sim,
    tampered,
    unsigned,
)
from conftest import BACKENDS, Gateway, _pg_database
from dicom_factory import make_instance
from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
from fhir.resources.R4B.bundle import Bundle
from peers import storescu
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, select
from test_manifest_e2e import INS, INS_TEST_OID, ROOT, write_study

from gateway.index.models import AuditEvent
from gateway.manifest.kos import referenced_instances

PRACTITIONER = "899999000001"
CONSUMER_CLIENT = "drimbox-conso"  # the PSC client of a consumer DRIMbox, listed as accepted
ADMIN = "899999000002"  # given the admin role by DRIMBOX_STAFF_ROLES
KOS_HEADER = "KOS-SOPInstanceUID"
DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class World:
    sim: PscSim
    jwt_gw: Gateway
    intro_gw: Gateway
    database_url: str
    study: str
    kos: Dataset
    other_study: str
    other_kos: Dataset
    stored: set[str]
    """Every SOP Instance UID of ``study`` in the index (more than the KOS references)."""
    late_instance: tuple[str, str]
    """(series, SOP) of an instance stored after the KOS, in a series the KOS references."""
    late_series: str
    """A series stored after the KOS (none of its instances referenced)."""

    @property
    def kos_uid(self) -> str:
        return str(self.kos.SOPInstanceUID)

    @property
    def referenced(self) -> set[str]:
        return referenced_instances(self.kos)


def _send(folder: Path, datasets: list[Dataset], port: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    storescu(paths, port)
    return paths


def _late(study: str, series: str, number: int, series_number: int, seed: int) -> Dataset:
    return make_instance(sop_class=CTImageStorage, transfer_syntax=ExplicitVRLittleEndian,
                         study_uid=study, series_uid=series, patient_id=INS, ins_oid=INS_TEST_OID,
                         accession="ACN108", instance_number=number, series_number=series_number,
                         seed=seed)


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp(f"access-{request.param}")
    databases = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'index.sqlite'}"
    else:
        databases = _pg_database()
        url = next(databases)
    sim = start_psc_sim()
    common = {"DRIMBOX_DICOM_WORKERS": "0",
              "DRIMBOX_STAFF_ROLES": json.dumps({ADMIN: ["admin"]}),
              "DRIMBOX_PSC_AUDIENCES": json.dumps([CONSUMER_CLIENT, CLIENT_ID])}
    jwt_gw = Gateway(tmp / "data", url, **gateway_psc_env(sim, "jwt", **common))
    intro_gw = Gateway(tmp / "data", url, **gateway_psc_env(sim, "introspection", **common))
    try:
        jwt_gw.start()
        intro_gw.start()
        study, paths = write_study(tmp / "study")
        storescu(paths, jwt_gw.dicom_port)
        kos = publish_manifest(url, tmp / "data", study, jwt_gw.url)
        other_study, other_paths = write_study(tmp / "other", per_series=1)
        storescu(other_paths, jwt_gw.dicom_port)
        other_kos = publish_manifest(url, tmp / "data", other_study, jwt_gw.url)
        # Instances stored after the KOS was built: one more in a referenced series, and a
        # whole new series. The KOS does not reference them.
        first = dcmread(sorted(paths)[0], stop_before_pixels=True)
        late_series = generate_uid(ROOT)
        late = [_late(study, str(first.SeriesInstanceUID), 99, int(first.SeriesNumber), 990),
                _late(study, late_series, 1, 9, 991), _late(study, late_series, 2, 9, 992)]
        _send(tmp / "late", late, jwt_gw.dicom_port)
        stored = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
        stored |= {str(ds.SOPInstanceUID) for ds in late}
        yield World(sim, jwt_gw, intro_gw, url, study, kos, other_study, other_kos, stored,
                    (str(first.SeriesInstanceUID), str(late[0].SOPInstanceUID)), late_series)
    finally:
        for gw in (jwt_gw, intro_gw):
            if gw.proc is not None:
                gw.stop()
        sim.stop()
        if databases is not None:
            databases.close()


# -- reading the audit trail and the answers -------------------------------------------------


def audit_rows(world: World, after: int = 0) -> list[AuditEvent]:
    engine = create_engine(world.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(AuditEvent.__table__).where(AuditEvent.id > after)
                                .order_by(AuditEvent.id)).all()
    finally:
        engine.dispose()
    return rows


def last_audit_id(world: World) -> int:
    rows = audit_rows(world)
    return rows[-1].id if rows else 0


def sop_uids_of_multipart(response: httpx.Response) -> set[str]:
    ctype = response.headers["content-type"]
    raw = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + response.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert msg.is_multipart(), ctype
    return {str(dcmread(io.BytesIO(p.get_payload(decode=True))).SOPInstanceUID)
            for p in msg.iter_parts()}


def sop_uids_of_json(items: list[dict]) -> set[str]:
    return {item["00080018"]["Value"][0] for item in items}


def bearer(token: str, kos_uid: str | None = None, **headers: str) -> dict[str, str]:
    out = {"Authorization": f"Bearer {token}", **headers}
    if kos_uid:
        out[KOS_HEADER] = kos_uid
    return out


# -- the negative matrix ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    status: int
    reason: str
    www_error: str | None = None
    """The ``error`` of WWW-Authenticate (401 only); '' for a bare Bearer challenge."""
    introspection: bool = False


CASES: dict[str, Case] = {
    "no_token": Case(401, "no_credentials", ""),
    "expired": Case(401, "token_expired", "invalid_token"),
    "not_yet_valid": Case(401, "token_not_yet_valid", "invalid_token"),
    "wrong_issuer": Case(401, "token_wrong_issuer", "invalid_token"),
    "wrong_audience": Case(401, "token_wrong_audience", "invalid_token"),
    "alg_none": Case(401, "token_alg_not_allowed", "invalid_token"),
    "hs256_with_public_key": Case(401, "token_alg_not_allowed", "invalid_token"),
    "unknown_kid": Case(401, "token_unknown_kid", "invalid_token"),
    "tampered_signature": Case(401, "token_bad_signature", "invalid_token"),
    "introspection_inactive": Case(401, "token_inactive", "invalid_token", introspection=True),
    "acr_too_low": Case(401, "token_acr_too_low", "insufficient_user_authentication"),
    "missing_kos_header": Case(403, "kos_header_missing"),
    "unknown_kos": Case(403, "kos_unknown"),
    "kos_of_another_study": Case(403, "kos_other_study"),
    "instance_outside_kos": Case(404, "instance_outside_kos"),
    "series_outside_kos": Case(404, "series_outside_kos"),
    "stow_by_a_consumer": Case(403, "store_not_permitted"),
}


def _request(world: World, case: str) -> tuple[httpx.Response, str | None]:
    """Make the case's request; returns the answer and the token sent (if any)."""
    sim = world.sim
    gw = world.intro_gw if CASES[case].introspection else world.jwt_gw
    base = f"{gw.url}/dicom-web"
    study_url = f"{base}/studies/{world.study}"
    tokens = {
        "expired": lambda: sim.token(subject=PRACTITIONER, exp_in=-3600),
        "not_yet_valid": lambda: sim.token(subject=PRACTITIONER, nbf_in=3600),
        "wrong_issuer": lambda: sim.token(subject=PRACTITIONER, iss="https://evil.example/realm"),
        "wrong_audience": lambda: sim.token(subject=PRACTITIONER, client_id="another-client",
                                            aud="another-client"),
        "alg_none": lambda: unsigned(sim.token(subject=PRACTITIONER)),
        "hs256_with_public_key": lambda: hs256_with_public_key(sim.token(subject=PRACTITIONER),
                                                               sim.public_key_pem()),
        "unknown_kid": lambda: sim.token(subject=PRACTITIONER, kid="unknown"),
        "tampered_signature": lambda: tampered(sim.token(subject=PRACTITIONER)),
        "introspection_inactive": lambda: sim.token(subject=PRACTITIONER, introspectable=False),
        "acr_too_low": lambda: sim.token(subject=PRACTITIONER, acr=None),
    }
    accept = {"Accept": DICOM_ACCEPT}
    if case == "no_token":
        return httpx.get(study_url, headers={KOS_HEADER: world.kos_uid, **accept}), None
    if case in tokens:
        token = tokens[case]()
        return httpx.get(study_url, headers=bearer(token, world.kos_uid, **accept)), token
    token = sim.token(subject=PRACTITIONER)
    if case == "missing_kos_header":
        return httpx.get(study_url, headers=bearer(token, **accept)), token
    if case == "unknown_kos":
        return httpx.get(study_url, headers=bearer(token, generate_uid(ROOT), **accept)), token
    if case == "kos_of_another_study":
        return httpx.get(study_url, headers=bearer(token, str(world.other_kos.SOPInstanceUID),
                                                   **accept)), token
    if case == "instance_outside_kos":
        series, sop = world.late_instance
        return httpx.get(f"{study_url}/series/{series}/instances/{sop}",
                         headers=bearer(token, world.kos_uid, **accept)), token
    if case == "series_outside_kos":
        return httpx.get(f"{study_url}/series/{world.late_series}/metadata",
                         headers=bearer(token, world.kos_uid)), token
    if case == "stow_by_a_consumer":
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\nx\r\n--b--\r\n"
        return httpx.post(f"{base}/studies", content=body, headers=bearer(
            token, world.kos_uid,
            **{"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})), token
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(CASES))
def test_negative_matrix_refused_and_audited(world: World, case: str) -> None:
    """R10: each refusal has its status, its challenge, and one audit row saying why."""
    expected = CASES[case]
    before = last_audit_id(world)
    response, token = _request(world, case)
    assert response.status_code == expected.status, response.text
    if expected.status == 401:
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="DRIMbox"')
        if expected.www_error:
            assert f'error="{expected.www_error}"' in challenge
        else:
            assert "error=" not in challenge  # RFC 6750 3.1: no error without credentials
    else:
        assert "www-authenticate" not in response.headers
    if expected.status == 404:  # as for a resource that does not exist: nothing revealed
        assert "kos" not in response.text.lower()
    rows = audit_rows(world, before)
    assert len(rows) == 1, [(r.action, r.reason) for r in rows]
    row = rows[0]
    assert (row.outcome, row.reason) == ("denied", expected.reason)
    assert row.action == ("stow" if case == "stow_by_a_consumer" else
                          "metadata" if case == "series_outside_kos" else "wado")
    assert row.client_address == "127.0.0.1"
    if expected.status == 401:
        assert row.principal_kind == "anonymous" and row.subject == ""
        assert row.via == ("bearer-introspection" if expected.introspection else
                           "bearer-jwt" if token else "")
    else:
        assert (row.principal_kind, row.subject, row.via) == (
            "practitioner", PRACTITIONER, "bearer-jwt")
    if case != "stow_by_a_consumer":
        assert row.study_instance_uid == world.study and row.patient_ins == INS
    # Never a token in the audit trail nor in the logs.
    if token:
        assert all(token not in str(value) for value in row)
        for gw in (world.jwt_gw, world.intro_gw):
            assert token not in gw.log_path.read_text(errors="replace")


# -- the positive path -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["jwt", "introspection"])
def test_consumer_sees_exactly_the_kos_instances(world: World, mode: str) -> None:
    """R10: WADO-RS study retrieve, study metadata and QIDO instances all equal the KOS's
    referenced set, although the study holds more instances (stored after the KOS)."""
    gw = world.jwt_gw if mode == "jwt" else world.intro_gw
    assert world.referenced < world.stored  # the study holds more than the KOS references
    token = world.sim.token(subject=PRACTITIONER)
    headers = bearer(token, world.kos_uid)
    base = f"{gw.url}/dicom-web"
    before = last_audit_id(world)

    r = httpx.get(f"{base}/studies/{world.study}", headers={**headers, "Accept": DICOM_ACCEPT},
                  timeout=60)
    assert r.status_code == 200, r.text
    assert sop_uids_of_multipart(r) == world.referenced

    r = httpx.get(f"{base}/studies/{world.study}/metadata", headers=headers)
    assert r.status_code == 200, r.text
    assert sop_uids_of_json(r.json()) == world.referenced

    r = httpx.get(f"{base}/studies/{world.study}/instances", headers=headers)
    assert r.status_code == 200, r.text
    assert sop_uids_of_json(r.json()) == world.referenced

    # QIDO at /studies finds the KOS's study only, counted as the KOS sees it.
    r = httpx.get(f"{base}/studies", headers=headers,
                  params={"includefield": "NumberOfStudyRelatedInstances"})
    assert r.status_code == 200, r.text
    studies = r.json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [world.study]
    assert studies[0]["00201208"]["Value"][0] == len(world.referenced)
    # Searching every instance of the centre finds the KOS's instances, nothing else.
    r = httpx.get(f"{base}/instances", headers=headers)
    assert r.status_code == 200 and sop_uids_of_json(r.json()) == world.referenced
    # The series of a referenced series: only its referenced instances.
    series, _ = world.late_instance
    r = httpx.get(f"{base}/studies/{world.study}/series/{series}/instances", headers=headers)
    in_kos = {str(ref.ReferencedSOPInstanceUID)
              for item in world.kos.CurrentRequestedProcedureEvidenceSequence
              for se in item.ReferencedSeriesSequence if se.SeriesInstanceUID == series
              for ref in se.ReferencedSOPSequence}
    assert in_kos and sop_uids_of_json(r.json()) == in_kos  # the late instance is not there
    r = httpx.get(f"{base}/studies/{world.study}/series", headers=headers)
    assert world.late_series not in {s["0020000E"]["Value"][0] for s in r.json()}

    rows = audit_rows(world, before)
    assert [(r.action, r.outcome, r.reason) for r in rows] == [
        ("wado", "allowed", "kos_scope"), ("metadata", "allowed", "kos_scope"),
        ("qido", "allowed", "kos_scope"), ("qido", "allowed", "kos_scope"),
        ("qido", "allowed", "kos_scope"), ("qido", "allowed", "kos_scope"),
        ("qido", "allowed", "kos_scope")]
    assert {(r.subject, r.kos_uid, r.patient_ins, r.study_instance_uid) for r in rows} == {
        (PRACTITIONER, world.kos_uid, INS, world.study)}
    assert {r.via for r in rows} == {f"bearer-{mode}"}

    # Rendered images and thumbnails obey the same scope.
    r = httpx.get(f"{base}/studies/{world.study}/rendered", headers=headers, timeout=60)
    assert r.status_code == 200
    locations = re.findall(rb"Content-Location: (\S+)", r.content)
    rendered = {loc.decode().split("/instances/")[1].split("/")[0] for loc in locations}
    assert rendered and rendered <= world.referenced
    assert world.late_instance[1] not in rendered
    late_series, late_sop = world.late_instance
    assert httpx.get(f"{base}/studies/{world.study}/series/{late_series}/instances/{late_sop}"
                     "/thumbnail", headers=headers).status_code == 404
    assert httpx.get(f"{base}/studies/{world.study}/series/{world.late_series}/rendered",
                     headers=headers).status_code == 404


def test_wado_uri_and_xml_metadata_obey_the_kos_scope(world: World) -> None:
    """R10 over WADO-URI (PS3.18 9): the query's UIDs go through the same policy and audit
    as WADO-RS; XML metadata (PS3.19) holds the KOS's instances only, as JSON does."""
    gw, token = world.jwt_gw, world.sim.token(subject=PRACTITIONER)
    series = {str(se.SeriesInstanceUID): [str(r.ReferencedSOPInstanceUID)
                                          for r in se.ReferencedSOPSequence]
              for item in world.kos.CurrentRequestedProcedureEvidenceSequence
              for se in item.ReferencedSeriesSequence}
    referenced_series, sops = next(iter(series.items()))

    def uri(series_uid: str, sop: str, kos: str | None) -> httpx.Response:
        return httpx.get(f"{gw.url}/wado", headers=bearer(token, kos), params={
            "requestType": "WADO", "studyUID": world.study, "seriesUID": series_uid,
            "objectUID": sop, "contentType": "application/dicom"})

    before = last_audit_id(world)
    r = uri(referenced_series, sops[0], world.kos_uid)
    assert r.status_code == 200, r.text
    assert str(dcmread(io.BytesIO(r.content)).SOPInstanceUID) == sops[0]
    assert uri(*world.late_instance, world.kos_uid).status_code == 404
    assert uri(referenced_series, sops[0], None).status_code == 403
    rows = audit_rows(world, before)
    assert [(row.action, row.outcome, row.reason) for row in rows] == [
        ("wado", "allowed", "kos_scope"), ("wado", "denied", "instance_outside_kos"),
        ("wado", "denied", "kos_header_missing")]
    assert rows[0].sop_instance_uids == sops[0] and rows[0].kos_uid == world.kos_uid

    r = httpx.get(f"{gw.url}/dicom-web/studies/{world.study}/metadata", headers=bearer(
        token, world.kos_uid, Accept='multipart/related; type="application/dicom+xml"'))
    assert r.status_code == 200, r.text
    found = set(re.findall(rb'tag="00080018" vr="UI" keyword="SOPInstanceUID">'
                           rb'<Value number="1">([0-9.]+)<', r.content))
    assert {f.decode() for f in found} == world.referenced


@pytest.mark.parametrize("mode", ["jwt", "introspection"])
def test_tokens_of_listed_consumer_clients_only(world: World, mode: str) -> None:
    """A consumer presents a token issued to its own PSC client: accepted when that client is
    in ``psc_audiences``, refused (wrong_audience) otherwise, in both check modes."""
    gw = world.jwt_gw if mode == "jwt" else world.intro_gw
    url = f"{gw.url}/dicom-web/studies/{world.study}/instances"
    listed = world.sim.token(subject=PRACTITIONER, client_id=CONSUMER_CLIENT)
    assert httpx.get(url, headers=bearer(listed, world.kos_uid)).status_code == 200
    stranger = world.sim.token(subject=PRACTITIONER, client_id="unlisted-client")
    before = last_audit_id(world)
    r = httpx.get(url, headers=bearer(stranger, world.kos_uid))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert [row.reason for row in audit_rows(world, before)] == ["token_wrong_audience"]


def test_a_centre_viewer_sees_the_whole_study(world: World) -> None:
    """A practitioner given the viewer role is not limited to a KOS (but still needs a token)."""
    env = gateway_psc_env(world.sim, "jwt", DRIMBOX_DICOM_WORKERS="0",
                          DRIMBOX_STAFF_ROLES=json.dumps({PRACTITIONER: ["viewer"]}))
    gw = Gateway(world.jwt_gw.data_dir, world.database_url, **env).start()
    try:
        token = world.sim.token(subject=PRACTITIONER)
        r = httpx.get(f"{gw.url}/dicom-web/studies/{world.study}/instances",
                      headers=bearer(token))
        assert r.status_code == 200
        assert sop_uids_of_json(r.json()) == world.stored
        assert audit_rows(world, last_audit_id(world) - 1)[-1].reason == "viewer_role"
    finally:
        gw.stop()


# -- the audit exports -----------------------------------------------------------------------


def _cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return launcher.run(args, env=gw.env, timeout=120)


def test_audit_exports_fhir_and_kpi(world: World) -> None:
    """The FHIR export validates with fhir.resources; the KPI file has its columns and the
    counts of the trail; the admin endpoint needs the admin role."""
    sim, gw = world.sim, world.jwt_gw
    # Something allowed and something denied, whatever ran before.
    token = sim.token(subject=PRACTITIONER)
    httpx.get(f"{gw.url}/dicom-web/studies/{world.study}/metadata",
              headers=bearer(token, world.kos_uid))
    httpx.get(f"{gw.url}/dicom-web/studies/{world.study}/metadata", headers=bearer(token))

    done = _cli(gw, "audit", "export", "--format", "fhir")
    assert done.returncode == 0, done.stderr
    bundle = Bundle.model_validate_json(done.stdout)
    rows = audit_rows(world)
    assert bundle.type == "collection" and len(bundle.entry) == len(rows)
    events = [FhirAuditEvent.model_validate(e.resource.model_dump()) for e in bundle.entry]
    by_outcome = Counter(e.outcome for e in events)
    assert by_outcome["0"] == sum(r.outcome == "allowed" for r in rows) > 0
    assert by_outcome["4"] == sum(r.outcome == "denied" for r in rows) > 0
    metadata = [e for e in events if e.type.code == "110106"]
    assert metadata and all(e.type.system == "http://dicom.nema.org/resources/ontology/DCM"
                            for e in metadata)
    allowed = next(e for e in events if e.outcome == "0" and e.entity)
    patient = allowed.entity[0].what.identifier
    assert (patient.value, patient.system) == (INS, f"urn:oid:{INS_TEST_OID}")
    requestor = allowed.agent[0]
    assert requestor.requestor and requestor.who.identifier.value == PRACTITIONER
    assert requestor.who.identifier.system == "urn:oid:1.2.250.1.71.4.2.1"
    assert any(e.type.code == "110112" for e in events)  # QIDO as Query

    done = _cli(gw, "audit", "export", "--format", "kpi")
    assert done.returncode == 0, done.stderr
    lines = list(csv.reader(io.StringIO(done.stdout), delimiter=";"))
    assert lines[0] == ["Date", "Type_Appel", "Nombre_Appel", "Statut_Appel"]
    counted = Counter()
    for _date, action, n, status in lines[1:]:
        assert status in ("succes", "erreur")
        counted[(action, status)] += int(n)
    rows = audit_rows(world)
    assert counted == Counter((r.action, "succes" if r.outcome == "allowed" else "erreur")
                              for r in rows)
    future = _cli(gw, "audit", "export", "--format", "kpi", "--since", "2999-01-01")
    assert future.stdout.splitlines() == ["Date;Type_Appel;Nombre_Appel;Statut_Appel"]

    # The admin endpoint: 401 without a token, 403 without the role, 200 with it.
    url = f"{gw.url}/admin/audit"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer(token)).status_code == 403
    admin = bearer(sim.token(subject=ADMIN))
    r = httpx.get(url, params={"format": "kpi"}, headers=admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == "Date;Type_Appel;Nombre_Appel;Statut_Appel"
    r = httpx.get(url, params={"format": "fhir", "since": "2000-01-01"}, headers=admin)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert Bundle.model_validate_json(r.text).entry
    assert httpx.get(url, params={"since": "yesterday"}, headers=admin).status_code == 400
    last = audit_rows(world)[-5:]
    assert [(r.action, r.outcome, r.reason) for r in last] == [
        ("admin", "denied", "no_credentials"), ("admin", "denied", "admin_role_required"),
        ("admin", "allowed", "admin_role"), ("admin", "allowed", "admin_role"),
        ("admin", "allowed", "admin_role")]
