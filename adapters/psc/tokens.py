"""Checking Pro Santé Connect bearer tokens presented by API callers (consumer DRIMboxes),
requirement R10.

Two ways, chosen in configuration:

* :class:`JwtVerifier` checks a JWT access token locally: signature against PSC's JWKS (cached;
  an unknown ``kid`` triggers one refresh, at most every ``min_refresh`` seconds), algorithm in
  an allow-list (RS256/PS256/ES256 — never ``none``, never HMAC, so a token "signed" with the
  public key as an HMAC secret is refused), ``iss``, ``aud`` (or ``azp``), ``exp``, ``nbf``,
  ``acr`` at least ``eidas1``.
* :class:`IntrospectionVerifier` asks PSC (RFC 7662), authenticated as our client
  (:class:`~adapters.psc.client_auth.PscClientAuth`: secret, mTLS or signed JWT, R21), and
  caches the answer briefly (keyed by a hash of the token, never the token itself).

Both return a :class:`PscIdentity` or raise :class:`TokenRejected` whose ``reason`` is a short
stable code for the audit trail. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from joserfc.jwk import KeySet

# joserfc (and the cryptography it pulls in) is imported where a token or a key set is read,
# not here: the HTTP app imports this module at every start, most often to verify nothing.

from adapters.psc.client_auth import PscClientAuth

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS = ("RS256", "PS256", "ES256")
ACR_LEVELS = {"eidas1": 1, "eidas2": 2, "eidas3": 3}


class TokenRejected(Exception):
    """A token was refused; ``reason`` is one of: missing, malformed, alg_not_allowed,
    unknown_kid, bad_signature, wrong_issuer, wrong_audience, expired, not_yet_valid,
    acr_too_low, inactive, provider_unreachable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class PscIdentity:
    """Who a valid token speaks for."""

    subject_name_id: str
    sub: str
    acr: str
    client_id: str
    scope: str
    claims: dict[str, Any] = field(repr=False, default_factory=dict)


def _acr_ok(acr: Any, minimum: str) -> bool:
    return ACR_LEVELS.get(str(acr), 0) >= ACR_LEVELS[minimum]


def _identity(claims: dict[str, Any]) -> PscIdentity:
    subject = claims.get("SubjectNameID") or claims.get("preferred_username") or ""
    return PscIdentity(
        subject_name_id=str(subject),
        sub=str(claims.get("sub", "")),
        acr=str(claims.get("acr", "")),
        client_id=str(claims.get("azp") or claims.get("client_id") or ""),
        scope=str(claims.get("scope", "")),
        claims=claims,
    )


class JwksCache:
    """PSC's signing keys, fetched from ``jwks_uri`` and refreshed on an unknown ``kid``."""

    def __init__(self, jwks_uri: str, client: httpx.Client | None = None,
                 ttl: float = 3600, min_refresh: float = 30) -> None:
        self.jwks_uri = jwks_uri
        self.client = client or httpx.Client(timeout=10)
        self.ttl = ttl
        self.min_refresh = min_refresh
        self._keys: KeySet | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def _fetch(self) -> None:
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        try:
            r = self.client.get(self.jwks_uri)
            r.raise_for_status()
            self._keys = KeySet.import_key_set(r.json())
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            raise TokenRejected("provider_unreachable", f"JWKS: {type(exc).__name__}") from None
        self._fetched = time.monotonic()

    def key_for(self, kid: str | None) -> KeySet:
        with self._lock:
            now = time.monotonic()
            if self._keys is None or now - self._fetched > self.ttl:
                self._fetch()
            assert self._keys is not None
            if kid and not any(k.kid == kid for k in self._keys.keys):
                if now - self._fetched >= self.min_refresh:
                    self._fetch()  # key rotation: one refresh
                if not any(k.kid == kid for k in self._keys.keys):
                    raise TokenRejected("unknown_kid", "no key with this kid in PSC's JWKS")
            return self._keys


