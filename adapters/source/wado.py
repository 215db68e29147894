"""WADO-RS retrieve from a Source DRIMbox (R17; SPEC 1.3 step 6), as the consumer sends it.

Each request carries ``Authorization: Bearer <the clinician's PSC access token>``, the
``KOS-SOPInstanceUID`` header naming the KOS the DMP gave (R10 on the Source's side), and the
``Accept`` list of the CI-SIS sample (``OK_Requete_CISIS_TSLossless``): the lossless transfer
syntaxes first, each with its q-value, then Explicit VR Little Endian; we add RLE Lossless
(0.8) and, last, ``transfer-syntax=*`` at 0.1 (what the Source keeps, rather than a 406).
It goes over TLS 1.2+ with the structure's ORG client certificate (mutual TLS, R7) and
trusts only the configured CA bundle. When the whitelist names the operator's certificate for
the host (``DNCertificatOperateur``, R11), the server certificate's subject is compared with it
right after the handshake, inside the connection pool (:class:`_ListedCertificates`), so that a
Source presenting another certificate never receives the practitioner's token. The ``multipart/related`` answer is read as it arrives
(constant memory): each part is handed to the caller's ``on_part`` as an iterator of chunks.

Failures are typed: :class:`SourceRefused` (401, 403, 404, 410 and other 4xx: retrying would
not help) and :class:`SourceUnavailable` (connection, TLS, timeout, 5xx, a body cut short:
the caller may retry).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpcore
import httpx
from cryptography import x509

from dicomweb.multipart_reader import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
)
from gateway.consumer.source import (
    SourceError,
    SourceRefused,
    SourceUnavailable,
    SourceUntrusted,
)
from gateway.consumer.trust import normalise_host, same_dn

KOS_HEADER = "KOS-SOPInstanceUID"
#: The CI-SIS sample's preferences (transfer syntax, q), Explicit VR Little Endian last.
ACCEPTED_TRANSFER_SYNTAXES = (
    ("1.2.840.10008.1.2.4.70", "0.9"),   # JPEG Lossless SV1
    ("1.2.840.10008.1.2.4.80", "0.8"),   # JPEG-LS Lossless
    ("1.2.840.10008.1.2.5", "0.8"),      # RLE Lossless (not in the sample: lossless too)
    ("1.2.840.10008.1.2.4.90", "0.7"),   # JPEG 2000 Lossless
    ("1.2.840.10008.1.2.4.91", "0.6"),   # JPEG 2000
    ("1.2.840.10008.1.2.4.50", "0.5"),   # JPEG Baseline
    ("1.2.840.10008.1.2.4.51", "0.5"),   # JPEG Extended
    ("1.2.840.10008.1.2.4.100", "0.5"),  # MPEG2
    ("1.2.840.10008.1.2.4.101", "0.5"),
    ("1.2.840.10008.1.2.4.102", "0.5"),  # MPEG-4
    ("1.2.840.10008.1.2.4.103", "0.5"),
    ("1.2.840.10008.1.2.1", "0.4"),      # Explicit VR Little Endian
    ("*", "0.1"),                        # else as the Source keeps it, rather than nothing
)


def accept_header() -> str:
    return ", ".join(f'multipart/related; type="application/dicom"; transfer-syntax={ts}; q={q}'
                     for ts, q in ACCEPTED_TRANSFER_SYNTAXES)


_REFUSALS = {
    401: "la DRIMbox source refuse le jeton Pro Santé Connect (401) : reconnectez-vous",
    403: "la DRIMbox source refuse l'accès (403) : l'examen n'est plus partagé ou le KOS "
         "ne l'autorise pas",
    404: "la DRIMbox source ne trouve pas cette série (404)",
    410: "la série a été supprimée à la source (410)",
}


@dataclass(frozen=True, slots=True)
class SourceTls:
    """Mutual TLS towards Sources (R7): the CA bundle, the ORG client certificate and key."""

    ca_bundle: Path | None
    client_cert: Path | None
    client_key: Path | None

    def context(self) -> ssl.SSLContext:
        ctx = (ssl.create_default_context(cafile=str(self.ca_bundle)) if self.ca_bundle
               else ssl.create_default_context())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert is not None:
            ctx.load_cert_chain(str(self.client_cert),
                                str(self.client_key) if self.client_key else None)
        return ctx


class CertificateNotListed(Exception):
    """The server's certificate subject is not the DN the whitelist gives for its host."""

    def __init__(self, host: str, subject: str, wanted: str) -> None:
        super().__init__(f"{host} presented {subject!r}, the whitelist names {wanted!r}")
        self.host, self.subject, self.wanted = host, subject, wanted


class _CheckedStream(httpcore.NetworkStream):
    """A TCP stream whose TLS handshake is followed by the whitelist's DN check."""

    def __init__(self, inner: httpcore.NetworkStream, host: str,
                 wanted: Callable[[str], str]) -> None:
        self._inner, self._host, self._wanted = inner, host, wanted

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str):  # noqa: ANN201 - as httpcore's
        return self._inner.get_extra_info(info)

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        stream = self._inner.start_tls(ssl_context, server_hostname, timeout)
        wanted = self._wanted(self._host)
        if wanted:
            der = stream.get_extra_info("ssl_object").getpeercert(True)  # binary form (DER)
            subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
            if not same_dn(subject, wanted):
                stream.close()
                raise CertificateNotListed(self._host, subject, wanted)
        return stream


