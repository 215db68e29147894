"""Shared pieces of the DMP tests: the test PKI, a real ``drimbox dmp-sim`` process over mutual
TLS on a free loopback port, DmpClient factories, and real KOS publications (R4-R8)."""

from __future__ import annotations

import datetime as dt
import io
import os
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import launcher
import pytest
from dmp_pki import Pki, make_pki
from peers import free_port
from test_kos import CREATED, PUBLISHER, facts
from test_xds_metadata import CTX

from adapters.dmp.client import DmpClient, DmpEndpoints, tls_context
from adapters.dmp.vihf import Role, VihfContext
from gateway.manifest.kos import build_kos
from gateway.manifest.xds_metadata import (
    Code,
    DocumentEntry,
    SubmissionSet,
    kos_document_entry,
    submission_set,
)

REPO = Path(__file__).resolve().parent.parent
CONTENT_TYPE = Code("04", "1.2.250.1.213.2.2", "Hospitalisation de jour")
SOURCE_ID = "1.2.250.1.999.1.1"


def new_oid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def vihf_for(patient_id: str, **kw) -> VihfContext:  # noqa: ANN003
    base = VihfContext(
        subject_id="899700367909", subject_name="Alain PAT-SIX", structure_id="499700367909006",
        activity_sector="SA07", roles=(Role("10", "1.2.250.1.71.1.2.7", "Medecin"),
                                       Role("SM26", "1.2.250.1.71.4.2.5", "Qualifie en Medecine Generale")),
        patient_id=patient_id, lps_id="LPS-TEST", lps_name="DRIMbox", lps_version="0.1.0",
        lps_homologation_id="HOMOL-TEST")
    return replace(base, **kw)


@dataclass
class Publication:
    entry: DocumentEntry
    ss: SubmissionSet
    kos: bytes
    accession: str
    signature_uid: str

    @property
    def vihf(self) -> VihfContext:
        return vihf_for(self.entry.patient_id)


def publication(accession: str | None = None, modality_facts=None) -> Publication:  # noqa: ANN001
    """A real KOS (gateway.manifest.kos.build_kos) with fresh UIDs and its XDS metadata (R3, R4)."""
    accession = accession or f"ACN{uuid.uuid4().hex[:10].upper()}"
    f = replace(modality_facts or facts(series_count=2, per_series=2), accession_number=accession)
    uid = new_oid()
    kos = build_kos(f, PUBLISHER, sop_instance_uid=uid, series_instance_uid=new_oid(),
                    created=CREATED)
    buf = io.BytesIO()
    kos.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    entry = kos_document_entry(f, data, uid, CREATED, CTX)
    ss = submission_set(entry, new_oid(), SOURCE_ID, dt.datetime.now(dt.UTC), CONTENT_TYPE)
    return Publication(entry, ss, data, accession, new_oid())


@dataclass
class Sim:
    base: str
    pki: Pki
    proc: subprocess.Popen
    log: Path

    def client(self, *, client_cert: bool = True, timeout: float = 15.0,
               sign_cert: Path | None = None, sign_key: Path | None = None) -> DmpClient:
        return DmpClient(
            DmpEndpoints(f"{self.base}/registry", f"{self.base}/repository"),
            ca_bundle=self.pki.ca_cert,
            client_cert=self.pki.client_cert if client_cert else None,
            client_key=self.pki.client_key if client_cert else None,
            sign_cert=sign_cert or self.pki.sign_cert, sign_key=sign_key or self.pki.sign_key,
            timeout=timeout)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=10,
                            verify=tls_context(self.pki.ca_cert, self.pki.client_cert,
                                               self.pki.client_key))

    def inject(self, mode: str, count: int = 1, seconds: float = 5.0) -> None:
        with self.admin() as c:
            r = c.post("/admin/faults", json={"mode": mode, "count": count, "seconds": seconds})
            assert r.status_code == 204, r.text

    def status(self) -> dict:
        with self.admin() as c:
            return c.get("/admin/status").json()


def start_sim(tmp: Path, pki: Pki) -> Sim:
    port = free_port()
    log = tmp / "dmp-sim.log"
    cmd = ["dmp-sim", "--port", str(port),
           "--db", str(tmp / "dmp-sim.sqlite"), "--tls-cert", str(pki.server_cert),
           "--tls-key", str(pki.server_key), "--client-ca", str(pki.ca_cert)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("wb") as out:
        proc = launcher.popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    sim = Sim(f"https://127.0.0.1:{port}", pki, proc, log)
    ctx = tls_context(pki.ca_cert, pki.client_cert, pki.client_key)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dmp-sim exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                return sim
        except (OSError, ssl.SSLError):
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"dmp-sim did not start: {log.read_text()}")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory, pki: Pki):  # noqa: ANN201
    s = start_sim(tmp_path_factory.mktemp("dmp-sim"), pki)
    yield s
    s.proc.terminate()
    try:
        s.proc.wait(10)
    except subprocess.TimeoutExpired:
        s.proc.kill()


@pytest.fixture()
def client(sim: Sim):  # noqa: ANN201
    with sim.client() as c:
        yield c
