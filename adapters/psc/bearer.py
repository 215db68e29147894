"""The bearer-token checker the DICOMweb face uses (R10): PSC's discovery
document read once (lazily, so that the gateway starts while PSC is unreachable), then a
:class:`~adapters.psc.tokens.JwtVerifier` or an
:class:`~adapters.psc.tokens.IntrospectionVerifier` as configured.

:meth:`BearerChecker.check` returns a :class:`~adapters.psc.tokens.PscIdentity` or raises
:class:`~adapters.psc.tokens.TokenRejected` (``provider_unreachable`` when PSC cannot be read,
``not_configured`` when no issuer is set). Blocking: call it from a worker thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import httpx

from adapters.psc.client_auth import PscClientAuth
from adapters.psc.tokens import (
    IntrospectionVerifier,
    JwksCache,
    JwtVerifier,
    PscIdentity,
    TokenRejected,
)


class _Verifier(Protocol):
    def verify(self, token: str) -> PscIdentity: ...


@dataclass(frozen=True)
class BearerConfig:
    issuer: str | None
    discovery_path: str
    client_id: str
    mode: str  # "jwt" | "introspection"
    client_auth: PscClientAuth | None = None
    """How we authenticate to introspection (R21) and the TLS of every PSC call; None: a
    client with no credentials and the system's CAs (enough for ``jwt``)."""
    audiences: tuple[str, ...] = ()
    """Client ids whose tokens we accept (``aud`` or ``azp``). Empty: ``client_id`` for a JWT,
    and, by introspection, any token PSC says is active."""
    min_acr: str = "eidas1"
    jwks_cache_seconds: float = 3600
    introspection_cache_seconds: float = 30

    @property
    def via(self) -> str:
        """How a principal checked this way was proven, for the audit trail."""
        return "bearer-jwt" if self.mode == "jwt" else "bearer-introspection"


class BearerChecker:
    def __init__(self, config: BearerConfig, client: httpx.Client | None = None) -> None:
        self.config = config
        self.client_auth = config.client_auth or PscClientAuth(config.client_id)
        self.client = client or self.client_auth.http_client()
        self._verifier: _Verifier | None = None
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.config.issuer)

    def _discover(self) -> _Verifier:
        c = self.config
        assert c.issuer
        try:
            r = self.client.get(c.issuer + c.discovery_path)
            r.raise_for_status()
            doc = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise TokenRejected("provider_unreachable",
                                f"discovery: {type(exc).__name__}") from None
        if doc.get("issuer") != c.issuer:
            raise TokenRejected("provider_unreachable", "discovery names another issuer")
        try:
            if c.mode == "jwt":
                jwks = JwksCache(doc["jwks_uri"], self.client, ttl=c.jwks_cache_seconds)
                return JwtVerifier(jwks, c.issuer, c.audiences or (c.client_id,), c.min_acr)
            audience = self.client_auth.audience(c.issuer, doc["token_endpoint"])
            return IntrospectionVerifier(doc["introspection_endpoint"], self.client_auth,
                                         audience, c.min_acr, c.introspection_cache_seconds,
                                         self.client)
        except KeyError as exc:
            raise TokenRejected("provider_unreachable", f"discovery lacks {exc}") from None

    def check(self, token: str) -> PscIdentity:
        if not self.configured:
            raise TokenRejected("not_configured", "no PSC issuer configured")
        with self._lock:
            if self._verifier is None:
                self._verifier = self._discover()
            verifier = self._verifier
        identity = verifier.verify(token)
        if self.config.mode == "introspection" and self.config.audiences:
            aud = identity.claims.get("aud")
            named = set(aud if isinstance(aud, list) else [aud]) | {identity.client_id}
            if not named.intersection(self.config.audiences):
                raise TokenRejected("wrong_audience", "introspected token of another client")
        if not identity.subject_name_id:
            raise TokenRejected("no_subject", "the token names no SubjectNameID")
        return identity