class _ListedCertificates(httpcore.NetworkBackend):
    """httpcore's network backend with :class:`_CheckedStream`: each new TLS connection to a
    host is checked against the DN registered for it (:meth:`SourceClient.retrieve`)."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._wanted: dict[str, str] = {}

    def expect(self, host: str, dn: str) -> None:
        """Register the DN ``host`` must present on its next connections. A connection is
        checked when it opens: one kept alive (at most ``keepalive_expiry``, 5 s idle) was
        checked against the DN of its time, also on the list then."""
        with self._lock:
            self._wanted[host] = dn

    def wanted(self, host: str) -> str:
        with self._lock:
            return self._wanted.get(normalise_host(host), "")

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        return _CheckedStream(self._inner.connect_tcp(host, port, timeout, local_address,
                                                      socket_options), host, self.wanted)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        return self._inner.connect_unix_socket(path, timeout, socket_options)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class SourceClient:
    """One HTTP client (connection pool) for every Source; thread-safe."""

    def __init__(self, tls: SourceTls, timeout: float = 60.0) -> None:
        context = tls.context()
        self._backend = _ListedCertificates()
        transport = httpx.HTTPTransport(verify=context)
        # httpx builds its pool without a way to pass a network backend: the same pool with
        # ours, so that the DN check runs between the handshake and the request.
        transport._pool = httpcore.ConnectionPool(  # noqa: SLF001
            ssl_context=context, max_connections=100, max_keepalive_connections=20,
            keepalive_expiry=5.0, http1=True, http2=False, network_backend=self._backend)
        self._http = httpx.Client(transport=transport, timeout=httpx.Timeout(timeout),
                                  follow_redirects=False)

    @classmethod
    def from_settings(cls, settings) -> SourceClient:  # noqa: ANN001 - gateway.config.Settings
        cert = settings.consumer_source_client_cert or settings.dmp_client_cert
        key = (settings.consumer_source_client_key if settings.consumer_source_client_cert
               else settings.dmp_client_key)
        ca = settings.consumer_source_ca_bundle or settings.dmp_ca_bundle
        return cls(SourceTls(ca, cert, key), settings.consumer_source_timeout)

    def close(self) -> None:
        self._http.close()

    def retrieve(self, url: str, token: str, kos_uid: str,
                 on_part: Callable[[dict[str, str], Iterator[bytes]], None],
                 certificate_dn: str = "") -> int:
        """GET ``url`` (a series' RetrieveURL, or an instance under it) and give each part of
        the multipart answer to ``on_part(headers, chunks)``, which must consume the chunks.
        Return the number of parts. Raises :class:`SourceError`; :class:`SourceUntrusted`
        when ``certificate_dn`` is given and the server's certificate has another subject."""
        headers = {"Authorization": f"Bearer {token}", KOS_HEADER: kos_uid,
                   "Accept": accept_header()}
        try:
            host = normalise_host(urlsplit(url).hostname or "")
        except ValueError:
            host = ""
        self._backend.expect(host, certificate_dn)
        try:
            with self._http.stream("GET", url, headers=headers) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise _status_error(resp.status_code)
                try:
                    media, params = parse_media_type(resp.headers.get("content-type", ""))
                except ValueError:
                    media, params = "", {}
                if media != "multipart/related" or "boundary" not in params:
                    raise SourceRefused(f"réponse inattendue de la DRIMbox source "
                                        f"({media or 'sans type'})", resp.status_code)
                return _read_parts(resp.iter_bytes(), params["boundary"], on_part)
        except CertificateNotListed as exc:
            raise SourceUntrusted(
                f"certificat de la DRIMbox source refusé : {exc.subject} n'est pas le "
                f"certificat de l'opérateur inscrit sur la liste blanche ANS pour {exc.host} "
                f"({exc.wanted}) ; aucune donnée n'a été envoyée") from None
        except httpx.TimeoutException as exc:
            raise SourceUnavailable("la DRIMbox source ne répond plus (délai dépassé)") from exc
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc):
                raise SourceUnavailable("connexion TLS impossible avec la DRIMbox source "
                                        "(certificat refusé ou non reconnu)") from exc
            raise SourceUnavailable("la DRIMbox source est injoignable") from exc
        except (httpx.TransportError, MultipartError) as exc:
            raise SourceUnavailable("la DRIMbox source a interrompu l'envoi") from exc


def _status_error(status: int) -> SourceError:
    if status in _REFUSALS:
        return SourceRefused(_REFUSALS[status], status)
    if status >= 500 or status in (408, 429):
        return SourceUnavailable(f"la DRIMbox source est en erreur (HTTP {status})", status)
    return SourceRefused(f"la DRIMbox source refuse la demande (HTTP {status})", status)


def _read_parts(body: Iterator[bytes], boundary: str,
                on_part: Callable[[dict[str, str], Iterator[bytes]], None]) -> int:
    """Drive the push parser from the response body, presenting each part to ``on_part`` as a
    pull iterator (the part's chunks, read from the network as ``on_part`` asks for them)."""
    reader = MultipartReader(boundary)
    events = _events(reader, body)
    parts = 0
    for event in events:
        if isinstance(event, PartStart):
            parts += 1
            ended = [False]

            def chunks(ended: list[bool] = ended) -> Iterator[bytes]:
                for inner in events:
                    if isinstance(inner, PartData):
                        yield inner.data
                    elif isinstance(inner, PartEnd):
                        ended[0] = True
                        return
                    else:  # pragma: no cover - the parser ends a part before the next
                        raise MultipartError("part started before the previous one ended")
                raise MultipartError("body ended inside a part")

            on_part(event.headers, chunks())
            if not ended[0]:
                raise MultipartError("a part was not read to its end")
    return parts


def _events(reader: MultipartReader, body: Iterator[bytes]) -> Iterator:
    for chunk in body:
        yield from reader.feed(chunk)
    reader.close()
