"""PSC without a client secret (R21): our client authenticates to PSC's token and
introspection endpoints by mutual TLS (RFC 8705 ``tls_client_auth``) or by a signed JWT
(RFC 7523 ``private_key_jwt``), and ``drimbox psc-sim`` checks both over real https.

* the simulator alone (a real process, https with a client CA, a real HTTP client): the
  registered certificate DN, the assertion's signature, ``iss``/``sub``, ``aud``, ``exp``,
  ``jti`` replay, a secret refused from a client registered for another method;
* end to end: a real ``drimbox serve`` logs a practitioner in (authorization code flow, the
  token request) and introspects bearer tokens (``psc_token_check = introspection``) with
  each secretless method, and the simulator's record shows that no request carried a secret
  (no ``Authorization: Basic``, no ``client_secret``); with the wrong certificate the login
  and the bearer are refused.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import launcher
import pytest
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from cryptography import x509
from dmp_pki import Pki, make_pki
from joserfc.jwk import ECKey, RSAKey
from peers import free_port
from psc_support import CLIENT_ID, STAFF, PscSim, psc_env, seed_study
from test_viewer_login import audit, begin_login, psc_answer

from adapters.psc.client_auth import PscClientAuth
from gateway.config import ConfigError, load_settings

REALM = "/auth/realms/esante-wallet"


def subject_dn(cert: Path) -> str:
    return x509.load_pem_x509_certificate(cert.read_bytes()).subject.rfc4514_string()


def write_key(path: Path, key: RSAKey | ECKey) -> Path:
    path.write_bytes(key.as_pem(private=True))
    path.with_suffix(".pub").write_bytes(key.as_pem(private=False))
    return path


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the simulator alone ------------------------------------------------------------------------


class Sim:
    def __init__(self, root: Path) -> None:
        self.pki = make_pki(root / "pki")
        self.rsa = write_key(root / "jwt-rsa.key", RSAKey.generate_key(2048))
        ec = ECKey.generate_key("P-256")
        self.ec = write_key(root / "jwt-ec.key", ec)
        (root / "jwt-ec.jwks").write_text(json.dumps(
            {"keys": [ec.as_dict(private=False, kid=ec.thumbprint())]}))
        self.record = root / "record.jsonl"
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}"
        cb = "http://127.0.0.1:9/callback"
        self.proc = launcher.popen(
            ["psc-sim", "--port", str(self.port),
             "--tls-cert", str(self.pki.server_cert), "--tls-key", str(self.pki.server_key),
             "--client-ca", str(self.pki.ca_cert), "--record", str(self.record),
             "--client", f"mtls::{cb}", "--client-auth", "mtls=tls_client_auth",
             "--client-dn", f"mtls={subject_dn(self.pki.client_cert)}",
             "--client", f"jwt::{cb}", "--client-auth", "jwt=private_key_jwt",
             "--client-jwks", f"jwt={self.rsa.with_suffix('.pub')}",
             "--client", f"jwt-ec::{cb}", "--client-auth", "jwt-ec=private_key_jwt",
             "--client-jwks", f"jwt-ec={root / 'jwt-ec.jwks'}",
             "--client", f"secret:s3cret:{cb}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(150):
            try:
                self.conf = httpx.get(f"{self.base}{REALM}/.well-known/wallet-openid-configuration",
                                      verify=self.tls(), timeout=1).json()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("psc-sim did not start")

    def tls(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def introspect(self, verify: ssl.SSLContext | None = None, **kw) -> httpx.Response:
        kw.setdefault("data", {"token": "not-a-token"})
        return httpx.post(self.conf["introspection_endpoint"], verify=verify or self.tls(), **kw)

    def last_record(self) -> dict:
        return records(self.record)[-1]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    s = Sim(tmp_path_factory.mktemp("psc-client-auth"))
    yield s
    s.proc.terminate()
    s.proc.wait(10)


def refused(r: httpx.Response, words: str, status: int = 401) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == ("invalid_client" if status == 401 else "invalid_request")
    assert words in body["error_description"], body


def test_discovery_advertises_the_client_authentications(sim: Sim) -> None:
    methods = ["client_secret_basic", "client_secret_post", "tls_client_auth", "private_key_jwt"]
    assert sim.conf["token_endpoint_auth_methods_supported"] == methods
    assert sim.conf["introspection_endpoint_auth_methods_supported"] == methods
    assert sim.conf["token_endpoint_auth_signing_alg_values_supported"] == [
        "RS256", "PS256", "ES256"]
    assert sim.conf["tls_client_certificate_bound_access_tokens"] is False


def test_tls_client_auth_is_the_registered_certificate_dn(sim: Sim) -> None:
    pki = sim.pki
    good = sim.tls(pki.client_cert, pki.client_key)
    r = sim.introspect(good, data={"token": "x", "client_id": "mtls"})
    assert r.status_code == 200 and r.json() == {"active": False}
    seen = sim.last_record()
    assert seen["client_cert"] == subject_dn(pki.client_cert) == (
        "CN=DRIMbox,OU=499700367909006,O=CENTRE IMAGERIE TEST,ST=Paris (75),C=FR")
    assert (seen["outcome"], seen["via"], seen["client_secret"]) == ("ok", "tls_client_auth", False)
    # Another certificate of the same CA: another DN.
    other = sim.tls(pki.sign_cert, pki.sign_key)
    refused(sim.introspect(other, data={"token": "x", "client_id": "mtls"}), "subject DN")
    refused(sim.introspect(data={"token": "x", "client_id": "mtls"}), "no client certificate")
    # A secret is refused from this client, even with its certificate.
    refused(sim.introspect(good, auth=("mtls", "")), "a client secret is refused")
    refused(sim.introspect(good, data={"token": "x", "client_id": "mtls", "client_secret": "x"}),
            "a client secret is refused")
    # A client registered for a secret cannot switch to its certificate.
    refused(sim.introspect(good, data={"token": "x", "client_id": "secret"}),
            "registered for client_secret_basic")
    assert sim.introspect(auth=("secret", "s3cret")).status_code == 200


def assertion(key_file: Path, client: str, audience: str, alg: str = "RS256",
              kid: str | None = None, **kw) -> str:
    """A client assertion signed by authlib (as our client does), with ``kw`` changed."""
    key = PscClientAuth(client, "private_key_jwt", assertion_key=key_file,
                        assertion_alg=alg).authlib_credential
    if "expires_at" not in kw:
        kw.setdefault("expires_in", 60)
    return private_key_jwt_sign(key, client_id=client, token_endpoint=audience, alg=alg,
                                header={"kid": kid or key.kid}, **kw)


def jwt_form(token: str) -> dict[str, str]:
    return {"token": "x", "client_assertion": token,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}


def test_private_key_jwt_checks_signature_claims_and_replay(sim: Sim, tmp_path: Path) -> None:
    token_endpoint = sim.conf["token_endpoint"]
    client = PscClientAuth("jwt", "private_key_jwt", assertion_key=sim.rsa)
    headers, body = client.prepare(sim.conf["introspection_endpoint"], {"token": "x"},
                                   token_endpoint)
    r = sim.introspect(content=body, headers=headers, data=None)
    assert r.status_code == 200 and r.json() == {"active": False}
    seen = sim.last_record()
    assert (seen["outcome"], seen["via"], seen["client_id"]) == ("ok", "private_key_jwt", "jwt")
    assert seen["authorization"] is None and not seen["client_secret"]
    assert "client_secret" not in seen["form"] and "client_assertion" in seen["form"]
    # The same assertion again: a replay (same jti).
    refused(sim.introspect(content=body, headers=headers, data=None), "replayed")

    # The issuer is an accepted audience too, and an EC key (ES256) works.
    ok = assertion(sim.rsa, "jwt", sim.conf["issuer"])
    assert sim.introspect(data=jwt_form(ok)).status_code == 200
    ok = assertion(sim.ec, "jwt-ec", token_endpoint, alg="ES256")
    assert sim.introspect(data=jwt_form(ok)).status_code == 200

    # Signed by another key, even under the registered kid.
    stranger = write_key(tmp_path / "stranger.key", RSAKey.generate_key(2048))
    kid = RSAKey.import_key(sim.rsa.read_bytes()).thumbprint()
    for kid_used in (kid, None):
        refused(sim.introspect(data=jwt_form(assertion(stranger, "jwt", token_endpoint,
                                                       kid=kid_used))),
                "does not verify")
    now = int(time.time())
    refused(sim.introspect(data=jwt_form(assertion(sim.rsa, "jwt", token_endpoint,
                                                   issued_at=now - 600,
                                                   expires_at=now - 300))), "expired")
    refused(sim.introspect(data=jwt_form(assertion(sim.rsa, "jwt", token_endpoint,
                                                   expires_in=3600))), "too far ahead")
    refused(sim.introspect(data=jwt_form(assertion(sim.rsa, "jwt", "https://elsewhere/token"))),
            "aud")
    forged = assertion(sim.rsa, "jwt", token_endpoint, claims={"iss": "jwt-ec"})
    refused(sim.introspect(data=jwt_form(forged)), "iss")
    # The assertion of one client presented as another's.
    refused(sim.introspect(data={**jwt_form(assertion(sim.rsa, "jwt", token_endpoint)),
                                 "client_id": "jwt-ec"}), "subject")

    # A secret is refused from a client registered for private_key_jwt, however sent.
    refused(sim.introspect(auth=("jwt", "guess")), "a client secret is refused")
    refused(sim.introspect(data={"token": "x", "client_id": "jwt", "client_secret": "guess"}),
            "a client secret is refused")
    refused(sim.introspect(data={"token": "x", "client_id": "jwt"}), "must authenticate")
    # Two methods at once: a malformed request.
    both = jwt_form(assertion(sim.rsa, "jwt", token_endpoint))
    refused(sim.introspect(data=both, auth=("jwt", "guess")), "more than one", 400)
    # And a secret client cannot send an assertion.
    refused(sim.introspect(data=jwt_form(assertion(sim.rsa, "secret", token_endpoint))),
            "a client assertion is refused")
    assert all("s3cret" not in line and "guess" not in line
               for line in sim.record.read_text().splitlines())


# -- end to end: drimbox serve ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def secretless(sim: PscSim, method: str, pki: Pki, key: Path, gateway_url: str,
               record: Path) -> dict[str, str]:
    """Start ``sim`` with our client registered for ``method``; the gateway's settings."""
    registration = (["--client-dn", f"{CLIENT_ID}={subject_dn(pki.client_cert)}"]
                    if method == "tls_client_auth"
                    else ["--client-jwks", f"{CLIENT_ID}={key.with_suffix('.pub')}"])
    sim.start(gateway_url, clients=[
        "--client", f"{CLIENT_ID}::{sim.redirect_uris(gateway_url)}",
        "--client-auth", f"{CLIENT_ID}={method}", *registration],
        extra=("--test-tokens", "--record", str(record)))
    env = psc_env(sim, DRIMBOX_PSC_CLIENT_AUTH=method, DRIMBOX_PSC_CA_BUNDLE=str(pki.ca_cert),
                  DRIMBOX_PSC_TOKEN_CHECK="introspection",
                  DRIMBOX_PSC_INTROSPECTION_CACHE_SECONDS="0")
    del env["DRIMBOX_PSC_CLIENT_SECRET"]
    if method == "tls_client_auth":
        env.update(DRIMBOX_PSC_CLIENT_CERT=str(pki.client_cert),
                   DRIMBOX_PSC_CLIENT_KEY=str(pki.client_key))
    else:
        env["DRIMBOX_PSC_CLIENT_ASSERTION_KEY"] = str(key)
    return env


