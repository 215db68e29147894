# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""R17 from the consumer's side, over real protocols only: a Source gateway A publishes to a
real ``drimbox dmp-sim`` (mutual TLS) behind a mutual-TLS front (tests/source_front.py, its
reverse proxy); a consumer gateway B (``roles = consumer``, the same dmp-sim, a real
``drimbox psc-sim``) receives the appel contextuel, logs the practitioner in with PSC, and on
``GET /consumer/studies/{KOS uniqueId}`` does ITI-18/ITI-43 of the KOS with the practitioner's
VIHF, checks each RetrieveURL against the (unsigned, development) ANS whitelist (R11), and
retrieves each series by WADO-RS with the session's PSC access token, ``KOS-SOPInstanceUID``
and its client certificate, into its bounded cache; its consumer DICOMweb serves the result
to that session only.

B runs on both index back-ends (``gateway_factory``); A on SQLite in a folder of its own.
"""

from __future__ import annotations

import hashlib
import io
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from access_support import PscSim, gateway_psc_env, start_psc_sim
from conftest import Gateway
from dimse_client import open_index
from dmp_pki import SERVER_DN
from dmp_support import Sim, pki, sim  # noqa: F401
from peers import storescu
from source_front import SourceFront
from sqlalchemy import select
from test_consumer_context import GOOD
from test_consumer_flow import kos_from_dmp
from test_dicomweb_access import sop_uids_of_multipart
from test_manifest_e2e import cli, write_study
from test_publication_e2e import IndexView, dmp_env
from test_viewer_login import psc_answer

from gateway.index.engine import create_index_engine
from gateway.index.models import AuditEvent, ConsumerRetrieval, ViewerSession
from gateway.index.store import InstanceIndex
from gateway.ingest.storage import FileStore

CONSO_ID, CONSO_SECRET = "drimbox-conso", "conso-secret"
PRACTITIONER = "899999000002"  # one activity: no choice page
OTHER = "899999000001"


#: The subject of the test PKI's server certificate (tests/dmp_pki.py), which A's TLS front
#: presents: the whitelist names it as the operator's certificate (R11).
SOURCE_DN = SERVER_DN


def _whitelist(path: Path, host: str, dn: str = SOURCE_DN) -> Path:
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListeBlancheDRIM-M xmlns="https://github.com/ansforge/DRIM-M_DATA" '
        'versionFormat="1.0.0"><DateDeGeneration>2026-12-01T00:00:00Z</DateDeGeneration>'
        f"<ListeDomaines><Domaine><Identifiant>1</Identifiant><db>{host}</db><vi></vi>"
        "<Denomination>SOURCE DE TEST</Denomination><DNCertificatOperateur>"
        f"{dn}</DNCertificatOperateur><SupportContact>test@example.org</SupportContact>"
        "<DateMAJ>2026-12-01T00:00:00Z</DateMAJ></Domaine></ListeDomaines>"
        "</ListeBlancheDRIM-M>\n", encoding="utf-8")
    return path


@dataclass
class World:
    a: Gateway
    a_view: IndexView
    front: SourceFront
    b: Gateway
    psc: PscSim
    sim: Sim
    tmp: Path

    def restart_source(self, **env: str) -> None:
        self.a.stop()
        self.a.extra_env.update(env)
        self.a.start()

    def publish(self, name: str, per_series: int = 2) -> tuple[str, str]:
        """A study stored on A and published by its outbox; (study, KOS uniqueId)."""
        study, files = write_study(self.tmp / name, per_series=per_series)
        storescu(files, self.a.dicom_port)
        (row,) = self.a_view.wait_done(study)
        kos = kos_from_dmp(self.sim, study)
        assert str(kos.SOPInstanceUID) == row.kos_uid
        return study, row.kos_uid

    def source_paths(self, study: str) -> dict[str, Path]:
        """SOP Instance UID -> A's stored file."""
        index = InstanceIndex(create_index_engine(self.a.database_url))
        store = FileStore(self.a.data_dir)
        try:
            return {r.sop_instance_uid: store.path_of(r.storage_key)
                    for r in index.all_instances() if r.study_instance_uid == study}
        finally:
            index.engine.dispose()

    def source_files(self, study: str) -> dict[str, str]:
        """SOP Instance UID -> SHA-256 of A's stored file."""
        return {sop: hashlib.sha256(path.read_bytes()).hexdigest()
                for sop, path in self.source_paths(study).items()}


