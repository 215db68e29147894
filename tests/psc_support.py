"""A real ``drimbox psc-sim`` process and a gateway wired to it (``dicomweb_auth = psc``), plus
a way to seed studies over real C-STORE. Used by the viewer-login and share-link tests."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import launcher
from dicom_factory import make_instance
from dimse_client import associate, store_dataset
from dmp_pki import Pki
from peers import free_port
from pydicom.uid import generate_uid

REALM = "/auth/realms/esante-wallet"
CLIENT_ID, CLIENT_SECRET = "drimbox", "s3cret-for-tests"
#: 899999000001 (two activities) is centre staff; 899999000002 (one activity) is not.
STAFF = "899999000001"
OUTSIDER = "899999000002"


class PscSim:
    """``drimbox psc-sim`` on a free port, accepting the gateway at ``gateway_url``; over https
    with ``pki`` (its server certificate, and its CA for the client certificates of
    ``tls_client_auth``)."""

    def __init__(self, log_dir: Path, userinfo: str = "json", acr: str = "eidas1",
                 pki: Pki | None = None) -> None:
        self.port = free_port()
        self.pki = pki
        self.base = f"{'https' if pki else 'http'}://127.0.0.1:{self.port}"
        self.issuer = self.base + REALM
        self.userinfo = userinfo
        self.acr = acr
        self.log_path = log_dir / f"psc-sim-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an https client must trust to reach the simulator."""
        return ssl.create_default_context(cafile=str(self.pki.ca_cert)) if self.pki else True

    @staticmethod
    def redirect_uris(gateway_url: str) -> str:
        return f"{gateway_url}/auth/callback,{gateway_url}/auth/logged-out"

    def start(self, gateway_url: str, *, clients: list[str] | None = None,
              extra: tuple[str, ...] = ()) -> PscSim:
        """``clients``: the ``--client...`` arguments (default: our client with its secret)."""
        if clients is None:
            clients = ["--client", f"{CLIENT_ID}:{CLIENT_SECRET}:{self.redirect_uris(gateway_url)}"]
        tls = ([] if self.pki is None else
               ["--tls-cert", str(self.pki.server_cert), "--tls-key", str(self.pki.server_key),
                "--client-ca", str(self.pki.ca_cert)])
        with open(self.log_path, "ab") as log:
            self.proc = launcher.popen(
                ["psc-sim", "--port", str(self.port),
                 *clients, "--userinfo", self.userinfo, "--acr", self.acr, *tls, *extra],
                env={k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")},
                stdout=log, stderr=subprocess.STDOUT,
            )
        with httpx.Client(timeout=1, verify=self.verify) as http:  # one client for the poll
            for _ in range(150):
                try:
                    http.get(f"{self.issuer}/.well-known/wallet-openid-configuration")
                    return self
                except httpx.HTTPError:
                    if self.proc.poll() is not None:
                        break
                    time.sleep(0.1)
        raise RuntimeError("psc-sim did not start: " + self.log_path.read_text(errors="replace"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def psc_env(sim: PscSim, **extra: str) -> dict[str, str]:
    return {
        "DRIMBOX_DICOMWEB_AUTH": "psc",
        "DRIMBOX_PSC_ISSUER": sim.issuer,
        "DRIMBOX_PSC_CLIENT_ID": CLIENT_ID,
        "DRIMBOX_PSC_CLIENT_SECRET": CLIENT_SECRET,
        "DRIMBOX_STAFF_ROLES": json.dumps({STAFF: ["viewer", "admin"]}),
        "DRIMBOX_DICOM_WORKERS": "0",
        "DRIMBOX_INSTITUTION_NAME": "CABINET DE RADIOLOGIE TEST",
        **extra,
    }


def seed_study(dicom_port: int, *, birth_date: str, patient_id: str,
               description: str = "IRM GENOU DROIT", instances: int = 2,
               rows: int = 64) -> str:
    """Store a small study over C-STORE; return its Study Instance UID."""
    study, series = generate_uid(), generate_uid()
    datasets = []
    for n in range(1, instances + 1):
        ds = make_instance(study_uid=study, series_uid=series, instance_number=n,
                           patient_id=patient_id, rows=rows, cols=rows, seed=n)
        ds.PatientBirthDate = birth_date
        ds.StudyDescription = description
        datasets.append(ds)
    assoc = associate(dicom_port, [str(datasets[0].SOPClassUID)], calling="MODALITY")
    try:
        for ds in datasets:
            assert store_dataset(assoc, ds).Status == 0
    finally:
        assoc.release()
    return study