def issue_token(sim: PscSim, **spec: object) -> str:
    r = httpx.post(f"{sim.base}/test/tokens", json={"client_id": CLIENT_ID, **spec},
                   verify=sim.verify, timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


@pytest.mark.parametrize("method", ["tls_client_auth", "private_key_jwt"])
def test_login_and_introspection_send_no_client_secret(method: str, pki: Pki, tmp_path: Path,
                                                       gateway_factory) -> None:
    key = write_key(tmp_path / "assertion.key", RSAKey.generate_key(2048))
    record = tmp_path / "record.jsonl"
    sim = PscSim(tmp_path, pki=pki)
    gw = gateway_factory()
    gw.extra_env.update(secretless(sim, method, pki, key, gw.url, record))
    try:
        gw.start()
        assert f"authenticates with {method}" in gw.log()
        study = seed_study(gw.dicom_port, birth_date="19800215", patient_id="1800215000001")
        # The viewer's login: the code flow, whose token request authenticates our client.
        with httpx.Client(timeout=30, verify=sim.verify) as browser:
            r = browser.get(psc_answer(browser, begin_login(browser, gw), STAFF))
            assert r.status_code == 303, r.text
            r = browser.post(f"{gw.url}/auth/activity",
                             data={"activity": "R499999000000101", "next": "/viewer"})
            assert r.status_code == 303
            found = browser.get(f"{gw.url}/dicom-web/studies")
            assert found.status_code == 200
            assert [s["0020000D"]["Value"][0] for s in found.json()] == [study]
        # A bearer token, introspected at PSC: active, then one PSC says is not.
        bearer = {"Authorization": f"Bearer {issue_token(sim)}"}
        assert httpx.get(f"{gw.url}/dicom-web/studies", headers=bearer).status_code == 200
        revoked = {"Authorization": f"Bearer {issue_token(sim, introspectable=False)}"}
        r = httpx.get(f"{gw.url}/dicom-web/studies", headers=revoked)
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    finally:
        sim.stop()
    (login,) = audit(gw, "login")
    assert (login.outcome, login.subject) == ("allowed", STAFF)

    # What PSC received: every token and introspection request authenticated by the method,
    # none carrying a secret.
    seen = records(record)
    assert [s["endpoint"] for s in seen] == ["token", "introspection", "introspection"]
    for s in seen:
        assert (s["outcome"], s["client_id"], s["via"]) == ("ok", CLIENT_ID, method), s
        assert s["authorization"] is None and s["client_secret"] is False, s
        assert "client_secret" not in s["form"], s
        if method == "tls_client_auth":
            assert s["client_cert"] == subject_dn(pki.client_cert)
            assert not s["client_assertion"] and "client_id" in s["form"]
        else:
            assert s["client_assertion"] and s["form"].count("client_assertion") == 1
    assert "s3cret" not in gw.log()


def test_the_wrong_certificate_is_refused_end_to_end(pki: Pki, tmp_path: Path,
                                                     gateway_factory) -> None:
    """The gateway presents a certificate of the right CA but not the DN registered for its
    client: PSC refuses the login's token request and every introspection; the gateway says
    so (audit, log, 503) and opens no session."""
    record = tmp_path / "record.jsonl"
    sim = PscSim(tmp_path, pki=pki)
    gw = gateway_factory()
    env = secretless(sim, "tls_client_auth", pki, Path("unused"), gw.url, record)
    env.update(DRIMBOX_PSC_CLIENT_CERT=str(pki.sign_cert), DRIMBOX_PSC_CLIENT_KEY=str(pki.sign_key))
    gw.extra_env.update(env)
    try:
        gw.start()
        with httpx.Client(timeout=30, verify=sim.verify) as browser:
            r = browser.get(psc_answer(browser, begin_login(browser, gw), STAFF))
            assert r.status_code == 401 and "drimbox-session" not in browser.cookies
        r = httpx.get(f"{gw.url}/dicom-web/studies",
                      headers={"Authorization": f"Bearer {issue_token(sim)}"})
        assert r.status_code == 503
    finally:
        sim.stop()
    assert [(e.outcome, e.reason) for e in audit(gw, "login")] == [
        ("denied", "token_request_failed")]
    assert [s["outcome"].split(":")[0] for s in records(record)] == ["invalid_client"] * 2
    assert "PSC refused our client drimbox (tls_client_auth" in gw.log()


# -- settings -----------------------------------------------------------------------------------


PSC = {"psc_issuer": "https://psc.example/realm", "psc_client_id": "drimbox"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"psc_client_auth": "tls_client_auth", "psc_client_cert": "c.pem", "psc_client_key": "k.pem",
      "psc_client_secret": "s"}, "never sends a secret"),
    ({"psc_client_auth": "private_key_jwt", "psc_client_assertion_key": "k.pem",
      "psc_client_secret": "s"}, "never sends a secret"),
    ({"psc_client_auth": "tls_client_auth"}, "needs psc_client_cert"),
    ({"psc_client_auth": "private_key_jwt"}, "needs psc_client_assertion_key"),
    ({"psc_client_cert": "c.pem"}, "go together"),
    ({"psc_client_auth": "client_secret_post"}, "psc_client_secret"),
    ({"psc_client_auth": "client_secret_jwt"}, "psc_client_auth"),
    ({"psc_client_assertion_alg": "HS256"}, "psc_client_assertion_alg"),
])
def test_client_authentication_settings_are_checked(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**PSC, **overrides)