def make_world(tmp_path: Path, gateway_factory, sim: Sim, **b_env: str) -> Iterator[World]:
    pki = sim.pki
    b = gateway_factory()  # ports first: the PSC client's callback names B's URL
    psc = start_psc_sim(f"{CONSO_ID}:{CONSO_SECRET}:{b.url}/auth/callback,{b.url}/auth/logged-out",
                        test_tokens=False)
    a = Gateway(tmp_path / "source-data", f"sqlite:///{tmp_path / 'source.sqlite'}",
                **dmp_env(sim), **gateway_psc_env(psc, "introspection",
                                                  DRIMBOX_PSC_AUDIENCES=f'["{CONSO_ID}"]'))
    a.log_path = tmp_path / "source-gateway.log"
    front = SourceFront(a.http_port, pki.server_cert, pki.server_key, pki.ca_cert)
    a.extra_env["DRIMBOX_PUBLIC_URL"] = front.url
    b.extra_env.update(dmp_env(sim), **{
        "DRIMBOX_ROLES": "consumer", "DRIMBOX_AUTO_PUBLISH": "false",
        "DRIMBOX_DICOMWEB_AUTH": "psc", "DRIMBOX_PSC_ISSUER": psc.issuer,
        "DRIMBOX_PSC_CLIENT_ID": CONSO_ID, "DRIMBOX_PSC_CLIENT_SECRET": CONSO_SECRET,
        "DRIMBOX_WHITELIST_SOURCE": str(_whitelist(tmp_path / "whitelist.xml", "127.0.0.1")),
        "DRIMBOX_WHITELIST_INSECURE_ALLOW_UNSIGNED": "true",
        "DRIMBOX_CONSUMER_SOURCE_CLIENT_CERT": str(pki.client_cert),
        "DRIMBOX_CONSUMER_SOURCE_CLIENT_KEY": str(pki.client_key),
        "DRIMBOX_CONSUMER_SOURCE_CA_BUNDLE": str(pki.ca_cert),
        "DRIMBOX_CONSUMER_SOURCE_TIMEOUT": "30",
        "DRIMBOX_CONSUMER_RETRIEVE_BACKOFF_SECONDS": "0.2",
        **b_env})
    a_view = IndexView(a.database_url)
    try:
        a.start()
        b.start()
        yield World(a, a_view, front, b, psc, sim, tmp_path)
    finally:
        a_view.close()
        if a.proc is not None:
            a.kill()
        front.close()
        psc.stop()


@pytest.fixture
def world(tmp_path: Path, gateway_factory, sim: Sim) -> Iterator[World]:
    yield from make_world(tmp_path, gateway_factory, sim)


class Browser:
    """The clinician's browser on B: the appel contextuel, then the PSC login."""

    def __init__(self, world: World, practitioner: str = PRACTITIONER) -> None:
        self.w = world
        self.client = httpx.Client(timeout=60)
        b = world.b.url
        r = self.client.post(f"{b}/consumer/context", data=GOOD)
        assert r.status_code == 303, r.text
        r = self.client.get(f"{b}/consumer")
        assert r.status_code == 302 and "/auth/login" in r.headers["location"]
        r = self.client.get(r.headers["location"])
        assert r.status_code == 302, r.text
        r = self.client.get(psc_answer(self.client, r.headers["location"], practitioner))
        assert r.status_code == 303, r.text
        if "/auth/activity" in r.headers["location"]:  # two activities: take the first
            page = self.client.get(r.headers["location"]).text
            activity = page.split("name=activity value='", 1)[1].split("'", 1)[0]
            r = self.client.post(f"{b}/auth/activity", data={"activity": activity,
                                                             "next": "/consumer"})
            assert r.status_code == 303
        page = self.client.get(f"{b}/consumer")
        assert page.status_code == 200 and "identity-banner" in page.text, page.text

    def open(self, kos_uid: str) -> httpx.Response:
        return self.client.get(f"{self.w.b.url}/consumer/studies/{kos_uid}")

    def wait(self, kos_uid: str, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            r = self.client.get(f"{self.w.b.url}/consumer/studies/{kos_uid}/status")
            assert r.status_code == 200, r.text
            status = r.json()
            seen.append(status["state"])
            if status["state"] != "retrieving":
                return status
            time.sleep(0.2)
        raise AssertionError(f"retrieval still running: {status}")

    def close(self) -> None:
        self.client.close()


def audit_b(world: World, action: str) -> list[AuditEvent]:
    index = open_index(world.b.database_url)
    try:
        with index.read() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                  .order_by(AuditEvent.id)))
    finally:
        index.engine.dispose()


