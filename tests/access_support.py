"""Helpers of the access-control tests: a real PSC simulator process that issues
test tokens, and the recording of a published manifest.

:func:`publish_manifest` records a manifest by hand for the policy's negative matrix
(tests/test_dicomweb_access.py), where a DMP round trip per study would only add time: it
builds the real KOS of the stored study (``gateway.manifest.manifests.build_study_manifest``) and
records it as published in the gateway's own database (``record_manifest`` +
``mark_published``), which is what the outbox does once the DMP acknowledges the KOS. The same
policy against a real publication (outbox → dmp-sim → ITI-18/43 → WADO-RS) is
tests/test_consumer_flow.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import launcher
from joserfc.jwk import RSAKey
from peers import free_port
from pydicom.dataset import Dataset

from gateway.config import Settings
from gateway.index.engine import create_index_engine
from gateway.index.manifests import mark_published, record_manifest
from gateway.index.store import InstanceIndex
from gateway.manifest.manifests import build_study_manifest

REALM = "/auth/realms/esante-wallet"
CLIENT_ID = "drimbox-source"
CLIENT_SECRET = "source-secret"


@dataclass
class PscSim:
    proc: subprocess.Popen[bytes]
    base: str

    @property
    def issuer(self) -> str:
        return self.base + REALM

    def token(self, **spec: object) -> str:
        """An access token from ``POST /test/tokens`` (see ``PscSimulator.issue_test_token``)."""
        spec.setdefault("client_id", CLIENT_ID)
        r = httpx.post(f"{self.base}/test/tokens", json=spec, timeout=10)
        r.raise_for_status()
        return r.json()["access_token"]

    def public_key_pem(self) -> bytes:
        conf = httpx.get(f"{self.issuer}/.well-known/wallet-openid-configuration").json()
        jwks = httpx.get(conf["jwks_uri"]).json()
        return RSAKey.import_key(jwks["keys"][0]).as_pem(private=False)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_psc_sim(*more_clients: str, test_tokens: bool = True) -> PscSim:
    """``drimbox psc-sim`` on a free port knowing our client and ``more_clients``
    (``ID:SECRET:REDIRECT_URI``); ``/test/tokens`` open unless ``test_tokens`` is False."""
    port = free_port()
    clients = [f"{CLIENT_ID}:{CLIENT_SECRET}:http://127.0.0.1:9/callback", *more_clients]
    proc = launcher.popen(
        ["psc-sim", "--port", str(port),
         *(["--test-tokens"] if test_tokens else []),
         *(arg for c in clients for arg in ("--client", c))],
        env={k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=1) as http:  # one client (and TLS context) for the poll
        for _ in range(150):
            try:
                http.get(f"{base}{REALM}/.well-known/wallet-openid-configuration")
                return PscSim(proc, base)
            except httpx.HTTPError:
                time.sleep(0.1)
    proc.kill()
    raise RuntimeError("psc-sim did not start")


def gateway_psc_env(sim: PscSim, mode: str = "jwt", **more: str) -> dict[str, str]:
    """``DRIMBOX_*`` settings of a gateway checking tokens against ``sim``."""
    return {
        "DRIMBOX_DICOMWEB_AUTH": "psc",
        "DRIMBOX_PSC_ISSUER": sim.issuer,
        "DRIMBOX_PSC_CLIENT_ID": CLIENT_ID,
        "DRIMBOX_PSC_CLIENT_SECRET": CLIENT_SECRET,
        "DRIMBOX_PSC_TOKEN_CHECK": mode,
        "DRIMBOX_PSC_INTROSPECTION_CACHE_SECONDS": "0",
        **more,
    }


def publish_manifest(database_url: str, data_dir: Path, study_uid: str,
                     public_url: str) -> Dataset:
    """Build the stored study's KOS and record it as published (the outbox's stand-in)."""
    settings = Settings(data_dir=data_dir, database_url=database_url, dicomweb_auth="none",
                        repository_oid="1.2.250.1.999.1.1", public_url=public_url,
                        institution_name="CENTRE IMAGERIE TEST", structure_id="300017985")
    engine = create_index_engine(settings.effective_database_url)
    try:
        index = InstanceIndex(engine)
        built = build_study_manifest(index, settings, study_uid)
        kos_uid = str(built.kos.SOPInstanceUID)
        with index.write() as s:
            record_manifest(s, kos_uid, built.facts)
            mark_published(s, kos_uid)
        return built.kos
    finally:
        engine.dispose()


# -- forged tokens (what no provider would issue) --------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(token: str) -> dict:
    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def unsigned(token: str) -> str:
    """The claims of a valid token under ``alg: none``."""
    return f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}." \
           f"{_b64(json.dumps(_payload(token)).encode())}."


def hs256_with_public_key(token: str, public_pem: bytes) -> str:
    """The key-confusion attack: the claims HMAC-signed with the provider's public key."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_payload(token)).encode())
    mac = hmac.new(public_pem, f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return f"{head}.{payload}.{_b64(mac)}"


def tampered(token: str) -> str:
    """A valid token whose claims were changed after signing (another practitioner)."""
    head, _, sig = token.split(".")
    claims = _payload(token)
    claims["SubjectNameID"] = "899999000002"
    return f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
