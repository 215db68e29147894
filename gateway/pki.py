"""``drimbox pki init DIR``: a development PKI, so that a vendor can run the whole chain
(the gateway's TLS listeners, ``drimbox dmp-sim``, ``drimbox psc-sim``, a consumer DRIMbox,
dcmtk and curl as clients) on one machine in a minute. NOT for production: a centre's
certificates come from IGC-Santé (ORG authentication and signature certificates, R7, and a
server certificate).

The certificates imitate IGC-Santé's: RSA 2048 and SHA-256, and a subject DN of the shape the
ANS whitelist gives as ``DNCertificatOperateur`` (``CN=<host>,OU=<structure id>,O=<centre>,
ST=<département>,C=FR``). What the directory holds:

=====================  =====================================================================
``ca.pem``/``ca.key``  the test CA (a self-signed root: every certificate below chains to it)
``server.pem``/``.key``  TLS server certificate (serverAuth) for every host given (DNS or IP
                       subject alternative names; CN = the first host): the gateway's HTTPS,
                       DICOM TLS and MLLP listeners, ``dmp-sim``, ``psc-sim``, a Source's
                       DICOMweb
``client.pem``/``.key``  ORG *authentication* certificate (clientAuth): our TLS client
                       certificate towards the DMP, PSC (``tls_client_auth``), Source
                       DRIMboxes and the MSSanté SMTP server (the applicative mailbox's),
                       and the one a test modality, RIS or consumer presents to our listeners
``sign.pem``/``.key``  ORG *signature* certificate: the VIHF (R6) and Signature01 (R5)
=====================  =====================================================================

With ``--with-negative``, certificates that must be refused: ``expired-server``,
``expired-client`` (issued by the CA, no longer valid), and ``other-ca.pem`` with its
``other-server``, ``other-client`` and ``other-sign`` (valid, but from another CA).

Keys are unencrypted PKCS#8 PEM files readable by their owner only (0600).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_CENTRE = "CENTRE IMAGERIE TEST"
DEFAULT_STRUCTURE_ID = "499700367909006"
DEFAULT_STATE = "Paris (75)"
DEFAULT_CLIENT_CN = "DRIMbox"
CA_CN = "DRIMBOX DEV AC ORGANISATIONS"
#: The PSC client id the guide registers at ``drimbox psc-sim`` (its default client's).
PSC_CLIENT_ID = "drimbox"
OTHER_CA_CN = "DRIMBOX DEV AUTRE AC"


@dataclass(frozen=True)
class Negative:
    """Certificates a peer must refuse."""

    expired_server_cert: Path
    expired_server_key: Path
    expired_client_cert: Path
    expired_client_key: Path
    other_ca_cert: Path
    other_server_cert: Path
    other_server_key: Path
    other_client_cert: Path
    other_client_key: Path
    other_sign_cert: Path
    other_sign_key: Path


@dataclass(frozen=True)
class DevPki:
    """The files :func:`init_pki` wrote, and the subject DNs of the certificates."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    sign_cert: Path
    sign_key: Path
    server_dn: str
    client_dn: str
    sign_dn: str
    hosts: tuple[str, ...]
    negative: Negative | None = None


class PkiError(ValueError):
    """A wrong option (a host that is neither a DNS name nor an IP, files in the way)."""


def subject(cn: str, *, centre: str, structure_id: str, state: str) -> x509.Name:
    """``CN=<cn>,OU=<structure id>,O=<centre>,ST=<state>,C=FR`` (RFC 4514 order; empty
    attributes are left out)."""
    attrs = [(NameOID.COUNTRY_NAME, "FR"), (NameOID.STATE_OR_PROVINCE_NAME, state),
             (NameOID.ORGANIZATION_NAME, centre), (NameOID.ORGANIZATIONAL_UNIT_NAME, structure_id),
             (NameOID.COMMON_NAME, cn)]
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs if value])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            label = host.rstrip(".")
            if not label or any(not part or len(part) > 63 for part in label.split(".")) or not all(
                    c.isalnum() or c in "-.*" for c in label):
                raise PkiError(f"{host!r} is neither a DNS name nor an IP address") from None
            names.append(x509.DNSName(label))
    return names


def _certificate(name: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name,
                 issuer_key: rsa.RSAPrivateKey, *, not_before: dt.datetime,
                 not_after: dt.datetime, kind: str,
                 alt_names: list[x509.GeneralName] | None = None) -> x509.Certificate:
    public = key.public_key()
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(public)
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
    if kind == "ca":
        return (b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(issuer_key, hashes.SHA256()))
    b = (b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer_key.public_key()), critical=False))
    signing = kind == "sign"
    b = b.add_extension(x509.KeyUsage(
        digital_signature=True, content_commitment=signing, key_encipherment=not signing,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False), critical=True)
    if kind == "server":
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    elif kind == "client":
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    if alt_names:
        b = b.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