def retrievals(world: World) -> list[ConsumerRetrieval]:
    index = open_index(world.b.database_url)
    try:
        with index.read() as s:
            return list(s.scalars(select(ConsumerRetrieval).order_by(ConsumerRetrieval.id)))
    finally:
        index.engine.dispose()


def cached_files(world: World, retrieval_id: int) -> dict[str, Path]:
    root = world.b.data_dir / "consumer-cache" / str(retrieval_id)
    return {p.stem: p for p in root.glob("*/*.dcm")}


def test_retrieve_cache_and_serve_to_the_session_only(world: World) -> None:
    """The whole R17 path: page -> progress -> complete; a cut answer retried; the cached
    files byte-identical to A's; the Source saw Bearer + KOS-SOPInstanceUID (its own audit
    names the practitioner and the KOS) over mutual TLS; B's consumer DICOMweb serves the
    study to this session and 404s another session's request, audited."""
    study, kos_uid = world.publish("s1")
    source = world.source_files(study)
    browser = Browser(world)
    other = Browser(world, OTHER)
    try:
        world.front.cut_next(700)  # the first Source connection dies mid-answer
        page = browser.open(kos_uid)
        assert page.status_code == 200, page.text
        assert "identity-banner" in page.text and "data-series=" in page.text
        status = browser.wait(kos_uid)
        assert status["state"] == "complete", status
        assert all(s["state"] == "complete" and s["received"] == s["expected"]
                   for s in status["series"])
        assert status["viewer"] == f"{world.b.url}/consumer/studies/{kos_uid}/view"
        view = browser.client.get(status["viewer"])
        assert view.status_code == 200 and "identity-banner" in view.text
        assert f"/viewer/viewer/consumer?StudyInstanceUIDs={study}" in view.text
        assert other.client.get(status["viewer"]).status_code == 404
        retried = sum(s["attempts"] for s in status["series"]) - len(status["series"])
        assert retried >= 1, status  # the cut answer was asked again

        (row,) = retrievals(world)
        assert (row.state, row.study_instance_uid, row.kos_uid) == ("complete", study, kos_uid)
        files = cached_files(world, row.id)
        assert set(files) == set(source)  # the KOS references every stored instance
        for sop, path in files.items():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == source[sop]
        assert row.bytes == sum(p.stat().st_size for p in files.values())
        assert not (world.b.data_dir / "consumer-cache" / str(row.id) / ".partial").exists()

        # The page again: the same retrieval, nothing asked of the Source.
        connections = world.front.connections
        assert browser.open(kos_uid).status_code == 200
        assert len(retrievals(world)) == 1 and world.front.connections == connections

        # B's consumer DICOMweb: this session sees it, another does not.
        dw = f"{world.b.url}/consumer/dicom-web/studies/{study}"
        series = browser.client.get(f"{dw}/series").json()
        assert {s["0020000E"]["Value"][0] for s in series} == {s["uid"] for s in status["series"]}
        got = set()
        for s in series:
            se = s["0020000E"]["Value"][0]
            r = browser.client.get(f"{dw}/series/{se}")
            assert r.status_code == 200
            got |= sop_uids_of_multipart(r)
            meta = browser.client.get(f"{dw}/series/{se}/metadata")
            assert meta.status_code == 200 and meta.json()
        assert got == set(source)
        ct = next(s["0020000E"]["Value"][0] for s in series
                  if s["00080060"]["Value"][0] == "CT")
        sop = next(iter(sorted(p.stem for p in files.values() if p.parent.name == ct)))
        frame = browser.client.get(f"{dw}/series/{ct}/instances/{sop}/frames/1")
        assert frame.status_code == 200 and "multipart/related" in frame.headers["content-type"]
        assert other.client.get(f"{dw}/series").status_code == 404
        ins = GOOD["Patient.identifier.value"]
        qido = f"{world.b.url}/consumer/dicom-web/studies?PatientID={ins}"
        (listed,) = browser.client.get(qido).json()
        assert listed["0020000D"]["Value"] == [study]
        assert other.client.get(qido).json() == []
        assert other.client.get(f"{dw}/series/{ct}/instances/{sop}/frames/1").status_code == 404
        assert httpx.get(f"{dw}/series", timeout=10).status_code == 401
        # Another session asking for the retrieval's progress: it has none.
        assert other.client.get(f"{world.b.url}/consumer/studies/{kos_uid}/status") \
            .status_code == 404
    finally:
        browser.close()
        other.close()

    # B's audit: the KOS, each WADO request (the cut one denied), the views, the refusal.
    (kos,) = audit_b(world, "consumer_kos")
    assert (kos.outcome, kos.subject, kos.kos_uid, kos.study_instance_uid) == (
        "allowed", PRACTITIONER, kos_uid, study)
    wado = audit_b(world, "consumer_wado")
    allowed = [a for a in wado if a.outcome == "allowed"]
    assert len(allowed) == len(status["series"])
    denied = [a.reason for a in wado if a.outcome == "denied"]
    assert len(denied) == retried and "source_unavailable_network_attempt_1" in denied, denied
    assert {a.series_instance_uid for a in allowed} == {s["uid"] for s in status["series"]}
    dicomweb = audit_b(world, "consumer_dicomweb")
    assert {(a.outcome, a.subject) for a in dicomweb if a.outcome == "allowed"} == {
        ("allowed", PRACTITIONER)}
    assert [(a.subject, a.reason) for a in dicomweb if a.outcome == "denied"][:2] == [
        (OTHER, "not_retrieved_by_session")] * 2
    assert audit_b(world, "consumer_study_view")

    # A's audit: the requests came with the practitioner's PSC token and the KOS header.
    index = open_index(world.a.database_url)
    try:
        with index.read() as s:
            rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "wado")))
    finally:
        index.engine.dispose()
    assert rows and {(r.outcome, r.subject, r.via, r.kos_uid) for r in rows} == {
        ("allowed", PRACTITIONER, "bearer-introspection", kos_uid)}
    # Mutual TLS: without the client certificate the front refuses the handshake.
    refused = world.front.refused_handshakes
    with pytest.raises(httpx.HTTPError):
        httpx.get(world.front.url + "/healthz", timeout=10,
                  verify=ssl.create_default_context(cafile=str(world.sim.pki.ca_cert)))
    deadline = time.monotonic() + 10  # the front's thread counts it after the client's error
    while world.front.refused_handshakes == refused and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.front.refused_handshakes == refused + 1
    # The session's PSC access token is sealed in B's index; no token in B's log.
    index = open_index(world.b.database_url)
    try:
        with index.read() as s:
            sealed = [v for v in s.scalars(select(ViewerSession.psc_access_token)) if v]
    finally:
        index.engine.dispose()
    # Fernet tokens (version byte 0x80), never a JWT's dotted parts.
    assert len(sealed) == 2 and all(v.startswith("gAAAAA") and "." not in v for v in sealed)
    assert "eyJ" not in world.b.log_path.read_text(errors="replace")


