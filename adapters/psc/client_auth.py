"""How this DRIMbox proves who it is to Pro Santé Connect (R21): the OAuth client
authentication of its token and introspection requests, and the TLS its PSC calls use.

Four methods, one per client registration at PSC (``psc_client_auth``):

* ``client_secret_basic`` / ``client_secret_post`` (RFC 6749 2.3.1): the client secret, in an
  ``Authorization: Basic`` header or in the form;
* ``tls_client_auth`` (RFC 8705 2.1): the client presents its certificate in the TLS handshake
  (``psc_client_cert``/``psc_client_key``); PSC recognises the certificate's subject DN
  registered for ``client_id``. The request names the client (``client_id`` in the form) and
  carries no secret;
* ``private_key_jwt`` (RFC 7523 2.2, OpenID Connect Core 9): a JWT signed with the client's
  private key (``psc_client_assertion_key``) in ``client_assertion``, with ``iss`` = ``sub`` =
  the client id, ``aud`` = PSC's token endpoint (or its issuer), a fresh ``jti`` and a
  ``psc_client_assertion_lifetime``-second ``exp``; PSC checks it with the public key
  registered for the client. No secret either.

authlib does the encoding (its ``ClientAuth`` and ``PrivateKeyJWT``; joserfc signs). A
configured secret is refused with the two secretless methods (:class:`ValueError`), so that
a secret never travels by mistake. ``psc_ca_bundle`` (else the system's CAs) is what PSC's
server certificate is checked against; the client certificate, when configured, is
presented on every call to PSC (discovery, keys, token, userinfo, introspection).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

SECRET_METHODS = ("client_secret_basic", "client_secret_post")
METHODS = (*SECRET_METHODS, "tls_client_auth", "private_key_jwt")
ASSERTION_ALGORITHMS = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC"}
ASSERTION_AUDIENCES = ("token_endpoint", "issuer")


def load_assertion_key(path: Path, alg: str, kid: str | None) -> RSAKey | ECKey:
    """The client's private signing key (PEM, RSA or EC P-256), as a joserfc key whose ``kid``
    is ``kid`` or, by default, the key's RFC 7638 thumbprint."""
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"psc_client_assertion_key {path}: {exc}") from None
    if isinstance(private, rsa.RSAPrivateKey):
        key: RSAKey | ECKey = RSAKey.import_key(private)
    elif isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1":
        key = ECKey.import_key(private)
    else:
        raise ValueError(f"psc_client_assertion_key {path}: an RSA or EC P-256 key is needed")
    if key.key_type != ASSERTION_ALGORITHMS[alg]:
        raise ValueError(f"psc_client_assertion_alg {alg} does not fit a {key.key_type} key")
    params = {"kid": kid or key.thumbprint(), "alg": alg, "use": "sig"}
    return type(key).import_key(key.as_dict(private=True), params)


class _ShortPrivateKeyJWT(PrivateKeyJWT):
    """authlib's ``private_key_jwt`` with a short ``exp`` (its default is one hour) and our
    ``kid``; the audience is fixed by :class:`PscClientAuth`, not the URL called."""

    def __init__(self, audience: str, alg: str, kid: str, lifetime: int) -> None:
        super().__init__(token_endpoint=audience, headers={"kid": kid}, alg=alg)
        self.lifetime = lifetime

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                    token_endpoint=token_endpoint, alg=self.alg,
                                    header=dict(self.headers), expires_in=self.lifetime)


