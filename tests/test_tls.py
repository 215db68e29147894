"""TLS on every listener (R12): HTTPS, DICOM TLS and MLLP over TLS, with the development PKI
(``drimbox pki init``, tests/dmp_pki.py), against real peers: dcmtk ``echoscu``/``storescu``
with ``+tls``, httpx, a Python ``ssl`` MLLP client.

* each listener accepts a client whose certificate the CA issued, and refuses a plain client,
  an expired certificate, a certificate from another CA, and no certificate where one is
  required; a refused DICOM or MLLP client is one log line naming the reason;
* the DICOM listener's TLS runs in the DICOM worker processes (each builds its context) and
  in the main process (``dicom_workers = 0``);
* a listener bound off loopback without TLS refuses to start (exit 2, naming the listener and
  its setting), unless the setting says a proxy terminates TLS; unusable certificates too.

TLS does not depend on the index: one back-end (SQLite).
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import Gateway
from dicom_factory import write_corpus
from dmp_pki import Pki
from dmp_support import pki  # noqa: F401 - the session's PKI
from peers import free_port, require_tool, storescu

from gateway.cli import main
from gateway.config import ConfigError, load_settings
from gateway.reports.mllp import ack_summary, client_context, send_message

MESSAGE = ("MSH|^~\\&|RIS_TEST|CENTRE_TEST|DRIMBOX|DRIMBOX|20260101120000||ORU^R01^ORU_R01|"
           "TLS0001|P|2.5\r")


@dataclass
class Tls:
    """The main gateway: TLS everywhere, DICOM in a worker process, HL7 on; client
    certificates required on DICOM and MLLP (the defaults), optional on HTTPS."""

    gw: Gateway
    hl7_port: int
    pki: Pki

    def server_trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca_cert))

    def https(self, cert: Path | None = None, key: Path | None = None) -> httpx.Client:
        ctx = self.server_trust()
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        return httpx.Client(base_url=self.gw.url, verify=ctx, timeout=10)

    def log_count(self, text: str) -> int:
        return self.gw.log_path.read_text(errors="replace").count(text)

    def await_log_count(self, text: str, count: int) -> int:
        """The count of ``text`` in the log once it reaches ``count`` (the client may have
        exited before the gateway wrote its line), or after 10 s."""
        deadline = time.monotonic() + 10
        while self.log_count(text) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.log_count(text)


def _tls_env(pki: Pki, **extra: str) -> dict[str, str]:
    return {"DRIMBOX_TLS_CERT": str(pki.server_cert), "DRIMBOX_TLS_KEY": str(pki.server_key),
            "DRIMBOX_TLS_CA_BUNDLE": str(pki.ca_cert), **extra}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Tls]:  # noqa: F811
    root = tmp_path_factory.mktemp("tls")
    hl7_port = free_port()
    gw = Gateway(root / "data", f"sqlite:///{root / 'index.sqlite'}", **_tls_env(
        pki, DRIMBOX_HL7_PORT=str(hl7_port), DRIMBOX_DICOM_WORKERS="1",
        DRIMBOX_HTTP_TLS_CLIENT_AUTH="optional"))
    gw.start(timeout=60)
    yield Tls(gw, hl7_port, pki)
    gw.stop()


def _dcmtk(tool: str, port: int, *args: str, files: tuple[Path, ...] = ()) -> \
        subprocess.CompletedProcess[str]:
    exe = require_tool(tool)
    return subprocess.run([exe, "-to", "10", "-ta", "10", "-td", "10", "-aec", "DRIMBOX", *args,
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def _with_cert(pki: Pki, which: str) -> list[str]:
    """dcmtk's TLS options: our client certificate ``which`` (client, expired_client,
    rogue_client), the server checked against the test CA."""
    return ["+tls", str(getattr(pki, f"{which}_key")), str(getattr(pki, f"{which}_cert")),
            "+cf", str(pki.ca_cert)]


# --- DICOM TLS ---------------------------------------------------------------------------


def test_dicom_tls_echo_and_store_with_the_ca_s_client_certificate(tls: Tls,
                                                                  tmp_path: Path) -> None:
    """echoscu and storescu over TLS with a certificate of the CA: accepted by the worker,
    stored, and the study is found over HTTPS with https URLs (the public URL follows)."""
    echo = _dcmtk("echoscu", tls.gw.dicom_port, *_with_cert(tls.pki, "client"))
    assert echo.returncode == 0, echo.stderr
    files = write_corpus(tmp_path / "c", 3, studies=1)
    storescu(files, tls.gw.dicom_port, workdir=tmp_path, extra=_with_cert(tls.pki, "client"))
    log = tls.gw.log_path.read_text(errors="replace")
    assert re.search(r"association from STORESCU \(127\.0\.0\.1\) over TLS, certificate "
                     r"CN=DRIMbox,OU=499700367909006,O=CENTRE IMAGERIE TEST", log), log[-3000:]
    worker = re.search(r"DICOM worker 1 ready", log)
    assert worker and "(TLS, client certificate required)" in log
    with tls.https() as http:
        studies = http.get("/dicom-web/studies", params={"includefield": "RetrieveURL"}).json()
    urls = [s["00081190"]["Value"][0] for s in studies]
    assert urls and all(u.startswith(f"https://127.0.0.1:{tls.gw.http_port}/dicom-web/studies/")
                        for u in urls), urls


@pytest.mark.parametrize(("client", "reason"), [
    ("plain", "wrong version number"),
    ("expired_client", "certificate has expired"),
    ("rogue_client", "unable to get local issuer certificate"),
    ("anonymous", "peer did not return a certificate"),
])
def test_dicom_tls_refuses(tls: Tls, client: str, reason: str) -> None:
    """A plain DICOM client, an expired certificate, one from another CA, or none: the
    handshake fails, the connection is closed, the reason is logged and counted."""
    before = tls.log_count("DICOM TLS handshake with 127.0.0.1 failed")
    special = {"plain": [], "anonymous": ["+tla", "+cf", str(tls.pki.ca_cert)]}
    args = special[client] if client in special else _with_cert(tls.pki, client)
    echo = _dcmtk("echoscu", tls.gw.dicom_port, *args)
    assert echo.returncode != 0, echo.stdout
    handshakes = tls.await_log_count("DICOM TLS handshake with 127.0.0.1 failed", before + 1)
    log = tls.gw.log_path.read_text(errors="replace")
    assert handshakes == before + 1, log[-2000:]
    last = log.split("DICOM TLS handshake")[-1]
    assert reason in last.split("connection closed: ")[1], log[-2000:]
    assert re.search(r'drimbox_dicom_connections_closed_total\{reason="tls"\} [1-9]',
                     tls.gw.metrics())


# --- HTTPS ---------------------------------------------------------------------------------


def test_https_serves_with_or_without_a_client_certificate_when_optional(tls: Tls) -> None:
    with tls.https() as http:
        assert http.get("/healthz").status_code == 200
    with tls.https(tls.pki.client_cert, tls.pki.client_key) as http:
        assert http.get("/healthz").status_code == 200
    # TLS 1.2 and 1.3 only: a client offering TLS 1.1 at most (allowed on its side by
    # security level 0) is refused; the same client with TLS 1.2 is served.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1
        for version, served in [(ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True)]:
            ctx = tls.server_trust()
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ctx.maximum_version = version
            with httpx.Client(verify=ctx, timeout=10) as http:
                try:
                    ok = http.get(f"{tls.gw.url}/healthz").status_code == 200
                except httpx.TransportError:
                    ok = False
            assert ok is served, version


@pytest.mark.parametrize("client", ["plain", "expired_client", "rogue_client"])
def test_https_refuses(tls: Tls, client: str) -> None:
    """Plain HTTP on the HTTPS port, an expired client certificate, one from another CA."""
    if client == "plain":
        with pytest.raises(httpx.TransportError), httpx.Client(timeout=10) as http:
            http.get(f"http://127.0.0.1:{tls.gw.http_port}/healthz")
        return
    with pytest.raises(httpx.TransportError), tls.https(
            getattr(tls.pki, f"{client}_cert"), getattr(tls.pki, f"{client}_key")) as http:
        http.get("/healthz")


# --- MLLP over TLS ---------------------------------------------------------------------------


def test_mllp_over_tls_acknowledges(tls: Tls) -> None:
    """A Python ssl socket with the CA's client certificate gets its ACK; so does ``drimbox
    hl7 send --tls-*``."""
    ctx = client_context(str(tls.pki.ca_cert), str(tls.pki.client_cert),
                         str(tls.pki.client_key))
    ack = ack_summary(send_message(MESSAGE, "127.0.0.1", tls.hl7_port, timeout=30,
                                   ssl_context=ctx))
    assert ack["control_id"] == "TLS0001" and ack["ack"] in ("AA", "AE", "AR"), ack
    assert "MLLP over TLS from 127.0.0.1, certificate CN=DRIMbox" in tls.gw.log()
    message = tls.gw.data_dir.parent / "message.hl7"
    message.write_text(MESSAGE.replace("TLS0001", "TLS0002"))
    result = CliRunner().invoke(main, [
        "hl7", "send", "--port", str(tls.hl7_port), "--timeout", "30",
        "--tls-ca", str(tls.pki.ca_cert), "--tls-cert", str(tls.pki.client_cert),
        "--tls-key", str(tls.pki.client_key), str(message)])
    assert "MSA|" in result.output and "|TLS0002" in result.output, result.output


@pytest.mark.parametrize(("client", "reason"), [
    ("plain", "wrong version number"),
    ("expired_client", "certificate has expired"),
    ("rogue_client", "unable to get local issuer certificate"),
    ("anonymous", "peer did not return a certificate"),
])
def test_mllp_over_tls_refuses(tls: Tls, client: str, reason: str) -> None:
    before = tls.log_count("MLLP TLS handshake with 127.0.0.1 failed")
    if client == "plain":
        ctx = None
    elif client == "anonymous":
        ctx = client_context(str(tls.pki.ca_cert))
    else:
        ctx = client_context(str(tls.pki.ca_cert), str(getattr(tls.pki, f"{client}_cert")),
                             str(getattr(tls.pki, f"{client}_key")))
    with pytest.raises(OSError):
        send_message(MESSAGE, "127.0.0.1", tls.hl7_port, timeout=30, ssl_context=ctx)
    handshakes = tls.await_log_count("MLLP TLS handshake with 127.0.0.1 failed", before + 1)
    log = tls.gw.log()
    assert handshakes == before + 1, log
    assert reason in log.split("MLLP TLS handshake")[-1].split("connection closed: ")[1], log


# --- the other client-certificate rules, DICOM in the main process ----------------------------


def test_required_on_https_none_on_dicom(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    """``http_tls_client_auth = required``: no certificate, no HTTPS. ``dicom_tls_client_auth =
    none``: an anonymous TLS client is served, a plain one still refused (SCP in the main
    process, ``dicom_workers = 0``)."""
    gw = Gateway(tmp_path / "data", f"sqlite:///{tmp_path / 'index.sqlite'}", **_tls_env(
        pki, DRIMBOX_DICOM_WORKERS="0", DRIMBOX_HTTP_TLS_CLIENT_AUTH="required",
        DRIMBOX_DICOM_TLS_CLIENT_AUTH="none"))
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    gw.http_verify = ctx
    gw.start(timeout=60)
    try:
        with pytest.raises(httpx.TransportError), httpx.Client(
                verify=ssl.create_default_context(cafile=str(pki.ca_cert)), timeout=10) as http:
            http.get(f"{gw.url}/healthz")
        assert httpx.get(f"{gw.url}/healthz", verify=ctx, timeout=10).status_code == 200
        echo = _dcmtk("echoscu", gw.dicom_port, "+tla", "+cf", str(pki.ca_cert))
        assert echo.returncode == 0, echo.stderr
        assert _dcmtk("echoscu", gw.dicom_port).returncode != 0
        assert "DICOM TLS handshake with 127.0.0.1 failed, connection closed: wrong version" \
            in gw.log()
    finally:
        gw.stop()


# --- start-up refusals ------------------------------------------------------------------------


def _serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    base.update(DRIMBOX_DATA_DIR=str(tmp_path / "data"), DRIMBOX_DICOM_PORT=str(free_port()),
                DRIMBOX_HTTP_PORT=str(free_port()), DRIMBOX_DICOM_WORKERS="0", **env)
    return subprocess.run([sys.executable, "-m", "gateway.cli", "serve"], env=base,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("env", "listener", "setting"), [
    ({"DRIMBOX_HOST": "0.0.0.0", "DRIMBOX_HTTP_HOST": "127.0.0.1"}, "DICOM", "dicom_tls"),
    ({"DRIMBOX_HTTP_HOST": "0.0.0.0", "DRIMBOX_PUBLIC_URL": "https://drimbox.example"},
     "HTTP", "http_tls"),
    ({"DRIMBOX_HL7_PORT": "2575", "DRIMBOX_HL7_HOST": "0.0.0.0"}, "HL7 MLLP", "hl7_tls"),
])
def test_a_listener_off_loopback_without_tls_does_not_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], listener: str,
        setting: str) -> None:
    """Exit 2 before anything listens, naming the listener and its setting; the same with the
    setting saying a proxy terminates TLS is accepted."""
    for name in [k for k in os.environ if k.startswith("DRIMBOX_")]:
        monkeypatch.delenv(name)
    done = _serve(env, tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"the {listener} listener on 0.0.0.0" in done.stderr, done.stderr
    assert f"{setting} is off" in done.stderr and f"{setting} = proxy" in done.stderr
    settings = {k.removeprefix("DRIMBOX_").lower(): v for k, v in env.items()}
    assert load_settings(**settings, **{setting: "proxy"}).listener_tls(
        setting.removesuffix("_tls")) == "proxy"


@pytest.mark.parametrize(("cert", "key", "message"), [
    ("expired_server_cert", "expired_server_key", "expired on"),
    ("server_cert", "client_key", "cannot be used"),
])
def test_unusable_certificate_does_not_start(tmp_path: Path, pki: Pki, cert: str,  # noqa: F811
                                             key: str, message: str) -> None:
    done = _serve({"DRIMBOX_TLS_CERT": str(getattr(pki, cert)),
                   "DRIMBOX_TLS_KEY": str(getattr(pki, key)),
                   "DRIMBOX_TLS_CA_BUNDLE": str(pki.ca_cert)}, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "TLS configuration: tls_cert" in done.stderr and message in done.stderr, done.stderr


def test_tls_settings_rules(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:  # noqa: F811
    for name in [k for k in os.environ if k.startswith("DRIMBOX_")]:
        monkeypatch.delenv(name)
    s = load_settings()
    assert [s.listener_tls(n) for n in ("http", "dicom", "hl7")] == ["off"] * 3
    assert s.effective_public_url.startswith("http://")
    files = {"tls_cert": pki.server_cert, "tls_key": pki.server_key, "tls_ca_bundle": pki.ca_cert}
    s = load_settings(**files, hl7_port=2575)
    assert [s.listener_tls(n) for n in ("http", "dicom", "hl7")] == ["on"] * 3
    assert s.effective_public_url == "https://127.0.0.1:8080"
    assert load_settings(**files, dicom_tls="false").listener_tls("dicom") == "off"
    monkeypatch.setenv("DRIMBOX_HL7_TLS", "true")
    assert load_settings(**files).hl7_tls == "on"
    monkeypatch.delenv("DRIMBOX_HL7_TLS")
    for overrides, text in [
        ({"tls_cert": pki.server_cert}, "tls_cert and tls_key go together"),
        ({"http_tls": "on"}, "http_tls = on needs tls_cert and tls_key"),
        ({"tls_cert": pki.server_cert, "tls_key": pki.server_key},
         "dicom_tls_client_auth = required needs tls_ca_bundle"),
        ({"dicom_tls": "maybe"}, "dicom_tls"),
    ]:
        with pytest.raises(ConfigError, match=text):
            load_settings(**overrides)
    # A consumer-only DRIMbox opens no DICOM listener: its host is not judged.
    assert load_settings(roles="consumer", host="0.0.0.0", http_host="127.0.0.1").roles == \
        "consumer"


# --- Mutual TLS between DRIMboxes: the Source checks the consumer's DN (R11, R12) -------------


def test_source_serves_a_consumer_whose_certificate_dn_is_on_the_whitelist(
        tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    """``consumer_client_certificate = whitelisted``: a bearer-token request (a consumer
    DRIMbox) over HTTPS reaches the access policy only with a client certificate whose
    subject DN is an operator DN of the ANS whitelist; no certificate, or a certificate of
    the same CA whose DN is not listed, is 403, audited with the DN."""
    from access_support import gateway_psc_env, start_psc_sim
    from cryptography import x509
    from sqlalchemy import create_engine, select
    from test_consumer_retrieve import _whitelist

    from gateway.index.models import AuditEvent

    def dn(cert: Path) -> str:
        return x509.load_pem_x509_certificate(cert.read_bytes()).subject.rfc4514_string()

    listed = _whitelist(tmp_path / "whitelist.xml", "conso.example", dn(pki.client_cert))
    sim = start_psc_sim()
    gw = Gateway(tmp_path / "data", f"sqlite:///{tmp_path / 'index.sqlite'}", **_tls_env(
        pki, DRIMBOX_DICOM_WORKERS="0", DRIMBOX_HTTP_TLS_CLIENT_AUTH="optional",
        DRIMBOX_CONSUMER_CLIENT_CERTIFICATE="whitelisted",
        DRIMBOX_WHITELIST_SOURCE=str(listed), DRIMBOX_WHITELIST_INSECURE_ALLOW_UNSIGNED="true",
        **gateway_psc_env(sim, "jwt")))
    try:
        gw.start(timeout=60)
        https = Tls(gw, 0, pki)
        token = {"Authorization": f"Bearer {sim.token()}"}
        with https.https(pki.client_cert, pki.client_key) as consumer:
            # Past the certificate: the access policy's own rule answers (a consumer names
            # the KOS it was given, R10).
            r = consumer.get("/dicom-web/studies", headers=token)
            assert r.status_code == 403 and "kos_header_missing" in r.text, r.text
        with https.https() as bare:
            r = bare.get("/dicom-web/studies", headers=token)
            assert r.status_code == 403 and "client certificate" in r.text
        with https.https(pki.sign_cert, pki.sign_key) as other:  # same CA, DN not listed
            r = other.get("/dicom-web/studies", headers=token)
            assert r.status_code == 403 and "not on the whitelist" in r.text
    finally:
        gw.stop()
        sim.stop()
    engine = create_engine(gw.database_url)
    try:
        with engine.connect() as conn:
            reasons = [r.reason for r in conn.execute(
                select(AuditEvent).where(AuditEvent.outcome == "denied").order_by(AuditEvent.id))]
    finally:
        engine.dispose()
    assert reasons == ["kos_header_missing", "no_client_certificate",
                       f"client_certificate_not_whitelisted: {dn(pki.sign_cert)}"]