def _series_states(status: dict) -> list[tuple[str, str]]:
    return [(s["state"], s["message"]) for s in status["series"]]


def test_untrusted_refused_and_failing_sources(world: World) -> None:
    """R11: a RetrieveURL whose host is not on the whitelist is never called (refused, with the
    reason on the page). R10/R17: a Source refusing the token (401) fails the series at once,
    without retry; a Source cutting every answer is retried, then the series fails with a clear
    message, and nothing of it is cached nor served. The next request, Source healthy again,
    completes."""
    trusted_study, trusted_kos = world.publish("trusted", per_series=1)
    world.restart_source(DRIMBOX_PUBLIC_URL=f"https://localhost:{world.front.port}")
    _untrusted_study, untrusted_kos = world.publish("untrusted", per_series=1)
    browser = Browser(world)
    try:
        before = world.front.connections
        page = browser.open(untrusted_kos)
        assert page.status_code == 200
        status = browser.wait(untrusted_kos)
        assert status["state"] == "failed", status["series"]
        assert all(state == "refused" and "localhost is not on the whitelist" in message
                   for state, message in _series_states(status)), status
        page = browser.open(untrusted_kos)  # failed: asked again, refused again
        assert "localhost is not on the whitelist" in page.text and "refusée" in page.text
        assert world.front.connections == before  # never called

        # A KOS in the DMP that the Source never published (its RetrieveURLs name the Source):
        # the Source refuses (403 kos_unknown, R10), not asked again.
        forged = forged_kos(world)
        browser.open(forged)
        status = browser.wait(forged)
        assert status["state"] == "failed"
        assert all(s["state"] == "failed" and "(403)" in s["message"]
                   for s in status["series"]), status["series"]
        assert len([a for a in audit_b(world, "consumer_wado")
                    if a.reason == "source_403"]) == len(status["series"])

        # The Source does not accept the consumer's PSC client: 401, not retried.
        world.restart_source(DRIMBOX_PUBLIC_URL=world.front.url,
                             DRIMBOX_PSC_AUDIENCES='["another-client"]')
        browser.open(trusted_kos)
        status = browser.wait(trusted_kos)
        assert status["state"] == "failed"
        assert all(s["state"] == "failed" and "(401)" in s["message"]
                   for s in status["series"]), status["series"]
        refusals = [a for a in audit_b(world, "consumer_wado") if a.reason == "source_401"]
        assert len(refusals) == len(status["series"])  # a 401 is not asked again

        # The Source goes down in the middle of every answer: retried, then a clear error.
        world.restart_source(DRIMBOX_PSC_AUDIENCES=f'["{CONSO_ID}"]')
        world.front.cut_next(700, connections=100)
        browser.open(trusted_kos)
        status = browser.wait(trusted_kos)
        world.front.clear_cuts()
        assert status["state"] == "failed", status
        assert all(s["state"] == "failed" and s["attempts"] == 3
                   and "(3 tentatives)" in s["message"] and s["received"] == 0
                   for s in status["series"]), status["series"]
        assert any("interrompu l'envoi" in s["message"] for s in status["series"])
        failed = retrievals(world)[-1]
        assert failed.state == "failed" and cached_files(world, failed.id) == {}
        dw = f"{world.b.url}/consumer/dicom-web/studies/{trusted_study}/series"
        assert browser.client.get(dw).status_code == 404

        # Healthy again: a new retrieval completes.
        browser.open(trusted_kos)
        status = browser.wait(trusted_kos)
        assert status["state"] == "complete", status["series"]
        assert browser.client.get(dw).status_code == 200
    finally:
        browser.close()
    reasons = [a.reason for a in audit_b(world, "consumer_wado") if a.outcome == "denied"]
    assert "source_not_whitelisted" in reasons and "source_401" in reasons
    assert "source_unavailable_network_attempt_3" in reasons