class JwtVerifier:
    def __init__(self, jwks: JwksCache, issuer: str, audience: str | Iterable[str],
                 min_acr: str = "eidas1", leeway: int = 30,
                 now: Callable[[], float] = time.time) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audiences = frozenset({audience} if isinstance(audience, str) else audience)
        """Accepted audiences: a token passes when ``aud`` or ``azp`` names one of them."""
        self.min_acr = min_acr
        self.leeway = leeway
        self.now = now

    def verify(self, token: str) -> PscIdentity:
        from joserfc import jws, jwt
        from joserfc.errors import JoseError

        if not token:
            raise TokenRejected("missing")
        try:
            header = jws.extract_compact(token.encode()).protected
        except (JoseError, ValueError, UnicodeError):
            raise TokenRejected("malformed", "not a compact JWS") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenRejected("alg_not_allowed", f"alg {alg!r}")
        keys = self.jwks.key_for(header.get("kid"))
        try:
            claims = jwt.decode(token, keys, algorithms=list(ALLOWED_ALGORITHMS)).claims
        except JoseError as exc:
            raise TokenRejected("bad_signature", type(exc).__name__) from None
        except ValueError:
            raise TokenRejected("malformed", "claims are not JSON") from None
        return self.check_claims(claims)

    def check_claims(self, claims: dict[str, Any]) -> PscIdentity:
        now = self.now()
        if claims.get("iss") != self.issuer:
            raise TokenRejected("wrong_issuer")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not self.audiences.intersection(audiences) and claims.get("azp") not in self.audiences:
            raise TokenRejected("wrong_audience")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp + self.leeway < now:
            raise TokenRejected("expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and nbf - self.leeway > now:
            raise TokenRejected("not_yet_valid")
        iat = claims.get("iat")
        if isinstance(iat, (int, float)) and iat - self.leeway > now:
            raise TokenRejected("not_yet_valid", "issued in the future")
        if not _acr_ok(claims.get("acr"), self.min_acr):
            raise TokenRejected("acr_too_low", f"acr {claims.get('acr')!r} < {self.min_acr}")
        return _identity(claims)


class IntrospectionVerifier:
    """RFC 7662 introspection at PSC, with a short cache of the answers."""

    def __init__(self, endpoint: str, client_auth: PscClientAuth, audience: str,
                 min_acr: str = "eidas1", cache_seconds: float = 30,
                 client: httpx.Client | None = None) -> None:
        self.endpoint = endpoint
        self.client_auth = client_auth
        self.audience = audience
        """``aud`` of our client assertion (``private_key_jwt``): PSC's token endpoint or
        issuer (:meth:`PscClientAuth.audience`)."""
        self.min_acr = min_acr
        self.cache_seconds = cache_seconds
        self.client = client or client_auth.http_client()
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> PscIdentity:
        if not token:
            raise TokenRejected("missing")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] > now:
                answer = hit[1]
            else:
                answer = None
        if answer is None:
            try:
                headers, body = self.client_auth.prepare(self.endpoint, {"token": token},
                                                         self.audience)
                r = self.client.post(self.endpoint, content=body, headers=headers)
                if r.status_code in (400, 401):
                    log.warning("PSC introspection refused our client %s (%s): %s",
                                self.client_auth.client_id, self.client_auth.method,
                                r.text[:200])
                r.raise_for_status()
                answer = r.json()
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                raise TokenRejected("provider_unreachable", type(exc).__name__) from None
            with self._lock:
                self._cache[key] = (now + self.cache_seconds, answer)
                if len(self._cache) > 10_000:
                    self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        if not answer.get("active"):
            raise TokenRejected("inactive")
        exp = answer.get("exp")
        if isinstance(exp, (int, float)) and exp < time.time():
            raise TokenRejected("expired")
        if not _acr_ok(answer.get("acr"), self.min_acr):
            raise TokenRejected("acr_too_low", f"acr {answer.get('acr')!r} < {self.min_acr}")
        return _identity(answer)