def test_secretless_settings_load_and_keys_are_checked(tmp_path: Path) -> None:
    key = write_key(tmp_path / "a.key", ECKey.generate_key("P-256"))
    s = load_settings(**PSC, psc_client_auth="private_key_jwt", psc_client_assertion_key=key,
                      psc_client_assertion_alg="ES256")
    client = PscClientAuth.from_settings(s)
    assert client.public_key["kty"] == "EC" and client.public_key["kid"]
    assert "d" not in client.public_key
    with pytest.raises(ValueError, match="does not fit"):
        PscClientAuth("drimbox", "private_key_jwt", assertion_key=key, assertion_alg="RS256")
    with pytest.raises(ValueError, match="psc_client_assertion_key"):
        PscClientAuth("drimbox", "private_key_jwt", assertion_key=tmp_path / "missing.key")


def test_an_unreadable_key_stops_start_up(tmp_path: Path, gateway_factory) -> None:
    gw = gateway_factory(DRIMBOX_DICOMWEB_AUTH="psc",
                         DRIMBOX_PSC_ISSUER="http://127.0.0.1:9/auth/realms/esante-wallet",
                         DRIMBOX_PSC_CLIENT_ID="drimbox", DRIMBOX_PSC_CLIENT_AUTH="private_key_jwt",
                         DRIMBOX_PSC_CLIENT_ASSERTION_KEY=str(tmp_path / "missing.key"))
    with pytest.raises(RuntimeError, match="exited at start-up"):
        gw.start()
    assert gw.proc is not None and gw.proc.wait(10) == 2
    assert "psc_client_assertion_key" in gw.log()
    gw.proc = None