def test_a_source_presenting_another_certificate_never_gets_the_token(
        tmp_path: Path, gateway_factory, sim: Sim) -> None:
    """R11: the whitelist names, with each DRIMbox host, its operator's certificate
    (``DNCertificatOperateur``). A Source on a listed host presenting a certificate of another
    subject is refused at the TLS handshake: the series fails at once with the reason, the
    request (and the practitioner's PSC token) never reaches the Source, and it is audited."""
    listed = _whitelist(tmp_path / "other-operator.xml", "127.0.0.1",
                        dn="CN=db3.test.mesimagesmedicales.fr,OU=318751275100020,O=ANS,C=FR")
    with contextmanager(make_world)(tmp_path, gateway_factory, sim,
                                    DRIMBOX_WHITELIST_SOURCE=str(listed)) as world:
        _study, kos = world.publish("impostor", per_series=2)
        before = world.front.connections
        browser = Browser(world)
        try:
            assert browser.open(kos).status_code == 200
            status = browser.wait(kos)
        finally:
            browser.close()
        assert status["state"] == "failed", status
        assert all(s["state"] == "failed" and s["attempts"] == 1 and s["received"] == 0
                   and "CN=localhost" in s["message"]
                   and "liste blanche" in s["message"] for s in status["series"]), status
        assert world.front.connections > before  # the handshake took place, nothing after it
        a_index = open_index(world.a.database_url)
        try:
            with a_index.read() as s:
                assert s.scalars(select(AuditEvent).where(AuditEvent.kos_uid == kos)).all() \
                    == []  # A never saw a request for this KOS
        finally:
            a_index.engine.dispose()
        denied = [a.reason for a in audit_b(world, "consumer_wado") if a.outcome == "denied"]
        assert denied == ["source_certificate_not_whitelisted"] * len(status["series"])


