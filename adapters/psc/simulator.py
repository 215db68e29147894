"""A Pro Santé Connect simulator: a standards-conformant OpenID provider on loopback that issues
PSC-shaped tokens and userinfo for the test practitioners of :mod:`adapters.psc.practitioners`
(SPEC.md section 3).

It models what the real PSC does that a relying party must cope with:

* discovery at ``<issuer>/.well-known/wallet-openid-configuration`` (PSC's non-standard path;
  the standard ``openid-configuration`` path answers too);
* authorization code flow with PKCE (``S256``; ``plain`` accepted as PSC lists it), ``state``,
  ``nonce``, ``acr_values`` (the ``acr`` claim is ``eidas1`` unless configured otherwise);
* the authorization endpoint on the "wallet" path ``/auth`` (outside the realm, as in PSC);
* ID and access tokens as RS256 JWTs with PSC's claims (``acr``, ``authMode``, ``sid``,
  ``session_state``, ``preferred_username``...), a JWKS at ``.../certs``;
* userinfo as ``application/json`` or as a signed ``application/jwt`` (``--userinfo jwt``);
* RFC 7662 introspection (``SubjectNameID`` only for access tokens);
* client authentication at the token and introspection endpoints by the method registered
  for each client (R21): a secret (``client_secret_basic`` or ``client_secret_post``; either
  way is accepted, as Keycloak does), the TLS client certificate whose subject DN is
  registered for the client (``tls_client_auth``, RFC 8705; needs :func:`serve` with a client
  CA), or a JWT signed with the client's registered key (``private_key_jwt``, RFC 7523:
  signature, ``iss`` = ``sub`` = the client, ``aud`` = the issuer, the token endpoint or the
  endpoint called, ``exp`` at most 10 minutes ahead, ``jti`` never seen before). A secret
  from a client registered for another method, or another method from a secret client, is
  ``invalid_client`` (401). With ``record`` each such request is written down (how it
  authenticated and which credentials it carried, never their values);
* RP-initiated logout, after which the session's tokens introspect as inactive.

For relying-party tests, ``--test-tokens`` opens ``POST /test/tokens``, which issues any
access token a negative matrix needs (expired, not yet valid, wrong issuer or audience, low
``acr``, unknown ``kid``, inactive at introspection): see :meth:`PscSimulator.issue_test_token`.
It is off by default: without it, tokens only come out of a login.

No human is needed to log in: ``login_hint=<SubjectNameID>`` on the authorization request
logs that practitioner in at once; without it a page lists the practitioners with one button
each (what a browser test clicks). Everything lives in memory.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from adapters.asgi_tls import client_certificate_protocol
from adapters.psc.practitioners import PRACTITIONERS, userinfo_claims

REALM_PATH = "/auth/realms/esante-wallet"
OIDC = f"{REALM_PATH}/protocol/openid-connect"


SECRET_METHODS = ("client_secret_basic", "client_secret_post")
AUTH_METHODS = (*SECRET_METHODS, "tls_client_auth", "private_key_jwt")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ["RS256", "PS256", "ES256"]
ASSERTION_MAX_LIFETIME = 600
"""A client assertion whose ``exp`` is further ahead than this is refused (it must be short)."""


@dataclass
class SimClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str] = field(default_factory=list)
    auth_method: str = "client_secret_basic"
    """The registered ``token_endpoint_auth_method`` (also used for introspection)."""
    tls_client_auth_subject_dn: str | None = None
    """RFC 8705: the subject DN (RFC 4514) of the certificate of a ``tls_client_auth`` client."""
    jwks: KeySet | None = None
    """The public keys of a ``private_key_jwt`` client."""

    def __post_init__(self) -> None:
        if self.auth_method not in AUTH_METHODS:
            raise ValueError(f"client {self.client_id}: unknown auth method {self.auth_method!r}")
        if self.auth_method in SECRET_METHODS and not self.client_secret:
            raise ValueError(f"client {self.client_id}: {self.auth_method} needs a secret")
        if self.auth_method not in SECRET_METHODS and self.client_secret:
            raise ValueError(f"client {self.client_id}: {self.auth_method} has no secret")
        if self.auth_method == "tls_client_auth":
            if not self.tls_client_auth_subject_dn:
                raise ValueError(f"client {self.client_id}: tls_client_auth needs its DN")
            self.tls_client_auth_subject_dn = normalize_dn(self.tls_client_auth_subject_dn)
        if self.auth_method == "private_key_jwt" and not (self.jwks and self.jwks.keys):
            raise ValueError(f"client {self.client_id}: private_key_jwt needs its public key")


def normalize_dn(dn: str) -> str:
    """An RFC 4514 DN as ``cryptography`` writes it back (spacing and escapes made uniform)."""
    try:
        return x509.Name.from_rfc4514_string(dn).rfc4514_string()
    except ValueError as exc:
        raise ValueError(f"{dn!r} is not an RFC 4514 DN: {exc}") from None


def load_client_keys(path: Path) -> KeySet:
    """A client's public keys: a JWKS or one JWK (JSON), a PEM public key or a PEM
    certificate. A PEM key's ``kid`` is its RFC 7638 thumbprint (the client's default)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        doc = json.loads(data)
        keys = KeySet.import_key_set(doc if "keys" in doc else {"keys": [doc]})
        for key in keys.keys:
            key.ensure_kid()
        return keys
    if b"CERTIFICATE" in data:
        public = x509.load_pem_x509_certificate(data).public_key()
    else:
        public = serialization.load_pem_public_key(data)
    if isinstance(public, rsa.RSAPublicKey):
        key: RSAKey | ECKey = RSAKey.import_key(public)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        key = ECKey.import_key(public)
    else:
        raise ValueError(f"{path}: an RSA or EC public key is needed")
    return KeySet([type(key).import_key(key.as_dict(), {"kid": key.thumbprint()})])


