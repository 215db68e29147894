"""Logging a practitioner in with Pro Santé Connect: the OpenID Connect relying party of the
viewer (R15).

Authorization code flow with PKCE (S256), ``scope=openid scope_all``, ``acr_values=eidas1``,
``state`` and ``nonce`` (authlib's OAuth 2 client does the protocol: authorization URL, code
challenge, token request with the client authentication of
:class:`~adapters.psc.client_auth.PscClientAuth`: secret, mTLS or signed JWT). Then:

* the ID token is checked locally (:class:`adapters.psc.tokens.JwtVerifier`: RS256/PS256/ES256
  signature against PSC's JWKS, ``iss``, ``exp``, ``acr`` at least eidas1), plus ``aud``
  containing our client id and the ``nonce`` we sent;
* userinfo is read as JSON or as a signed JWT (``application/jwt``: signature, ``iss`` and
  ``aud`` checked), and its ``sub`` must be the ID token's;
* the activities come from ``SubjectRefPro.exercices[].activities[]``.

Discovery: ``psc_issuer + psc_discovery_path`` (PSC's ``wallet-openid-configuration``),
fetched once. Tokens never leave the server; the access token is dropped after userinfo.
Failures raise :class:`LoginFailed` with a short reason for the audit trail.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx

from adapters.psc.client_auth import PscClientAuth
from adapters.psc.tokens import ALLOWED_ALGORITHMS, JwksCache, JwtVerifier, TokenRejected
from gateway.access.sessions import Activity

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import OAuth2Client

# authlib and joserfc are imported where a login uses them: the HTTP app imports this module
# at every start, and the two cost about a tenth of a second of CPU to import.

log = logging.getLogger(__name__)

SCOPE = "openid scope_all"
ACR = "eidas1"


def _oauth2_client_class() -> type[OAuth2Client]:
    # authlib.deprecate adds an "always" filter for its warnings when first imported: import
    # it before ours, so that ours comes first.
    import authlib.deprecate  # noqa: F401

    with warnings.catch_warnings():
        # authlib >= 1.7 prefers the ``httpx2`` package and warns when it falls back to httpx,
        # the project's HTTP client; the fallback is the supported httpx integration.
        warnings.simplefilter("ignore")
        from authlib.integrations.httpx_client import OAuth2Client
    return OAuth2Client


class LoginFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PscLogin:
    subject_name_id: str
    sub: str
    activities: tuple[Activity, ...]
    id_token: str
    access_token: str = ""
    """Kept server-side only (R17: the consumer presents it to Source DRIMboxes)."""


def activities_of(userinfo: dict[str, Any]) -> tuple[Activity, ...]:
    """The activities a practitioner may choose (one per structure), from SubjectRefPro."""
    seen: dict[str, Activity] = {}
    ref = userinfo.get("SubjectRefPro") or {}
    for exercice in ref.get("exercices") or []:
        person = " ".join(str(p) for p in (exercice.get("prenomDexercice"),
                                           exercice.get("nomDexercice")) if p)
        if not person:
            person = " ".join(str(p) for p in (userinfo.get("given_name"),
                                               userinfo.get("family_name")) if p)
        for act in exercice.get("activities") or []:
            ident = (act.get("identifiantTechniqueDeLaStructure")
                     or act.get("ancienIdentifiantDeLaStructure") or act.get("numeroFinessSite"))
            if not ident or ident in seen:
                continue
            name = act.get("raisonSocialeSite") or act.get("enseigneCommercialeSite") or ident
            sector = act.get("codeSecteurDactivite")
            seen[ident] = Activity(
                str(ident), f"{name} ({sector})" if sector else str(name),
                structure_id=str(act.get("ancienIdentifiantDeLaStructure") or ident),
                sector=str(sector or ""), profession=str(exercice.get("codeProfession") or ""),
                specialty=str(exercice.get("codeSavoirFaire") or ""), name=person)
    return tuple(seen.values())


class PscRelyingParty:
    def __init__(self, issuer: str, discovery_path: str, client: PscClientAuth,
                 redirect_uri: str, transport: httpx.BaseTransport | None = None) -> None:
        self.issuer = issuer.rstrip("/")
        self.discovery_url = self.issuer + "/" + discovery_path.lstrip("/")
        self.client = client
        """Our client at PSC: its id, its authentication at the token endpoint (secret, mTLS
        or signed JWT, R21) and the TLS of every call to PSC."""
        self.client_id = client.client_id
        self.redirect_uri = redirect_uri
        self.transport = transport
        """Tests: a transport for every call to PSC instead of :meth:`PscClientAuth.transport`."""
        self.http = (httpx.Client(timeout=10, transport=transport) if transport is not None
                     else client.http_client())
        self._metadata: dict[str, Any] | None = None
        self._jwks: JwksCache | None = None
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None:
                try:
                    r = self.http.get(self.discovery_url)
                    r.raise_for_status()
                    meta = r.json()
                except (httpx.HTTPError, ValueError):
                    raise LoginFailed("provider_unreachable") from None
                if meta.get("issuer") != self.issuer:
                    raise LoginFailed("wrong_issuer")
                self._metadata = meta
                self._jwks = JwksCache(meta["jwks_uri"], self.http)
            return self._metadata

    def _client(self) -> OAuth2Client:
        meta = self.metadata()
        audience = self.client.audience(self.issuer, meta["token_endpoint"])
        return _oauth2_client_class()(
            client_id=self.client_id, client_secret=self.client.authlib_credential, scope=SCOPE,
            redirect_uri=self.redirect_uri, code_challenge_method="S256",
            token_endpoint_auth_method=self.client.authlib_method(audience),
            timeout=10,
            transport=self.transport if self.transport is not None else self.client.transport(),
        )

    @staticmethod
    def new_secrets() -> tuple[str, str, str]:
        """Fresh ``state``, ``nonce`` and PKCE ``code_verifier``."""
        from authlib.common.security import generate_token

        return generate_token(32), generate_token(32), generate_token(64)

    def authorization_url(self, state: str, nonce: str, code_verifier: str) -> str:
        endpoint = self.metadata()["authorization_endpoint"]
        with self._client() as client:
            url, _ = client.create_authorization_url(
                endpoint, state=state, code_verifier=code_verifier, nonce=nonce,
                acr_values=ACR)
        return url

    def complete(self, code: str, code_verifier: str, nonce: str) -> PscLogin:
        """Exchange the code, check the ID token and userinfo (raises :class:`LoginFailed`)."""
        from authlib.integrations.base_client import OAuthError

        meta = self.metadata()
        with self._client() as client:
            try:
                token = client.fetch_token(meta["token_endpoint"], grant_type="authorization_code",
                                           code=code, code_verifier=code_verifier)
            except OAuthError as exc:
                if exc.error == "invalid_client":  # the operator's to fix, not the user's
                    log.warning("PSC refused our client %s (%s, invalid_client: %s)",
                                self.client_id, self.client.method, exc.description)
                raise LoginFailed("token_request_failed") from None
            except (httpx.HTTPError, ValueError):
                raise LoginFailed("token_request_failed") from None
            id_token = token.get("id_token")
            if not id_token:
                raise LoginFailed("no_id_token")
            claims = self._check_id_token(id_token, nonce)
            try:
                r = client.get(meta["userinfo_endpoint"])
                r.raise_for_status()
            except (OAuthError, httpx.HTTPError):
                raise LoginFailed("userinfo_failed") from None
        info = self._userinfo(r)
        if info.get("sub") != claims.get("sub"):
            raise LoginFailed("userinfo_subject_mismatch")
        subject = str(info.get("SubjectNameID") or claims.get("preferred_username") or "")
        if not subject:
            raise LoginFailed("no_subject_name_id")
        return PscLogin(subject, str(claims["sub"]), activities_of(info), id_token,
                        str(token.get("access_token") or ""))

    def _check_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        assert self._jwks is not None
        verifier = JwtVerifier(self._jwks, self.issuer, self.client_id, min_acr=ACR)
        try:
            identity = verifier.verify(id_token)
        except TokenRejected as exc:
            raise LoginFailed(f"id_token_{exc.reason}") from None
        claims = identity.claims
        aud = claims.get("aud")
        if self.client_id not in (aud if isinstance(aud, list) else [aud]):
            raise LoginFailed("id_token_wrong_audience")
        if claims.get("nonce") != nonce:
            raise LoginFailed("id_token_wrong_nonce")
        return claims

    def _userinfo(self, r: httpx.Response) -> dict[str, Any]:
        media = r.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "application/jwt":
            from joserfc import jwt
            from joserfc.errors import JoseError

            assert self._jwks is not None
            try:
                keys = self._jwks.key_for(None)
                info = jwt.decode(r.text.strip(), keys, algorithms=list(ALLOWED_ALGORITHMS)).claims
            except (JoseError, ValueError, TokenRejected):
                raise LoginFailed("userinfo_bad_signature") from None
            if "iss" in info and info["iss"] != self.issuer:
                raise LoginFailed("userinfo_wrong_issuer")
            aud = info.get("aud")
            if aud is not None and self.client_id not in (aud if isinstance(aud, list) else [aud]):
                raise LoginFailed("userinfo_wrong_audience")
            return info
        try:
            info = r.json()
        except json.JSONDecodeError:
            raise LoginFailed("userinfo_malformed") from None
        if not isinstance(info, dict):
            raise LoginFailed("userinfo_malformed")
        return info

    def end_session_url(self, id_token: str, post_logout_redirect_uri: str) -> str | None:
        """PSC's logout URL when it advertises one (RP-initiated logout)."""
        try:
            endpoint = self.metadata().get("end_session_endpoint")
        except LoginFailed:
            return None
        if not endpoint:
            return None
        params = {"post_logout_redirect_uri": post_logout_redirect_uri,
                  "client_id": self.client_id}
        if id_token:
            params["id_token_hint"] = id_token
        sep = "&" if "?" in endpoint else "?"
        return f"{endpoint}{sep}{urlencode(params)}"
