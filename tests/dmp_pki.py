"""A throw-away test PKI (R7): a CA, a TLS server certificate for 127.0.0.1/localhost, a client
ORG authentication certificate and an ORG signature certificate, written as PEM files."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    sign_cert: Path
    sign_key: Path
    rogue_ca_cert: Path
    rogue_sign_cert: Path
    rogue_sign_key: Path


def _name(cn: str, ou: str = "") -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CENTRE IMAGERIE TEST")]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(subject: x509.Name, key, issuer: x509.Name, issuer_key, *, ca: bool = False,
          eku=None, san=None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                            critical=True)
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), False)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key=None, key_path: Path | None = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None and key_path is not None:
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name = _key(), _name("TEST AC IGC-SANTE ORGANISATIONS", "IGC-SANTE TEST")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    srv_key = _key()
    srv = _cert(_name("localhost"), srv_key, ca_name, ca_key,
                eku=[ExtendedKeyUsageOID.SERVER_AUTH],
                san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cli_key = _key()
    cli = _cert(_name("DRIMbox", "499700367909006"), cli_key, ca_name, ca_key,
                eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    sig_key = _key()
    sig = _cert(_name("DRIMbox signature", "499700367909006"), sig_key, ca_name, ca_key)
    rogue_key, rogue_name = _key(), _name("ROGUE CA")
    rogue = _cert(rogue_name, rogue_key, rogue_name, rogue_key, ca=True)
    rsig_key = _key()
    rsig = _cert(_name("DRIMbox signature", "499700367909006"), rsig_key, rogue_name, rogue_key)
    p = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key",
            d / "sign.pem", d / "sign.key", d / "rogue-ca.pem", d / "rogue-sign.pem",
            d / "rogue-sign.key")
    _write(p.ca_cert, ca)
    _write(p.server_cert, srv, srv_key, p.server_key)
    _write(p.client_cert, cli, cli_key, p.client_key)
    _write(p.sign_cert, sig, sig_key, p.sign_key)
    _write(p.rogue_ca_cert, rogue)
    _write(p.rogue_sign_cert, rsig, rsig_key, p.rogue_sign_key)
    return p
