"""R11: the ANS whitelist. The official TEST samples (tests/data/whitelist/PROVENANCE.md): the
signed list verifies to the IGC-Santé TEST chain, the unsigned one and every altered copy are
refused with a precise reason, the last good list survives a refused refresh and a restart,
and the list is fetched over https, by ``drimbox whitelist check`` and by ``drimbox serve``."""

from __future__ import annotations

import datetime as dt
import http.server
import os
import re
import ssl
import subprocess
import threading
import time
from pathlib import Path

import launcher
import pytest
from dmp_pki import make_pki
from whitelist_support import ANCHORS, INFORMATIF, SIGNED, UNSIGNED, make_signer, resign

from adapters.whitelist import WhitelistKeeper, WhitelistRefused, WhitelistVerifier
from adapters.whitelist.keeper import LAST_GOOD
from gateway.config import ConfigError, load_settings
from gateway.consumer.trust import Whitelist

DB3 = "https://db3.test.mesimagesmedicales.fr/drim/wado/studies/1.2.3"


def verifier(**kw) -> WhitelistVerifier:
    return WhitelistVerifier(ANCHORS, **kw)


def keeper(tmp_path: Path, source: Path | str, **kw) -> WhitelistKeeper:
    return WhitelistKeeper(str(source), kw.pop("verifier", verifier()), tmp_path / "state", **kw)


# --- the samples ---------------------------------------------------------------------------

def test_signed_ans_test_list_verifies_to_the_igc_sante_test_chain() -> None:
    doc = verifier().verify(SIGNED.read_bytes())
    assert doc.signer.startswith("CN=Liste Blanche DRIM-M,OU=318751275100020,")
    assert doc.chain == (
        doc.signer,
        "CN=TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS,OU=IGC-SANTE TEST,OU=0002 187512751,"
        "O=ASIP-SANTE,C=FR",
        "CN=TEST AC RACINE IGC-SANTE ELEMENTAIRE,OU=IGC-SANTE TEST,OU=0002 187512751,"
        "O=ASIP-SANTE,C=FR")
    assert doc.signing_time == "2026-09-17T08:27:36Z"
    listed = WhitelistKeeper(None, verifier(), Path("unused")).check(SIGNED.read_bytes())
    assert listed.generated_at == "2026-06-19T18:06:52Z" and len(listed.sources) == 17
    ans = listed.sources[0]
    assert (ans.identifier, ans.drimbox_host, ans.viewer_host, ans.name) == (
        "3", "db3.test.mesimagesmedicales.fr", "vi3.test.mesimagesmedicales.fr", "ANS")
    assert ans.certificate_dn.startswith("CN=db3.test.mesimagesmedicales.fr,OU=318751275100020")


def test_is_trusted_says_why() -> None:
    listed = WhitelistKeeper(None, verifier(), Path("unused")).check(SIGNED.read_bytes())
    assert listed.is_trusted(DB3)
    assert listed.is_trusted("https://DB178.test.mesimagesmedicales.fr.:8443/wado")
    cases = {
        "https://db999.test.mesimagesmedicales.fr/wado": "is not on the whitelist",
        "http://db3.test.mesimagesmedicales.fr/wado": "is not https",
        "https://vi3.test.mesimagesmedicales.fr/wado": "viewer host of 3 (ANS), not a DRIMbox",
        "https://evil.db3.test.mesimagesmedicales.fr/wado": "is not on the whitelist",
        "https://db3.test.mesimagesmedicales.fr.evil.example/": "is not on the whitelist",
        "https://db3.test.mesimagesmedicales.fr@evil.example/wado": "evil.example is not on",
        "/wado/studies": "not an absolute URL",
    }
    for url, why in cases.items():
        decision = listed.is_trusted(url)
        assert not decision and why in decision.reason, (url, decision.reason)
    assert listed.is_trusted_certificate(
        "CN=db3.test.mesimagesmedicales.fr, OU=318751275100020, O=AGENCE DU NUMERIQUE EN SANTE,"
        " ST=Paris (75), C=FR")
    assert not listed.is_trusted_certificate("CN=db3.test.mesimagesmedicales.fr,OU=1,C=FR")


def test_unsigned_list_is_refused() -> None:
    with pytest.raises(WhitelistRefused, match="not signed"):
        verifier().verify(UNSIGNED.read_bytes())