def test_cache_full_evicts_the_least_recently_used_keeps_the_open_one(
        tmp_path: Path, gateway_factory, sim: Sim) -> None:
    """The cache's bound: with room for two studies and a half, a third retrieval evicts the
    least recently used study that is not in use (X2), keeps the one the viewer is reading
    (X1, although older); when every study is in use, the series fails with *cache local
    plein* and nothing of it stays. ``drimbox consumer cache purge`` empties the cache."""
    for w in make_world(tmp_path, gateway_factory, sim):
        studies = [w.publish(f"x{i}", per_series=1) for i in range(1, 4)]
        size = max(sum(Path(p).stat().st_size for p in _stored_paths(w, study))
                   for study, _ in studies)
        w.b.stop()
        w.b.extra_env["DRIMBOX_CONSUMER_CACHE_MAX_BYTES"] = str(2 * size + size // 2)
        w.b.start()
        browser = Browser(w)
        try:
            (x1, k1), (x2, k2), (x3, k3) = studies
            browser.open(k1)
            assert browser.wait(k1)["state"] == "complete"
            dw = f"{w.b.url}/consumer/dicom-web/studies"
            assert browser.client.get(f"{dw}/{x1}/series").status_code == 200  # in use
            browser.open(k2)
            assert browser.wait(k2)["state"] == "complete"
            browser.open(k3)
            assert browser.wait(k3)["state"] == "complete"
            kept = {r.kos_uid: r for r in retrievals(w)}
            assert set(kept) == {k1, k3}  # X2 evicted, X1 (in use) kept
            assert browser.client.get(f"{dw}/{x1}/series").status_code == 200
            assert browser.client.get(f"{dw}/{x2}/series").status_code == 404
            assert sorted(p.name for p in (w.b.data_dir / "consumer-cache").iterdir()) == \
                sorted(str(r.id) for r in kept.values())

            # Both in use now: X2 again finds no room.
            assert browser.client.get(f"{dw}/{x3}/series").status_code == 200
            browser.open(k2)
            status = browser.wait(k2)
            assert status["state"] in ("failed", "partial"), status
            assert any("cache local plein" in s["message"] for s in status["series"])
            assert {r.kos_uid for r in retrievals(w) if r.state == "complete"} == {k1, k3}
            full = [r for r in retrievals(w) if r.kos_uid == k2][-1]
            assert full.bytes == sum(p.stat().st_size for p in cached_files(w, full.id).values())
        finally:
            browser.close()
        assert any(a.reason == "cache_full" for a in audit_b(w, "consumer_wado"))

        proc = cli(w.b, "consumer", "cache", "purge")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("purged 3 retrieved studies")
        assert retrievals(w) == [] and not any((w.b.data_dir / "consumer-cache").iterdir())


def _stored_paths(world: World, study: str) -> list[Path]:
    return list(world.source_paths(study).values())


def forged_kos(world: World) -> str:
    """A KOS of the context's patient published straight to the DMP (ITI-41), naming the
    Source's URL, for a study the Source never published; its uniqueId."""
    import datetime as dt

    from dmp_support import CONTENT_TYPE, SOURCE_ID, new_oid, vihf_for
    from test_kos import CREATED, PUBLISHER, facts
    from test_xds_metadata import CTX

    from gateway.manifest.kos import build_kos
    from gateway.manifest.xds_metadata import kos_document_entry, submission_set

    f = facts(series_count=1, per_series=1)
    uid = new_oid()
    kos = build_kos(f, replace(PUBLISHER, public_url=world.front.url), sop_instance_uid=uid,
                    series_instance_uid=new_oid(), created=CREATED)
    buf = io.BytesIO()
    kos.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    entry = kos_document_entry(f, data, uid, CREATED, CTX)
    ss = submission_set(entry, new_oid(), SOURCE_ID, dt.datetime.now(dt.UTC), CONTENT_TYPE)
    with world.sim.client() as dmp:
        dmp.provide_and_register(entry, ss, data, vihf_for(entry.patient_id), new_oid())
    return uid