BASE_FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key",
              "sign.pem", "sign.key")
NEGATIVE_FILES = ("expired-server.pem", "expired-server.key", "expired-client.pem",
                  "expired-client.key", "other-ca.pem", "other-server.pem", "other-server.key",
                  "other-client.pem", "other-client.key", "other-sign.pem", "other-sign.key")


def init_pki(directory: Path, *, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = 365,
             centre: str = DEFAULT_CENTRE, structure_id: str = DEFAULT_STRUCTURE_ID,
             state: str = DEFAULT_STATE, client_cn: str = DEFAULT_CLIENT_CN,
             with_negative: bool = False, overwrite: bool = False) -> DevPki:
    """Write a test CA and its server, client and signature certificates into ``directory``
    (created if needed). Existing files are an error unless ``overwrite``."""
    if days < 1:
        raise PkiError(f"validity of {days} days: at least 1")
    hosts = tuple(h for h in (h.strip() for h in hosts) if h) or DEFAULT_HOSTS
    alt = _alt_names(hosts)
    directory.mkdir(parents=True, exist_ok=True)
    files = BASE_FILES + (NEGATIVE_FILES if with_negative else ())
    present = [f for f in files if (directory / f).exists()]
    if present and not overwrite:
        raise PkiError(f"{directory} already holds {', '.join(present)} (--force replaces them)")

    def name(cn: str) -> x509.Name:
        return subject(cn, centre=centre, structure_id=structure_id, state=state)

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)
    ca_key = _key()
    ca_name = subject(CA_CN, centre="DRIMBOX DEV PKI", structure_id="NON PRODUCTION", state="")
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, not_before=start,
                      not_after=end + dt.timedelta(days=1), kind="ca")
    d = directory
    _write_cert(d / "ca.pem", ca)
    _write_key(d / "ca.key", ca_key)
    issued: dict[str, x509.Certificate] = {}
    for stem, cn, kind in (("server", hosts[0], "server"), ("client", client_cn, "client"),
                           ("sign", f"{client_cn} signature", "sign")):
        key = _key()
        cert = _certificate(name(cn), key, ca_name, ca_key, not_before=start, not_after=end,
                            kind=kind, alt_names=alt if kind == "server" else None)
        _write_cert(d / f"{stem}.pem", cert)
        _write_key(d / f"{stem}.key", key)
        issued[stem] = cert
    negative = None
    if with_negative:
        negative = _negative(d, name, ca_name, ca_key, hosts[0], client_cn, alt, now, days)
    return DevPki(
        directory=d, ca_cert=d / "ca.pem", ca_key=d / "ca.key",
        server_cert=d / "server.pem", server_key=d / "server.key",
        client_cert=d / "client.pem", client_key=d / "client.key",
        sign_cert=d / "sign.pem", sign_key=d / "sign.key",
        server_dn=issued["server"].subject.rfc4514_string(),
        client_dn=issued["client"].subject.rfc4514_string(),
        sign_dn=issued["sign"].subject.rfc4514_string(),
        hosts=hosts, negative=negative,
    )


def _negative(d: Path, name, ca_name: x509.Name, ca_key: rsa.RSAPrivateKey,  # noqa: ANN001
              host: str, client_cn: str, alt: list[x509.GeneralName], now: dt.datetime,
              days: int) -> Negative:
    """Expired certificates from the CA, and valid ones from another CA."""
    gone_from, gone_until = now - dt.timedelta(days=days + 2), now - dt.timedelta(days=1)
    for stem, cn, kind in (("expired-server", host, "server"),
                           ("expired-client", client_cn, "client")):
        key = _key()
        _write_cert(d / f"{stem}.pem", _certificate(
            name(cn), key, ca_name, ca_key, not_before=gone_from, not_after=gone_until,
            kind=kind, alt_names=alt if kind == "server" else None))
        _write_key(d / f"{stem}.key", key)
    other_key = _key()
    other_name = subject(OTHER_CA_CN, centre="DRIMBOX DEV PKI", structure_id="NON PRODUCTION",
                         state="")
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=days)
    _write_cert(d / "other-ca.pem", _certificate(other_name, other_key, other_name, other_key,
                                                 not_before=start, not_after=end, kind="ca"))
    for stem, cn, kind in (("other-server", host, "server"), ("other-client", client_cn, "client"),
                           ("other-sign", f"{client_cn} signature", "sign")):
        key = _key()
        _write_cert(d / f"{stem}.pem", _certificate(
            name(cn), key, other_name, other_key, not_before=start, not_after=end, kind=kind,
            alt_names=alt if kind == "server" else None))
        _write_key(d / f"{stem}.key", key)
    return Negative(*(d / f for f in NEGATIVE_FILES))


