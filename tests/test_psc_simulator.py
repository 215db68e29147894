"""The PSC simulator is a conformant OpenID provider with PSC's quirks:
discovery path, code flow with PKCE, RS256 tokens, userinfo JSON/JWT, introspection, logout.
Runs as a real process; a real HTTP client plays the relying party."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from peers import free_port

REDIRECT = "http://127.0.0.1:9/callback"


def start_sim(userinfo: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "psc-sim", "--port", str(port),
         "--client", f"rp:rp-secret:{REDIRECT}", "--userinfo", userinfo],
        env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=1) as http:  # one client (and TLS context) for the poll
        for _ in range(100):
            try:
                http.get(f"{base}/auth/realms/esante-wallet/.well-known/wallet-openid-configuration")
                return proc, base
            except httpx.HTTPError:
                time.sleep(0.1)
    proc.kill()
    raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "psc-sim did not start")


@pytest.fixture(scope="module", params=["json", "jwt"])
def sim(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    proc, base = start_sim(request.param)
    yield base, request.param
    proc.terminate()
    proc.wait(10)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def login(conf: dict, practitioner: str = "899999000001", **extra: str) -> tuple[str, str, str]:
    verifier, challenge = pkce()
    state, nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
    params = {"response_type": "code", "client_id": "rp", "redirect_uri": REDIRECT,
              "scope": "openid scope_all", "acr_values": "eidas1", "state": state, "nonce": nonce,
              "code_challenge": challenge, "code_challenge_method": "S256",
              "login_hint": practitioner, **extra}
    r = httpx.get(conf["authorization_endpoint"], params=params)
    assert r.status_code == 302, r.text
    q = parse_qs(urlparse(r.headers["location"]).query)
    assert q["state"] == [state]
    return q["code"][0], verifier, nonce


def test_code_flow_tokens_userinfo_introspection_logout(sim: tuple[str, str]) -> None:
    base, fmt = sim
    conf = httpx.get(f"{base}/auth/realms/esante-wallet/.well-known/wallet-openid-configuration").json()
    assert conf["issuer"] == f"{base}/auth/realms/esante-wallet"
    keys = KeySet.import_key_set(httpx.get(conf["jwks_uri"]).json())
    code, verifier, nonce = login(conf)
    tokens = httpx.post(conf["token_endpoint"], auth=("rp", "rp-secret"), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier}).json()
    id_claims = jwt.decode(tokens["id_token"], keys, algorithms=["RS256"]).claims
    assert id_claims["nonce"] == nonce and id_claims["acr"] == "eidas1"
    assert id_claims["aud"] == "rp" and id_claims["iss"] == conf["issuer"]
    access = jwt.decode(tokens["access_token"], keys, algorithms=["RS256"]).claims
    assert access["SubjectNameID"] == "899999000001" and access["nonce"] == nonce

    r = httpx.get(conf["userinfo_endpoint"], headers={"Authorization": f"Bearer {tokens['access_token']}"})
    if fmt == "jwt":
        assert r.headers["content-type"].startswith("application/jwt")
        info = jwt.decode(r.text, keys, algorithms=["RS256"]).claims
    else:
        assert r.headers["content-type"].startswith("application/json")
        info = r.json()
    assert info["SubjectNameID"] == "899999000001"
    activities = info["SubjectRefPro"]["exercices"][0]["activities"]
    assert len(activities) == 2  # the practitioner has a choice of activity

    intro = httpx.post(conf["introspection_endpoint"], auth=("rp", "rp-secret"),
                       data={"token": tokens["access_token"]}).json()
    assert intro["active"] is True and intro["SubjectNameID"] == "899999000001"
    bad_client = httpx.post(conf["introspection_endpoint"], auth=("rp", "wrong"),
                            data={"token": tokens["access_token"]})
    assert bad_client.status_code == 401

    out = httpx.get(conf["end_session_endpoint"], params={
        "id_token_hint": tokens["id_token"], "post_logout_redirect_uri": REDIRECT})
    assert out.status_code == 302
    intro = httpx.post(conf["introspection_endpoint"], auth=("rp", "rp-secret"),
                       data={"token": tokens["access_token"]}).json()
    assert intro == {"active": False}


def test_code_is_single_use_and_pkce_checked(sim: tuple[str, str]) -> None:
    base, _ = sim
    conf = httpx.get(f"{base}/auth/realms/esante-wallet/.well-known/openid-configuration").json()
    code, verifier, _ = login(conf)
    bad = httpx.post(conf["token_endpoint"], auth=("rp", "rp-secret"), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier + "x"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    code, verifier, _ = login(conf)
    ok = httpx.post(conf["token_endpoint"], auth=("rp", "rp-secret"), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier})
    assert ok.status_code == 200
    again = httpx.post(conf["token_endpoint"], auth=("rp", "rp-secret"), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier})
    assert again.status_code == 400


def test_unregistered_redirect_is_never_followed(sim: tuple[str, str]) -> None:
    base, _ = sim
    r = httpx.get(f"{base}/auth", params={"response_type": "code", "client_id": "rp",
                                          "redirect_uri": "http://evil.example/cb", "scope": "openid"})
    assert r.status_code == 400 and "location" not in r.headers


def test_login_page_lists_practitioners(sim: tuple[str, str]) -> None:
    base, _ = sim
    r = httpx.get(f"{base}/auth", params={"response_type": "code", "client_id": "rp",
                                          "redirect_uri": REDIRECT, "scope": "openid", "state": "s"})
    assert r.status_code == 200 and 'id="login-899999000001"' in r.text
    r = httpx.post(f"{base}/auth/login", data={"response_type": "code", "client_id": "rp",
                                               "redirect_uri": REDIRECT, "scope": "openid",
                                               "state": "s", "practitioner": "899999000002"})
    assert r.status_code == 302 and "code=" in r.headers["location"]


def test_test_tokens_only_when_asked() -> None:
    """``POST /test/tokens`` is closed unless ``--test-tokens`` opens it; when
    open it issues the shapes a negative matrix needs, and a token marked not introspectable
    introspects as inactive."""
    from fastapi.testclient import TestClient

    from adapters.psc.simulator import PscSimulator, SimClient

    clients = [SimClient("rp", "rp-secret", [REDIRECT])]
    closed = TestClient(PscSimulator("http://127.0.0.1:1", clients).app)
    assert closed.post("/test/tokens", json={}).status_code == 404
    sim = PscSimulator("http://127.0.0.1:1", clients, test_tokens=True)
    app = TestClient(sim.app)

    def issue(**spec):
        r = app.post("/test/tokens", json={"client_id": "rp", **spec})
        assert r.status_code == 200
        return r.json()["access_token"]

    def claims(token: str) -> dict:
        return jwt.decode(token, sim.key_set, algorithms=["RS256"]).claims

    now = time.time()
    assert claims(issue(exp_in=-60))["exp"] < now
    assert claims(issue(nbf_in=600))["nbf"] > now
    assert claims(issue(iss="https://evil.example"))["iss"] == "https://evil.example"
    assert claims(issue(aud="other"))["aud"] == "other"
    assert "acr" not in claims(issue(acr=None))
    unknown = issue(kid="unknown")
    header = json.loads(base64.urlsafe_b64decode(unknown.split(".")[0] + "=="))
    assert header["kid"] not in {k.kid for k in sim.key_set.keys}
    introspect = "/auth/realms/esante-wallet/protocol/openid-connect/token/introspect"
    for introspectable, active in ((True, True), (False, False)):
        token = issue(introspectable=introspectable)
        r = app.post(introspect, data={"token": token}, auth=("rp", "rp-secret"))
        assert r.json()["active"] is active
    assert app.post("/test/tokens", json={"subject": "nobody"}).status_code == 400