def test_informative_list_signer_expired_but_verifies_at_its_signing_time() -> None:
    """The older informative list was signed on 2024-07-12 by a certificate that expired on
    2026-09-12: refused now; it verifies at its signing time (a diagnosis, not a trust rule)."""
    data = INFORMATIF.read_bytes()
    with pytest.raises(WhitelistRefused, match="expired"):
        verifier().verify(data)
    at = dt.datetime(2024, 7, 12, 5, 37, 19, tzinfo=dt.UTC)
    doc = verifier(verification_time=at).verify(data)
    assert doc.signing_time == "2024-07-12T05:37:19Z"
    assert len(doc.chain) == 3  # the intermediate comes from the anchors, not the KeyInfo


def _swap_signature_value(data: bytes) -> bytes:
    other = re.search(rb"<ds:SignatureValue[^>]*>([^<]+)<", INFORMATIF.read_bytes()).group(1)
    return re.sub(rb"(<ds:SignatureValue[^>]*>)[^<]+<", lambda m: m.group(1) + other + b"<", data)


def _flip_signature_byte(data: bytes) -> bytes:
    m = re.search(rb"<ds:SignatureValue[^>]*>([A-Za-z0-9+/])", data)
    c = b"B" if m.group(1) == b"A" else b"A"
    return data[:m.start(1)] + c + data[m.end(1):]


def _swap_signature_element(data: bytes) -> bytes:
    other = re.search(rb"<ds:Signature .*</ds:Signature>", INFORMATIF.read_bytes(), re.S).group(0)
    return re.sub(rb"<ds:Signature .*</ds:Signature>", lambda m: other, data, flags=re.S)


def _remove_entry(data: bytes) -> bytes:
    return re.sub(rb"\s*<Domaine>\s*<Identifiant>175</Identifiant>.*?</Domaine>", b"", data,
                  count=1, flags=re.S)


def _inject_entry_in_signature(data: bytes) -> bytes:
    entry = (b'<Domaine xmlns="https://github.com/ansforge/DRIM-M_DATA"><Identifiant>666'
             b'</Identifiant><db>db666.evil.example</db></Domaine>')
    return data.replace(b"<ds:Object>", b"<ds:Object>" + entry, 1)


