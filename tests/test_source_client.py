"""The WADO-RS client towards Source DRIMboxes (adapters/source/wado.py) against a real TLS
server asking for the client certificate (R7): what it sends (the PSC token as Bearer,
``KOS-SOPInstanceUID``, the CI-SIS ``Accept`` list), and R11's certificate check: when the
whitelist names the operator's certificate DN for the host, a server presenting another
subject is refused after the handshake and before the request, so that it never sees the
practitioner's token. The DN comparison ignores the order of the attributes."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator

import pytest
from dmp_pki import SERVER_DN, Pki, make_pki

from adapters.source.wado import SourceClient, SourceTls
from gateway.consumer.source import SourceRefused, SourceUnavailable, SourceUntrusted
from gateway.consumer.trust import same_dn

BOUNDARY = "drimbox-test-boundary"


class _Source(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(dict(self.headers))
        if self.status != 200:
            self.send_response(self.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in (b"first instance", b"second instance")) + f"--{BOUNDARY}--\r\n".encode()
        self.send_response(200)
        self.send_header("Content-Type",
                         f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Pki]]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Source)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as a Source asks (R7)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{server.server_address[1]}", pki
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def client(source: tuple[str, Pki]) -> Iterator[SourceClient]:
    _url, pki = source
    _Source.seen, _Source.status = [], 200
    c = SourceClient(SourceTls(pki.ca_cert, pki.client_cert, pki.client_key), timeout=10)
    yield c
    c.close()


def _read(client: SourceClient, url: str, dn: str = "") -> list[bytes]:
    parts: list[bytes] = []
    client.retrieve(url, "the-psc-token", "1.2.3.4", lambda _h, chunks: parts.append(
        b"".join(chunks)), dn)
    return parts


@pytest.mark.parametrize("dn", [
    "", SERVER_DN, "C=FR,ST=Paris (75),O=CENTRE IMAGERIE TEST,OU=499700367909006,CN=localhost",
    "cn=localhost, ou=499700367909006, o=CENTRE IMAGERIE TEST, st=Paris (75), c=FR"])
def test_the_listed_certificate_or_none_listed(source, client: SourceClient, dn: str) -> None:
    url, _pki = source
    assert _read(client, f"{url}/dicom-web/studies/1/series/2", dn) == [
        b"first instance", b"second instance"]
    (headers,) = _Source.seen
    assert headers["Authorization"] == "Bearer the-psc-token"
    assert headers["KOS-SOPInstanceUID"] == "1.2.3.4"
    assert headers["Accept"].startswith(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.70;'
        " q=0.9")


@pytest.mark.parametrize("dn", ["CN=db3.test.mesimagesmedicales.fr,OU=318751275100020,O=ANS,C=FR",
                                "CN=localhost,OU=499700367909006,O=ANOTHER CENTRE,"
                                "ST=Paris (75),C=FR", "CN=localhost"])
def test_another_certificate_never_gets_the_token(source, client: SourceClient,
                                                  dn: str) -> None:
    url, _pki = source
    with pytest.raises(SourceUntrusted) as refused:
        _read(client, f"{url}/dicom-web/studies/1/series/2", dn)
    assert "CN=localhost" in refused.value.message and dn in refused.value.message
    assert isinstance(refused.value, SourceRefused)  # not retried
    assert _Source.seen == []  # the request was never written
    # The same client, the host's listed DN right again (the next whitelist): it works.
    assert len(_read(client, f"{url}/dicom-web/studies/1/series/2", SERVER_DN)) == 2


def test_refusals_by_status(source, client: SourceClient) -> None:
    url, _pki = source
    for status in (401, 403, 404):
        _Source.status = status
        with pytest.raises(SourceRefused) as refused:
            _read(client, f"{url}/x", SERVER_DN)
        assert f"({status})" in refused.value.message and refused.value.status == status


def test_same_dn() -> None:
    assert same_dn("CN=a,OU=1,O=b,C=FR", "C=FR, O=b, OU=1, CN=a")
    assert same_dn("cn=a,c=FR", "CN=a,C=FR")
    assert not same_dn("CN=a,C=FR", "CN=a,O=b,C=FR")
    assert not same_dn("CN=a,C=FR", "CN=A,C=FR")  # values compare as written


def test_a_client_without_certificate_is_refused_by_the_source(source) -> None:
    url, pki = source
    _Source.seen = []
    bare = SourceClient(SourceTls(pki.ca_cert, None, None), timeout=10)
    try:
        with pytest.raises(SourceUnavailable):
            _read(bare, f"{url}/x")
    finally:
        bare.close()
    assert _Source.seen == []  # the Source's TLS refused it before any request was read
