"""The ANS whitelist samples (tests/data/whitelist, see PROVENANCE.md) and a throw-away signer
that re-signs a list the way the ANS does (enveloped XAdES-B, XPath Filter 2.0), so that tests
can make lists with a *valid* signature from an untrusted key, or newer/older signed lists."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

DATA = Path(__file__).parent / "data" / "whitelist"
SIGNED = DATA / "LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml"
UNSIGNED = DATA / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml"
INFORMATIF = DATA / "LISTEBLANCHE_DRIM-M_TEST_SIGNEE_INFORMATIF.xml"
ANCHORS = DATA / "igc-sante-test-anchors.pem"

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
NS = {"ds": DS, "xades": XADES}


@dataclass
class Signer:
    ca_pem: Path
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    ca_key: rsa.RSAPrivateKey
    ca_cert: x509.Certificate

    def crl(self, directory: Path, *, revoked: bool = False, stale: bool = False,
            signing_key: rsa.RSAPrivateKey | None = None, name: str = "ca.crl") -> Path:
        """A DER CRL of the CA (listing the signer when ``revoked``), written to ``directory``."""
        now = dt.datetime.now(dt.UTC)
        this, nxt = ((now - dt.timedelta(days=10), now - dt.timedelta(days=3)) if stale
                     else (now - dt.timedelta(hours=1), now + dt.timedelta(days=7)))
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ca_cert.subject)
                   .last_update(this).next_update(nxt))
        if revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(self.cert.serial_number)
                .revocation_date(now - dt.timedelta(hours=2)).build())
        crl = builder.sign(signing_key or self.ca_key, hashes.SHA256())
        path = directory / name
        path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
        return path


def make_signer(directory: Path, cn: str = "Liste Blanche DRIM-M",
                ou: str = "318751275100020") -> Signer:
    """A CA (written to ``directory/rogue-ca.pem``) and a signing certificate it issued."""
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=30)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "ROGUE TEST CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                            "AGENCE DU NUMERIQUE EN SANTE"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem = directory / "rogue-ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return Signer(ca_pem, key, cert, ca_key, ca)


def _c14n(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n", exclusive=True)


def resign(data: bytes, signer: Signer) -> bytes:
    """The ANS list ``data`` (its content possibly edited) signed again by ``signer``: same
    signature profile as the ANS one, every digest and the SignatureValue recomputed."""
    root = etree.fromstring(data)
    sig = root.find("ds:Signature", NS)
    der = signer.cert.public_bytes(serialization.Encoding.DER)
    x509data = sig.find("ds:KeyInfo/ds:X509Data", NS)
    for child in list(x509data):
        x509data.remove(child)
    etree.SubElement(x509data, f"{{{DS}}}X509Certificate").text = base64.b64encode(der).decode()
    cert_digest = sig.find(
        ".//xades:SigningCertificateV2/xades:Cert/xades:CertDigest/ds:DigestValue", NS)
    cert_digest.text = base64.b64encode(hashlib.sha512(der).digest()).decode()
    # reference 0: the document without its signature
    content = etree.fromstring(etree.tostring(root))
    content.remove(content.find("ds:Signature", NS))
    refs = sig.findall("ds:SignedInfo/ds:Reference", NS)
    refs[0].find("ds:DigestValue", NS).text = base64.b64encode(
        hashlib.sha256(_c14n(content)).digest()).decode()
    props = sig.find(".//xades:SignedProperties", NS)
    props_copy = etree.fromstring(etree.tostring(props))
    refs[1].find("ds:DigestValue", NS).text = base64.b64encode(
        hashlib.sha256(_c14n(props_copy)).digest()).decode()
    signed_info = etree.fromstring(etree.tostring(sig.find("ds:SignedInfo", NS)))
    value = signer.key.sign(_c14n(signed_info), padding.PKCS1v15(), hashes.SHA256())
    sig.find("ds:SignatureValue", NS).text = base64.b64encode(value).decode()
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
