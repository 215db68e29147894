"""The submission-set signature "Signature01": IHE DSG (ITI TF-3 5.5) with XAdES (R5; SPEC 2.2).

The document is a detached XMLDSig whose ``SignedInfo`` references

* ``#IHEManifest`` (``Type=...#Manifest``): a ``ds:Manifest`` listing ``urn:oid:<submission set
  uniqueId>`` and ``urn:oid:<document uniqueId>`` for each document, each with its digest;
* ``#<id>-SignedProperties``: the XAdES ``SignedProperties`` (SigningTime, SigningCertificate,
  ``SignaturePolicyImplied``).

The purpose of signature ``1.2.840.10065.1.12.1.14`` (Source) is a *signed* XAdES
``CommitmentTypeIndication`` (current IHE DSG). The PoC puts it as text in a
``ds:SignatureProperty``, which the XMLDSig schema forbids (SignatureProperty content must be
an element of another namespace): signxml rejects such a signature, so we do not copy it.

Choices (the samples do not force otherwise): **RSA-SHA256 / SHA-256** everywhere and exclusive
c14n (the PoC signs RSA-SHA1 with inclusive c14n with comments — SHA-1 is deprecated). A
document's manifest digest is over its bytes; the submission set's digest is over the exclusive
c14n of its ``rim:RegistryPackage`` as submitted (the PoC writes a dummy ``AA==``; DSG leaves it
to the profile). The signing is done with lxml + cryptography (signxml cannot emit a
``ds:Manifest`` reference); verification of ``SignedInfo`` uses signxml.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from lxml import etree

from adapters.dmp.ns import DS, DSG_PURPOSE_SOURCE, XADES, q

EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
MANIFEST_TYPE = "http://www.w3.org/2000/09/xmldsig#Manifest"
SIGNED_PROPS_TYPE = "http://uri.etsi.org/01903#SignedProperties"
MANIFEST_ID = "IHEManifest"


def c14n(el: etree._Element) -> bytes:
    return etree.tostring(el, method="c14n", exclusive=True, with_comments=False)


def b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _digest(parent: etree._Element, value: str) -> None:
    etree.SubElement(parent, q(DS, "DigestMethod"), Algorithm=SHA256)
    etree.SubElement(parent, q(DS, "DigestValue")).text = value


def sign_submission(submission_set_uid: str, registry_package: etree._Element,
                    documents: dict[str, bytes], key_pem: bytes, cert_pem: bytes,
                    now: dt.datetime | None = None) -> bytes:
    """The Signature01 document (bytes) over the submission set and its documents
    (``documents``: uniqueId → bytes)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    sig_id = f"sig-{uuid.uuid4()}"
    props_id = f"{sig_id}-SignedProperties"
    sig = etree.Element(q(DS, "Signature"), nsmap={"ds": DS}, Id=sig_id)
    si = etree.SubElement(sig, q(DS, "SignedInfo"))
    etree.SubElement(si, q(DS, "CanonicalizationMethod"), Algorithm=EXC_C14N)
    alg = RSA_SHA256 if isinstance(key, rsa.RSAPrivateKey) else ECDSA_SHA256
    etree.SubElement(si, q(DS, "SignatureMethod"), Algorithm=alg)
    sv = etree.SubElement(sig, q(DS, "SignatureValue"))
    ki = etree.SubElement(sig, q(DS, "KeyInfo"))
    xd = etree.SubElement(ki, q(DS, "X509Data"))
    etree.SubElement(xd, q(DS, "X509Certificate")).text = base64.b64encode(
        cert.public_bytes(serialization.Encoding.DER)).decode()

    obj = etree.SubElement(sig, q(DS, "Object"))
    man = etree.SubElement(obj, q(DS, "Manifest"), Id=MANIFEST_ID)
    r = etree.SubElement(man, q(DS, "Reference"), URI=f"urn:oid:{submission_set_uid}")
    _digest(r, b64sha256(c14n(registry_package)))
    for uid, data in documents.items():
        r = etree.SubElement(man, q(DS, "Reference"), URI=f"urn:oid:{uid}")
        _digest(r, b64sha256(data))

    obj = etree.SubElement(sig, q(DS, "Object"))
    qp = etree.SubElement(obj, q(XADES, "QualifyingProperties"), nsmap={"xades": XADES},
                          Target=f"#{sig_id}")
    sp = etree.SubElement(qp, q(XADES, "SignedProperties"), Id=props_id)
    ssp = etree.SubElement(sp, q(XADES, "SignedSignatureProperties"))
    etree.SubElement(ssp, q(XADES, "SigningTime")).text = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    cert_el = etree.SubElement(etree.SubElement(ssp, q(XADES, "SigningCertificate")), q(XADES, "Cert"))
    _digest(etree.SubElement(cert_el, q(XADES, "CertDigest")),
            b64sha256(cert.public_bytes(serialization.Encoding.DER)))
    iss = etree.SubElement(cert_el, q(XADES, "IssuerSerial"))
    etree.SubElement(iss, q(DS, "X509IssuerName")).text = cert.issuer.rfc4514_string()
    etree.SubElement(iss, q(DS, "X509SerialNumber")).text = str(cert.serial_number)
    spi = etree.SubElement(ssp, q(XADES, "SignaturePolicyIdentifier"))
    etree.SubElement(spi, q(XADES, "SignaturePolicyImplied"))
    cti = etree.SubElement(etree.SubElement(sp, q(XADES, "SignedDataObjectProperties")),
                           q(XADES, "CommitmentTypeIndication"))
    ctid = etree.SubElement(cti, q(XADES, "CommitmentTypeId"))
    etree.SubElement(ctid, q(XADES, "Identifier")).text = f"urn:oid:{DSG_PURPOSE_SOURCE}"
    etree.SubElement(ctid, q(XADES, "Description")).text = "Source"
    etree.SubElement(cti, q(XADES, "AllSignedDataObjects"))

    for target, typ in ((man, MANIFEST_TYPE), (sp, SIGNED_PROPS_TYPE)):
        ref = etree.Element(q(DS, "Reference"), Type=typ, URI=f"#{target.get('Id')}")
        tr = etree.SubElement(etree.SubElement(ref, q(DS, "Transforms")), q(DS, "Transform"))
        tr.set("Algorithm", EXC_C14N)
        _digest(ref, b64sha256(c14n(target)))
        si.append(ref)
    signed = c14n(si)
    if isinstance(key, rsa.RSAPrivateKey):
        value = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        r_, s_ = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
        n = (key.curve.key_size + 7) // 8
        value = r_.to_bytes(n, "big") + s_.to_bytes(n, "big")
    else:
        raise TypeError("the signing key must be RSA or EC")
    sv.text = base64.b64encode(value).decode()
    return etree.tostring(sig, xml_declaration=True, encoding="UTF-8")