def test_token_request_form_carries_the_assertion(tmp_path: Path) -> None:
    """authlib's encoding, as the login's token request sends it: the form names the
    assertion type and carries the JWT (iss = sub = our client, aud = the token endpoint,
    a jti, a short exp), never a secret."""
    from joserfc import jwt

    key_file = write_key(tmp_path / "a.key", RSAKey.generate_key(2048))
    client = PscClientAuth("drimbox", "private_key_jwt", assertion_key=key_file,
                           assertion_lifetime=30)
    headers, body = client.prepare("https://psc/token", {"grant_type": "authorization_code"},
                                   "https://psc/token")
    form = {k: v[0] for k, v in parse_qs(body).items()}
    assert "authorization" not in {h.lower() for h in headers} and "client_secret" not in form
    assert form["client_assertion_type"] == (
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    claims = jwt.decode(form["client_assertion"], RSAKey.import_key(key_file.read_bytes())).claims
    assert claims["iss"] == claims["sub"] == "drimbox" and claims["aud"] == "https://psc/token"
    assert claims["exp"] - claims["iat"] == 30 and len(claims["jti"]) >= 32
    again = parse_qs(client.prepare("u", {}, "a")[1])["client_assertion"][0]
    key = RSAKey.import_key(key_file.read_bytes())
    assert jwt.decode(again, key).claims["jti"] != claims["jti"]
