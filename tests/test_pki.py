"""``drimbox pki init``: the development PKI (a test CA; server, client and signature
certificates; with ``--with-negative`` expired ones and ones from another CA), checked with
OpenSSL's own verification, and the guide it prints (which setting takes which file). The
tests' PKI (tests/dmp_pki.py) is the same code; tests/test_tls.py uses it against every
listener."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from peers import require_tool

from gateway.cli import main


def test_pki_init_writes_a_chain_and_says_which_setting_takes_which_file(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = CliRunner().invoke(main, ["pki", "init", str(out), "--host", "db1.example.org",
                                       "--host", "10.1.2.3", "--days", "10",
                                       "--structure-id", "318751275100020", "--with-negative"])
    assert result.exit_code == 0, result.output
    for setting, name in [("tls_cert", "server.pem"), ("tls_key", "server.key"),
                          ("tls_ca_bundle", "ca.pem"), ("dmp_client_cert", "client.pem"),
                          ("dmp_client_key", "client.key"), ("dmp_ca_bundle", "ca.pem"),
                          ("dmp_sign_cert", "sign.pem"), ("dmp_sign_key", "sign.key")]:
        assert f'{setting} = "{out / name}"' in result.output, setting
    assert f"--tls-cert {out / 'server.pem'}" in result.output  # dmp-sim, psc-sim
    for setting, name in [("psc_ca_bundle", "ca.pem"), ("psc_client_cert", "client.pem"),
                          ("psc_client_key", "client.key")]:
        assert f'{setting} = "{out / name}"' in result.output, setting
    client_dn = x509.load_pem_x509_certificate((out / "client.pem").read_bytes()).subject
    assert f"--client-dn 'drimbox={client_dn.rfc4514_string()}'" in result.output
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    dn = "CN=db1.example.org,OU=318751275100020,O=CENTRE IMAGERIE TEST,ST=Paris (75),C=FR"
    assert server.subject.rfc4514_string() == dn and dn in result.output
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in san] == ["db1.example.org", "10.1.2.3"]
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 10
    for key in out.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    # Each certificate chains to its CA (OpenSSL's own verification, as a TLS peer does).
    for leaf, ca, ok in [("client", "ca", True), ("server", "ca", True), ("sign", "ca", True),
                         ("expired-client", "ca", False), ("other-client", "ca", False),
                         ("other-client", "other-ca", True)]:
        done = subprocess.run([require_tool("openssl"), "verify", "-CAfile", str(out / f"{ca}.pem"),
                               str(out / f"{leaf}.pem")], capture_output=True, text=True)
        assert (done.returncode == 0) is ok, (leaf, ca, done.stdout, done.stderr)
    again = CliRunner().invoke(main, ["pki", "init", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    assert CliRunner().invoke(main, ["pki", "init", str(out), "--force"]).exit_code == 0