ALTERATIONS = {
    "one byte of a host name": (lambda d: d.replace(b"<db>db3.test", b"<db>db8.test", 1),
                                "does not match its signature"),
    "one entry removed": (_remove_entry, "does not match its signature"),
    "generation date changed": (
        lambda d: d.replace(b"2026-06-19T18:06:52Z", b"2026-12-01T18:06:52Z"),
        "does not match its signature"),
    "signing time changed": (lambda d: d.replace(b"2026-09-17T08:27:36Z", b"2026-09-18T08:27:36Z"),
                             "signed properties do not match"),
    "signature value from another list": (_swap_signature_value, "signature does not verify"),
    "one byte of the signature value": (_flip_signature_byte, "signature does not verify"),
    "signature element from another list": (_swap_signature_element,
                                            "signer certificate not trusted"),
    "entry injected inside the signature": (_inject_entry_in_signature, "inside ds:Object"),
    "a second signature": (lambda d: d.replace(b"</ListeBlancheDRIM-M>", re.search(
        rb"<ds:Signature .*</ds:Signature>", d, re.S).group(0) + b"</ListeBlancheDRIM-M>"),
        "2 ds:Signature elements"),
    "truncated": (lambda d: d[: len(d) // 2], "not well-formed XML"),
}


@pytest.mark.parametrize("alteration", ALTERATIONS, ids=list(ALTERATIONS))
def test_altered_copies_are_refused(alteration: str) -> None:
    alter, reason = ALTERATIONS[alteration]
    data = alter(SIGNED.read_bytes())
    assert data != SIGNED.read_bytes()
    with pytest.raises(WhitelistRefused, match=re.escape(reason)):
        verifier().verify(data)


def test_a_valid_signature_by_an_untrusted_signer_is_refused(tmp_path: Path) -> None:
    """Same subject CN/OU as the ANS signer, a correct signature, an unknown CA."""
    rogue = make_signer(tmp_path)
    data = resign(SIGNED.read_bytes().replace(b"<db>db3.test", b"<db>db8.test"), rogue)
    assert WhitelistVerifier(rogue.ca_pem).verify(data)  # the forgery itself is well made
    with pytest.raises(WhitelistRefused, match="signer certificate not trusted"):
        verifier().verify(data)


def test_wrong_signer_cn_or_ou_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WhitelistRefused, match="not by CN=Another,OU=318751275100020"):
        verifier(signer_cn="Another").verify(SIGNED.read_bytes())
    other = make_signer(tmp_path, ou="999999999999999")
    with pytest.raises(WhitelistRefused, match="not by CN=Liste Blanche DRIM-M,OU=318751275100020"):
        WhitelistVerifier(other.ca_pem).verify(resign(SIGNED.read_bytes(), other))


def test_revoked_or_unknown_revocation_status_is_refused(tmp_path: Path) -> None:
    from adapters.whitelist.source import fetch_crls

    rogue = make_signer(tmp_path)
    data = resign(SIGNED.read_bytes(), rogue)
    check = WhitelistVerifier(rogue.ca_pem)
    assert check.verify(data, fetch_crls([str(rogue.crl(tmp_path))]))
    cases = {
        "was revoked on": rogue.crl(tmp_path, revoked=True, name="revoked.crl"),
        "is not current": rogue.crl(tmp_path, stale=True, name="stale.crl"),
        "no valid CRL signed by CN=ROGUE TEST CA": rogue.crl(
            tmp_path, signing_key=make_signer(tmp_path / "other").ca_key, name="forged.crl"),
    }
    for reason, crl in cases.items():
        with pytest.raises(WhitelistRefused, match=reason):
            check.verify(data, fetch_crls([str(crl)]))
    with pytest.raises(WhitelistRefused, match="no valid CRL signed by CN=TEST AC IGC-SANTE"):
        verifier().verify(SIGNED.read_bytes(), [])  # the ANS list: its CRL is not offline

    feed = tmp_path / "feed.xml"
    feed.write_bytes(data)
    crl = tmp_path / "current.crl"
    crl.write_bytes(rogue.crl(tmp_path).read_bytes())
    k = keeper(tmp_path, feed, verifier=check, crls=[str(crl)])
    assert k.refresh().accepted
    crl.unlink()  # the CRL cannot be fetched: a refresh is refused, the list kept
    result = k.refresh()
    assert not result.accepted and "revocation status unknown" in result.reason
    assert k.is_trusted(DB3)
    restarted = keeper(tmp_path, feed, verifier=check, crls=[str(crl)])
    assert restarted.load_persisted() is not None  # checked when saved; CRL out of reach now
    crl.write_bytes(rogue.crl(tmp_path, revoked=True).read_bytes())
    assert keeper(tmp_path, feed, verifier=check, crls=[str(crl)]).load_persisted() is None


# --- the last good list --------------------------------------------------------------------

def test_last_good_list_kept_across_refused_refresh_and_restart(tmp_path: Path) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes(SIGNED.read_bytes())
    first = keeper(tmp_path, feed)
    assert not first.is_trusted(DB3)  # nothing verified yet
    assert first.refresh().accepted
    saved = tmp_path / "state" / LAST_GOOD
    assert saved.read_bytes() == SIGNED.read_bytes()

    for bad in (UNSIGNED.read_bytes(), SIGNED.read_bytes().replace(b"db3.test", b"db8.test")):
        feed.write_bytes(bad)
        result = first.refresh()
        assert not result.accepted and "keeping the list of 2026-06-19T18:06:52Z" in result.reason
        assert first.is_trusted(DB3) and first.last_error
        assert saved.read_bytes() == SIGNED.read_bytes()
    feed.unlink()
    assert "cannot fetch" in first.refresh().reason and first.is_trusted(DB3)

    restarted = keeper(tmp_path, feed)  # a restart: same data dir, source still broken
    assert restarted.load_persisted() is not None
    assert restarted.is_trusted(DB3)
    assert not restarted.refresh().accepted and restarted.is_trusted(DB3)


def test_saved_list_is_verified_again_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / LAST_GOOD).write_bytes(SIGNED.read_bytes().replace(b"db3.test", b"db8.test"))
    k = keeper(tmp_path, tmp_path / "missing.xml")
    assert k.load_persisted() is None
    decision = k.is_trusted(DB3)
    assert not decision and "does not match its signature" in decision.reason


