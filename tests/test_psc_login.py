"""The viewer's PSC relying party (:mod:`adapters.psc.login`, R15) against a scripted provider
that misbehaves in ways the simulator never does: a forged or unsigned ID token, a userinfo
JWT for another client, a userinfo about someone else, a discovery document of another
issuer. The happy path and PSC's quirks are tested end to end in tests/test_viewer_login.py
(real ``drimbox psc-sim``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from adapters.psc.client_auth import PscClientAuth
from adapters.psc.login import LoginFailed, PscRelyingParty, activities_of
from adapters.psc.practitioners import userinfo_claims

ISSUER = "https://psc.test/auth/realms/esante-wallet"
CLIENT = "drimbox"
SUBJECT = "899999000001"


class ScriptedPsc:
    """Discovery, JWKS, token and userinfo endpoints whose answers a test can spoil."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
        self.issuer = ISSUER
        self.id_claims: dict[str, Any] = {}
        self.id_token_override: str | None = None
        self.userinfo: dict[str, Any] = userinfo_claims(SUBJECT)
        self.userinfo_jwt = False
        self.userinfo_aud = CLIENT
        self.challenge = ""
        self.verifier_seen = ""

    def sign(self, claims: dict[str, Any], key: RSAKey | None = None) -> str:
        key = key or self.key
        return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/.well-known/wallet-openid-configuration"):
            base = "https://psc.test/auth/realms/esante-wallet/protocol/openid-connect"
            return httpx.Response(200, json={
                "issuer": self.issuer, "authorization_endpoint": "https://psc.test/auth",
                "token_endpoint": f"{base}/token", "userinfo_endpoint": f"{base}/userinfo",
                "jwks_uri": f"{base}/certs"})
        if path.endswith("/certs"):
            return httpx.Response(200, json=KeySet([self.key]).as_dict(private=False))
        if path.endswith("/token"):
            form = parse_qs(request.content.decode())
            self.verifier_seen = form["code_verifier"][0]
            now = int(time.time())
            sub = userinfo_claims(SUBJECT)["sub"]
            claims = {"iss": ISSUER, "aud": CLIENT, "sub": sub, "iat": now,
                      "exp": now + 300, "acr": "eidas1", "nonce": "n0nce",
                      "preferred_username": SUBJECT, **self.id_claims}
            id_token = self.id_token_override or self.sign(claims)
            return httpx.Response(200, json={"access_token": "opaque-access", "token_type":
                                             "Bearer", "expires_in": 300, "id_token": id_token})
        if path.endswith("/userinfo"):
            assert request.headers["authorization"] == "Bearer opaque-access"
            if self.userinfo_jwt:
                body = {**self.userinfo, "iss": ISSUER, "aud": self.userinfo_aud}
                return httpx.Response(200, text=self.sign(body),
                                      headers={"content-type": "application/jwt"})
            return httpx.Response(200, json=self.userinfo)
        return httpx.Response(404)


@pytest.fixture
def psc() -> ScriptedPsc:
    return ScriptedPsc()


def rp(psc: ScriptedPsc) -> PscRelyingParty:
    return PscRelyingParty(ISSUER, "/.well-known/wallet-openid-configuration",
                           PscClientAuth(CLIENT, client_secret="secret"),
                           "https://drimbox.test/auth/callback",
                           transport=httpx.MockTransport(psc.handler))


def reason(psc: ScriptedPsc) -> str:
    with pytest.raises(LoginFailed) as err:
        rp(psc).complete("code", "v" * 64, "n0nce")
    return err.value.reason


def test_good_answers_give_the_practitioner_and_pkce_is_s256(psc: ScriptedPsc) -> None:
    party = rp(psc)
    state, nonce, verifier = party.new_secrets()
    q = parse_qs(urlsplit(party.authorization_url(state, nonce, verifier)).query)
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert q["code_challenge"] == [digest.decode()] and q["code_challenge_method"] == ["S256"]
    assert q["nonce"] == [nonce] and q["state"] == [state] and q["acr_values"] == ["eidas1"]
    for userinfo_jwt in (False, True):
        psc.userinfo_jwt = userinfo_jwt
        login = party.complete("code", verifier, "n0nce")
        assert psc.verifier_seen == verifier
        assert login.subject_name_id == SUBJECT
        assert [a.id for a in login.activities] == ["R499999000000101", "R499999000000202"]


def test_id_token_checks(psc: ScriptedPsc) -> None:
    psc.id_claims = {"nonce": "other"}
    assert reason(psc) == "id_token_wrong_nonce"
    psc.id_claims = {"aud": "another-client"}
    assert reason(psc) == "id_token_wrong_audience"
    psc.id_claims = {"iss": "https://evil.test"}
    assert reason(psc) == "id_token_wrong_issuer"
    psc.id_claims = {"exp": int(time.time()) - 3600}
    assert reason(psc) == "id_token_expired"
    psc.id_claims = {}
    forger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    psc.id_token_override = psc.sign({"iss": ISSUER, "aud": CLIENT, "nonce": "n0nce"}, forger)
    assert reason(psc) == "id_token_bad_signature"
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none"}).encode()).rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"iss": ISSUER, "aud": CLIENT}).encode())
    psc.id_token_override = f"{header.decode()}.{body.rstrip(b'=').decode()}."
    assert reason(psc) == "id_token_alg_not_allowed"


def test_userinfo_checks(psc: ScriptedPsc) -> None:
    psc.userinfo = {**userinfo_claims(SUBJECT), "sub": "f:someone-else"}
    assert reason(psc) == "userinfo_subject_mismatch"
    psc.userinfo = userinfo_claims(SUBJECT)
    psc.userinfo_jwt, psc.userinfo_aud = True, "another-client"
    assert reason(psc) == "userinfo_wrong_audience"


def test_discovery_of_another_issuer_is_refused(psc: ScriptedPsc) -> None:
    psc.issuer = "https://evil.test/realm"
    with pytest.raises(LoginFailed, match="wrong_issuer"):
        rp(psc).authorization_url("s", "n", "v" * 64)


def test_activities_are_one_per_structure() -> None:
    info = userinfo_claims("899999000001")
    exercices = info["SubjectRefPro"]["exercices"]
    doubled = {"SubjectRefPro": {"exercices": exercices + exercices}}
    labels = [a.label for a in activities_of(doubled)]
    assert labels == ["CABINET DE RADIOLOGIE TEST (SA07)", "CENTRE HOSPITALIER TEST (SA01)"]
    assert activities_of({}) == ()
