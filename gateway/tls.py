"""TLS on the gateway's listeners (R12): the server-side ``ssl.SSLContext`` of HTTPS, DICOM TLS
and MLLP over TLS.

One server certificate (``tls_cert``, ``tls_key``) serves every listener; each listener has its
own switch (``http_tls``, ``dicom_tls``, ``hl7_tls``: ``on``, ``off`` or ``proxy``) and its own
client-certificate rule (``*_tls_client_auth``: ``none``, ``optional``, ``required``), client
certificates being checked against ``tls_ca_bundle``.

Protocol and ciphers, the same on every listener: TLS 1.2 and 1.3 only (BCP 195, the DICOM
"BCP 195 non-downgrading" profile that dcmtk uses by default, ANSSI's TLS guide). TLS 1.3
brings its own AEAD suites (OpenSSL's defaults: AES-GCM and ChaCha20-Poly1305); TLS 1.2 is
limited to ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (:data:`TLS12_CIPHERS`). No
compression, no renegotiation, the server's cipher order.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Literal

from cryptography import x509

from gateway.config import Settings

Listener = Literal["http", "dicom", "hl7"]

#: TLS 1.2 suites, strongest first (OpenSSL names). TLS 1.3 suites are OpenSSL's defaults.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
])

#: A listener's certificate expiring sooner than this is worth a warning at start-up.
EXPIRY_WARNING_DAYS = 30

_LABEL = {"http": "HTTP", "dicom": "DICOM", "hl7": "HL7 MLLP"}


class TlsConfigError(ValueError):
    """A certificate, key or CA bundle cannot be used; the message names the setting."""


def server_context(cert: Path, key: Path, ca_bundle: Path | None,
                   client_auth: str = "none") -> ssl.SSLContext:
    """A server context: TLS 1.2+, :data:`TLS12_CIPHERS`, ``cert``/``key`` presented, client
    certificates (``optional``/``required``) verified against ``ca_bundle``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_RENEGOTIATION)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"tls_cert {cert} / tls_key {key}: cannot be used: "
                             f"{_reason(exc)}") from None
    if client_auth != "none":
        if ca_bundle is None:
            raise TlsConfigError("client certificates need tls_ca_bundle")
        try:
            ctx.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"tls_ca_bundle {ca_bundle}: cannot be read: "
                                 f"{_reason(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "required" else ssl.CERT_OPTIONAL
    return ctx


def listener_context(settings: Settings, listener: Listener) -> ssl.SSLContext | None:
    """The context of one listener, ``None`` when it speaks plain TCP (``off`` or ``proxy``)."""
    if settings.listener_tls(listener) != "on":
        return None
    assert settings.tls_cert is not None and settings.tls_key is not None  # Settings checks
    return server_context(settings.tls_cert, settings.tls_key, settings.tls_ca_bundle,
                          settings.listener_client_auth(listener))


def check_listeners(settings: Settings, listeners: list[Listener]) -> list[str]:
    """Build the context of each listener that will open, so that an unusable file stops
    start-up before anything listens (``TlsConfigError`` naming the setting); returns warnings
    (a certificate that expires soon). An expired ``tls_cert`` is an error."""
    warnings: list[str] = []
    on = [name for name in listeners if settings.listener_tls(name) == "on"]
    if not on:
        return warnings
    for name in on:
        listener_context(settings, name)
    assert settings.tls_cert is not None
    try:
        cert = x509.load_pem_x509_certificates(settings.tls_cert.read_bytes())[0]
    except (OSError, ValueError) as exc:
        raise TlsConfigError(f"tls_cert {settings.tls_cert}: {exc}") from None
    now = dt.datetime.now(dt.UTC)
    end = cert.not_valid_after_utc
    if end <= now:
        raise TlsConfigError(f"tls_cert {settings.tls_cert} expired on {end:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > now:
        raise TlsConfigError(f"tls_cert {settings.tls_cert} is not valid before "
                             f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if end - now < dt.timedelta(days=EXPIRY_WARNING_DAYS):
        warnings.append(f"tls_cert {settings.tls_cert} expires on {end:%Y-%m-%d} "
                        f"({(end - now).days} days)")
    return warnings


def describe(settings: Settings, listener: Listener) -> str:
    """``TLS (client certificate required)``, ``plain (TLS by a proxy)``... for the logs."""
    mode = settings.listener_tls(listener)
    if mode == "on":
        auth = settings.listener_client_auth(listener)
        return "TLS" + ("" if auth == "none" else f", client certificate {auth}")
    return "plain TCP, TLS terminated by a proxy" if mode == "proxy" else "plain TCP"


def peer_subject(sock: object) -> str:
    """The subject DN of the certificate a TLS peer presented (``sock``: an ``SSLSocket`` or
    asyncio's ``SSLObject``), ``""`` without one or over plain TCP."""
    if not isinstance(sock, ssl.SSLSocket | ssl.SSLObject):
        return ""
    try:
        der = sock.getpeercert(binary_form=True)
    except (ValueError, OSError):
        return ""
    if not der:
        return ""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def handshake_failure(exc: BaseException) -> str:
    """A short reason for a failed handshake, for one log line (no traceback)."""
    return _reason(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        reason = exc.reason.lower().replace("_", " ")
        detail = getattr(exc, "verify_message", None)
        return f"{reason} ({detail})" if detail else reason
    return str(exc) or type(exc).__name__


def label(listener: Listener) -> str:
    return _LABEL[listener]