class SignatureDocumentError(ValueError):
    """The Signature01 document is malformed, does not verify, or does not match the submission."""


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    certificate: x509.Certificate
    manifest: dict[str, str]
    """``urn:oid:...`` → base64 digest."""


def verify_signature_document(data: bytes, submission_set_uid: str,
                              registry_package: etree._Element,
                              documents: dict[str, bytes],
                              trusted_cas: list[x509.Certificate]) -> VerifiedSignature:
    """Check Signature01 (R5): XMLDSig valid, XAdES signing certificate consistent and trusted,
    purposeOfSignature present, manifest listing exactly the submission set and every other
    document with the right digests."""
    from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod, XMLVerifier
    from signxml.exceptions import InvalidInput, InvalidSignature

    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise SignatureDocumentError(f"Signature01 is not well-formed XML: {exc}") from exc
    if root.tag != q(DS, "Signature"):
        raise SignatureDocumentError("Signature01 is not a ds:Signature")
    certs = root.findall(f"{q(DS, 'KeyInfo')}/{q(DS, 'X509Data')}/{q(DS, 'X509Certificate')}")
    if not certs:
        raise SignatureDocumentError("Signature01 carries no signing certificate")
    cert = x509.load_der_x509_certificate(base64.b64decode("".join(certs[0].text.split())))
    config = SignatureConfiguration(
        require_x509=True, expect_references=2,
        signature_methods=frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.ECDSA_SHA256}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
    )
    try:
        results = XMLVerifier().verify(root, x509_cert=cert, expect_config=config)
    except (InvalidSignature, InvalidInput) as exc:
        raise SignatureDocumentError(f"Signature01 does not verify: {exc}") from exc
    kinds = {el.tag for el in (r.signed_xml for r in results)}
    if kinds != {q(DS, "Manifest"), q(XADES, "SignedProperties")}:
        raise SignatureDocumentError("Signature01 must sign exactly the IHEManifest and the "
                                     "XAdES SignedProperties")
    manifest = next(r.signed_xml for r in results if r.signed_xml.tag == q(DS, "Manifest"))
    props = next(r.signed_xml for r in results if r.signed_xml.tag == q(XADES, "SignedProperties"))
    cert_digest = props.findtext(f".//{q(XADES, 'CertDigest')}/{q(DS, 'DigestValue')}")
    if cert_digest != b64sha256(cert.public_bytes(serialization.Encoding.DER)):
        raise SignatureDocumentError("XAdES SigningCertificate does not match the signing certificate")
    if props.find(f".//{q(XADES, 'SigningTime')}") is None:
        raise SignatureDocumentError("XAdES SigningTime is missing")
    purpose = props.findtext(f".//{q(XADES, 'CommitmentTypeId')}/{q(XADES, 'Identifier')}")
    if (purpose or "").strip() != f"urn:oid:{DSG_PURPOSE_SOURCE}":
        raise SignatureDocumentError("the signed purpose of signature (XAdES CommitmentTypeId) "
                                     f"is not urn:oid:{DSG_PURPOSE_SOURCE}")
    from adapters.dmp.vihf import _issued_by
    if not any(_issued_by(cert, ca) for ca in trusted_cas):
        raise SignatureDocumentError("the Signature01 certificate is not issued by a trusted CA")
    listed = {r.get("URI", ""): r.findtext(q(DS, "DigestValue"), "")
              for r in manifest.findall(q(DS, "Reference"))}
    expected = {f"urn:oid:{submission_set_uid}": b64sha256(c14n(registry_package))}
    expected.update({f"urn:oid:{uid}": b64sha256(d) for uid, d in documents.items()})
    if set(listed) != set(expected):
        raise SignatureDocumentError(
            f"IHEManifest lists {sorted(listed)}, the submission holds {sorted(expected)}")
    for uri, digest in expected.items():
        if listed[uri] != digest:
            raise SignatureDocumentError(f"IHEManifest digest of {uri} does not match")
    return VerifiedSignature(cert, listed)