def settings_guide(pki: DevPki) -> str:
    """What ``drimbox pki init`` prints: which setting or option takes which file."""
    p = {k: str(v.resolve()) for k, v in vars(pki).items() if isinstance(v, Path)}
    host = pki.hosts[0]
    url_host = f"[{host}]" if ":" in host else host
    lines = [
        f"Development PKI written to {p['directory']} (NOT for production).",
        "",
        "# drimbox.toml: TLS on the gateway's listeners (HTTPS, DICOM, MLLP; R12)",
        f'tls_cert = "{p["server_cert"]}"',
        f'tls_key = "{p["server_key"]}"',
        f'tls_ca_bundle = "{p["ca_cert"]}"          # CAs of the client certificates we accept',
        f'public_url = "https://{url_host}:8080"',
        "# towards the DMP (mutual TLS, R7) and Source DRIMboxes, and the signatures (R5, R6)",
        f'dmp_client_cert = "{p["client_cert"]}"',
        f'dmp_client_key = "{p["client_key"]}"',
        f'dmp_ca_bundle = "{p["ca_cert"]}"',
        f'dmp_sign_cert = "{p["sign_cert"]}"',
        f'dmp_sign_key = "{p["sign_key"]}"',
        "# PSC (the simulator below), our client authenticated by its certificate (R21)",
        f'psc_issuer = "https://{url_host}:8180/auth/realms/esante-wallet"',
        f'psc_client_id = "{PSC_CLIENT_ID}"',
        'psc_client_auth = "tls_client_auth"',
        f'psc_ca_bundle = "{p["ca_cert"]}"',
        f'psc_client_cert = "{p["client_cert"]}"',
        f'psc_client_key = "{p["client_key"]}"',
        "# MSSanté: the applicative mailbox's certificate after STARTTLS (docs/mssante.md)",
        f'mssante_client_cert = "{p["client_cert"]}"',
        f'mssante_client_key = "{p["client_key"]}"',
        f'mssante_ca_bundle = "{p["ca_cert"]}"',
        "",
        "# the DMP simulator (mutual TLS; it trusts the CA for the VIHF and Signature01 too)",
        f"drimbox dmp-sim --port 8443 --tls-cert {p['server_cert']} --tls-key "
        f"{p['server_key']} --client-ca {p['ca_cert']}",
        "",
        "# the PSC simulator over https (tls_client_auth: it knows our certificate's DN)",
        f"drimbox psc-sim --port 8180 --base-url https://{url_host}:8180 --tls-cert "
        f"{p['server_cert']} --tls-key "
        f"{p['server_key']} --client-ca {p['ca_cert']} --client "
        f"'{PSC_CLIENT_ID}::https://{url_host}:8080/auth/callback,"
        f"https://{url_host}:8080/auth/logged-out' --client-auth "
        f"{PSC_CLIENT_ID}=tls_client_auth --client-dn '{PSC_CLIENT_ID}={pki.client_dn}'",
        "",
        "# clients of the gateway's listeners",
        f"echoscu +tls {p['client_key']} {p['client_cert']} +cf {p['ca_cert']} "
        f"-aec DRIMBOX {host} 11112",
        f"storescu +tls {p['client_key']} {p['client_cert']} +cf {p['ca_cert']} "
        f"-aec DRIMBOX {host} 11112 FILE.dcm",
        f"curl --cacert {p['ca_cert']} https://{url_host}:8080/healthz",
        f"drimbox hl7 send --tls-cert {p['client_cert']} --tls-key {p['client_key']} "
        f"--tls-ca {p['ca_cert']} --host {host} --port 2575 FILE.hl7",
        "# a TLS client of dmp-sim",
        f"curl --cacert {p['ca_cert']} --cert {p['client_cert']} --key {p['client_key']} "
        f"https://{url_host}:8443/fhir/DocumentReference",
        "",
        "# the ANS whitelist's DNCertificatOperateur of this server certificate",
        f"{pki.server_dn}",
    ]
    if pki.negative is not None:
        lines += ["", "# for negative tests: expired-*.pem (expired), other-*.pem (another CA, "
                  "other-ca.pem)"]
    return "\n".join(lines) + "\n"