def test_an_older_list_does_not_replace_a_newer_one(tmp_path: Path) -> None:
    rogue = make_signer(tmp_path)  # our own signer: two validly signed lists of different dates
    newer = resign(SIGNED.read_bytes(), rogue)
    older = resign(SIGNED.read_bytes().replace(b"2026-06-19T18:06:52Z", b"2025-01-01T00:00:00Z")
                   .replace(b"<db>db3.test", b"<db>db9.test"), rogue)
    feed = tmp_path / "feed.xml"
    k = keeper(tmp_path, feed, verifier=WhitelistVerifier(rogue.ca_pem))
    feed.write_bytes(newer)
    assert k.refresh().accepted
    feed.write_bytes(older)
    result = k.refresh()
    assert not result.accepted and "an old list is not accepted" in result.reason
    assert k.is_trusted(DB3)


def test_unsigned_list_only_in_development_mode(tmp_path: Path, caplog) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes(UNSIGNED.read_bytes())
    assert not keeper(tmp_path, feed).refresh().accepted
    dev = keeper(tmp_path, feed, allow_unsigned=True)
    with caplog.at_level("WARNING"):
        assert dev.refresh().accepted
    assert "UNSIGNED" in caplog.text
    assert dev.is_trusted(DB3) and dev.current.signer == ""
    feed.write_bytes(SIGNED.read_bytes().replace(b"db3.test", b"db8.test"))
    assert not dev.refresh().accepted  # a signed list is still verified
    # the unsigned copy saved in development is not trusted once the mode is off
    assert keeper(tmp_path, feed).load_persisted() is None


