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
* RFC 7662 introspection with client authentication (``SubjectNameID`` only for access tokens);
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
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from adapters.psc.practitioners import PRACTITIONERS, userinfo_claims

REALM_PATH = "/auth/realms/esante-wallet"
OIDC = f"{REALM_PATH}/protocol/openid-connect"


@dataclass
class SimClient:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str] = field(default_factory=list)


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

    def _client(self, request: Request, form: dict[str, str]) -> SimClient:
        auth = request.headers.get("authorization", "")
        client_id = secret = None
        if auth.lower().startswith("basic "):
            try:
                raw = base64.b64decode(auth[6:]).decode()
                client_id, _, secret = raw.partition(":")
            except (ValueError, UnicodeDecodeError):
                pass
        else:
            client_id, secret = form.get("client_id"), form.get("client_secret")
        client = self.clients.get(client_id or "")
        if client is None or not secrets.compare_digest(client.client_secret, secret or ""):
            raise HTTPException(401, {"error": "invalid_client"})
        return client

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
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "scopes_supported": ["openid", "scope_all", "rpps", "identity", "eidas1"],
            "acr_values_supported": ["eidas1", "eidas2", "eidas3"],
            "claims_parameter_supported": True,
        }

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
            client = self._client(request, form)
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
            self._client(request, form)
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
