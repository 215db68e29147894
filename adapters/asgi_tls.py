"""The TLS client certificate of an HTTPS connection, for ASGI apps served by uvicorn.

uvicorn does not put the client certificate of a TLS connection in the request. Its HTTP/1.1
protocol subclassed here hands it to the app as the ASGI TLS extension
(``scope["extensions"]["tls"]``: ``client_cert_chain`` (PEM), ``client_cert_name`` (the subject,
RFC 4514)), read once per connection after the handshake. Used by the gateway's HTTPS listener
(mutual TLS between DRIMboxes, R11/R12) and by ``drimbox psc-sim`` (``tls_client_auth``, R21).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def client_certificate_protocol() -> type:
    """uvicorn's HTTP/1.1 protocol, handing the app the TLS client certificate of its
    connection as the ASGI TLS extension (``scope["extensions"]["tls"]``:
    ``client_cert_chain``, ``client_cert_name``), which uvicorn itself does not."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TlsH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # noqa: ANN401 - asyncio's
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            tls: dict[str, Any] = {"server_cert": None, "client_cert_chain": [],
                                   "client_cert_name": None, "client_cert_error": None,
                                   "tls_version": None, "cipher_suite": None}
            if der:
                cert = x509.load_der_x509_certificate(der)
                tls["client_cert_chain"] = [cert.public_bytes(serialization.Encoding.PEM).decode()]
                tls["client_cert_name"] = cert.subject.rfc4514_string()
            app = self.app

            async def with_tls(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] == "http":
                    scope["extensions"] = {**(scope.get("extensions") or {}), "tls": tls}
                await app(scope, receive, send)

            self.app = with_tls

    return TlsH11Protocol


def client_certificate_name(scope: dict) -> str | None:
    """The subject DN of the connection's client certificate, or None."""
    return ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_name")