# --- https ---------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/listeblanche.xml":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture
def https_server(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.socket.settimeout(10)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", pki
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_https_source(tmp_path: Path, https_server) -> None:
    base, pki = https_server
    _Handler.body = SIGNED.read_bytes()
    k = keeper(tmp_path, f"{base}/listeblanche.xml", ca_bundle=pki.ca_cert, timeout=10)
    assert k.refresh().accepted and k.is_trusted(DB3)
    gone = k.refresh(f"{base}/moved.xml")
    assert not gone.accepted and "HTTP 404" in gone.reason and k.is_trusted(DB3)
    untrusted = keeper(tmp_path / "b", f"{base}/listeblanche.xml", timeout=10)  # system CAs
    result = untrusted.refresh()
    assert not result.accepted and "CERTIFICATE_VERIFY_FAILED" in result.reason
    plain = keeper(tmp_path / "c", f"http://127.0.0.1:{base.rsplit(':', 1)[1]}/listeblanche.xml")
    assert "only https" in plain.refresh().reason


# --- settings ------------------------------------------------------------------------------

def test_whitelist_settings_are_checked(tmp_path: Path, monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("DRIMBOX_")]:
        monkeypatch.delenv(key)
    with pytest.raises(ConfigError, match="whitelist_trust_anchors is not"):
        load_settings(whitelist_source=str(SIGNED))
    with pytest.raises(ConfigError, match="https:// only"):
        load_settings(whitelist_source="http://example.org/lb.xml", whitelist_trust_anchors=ANCHORS)
    with pytest.raises(ConfigError, match="local file"):
        load_settings(whitelist_source="https://example.org/lb.xml",
                      whitelist_insecure_allow_unsigned=True)
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_settings(whitelist_source=str(UNSIGNED), whitelist_insecure_allow_unsigned=True,
                      host="0.0.0.0", public_url="https://drimbox.example")
    with pytest.raises(ConfigError, match="a CRL is a file path or an http"):
        load_settings(whitelist_source=str(SIGNED), whitelist_trust_anchors=ANCHORS,
                      whitelist_crls=["ldap://annuaire-igc.esante.gouv.fr/cn=x"])
    ok = load_settings(whitelist_source=str(SIGNED), whitelist_trust_anchors=ANCHORS)
    assert ok.whitelist_refresh_hours == 24


# --- the command line and the serve process ------------------------------------------------

def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    full.update(env)
    return launcher.run(["whitelist", "check", *args],
                          env=full, timeout=120)


def test_cli_whitelist_check(tmp_path: Path) -> None:
    env = {"DRIMBOX_DATA_DIR": str(tmp_path / "data"),
           "DRIMBOX_WHITELIST_SOURCE": str(SIGNED),
           "DRIMBOX_WHITELIST_TRUST_ANCHORS": str(ANCHORS)}
    good = _cli("--url", DB3, env=env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "signed by  CN=Liste Blanche DRIM-M,OU=318751275100020" in good.stdout
    assert "entries    17" in good.stdout and "TRUSTED: " + DB3 in good.stdout
    assert good.stdout.rstrip().endswith("ACCEPTED")
    refused = _cli("--source", str(UNSIGNED), env=env)
    assert refused.returncode == 1 and "REFUSED: the list is not signed" in refused.stdout
    stranger = _cli("--url", "https://db999.example/wado", env=env)
    assert stranger.returncode == 1 and "NOT TRUSTED" in stranger.stdout
    expired = _cli("--source", str(INFORMATIF), env=env)
    assert expired.returncode == 1 and "expired" in expired.stdout
    at_signing = _cli("--source", str(INFORMATIF), "--at", "2024-07-12T05:37:19Z", env=env)
    assert at_signing.returncode == 0, at_signing.stdout
    no_anchors = _cli(env={**env, "DRIMBOX_WHITELIST_TRUST_ANCHORS": str(tmp_path / "none.pem")})
    assert no_anchors.returncode == 2 and "whitelist trust anchors" in no_anchors.stderr


def test_serve_fetches_and_saves_the_list(gateway_factory, tmp_path: Path) -> None:
    gw = gateway_factory(DRIMBOX_DICOM_WORKERS="0", DRIMBOX_WHITELIST_SOURCE=str(SIGNED),
                         DRIMBOX_WHITELIST_TRUST_ANCHORS=str(ANCHORS)).start()
    saved = gw.data_dir / "whitelist" / LAST_GOOD
    deadline = time.monotonic() + 30
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert saved.read_bytes() == SIGNED.read_bytes(), gw.log()
    gw.stop()
    assert "whitelist: list of 2026-06-19T18:06:52Z accepted: 17 DRIMbox" in gw.log()


def test_serve_audits_each_refresh_and_keeps_the_last_good_list(gateway_factory,
                                                                 tmp_path: Path) -> None:
    """A gateway whose whitelist source turns into an altered copy: the refresh is refused,
    audited (``whitelist_refresh`` denied, the reason and the list kept), and the last good
    list stays trusted across the restart."""
    altered = tmp_path / "altered.xml"
    altered.write_bytes(SIGNED.read_bytes().replace(b"db3.test", b"db9.test", 1))
    gw = gateway_factory(DRIMBOX_DICOM_WORKERS="0", DRIMBOX_WHITELIST_SOURCE=str(SIGNED),
                         DRIMBOX_WHITELIST_TRUST_ANCHORS=str(ANCHORS)).start()
    saved = gw.data_dir / "whitelist" / LAST_GOOD
    deadline = time.monotonic() + 30
    while not _refresh_audit(gw) and time.monotonic() < deadline:  # saved, then audited
        time.sleep(0.1)
    gw.stop()
    gw.extra_env["DRIMBOX_WHITELIST_SOURCE"] = str(altered)
    gw.start()
    deadline = time.monotonic() + 30
    while len(_refresh_audit(gw)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    gw.stop()
    first, second = _refresh_audit(gw)
    assert (first.outcome, first.principal_kind, first.subject) == (
        "allowed", "system", "whitelist-refresher")
    assert first.reason.startswith("list of 2026-06-19T18:06:52Z accepted: 17 DRIMbox")
    assert second.outcome == "denied" and "refused" in second.reason
    assert second.reason.endswith("keeping the list of 2026-06-19T18:06:52Z")
    assert saved.read_bytes() == SIGNED.read_bytes()  # the altered copy never replaced it


def _refresh_audit(gw) -> list:  # noqa: ANN001
    from sqlalchemy import create_engine, select

    from gateway.index.models import AuditEvent

    engine = create_engine(gw.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(AuditEvent).where(
                AuditEvent.action == "whitelist_refresh").order_by(AuditEvent.id)))
    finally:
        engine.dispose()


def test_serve_warns_loudly_about_unsigned_lists(gateway_factory) -> None:
    gw = gateway_factory(DRIMBOX_DICOM_WORKERS="0", DRIMBOX_WHITELIST_SOURCE=str(UNSIGNED),
                         DRIMBOX_WHITELIST_INSECURE_ALLOW_UNSIGNED="true").start()
    gw.stop()
    assert "whitelist_insecure_allow_unsigned is ON" in gw.log()


def test_domain_types_are_plain_values() -> None:
    empty = Whitelist(generated_at="2026-01-01T00:00:00Z", sources=())
    assert not empty.is_trusted(DB3)