class PscClientAuth:
    """Our client at PSC: its id, how it authenticates, and the TLS of every PSC call."""

    def __init__(self, client_id: str, method: str = "client_secret_basic", *,
                 client_secret: str | None = None, ca_bundle: Path | None = None,
                 client_cert: Path | None = None, client_key: Path | None = None,
                 assertion_key: Path | None = None, assertion_kid: str | None = None,
                 assertion_alg: str = "RS256", assertion_audience: str = "token_endpoint",
                 assertion_lifetime: int = 60) -> None:
        if method not in METHODS:
            raise ValueError(f"psc_client_auth {method!r}: one of {', '.join(METHODS)}")
        if method not in SECRET_METHODS and client_secret:
            raise ValueError(f"psc_client_secret is set but psc_client_auth = {method} never "
                             "sends a secret: remove it")
        if (client_cert is None) != (client_key is None):
            raise ValueError("psc_client_cert and psc_client_key go together")
        if method == "tls_client_auth" and client_cert is None:
            raise ValueError("psc_client_auth = tls_client_auth needs psc_client_cert and "
                             "psc_client_key")
        if assertion_audience not in ASSERTION_AUDIENCES:
            raise ValueError(f"psc_client_assertion_audience {assertion_audience!r}")
        self.client_id = client_id
        self.method = method
        self._secret = client_secret or None
        self.ca_bundle = ca_bundle
        self.client_cert = client_cert
        self.client_key = client_key
        self.assertion_audience = assertion_audience
        self.assertion_lifetime = assertion_lifetime
        self._key: RSAKey | ECKey | None = None
        self._alg = assertion_alg
        if method == "private_key_jwt":
            if assertion_key is None:
                raise ValueError("psc_client_auth = private_key_jwt needs "
                                 "psc_client_assertion_key")
            if assertion_alg not in ASSERTION_ALGORITHMS:
                raise ValueError(f"psc_client_assertion_alg {assertion_alg!r}: one of "
                                 f"{', '.join(ASSERTION_ALGORITHMS)}")
            self._key = load_assertion_key(assertion_key, assertion_alg, assertion_kid)
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self.tls_context()  # an unreadable CA bundle or certificate fails now, not at a login

    @classmethod
    def from_settings(cls, settings: Any) -> PscClientAuth:  # gateway.config.Settings
        """The client the configuration describes; :class:`ValueError` names what is wrong."""
        secret = settings.psc_client_secret
        return cls(
            settings.psc_client_id, settings.psc_client_auth,
            client_secret=secret.get_secret_value() if secret else None,
            ca_bundle=settings.psc_ca_bundle, client_cert=settings.psc_client_cert,
            client_key=settings.psc_client_key,
            assertion_key=settings.psc_client_assertion_key,
            assertion_kid=settings.psc_client_assertion_kid,
            assertion_alg=settings.psc_client_assertion_alg,
            assertion_audience=settings.psc_client_assertion_audience,
            assertion_lifetime=settings.psc_client_assertion_lifetime,
        )

    def __repr__(self) -> str:  # never the secret
        return f"PscClientAuth({self.client_id!r}, {self.method!r})"

    @property
    def public_key(self) -> dict[str, Any] | None:
        """The public JWK of the assertion key (what to register at PSC), or None."""
        return self._key.as_dict(private=False) if self._key is not None else None

    # -- TLS ------------------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                try:
                    ctx = (ssl.create_default_context(cafile=str(self.ca_bundle))
                           if self.ca_bundle else ssl.create_default_context())
                    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                    if self.client_cert is not None:
                        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
                except (OSError, ssl.SSLError) as exc:
                    raise ValueError(f"PSC TLS: {exc}") from None
                self._context = ctx
            return self._context

    def transport(self) -> httpx.HTTPTransport:
        """A fresh transport (httpx closes a client's transport with the client)."""
        return httpx.HTTPTransport(verify=self.tls_context())

    def http_client(self, timeout: float = 10) -> httpx.Client:
        return httpx.Client(timeout=timeout, verify=self.tls_context())

    # -- client authentication --------------------------------------------------------------------

    def audience(self, issuer: str, token_endpoint: str) -> str:
        """The ``aud`` of our client assertions."""
        return issuer if self.assertion_audience == "issuer" else token_endpoint

    def authlib_method(self, audience: str) -> str | Callable[..., Any]:
        """``token_endpoint_auth_method`` for authlib: a name, or the signer of assertions."""
        if self.method == "private_key_jwt":
            assert self._key is not None
            return _ShortPrivateKeyJWT(audience, self._alg, str(self._key.kid),
                                       self.assertion_lifetime)
        if self.method == "tls_client_auth" or not self._secret:
            # The form names the client, with no secret: mTLS, or (a secret method with no
            # secret configured) a public client whose login relies on PKCE alone.
            return "none"
        return self.method

    @property
    def authlib_credential(self) -> Any:
        """What authlib takes as ``client_secret``: the secret, or the signing key."""
        return self._key if self.method == "private_key_jwt" else self._secret

    def prepare(self, url: str, form: dict[str, str],
                audience: str) -> tuple[dict[str, str], str]:
        """Headers and urlencoded body of a POST to ``url`` (introspection) carrying ``form``
        and our client authentication."""
        auth = ClientAuth(self.client_id, self.authlib_credential, self.authlib_method(audience))
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        _, headers, body = auth.prepare("POST", url, headers, urlencode(form))
        return headers, body
