"""Bearer token checks for API callers (R10): the negative matrix against a
real PSC simulator process (JWKS over HTTP, introspection over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import launcher
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from peers import free_port
from test_psc_simulator import REDIRECT, login

from adapters.psc.client_auth import PscClientAuth
from adapters.psc.simulator import load_or_create_key
from adapters.psc.tokens import (
    IntrospectionVerifier,
    JwksCache,
    JwtVerifier,
    TokenRejected,
)

REALM = "/auth/realms/esante-wallet"


@pytest.fixture(scope="module")
def psc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    key_file = tmp_path_factory.mktemp("psc") / "key.pem"
    port = free_port()
    proc = launcher.popen(
        ["psc-sim", "--port", str(port),
         "--client", f"rp:rp-secret:{REDIRECT}", "--key-file", str(key_file)],
        env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=1) as http:  # one client (and TLS context) for the poll
        for _ in range(100):
            try:
                conf = http.get(f"{base}{REALM}/.well-known/wallet-openid-configuration").json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            proc.kill()
            raise RuntimeError("psc-sim did not start")
    key = load_or_create_key(Path(key_file))
    yield {"conf": conf, "key": key, "issuer": conf["issuer"]}
    proc.terminate()
    proc.wait(10)


def claims(issuer: str, **over) -> dict:
    now = int(time.time())
    base = {"iss": issuer, "aud": "drimbox-source", "azp": "conso", "sub": "f:x",
            "SubjectNameID": "899999000001", "acr": "eidas1", "iat": now, "exp": now + 300,
            "scope": "openid scope_all"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: RSAKey, body: dict, alg: str = "RS256", kid: str | None = None) -> str:
    return jwt.encode({"alg": alg, "kid": kid or key.kid}, body, key)


def verifier(psc: dict) -> JwtVerifier:
    return JwtVerifier(JwksCache(psc["conf"]["jwks_uri"], min_refresh=0), psc["issuer"],
                       "drimbox-source")


def test_valid_token(psc: dict) -> None:
    ident = verifier(psc).verify(sign(psc["key"], claims(psc["issuer"])))
    assert ident.subject_name_id == "899999000001" and ident.acr == "eidas1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(body: dict) -> str:
    return f"{_b64(json.dumps({'alg': 'none'}).encode())}.{_b64(json.dumps(body).encode())}."


def hs256_with_public_key(psc: dict, body: dict) -> str:
    """The classic confusion attack: HMAC keyed with the provider's public key PEM."""
    head = _b64(json.dumps({"alg": "HS256", "kid": psc["key"].kid}).encode())
    payload = _b64(json.dumps(body).encode())
    mac = hmac.new(psc["key"].as_pem(private=False), f"{head}.{payload}".encode(), hashlib.sha256)
    return f"{head}.{payload}.{_b64(mac.digest())}"


def tampered(psc: dict) -> str:
    token = sign(psc["key"], claims(psc["issuer"]))
    head, payload, sig = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["SubjectNameID"] = "899999000002"
    return f"{head}.{_b64(json.dumps(body).encode())}.{sig}"


CASES = {
    "expired": lambda p: sign(p["key"], claims(p["issuer"], exp=int(time.time()) - 3600)),
    "not_yet_valid": lambda p: sign(p["key"], claims(p["issuer"], nbf=int(time.time()) + 3600)),
    "wrong_issuer": lambda p: sign(p["key"], claims("https://evil.example/realm")),
    "wrong_audience": lambda p: sign(p["key"], claims(p["issuer"], aud="someone-else", azp="x")),
    "alg_none": lambda p: unsigned(claims(p["issuer"])),
    "hs256_public_key": lambda p: hs256_with_public_key(p, claims(p["issuer"])),
    "unknown_kid": lambda p: sign(RSAKey.generate_key(2048), claims(p["issuer"]), kid="not-at-psc"),
    "tampered": tampered,
    "acr_too_low": lambda p: sign(p["key"], claims(p["issuer"], acr=None)),
    "garbage": lambda p: "not-a-token",
}
EXPECTED = {
    "expired": "expired", "not_yet_valid": "not_yet_valid", "wrong_issuer": "wrong_issuer",
    "wrong_audience": "wrong_audience", "alg_none": "alg_not_allowed",
    "hs256_public_key": "alg_not_allowed", "unknown_kid": "unknown_kid",
    "tampered": "bad_signature", "acr_too_low": "acr_too_low", "garbage": "malformed",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_negative_matrix(psc: dict, case: str) -> None:
    with pytest.raises(TokenRejected) as err:
        verifier(psc).verify(CASES[case](psc))
    assert err.value.reason == EXPECTED[case]


def test_introspection_active_then_inactive_after_logout(psc: dict) -> None:
    conf = psc["conf"]
    code, verifier_, _ = login(conf)
    tokens = httpx.post(conf["token_endpoint"], auth=("rp", "rp-secret"), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier_}).json()
    intro = IntrospectionVerifier(conf["introspection_endpoint"],
                                  PscClientAuth("rp", client_secret="rp-secret"),
                                  conf["token_endpoint"], cache_seconds=0)
    assert intro.verify(tokens["access_token"]).subject_name_id == "899999000001"
    httpx.get(conf["end_session_endpoint"], params={"id_token_hint": tokens["id_token"]})
    with pytest.raises(TokenRejected) as err:
        intro.verify(tokens["access_token"])
    assert err.value.reason == "inactive"
    with pytest.raises(TokenRejected) as err:
        intro.verify("random-opaque-token")
    assert err.value.reason == "inactive"