class ClientRefused(Exception):
    """Client authentication failed: RFC 6749 5.2 ``invalid_client`` (401) unless said."""

    def __init__(self, description: str, error: str = "invalid_client", status: int = 401) -> None:
        super().__init__(description)
        self.description, self.error, self.status = description, error, status


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    subject: str
    nonce: str | None
    challenge: str | None
    method: str
    scope: str
    expires: float


def load_or_create_key(path: Path | None) -> RSAKey:
    """An RS256 signing key; kept in ``path`` (PEM) when given, so the JWKS survives restarts."""
    if path and path.is_file():
        key = RSAKey.import_key(path.read_bytes())
    else:
        key = RSAKey.generate_key(2048)
        if path:
            path.write_bytes(key.as_pem(private=True))
            path.chmod(0o600)
    # The kid is the key's RFC 7638 thumbprint, so it is stable for a given key file.
    return RSAKey.import_key(
        key.as_dict(private=True), {"kid": key.thumbprint(), "use": "sig", "alg": "RS256"}
    )


class PscSimulator:
    """The provider's state and its ASGI app (:attr:`app`)."""

    def __init__(
        self,
        base_url: str,
        clients: list[SimClient],
        key: RSAKey | None = None,
        userinfo_format: str = "json",
        acr: str = "eidas1",
        token_ttl: int = 300,
        test_tokens: bool = False,
        mtls: bool = False,
        record: Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.issuer = self.base_url + REALM_PATH
        self.clients = {c.client_id: c for c in clients}
        self.key = key or load_or_create_key(None)
        self.key_set = KeySet([self.key])
        self.userinfo_format = userinfo_format
        self.acr = acr
        self.token_ttl = token_ttl
        self.test_tokens = test_tokens
        self.mtls = mtls
        """Served over https with a client CA (:func:`serve`): ``tls_client_auth`` works."""
        self.record = record
        self._record_lock = threading.Lock()
        self._assertions_seen: dict[tuple[str, str], float] = {}  # (client, jti) -> exp
        self._codes: dict[str, _Code] = {}
        self._access: dict[str, dict[str, Any]] = {}  # jti -> claims
        self._ended_sessions: set[str] = set()
        self.app = self._build_app()

    # -- tokens -----------------------------------------------------------------------------

    def sign(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        header = {"alg": "RS256", "kid": self.key.kid, "typ": typ}
        return jwt.encode(header, claims, self.key)

    def _issue(self, code: _Code) -> dict[str, Any]:
        now = int(time.time())
        sid = str(uuid.uuid4())
        info = userinfo_claims(code.subject)
        common = {
            "iat": now,
            "auth_time": now,
            "exp": now + self.token_ttl,
            "iss": self.issuer,
            "sub": info["sub"],
            "azp": code.client_id,
            "session_state": sid,
            "sid": sid,
            "acr": self.acr,
            "authMode": "CARD",
            "preferred_username": code.subject,
            "otherIds": info["otherIds"],
        }
        if code.nonce:
            common["nonce"] = code.nonce
        access = {**common, "jti": str(uuid.uuid4()), "typ": "Bearer", "aud": code.client_id,
                  "scope": code.scope, "SubjectNameID": code.subject}
        id_token = {**common, "jti": str(uuid.uuid4()), "typ": "ID", "aud": code.client_id,
                    "given_name": info["given_name"], "family_name": info["family_name"]}
        self._access[access["jti"]] = access
        return {
            "access_token": self.sign(access),
            "id_token": self.sign(id_token),
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
            "scope": code.scope,
            "session_state": sid,
        }

    def issue_test_token(self, spec: dict[str, Any]) -> str:
        """An access token shaped as ``spec`` asks, for relying-party tests (``POST
        /test/tokens`` with ``--test-tokens``): ``subject``, ``client_id`` (``azp`` and
        ``aud``), ``aud`` / ``iss`` / ``acr`` overrides (``acr: null`` leaves it out),
        ``exp_in`` / ``nbf_in`` seconds from now (negative: in the past), ``kid: "unknown"``
        (signed by a key PSC never published), ``introspectable: false`` (introspection
        answers inactive, as for a revoked token)."""
        now = int(time.time())
        subject = str(spec.get("subject", next(iter(PRACTITIONERS))))
        if subject not in PRACTITIONERS:
            raise HTTPException(400, {"error": "unknown practitioner"})
        info = userinfo_claims(subject)
        client_id = str(spec.get("client_id", next(iter(self.clients), "drimbox")))
        sid = str(uuid.uuid4())
        claims: dict[str, Any] = {
            "iat": now, "auth_time": now, "exp": now + int(spec.get("exp_in", self.token_ttl)),
            "iss": spec.get("iss", self.issuer), "sub": info["sub"], "azp": client_id,
            "aud": spec.get("aud", client_id), "session_state": sid, "sid": sid,
            "acr": spec.get("acr", self.acr), "authMode": "CARD", "preferred_username": subject,
            "otherIds": info["otherIds"], "jti": str(uuid.uuid4()), "typ": "Bearer",
            "scope": "openid scope_all", "SubjectNameID": subject,
        }
        if "nbf_in" in spec:
            claims["nbf"] = now + int(spec["nbf_in"])
        claims = {k: v for k, v in claims.items() if v is not None}
        if spec.get("introspectable", True):
            self._access[claims["jti"]] = claims
        if spec.get("kid") == "unknown":
            stranger = RSAKey.generate_key(2048, {"kid": "not-published-by-psc"})
            return jwt.encode({"alg": "RS256", "kid": stranger.kid, "typ": "JWT"}, claims,
                              stranger)
        return self.sign(claims)

    def _active_access_claims(self, token: str) -> dict[str, Any] | None:
        try:
            decoded = jwt.decode(token, self.key_set, algorithms=["RS256"])
        except (JoseError, ValueError):
            return None
        claims = decoded.claims
        if claims.get("iss") != self.issuer or claims.get("typ") != "Bearer":
            return None
        if claims.get("exp", 0) < time.time() or claims.get("sid") in self._ended_sessions:
            return None
        if claims.get("jti") not in self._access:
            return None
        return claims

    # -- client authentication --------------------------------------------------------------

    def _client(self, request: Request, form: dict[str, str], endpoint: str) -> SimClient:
        """The client a token or introspection request authenticates as (R21), else
        :class:`ClientRefused`. ``endpoint`` is the URL called (an assertion's ``aud`` may
        name it)."""
        auth = request.headers.get("authorization", "")
        tls = (request.scope.get("extensions") or {}).get("tls") or {}
        seen: dict[str, Any] = {
            "endpoint": endpoint.rsplit("/", 1)[-1].replace("introspect", "introspection"),
            "authorization": auth.split(" ", 1)[0] if auth else None,
            "form": sorted(form),
            "client_secret": "client_secret" in form or auth.lower().startswith("basic "),
            "client_assertion": "client_assertion" in form,
            "client_cert": tls.get("client_cert_name"),
            "client_id": form.get("client_id"),
        }
        try:
            client = self._authenticate(auth, form, tls.get("client_cert_name"), endpoint, seen)
        except ClientRefused as exc:
            self._note({**seen, "outcome": f"{exc.error}: {exc.description}"})
            raise
        self._note({**seen, "client_id": client.client_id, "outcome": "ok"})
        return client

    def _note(self, entry: dict[str, Any]) -> None:
        if self.record is None:
            return
        with self._record_lock, self.record.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def _authenticate(self, auth: str, form: dict[str, str], cert_dn: str | None,
                      endpoint: str, seen: dict[str, Any]) -> SimClient:
        basic = auth.lower().startswith("basic ")
        ways = [w for w, used in (("client_secret_basic", basic),
                                  ("client_secret_post", "client_secret" in form),
                                  ("private_key_jwt", "client_assertion" in form
                                   or "client_assertion_type" in form)) if used]
        if len(ways) > 1:  # RFC 6749 2.3: one method per request
            raise ClientRefused(f"more than one client authentication: {', '.join(ways)}",
                                "invalid_request", 400)
        seen["via"] = ways[0] if ways else "tls_client_auth"
        if ways == ["private_key_jwt"]:
            return self._by_assertion(form, endpoint, seen)
        if ways:  # a secret
            client_id, secret = form.get("client_id"), form.get("client_secret")
            if basic:
                try:
                    client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise ClientRefused("malformed Basic credentials") from None
                if form.get("client_id") not in (None, client_id):
                    raise ClientRefused("client_id is not the Basic credentials' client")
            seen["client_id"] = client_id
            client = self.clients.get(client_id or "")
            if client is None:
                raise ClientRefused("unknown client")
            if client.auth_method not in SECRET_METHODS:
                raise ClientRefused(f"client {client.client_id} is registered for "
                                    f"{client.auth_method}: a client secret is refused")
            if not secrets.compare_digest(client.client_secret.encode(),
                                          (secret or "").encode()):
                raise ClientRefused("wrong client secret")
            return client
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            raise ClientRefused("no client authentication" if "client_id" not in form
                                else "unknown client")
        if client.auth_method != "tls_client_auth":
            raise ClientRefused(f"client {client.client_id} is registered for "
                                f"{client.auth_method}: it must authenticate")
        if cert_dn is None:
            raise ClientRefused("tls_client_auth: no client certificate was presented")
        if normalize_dn(cert_dn) != client.tls_client_auth_subject_dn:
            raise ClientRefused("tls_client_auth: the certificate's subject DN is not the "
                                "one registered for the client")
        return client

    def _by_assertion(self, form: dict[str, str], endpoint: str,
                      seen: dict[str, Any]) -> SimClient:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise ClientRefused("client_assertion_type must be " + ASSERTION_TYPE)
        assertion = form.get("client_assertion", "")
        try:
            compact = jws.extract_compact(assertion.encode())
            unverified = json.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError):
            raise ClientRefused("malformed client assertion") from None
        client_id = unverified.get("sub") if isinstance(unverified, dict) else None
        client = self.clients.get(client_id) if isinstance(client_id, str) else None
        if client is None:
            raise ClientRefused("client assertion of an unknown client")
        seen["client_id"] = client.client_id
        if form.get("client_id") not in (None, client.client_id):
            raise ClientRefused("client_id is not the client assertion's subject")
        if client.auth_method != "private_key_jwt":
            raise ClientRefused(f"client {client.client_id} is registered for "
                                f"{client.auth_method}: a client assertion is refused")
        alg = compact.protected.get("alg")
        if alg not in ASSERTION_ALGORITHMS:
            raise ClientRefused(f"client assertion alg {alg!r} is not allowed")
        assert client.jwks is not None
        try:
            claims = jwt.decode(assertion, client.jwks, algorithms=[alg]).claims
        except (JoseError, ValueError):
            raise ClientRefused("the client assertion does not verify with the client's "
                                "registered key") from None
        audiences = [self.issuer, f"{self.base_url}{OIDC}/token", endpoint]
        registry = jwt.JWTClaimsRegistry(
            leeway=5, iss={"essential": True, "value": client.client_id},
            sub={"essential": True, "value": client.client_id},
            aud={"essential": True, "values": audiences},
            exp={"essential": True}, jti={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise ClientRefused(f"client assertion: {exc.error}: {exc.description}") from None
        now = time.time()
        if claims["exp"] > now + ASSERTION_MAX_LIFETIME:
            raise ClientRefused("client assertion: exp is too far ahead")
        self._assertions_seen = {k: exp for k, exp in self._assertions_seen.items()
                                 if exp + 10 > now}
        key = (client.client_id, str(claims["jti"]))
        if key in self._assertions_seen:
            raise ClientRefused("client assertion replayed (jti already used)")
        self._assertions_seen[key] = float(claims["exp"])
        return client

    @staticmethod
    def _refusal(exc: ClientRefused, basic: bool) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Basic realm="psc-sim"'} if basic else {}
        return JSONResponse({"error": exc.error, "error_description": exc.description},
                            exc.status, headers={**headers, "Cache-Control": "no-store"})

    # -- the app ----------------------------------------------------------------------------

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.base_url}/auth",
            "token_endpoint": f"{self.base_url}{OIDC}/token",
            "userinfo_endpoint": f"{self.base_url}{OIDC}/userinfo",
            "introspection_endpoint": f"{self.base_url}{OIDC}/token/introspect",
            "end_session_endpoint": f"{self.base_url}{OIDC}/logout",
            "jwks_uri": f"{self.base_url}{OIDC}/certs",
            "grant_types_supported": ["authorization_code"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "userinfo_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": self._auth_methods(),
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            "introspection_endpoint_auth_methods_supported": self._auth_methods(),
            "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
            # Access tokens are not bound to the client certificate (no ``cnf``).
            "tls_client_certificate_bound_access_tokens": False,
            "code_challenge_methods_supported": ["plain", "S256"],
            "scopes_supported": ["openid", "scope_all", "rpps", "identity", "eidas1"],
            "acr_values_supported": ["eidas1", "eidas2", "eidas3"],
            "claims_parameter_supported": True,
        }

    def _auth_methods(self) -> list[str]:
        return [m for m in AUTH_METHODS if m != "tls_client_auth" or self.mtls]

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Pro Santé Connect simulator", docs_url=None, redoc_url=None)

        @app.get(f"{REALM_PATH}/.well-known/wallet-openid-configuration")
        @app.get(f"{REALM_PATH}/.well-known/openid-configuration")
        def discovery() -> dict[str, Any]:
            return self._discovery()

        @app.get(f"{OIDC}/certs")
        def certs() -> dict[str, Any]:
            return self.key_set.as_dict(private=False)

        @app.get("/auth")
        def authorize(request: Request) -> Response:
            q = request.query_params
            client = self.clients.get(q.get("client_id", ""))
            if client is None:
                return JSONResponse({"error": "unauthorized_client"}, 400)
            redirect_uri = q.get("redirect_uri", "")
            if redirect_uri not in client.redirect_uris:
                # Never redirect to an unregistered URI (RFC 6749 4.1.2.1).
                return JSONResponse({"error": "invalid_request",
                                     "error_description": "redirect_uri not registered"}, 400)
            state = q.get("state")

            def fail(error: str, description: str) -> RedirectResponse:
                params = {"error": error, "error_description": description}
                if state:
                    params["state"] = state
                return RedirectResponse(f"{redirect_uri}?{urlencode(params)}", 302)

            if q.get("response_type") != "code":
                return fail("unsupported_response_type", "only code is supported")
            if "openid" not in q.get("scope", "").split():
                return fail("invalid_scope", "scope must include openid")
            method = q.get("code_challenge_method", "plain")
            if q.get("code_challenge") and method not in ("plain", "S256"):
                return fail("invalid_request", "unknown code_challenge_method")
            hint = q.get("login_hint")
            if hint:
                if hint not in PRACTITIONERS:
                    return fail("access_denied", "unknown practitioner")
                return self._grant(q, client, hint)
            return HTMLResponse(self._login_page(dict(q)))

        @app.post("/auth/login")
        async def login(request: Request) -> Response:
            form = dict(await request.form())
            client = self.clients.get(str(form.get("client_id", "")))
            if client is None or form.get("redirect_uri") not in client.redirect_uris:
                return JSONResponse({"error": "invalid_request"}, 400)
            subject = str(form.pop("practitioner", ""))
            if subject not in PRACTITIONERS:
                return JSONResponse({"error": "access_denied"}, 400)
            return self._grant({k: str(v) for k, v in form.items()}, client, subject)

        @app.post(f"{OIDC}/token")
        async def token(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            try:
                client = self._client(request, form, f"{self.base_url}{OIDC}/token")
            except ClientRefused as exc:
                return self._refusal(exc, "authorization" in request.headers)
            if form.get("grant_type") != "authorization_code":
                return JSONResponse({"error": "unsupported_grant_type"}, 400)
            code = self._codes.pop(form.get("code", ""), None)
            if code is None or code.expires < time.time() or code.client_id != client.client_id:
                return JSONResponse({"error": "invalid_grant", "error_description": "bad code"}, 400)
            if form.get("redirect_uri") != code.redirect_uri:
                return JSONResponse({"error": "invalid_grant",
                                     "error_description": "redirect_uri mismatch"}, 400)
            if code.challenge is not None:
                verifier = form.get("code_verifier", "")
                if code.method == "S256":
                    digest = hashlib.sha256(verifier.encode()).digest()
                    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                else:
                    computed = verifier
                if not verifier or not secrets.compare_digest(computed, code.challenge):
                    return JSONResponse({"error": "invalid_grant",
                                         "error_description": "PKCE verification failed"}, 400)
            return JSONResponse(self._issue(code), headers={"Cache-Control": "no-store"})

        @app.api_route(f"{OIDC}/userinfo", methods=["GET", "POST"])
        def userinfo(request: Request) -> Response:
            auth = request.headers.get("authorization", "")
            claims = self._active_access_claims(auth[7:]) if auth.lower().startswith("bearer ") else None
            if claims is None:
                return JSONResponse({"error": "invalid_token"}, 401,
                                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
            info = userinfo_claims(claims["SubjectNameID"])
            if self.userinfo_format == "jwt":
                body = {**info, "iss": self.issuer, "aud": claims["azp"], "iat": int(time.time())}
                return Response(self.sign(body), media_type="application/jwt")
            return JSONResponse(info)

        @app.post(f"{OIDC}/token/introspect")
        async def introspect(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            try:
                self._client(request, form, f"{self.base_url}{OIDC}/token/introspect")
            except ClientRefused as exc:
                return self._refusal(exc, "authorization" in request.headers)
            claims = self._active_access_claims(form.get("token", ""))
            if claims is None:
                return JSONResponse({"active": False})
            return JSONResponse({**claims, "active": True, "client_id": claims["azp"],
                                 "username": claims["preferred_username"]})

        @app.post("/test/tokens", include_in_schema=False)
        async def test_tokens(request: Request) -> Response:
            if not self.test_tokens:
                return JSONResponse({"error": "not_found"}, 404)
            spec = await request.json()
            if not isinstance(spec, dict):
                return JSONResponse({"error": "invalid_request"}, 400)
            return JSONResponse({"access_token": self.issue_test_token(spec),
                                 "token_type": "Bearer"})

        @app.get(f"{OIDC}/logout")
        def logout(request: Request) -> Response:
            q = request.query_params
            hint = q.get("id_token_hint")
            target = q.get("post_logout_redirect_uri")
            if hint:
                try:
                    claims = jwt.decode(hint, self.key_set, algorithms=["RS256"]).claims
                    self._ended_sessions.add(claims.get("sid", ""))
                    client = self.clients.get(claims.get("aud", ""))
                    if target and client and target in (client.post_logout_redirect_uris
                                                         or client.redirect_uris):
                        state = q.get("state")
                        suffix = f"?{urlencode({'state': state})}" if state else ""
                        return RedirectResponse(target + suffix, 302)
                except (JoseError, ValueError):
                    pass
            return HTMLResponse("<p>Déconnecté de Pro Santé Connect (simulateur).</p>")

        return app

    def _grant(self, q: Any, client: SimClient, subject: str) -> RedirectResponse:
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            client_id=client.client_id,
            redirect_uri=q.get("redirect_uri"),
            subject=subject,
            nonce=q.get("nonce"),
            challenge=q.get("code_challenge") or None,
            method=q.get("code_challenge_method") or "plain",
            scope=q.get("scope", "openid"),
            expires=time.time() + 60,
        )
        params = {"code": code}
        if q.get("state"):
            params["state"] = q.get("state")
        return RedirectResponse(f"{q.get('redirect_uri')}?{urlencode(params)}", 302)

    def _login_page(self, query: dict[str, str]) -> str:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in query.items()
        )
        buttons = "".join(
            f'<form method="post" action="/auth/login">{hidden}'
            f'<button name="practitioner" value="{sid}" id="login-{sid}">'
            f"Dr {html.escape(p['given_name'])} {html.escape(p['family_name'])} ({sid})</button></form>"
            for sid, p in PRACTITIONERS.items()
        )
        return (
            "<!doctype html><html lang=fr><head><meta charset=utf-8>"
            "<title>Pro Santé Connect (simulateur)</title></head><body>"
            "<h1>Pro Santé Connect — simulateur</h1><p>Choisissez un praticien de test :</p>"
            f"{buttons}</body></html>"
        )


def serve(sim: PscSimulator, host: str, port: int, tls_cert: Path | None = None,
          tls_key: Path | None = None, client_ca: Path | None = None) -> None:
    """Run the simulator with uvicorn (blocking): plain http, or https with ``tls_cert``; with
    ``client_ca`` too, a client certificate is asked for (optional, so that a browser reaches
    the login page) and checked against it: what ``tls_client_auth`` needs."""
    import ssl

    import uvicorn

    kw: dict[str, Any] = {}
    if tls_cert is not None:
        kw = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
        if client_ca is not None:
            kw.update(ssl_ca_certs=str(client_ca), ssl_cert_reqs=ssl.CERT_OPTIONAL,
                      http=client_certificate_protocol())
    uvicorn.run(sim.app, host=host, port=port, log_level="warning", proxy_headers=False,
                timeout_graceful_shutdown=2, **kw)
