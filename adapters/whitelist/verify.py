"""Verify the XAdES-BASELINE-B enveloped signature of the ANS whitelist (R11).

The ANS signs the list with an IGC-Santé ORG SIGN certificate (``CN=Liste Blanche DRIM-M,
OU=318751275100020``) and an enveloped XMLDSig whose whole-document reference uses the XPath
Filter 2.0 transform ``subtract /descendant::ds:Signature`` then exclusive c14n; a second
reference covers the XAdES ``SignedProperties`` (SigningTime, SigningCertificateV2).

signxml does the cryptography (SignedInfo, RSA, reference digests, the certificate chain to
the configured anchors, SigningCertificateV2) but silently skips transforms it does not know,
Filter 2.0 among them. :class:`_XAdESVerifier` applies that one transform (the exact form the
ANS uses, nothing else) and refuses any other unknown transform. Before that, the document's
shape is checked (one signature, a child of the root, nothing unsigned inside it that a reader
could mistake for list content); after, the signer's CN and OU. The content returned is the
*signed* content as signxml canonicalised it, never the document as received.

Revocation: given CRLs (``whitelist_crls``), the signer certificate must be covered by a
current CRL of its issuer, correctly signed, that does not list it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import exceptions as sx
from signxml.xades import XAdESSignatureConfiguration, XAdESVerifier

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_C14N = {
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
    "http://www.w3.org/2006/12/xml-c14n11",
}
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903#SignedProperties"

#: The ANS signer (informatif/listeblanche/Readme.md): the defaults of the settings.
ANS_SIGNER_CN = "Liste Blanche DRIM-M"
ANS_SIGNER_OU = "318751275100020"


class WhitelistRefused(Exception):
    """The list cannot be trusted; ``str(exc)`` says precisely why."""


@dataclass(frozen=True, slots=True)
class VerifiedDocument:
    root: etree._Element
    """The signed content (the list without its signature), as canonicalised by signxml."""
    signer: str
    """Subject DN of the signing certificate (RFC 4514)."""
    signing_time: str
    chain: tuple[str, ...]
    """Subject DNs from the signer to the trust anchor."""


def xml_parser() -> etree.XMLParser:
    """No entities, no network, no DTD: the list comes from outside."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_comments=False)


def _apply_filter2(transform: etree._Element, payload: etree._Element) -> None:
    """XPath Filter 2.0 in the one form the ANS uses: subtract every ``ds:Signature``."""
    xpaths = list(transform)
    if (len(xpaths) != 1 or xpaths[0].tag != f"{{{FILTER2}}}XPath"
            or xpaths[0].get("Filter") != "subtract"
            or (xpaths[0].text or "").strip() != "/descendant::ds:Signature"
            or xpaths[0].nsmap.get("ds") != DS):
        raise sx.InvalidInput("unsupported XPath Filter 2.0 transform (only 'subtract "
                              "/descendant::ds:Signature' is accepted)")
    for sig in list(payload.iter(f"{{{DS}}}Signature")):
        parent = sig.getparent()
        if parent is None:
            raise sx.InvalidInput("the signed document is a signature")
        if sig.tail:
            prev = sig.getprevious()
            if prev is not None:
                prev.tail = (prev.tail or "") + sig.tail
            else:
                parent.text = (parent.text or "") + sig.tail
        parent.remove(sig)


class _XAdESVerifier(XAdESVerifier):
    """signxml's XAdES verifier with the Filter 2.0 transform, strict about transforms."""

    def _apply_transforms(self, payload, *, transforms_node, signature):  # noqa: ANN001, ANN202
        if transforms_node is not None:
            for transform in self._findall(transforms_node, "Transform"):
                algorithm = transform.get("Algorithm")
                if algorithm == FILTER2:
                    if not isinstance(payload, etree._Element):
                        raise sx.InvalidInput("XPath Filter 2.0 on a non-XML payload")
                    _apply_filter2(transform, payload)
                elif algorithm != ENVELOPED and algorithm not in _C14N:
                    raise sx.InvalidInput(f"unsupported transform {algorithm}")
        return super()._apply_transforms(payload, transforms_node=transforms_node,
                                         signature=signature)


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


class WhitelistVerifier:
    """Checks one whitelist document against the trust anchors and the expected signer."""

    def __init__(self, trust_anchors: Path, *, signer_cn: str = ANS_SIGNER_CN,
                 signer_ou: str = ANS_SIGNER_OU,
                 verification_time: dt.datetime | None = None) -> None:
        self.trust_anchors = Path(trust_anchors)
        try:
            anchors = x509.load_pem_x509_certificates(self.trust_anchors.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"whitelist trust anchors {str(trust_anchors)!r}: {exc}") from None
        if not anchors:
            raise ValueError(f"whitelist trust anchors {str(trust_anchors)!r}: no certificate")
        self.anchors = anchors
        self.signer_cn = signer_cn
        self.signer_ou = signer_ou
        self.verification_time = verification_time
        """``None``: now. Another time is for diagnosis only (``drimbox whitelist check
        --at``): a XAdES-B signing time is the signer's own claim, not a proof of time."""

    def verify(self, data: bytes,
               crls: list[x509.CertificateRevocationList] | None = None) -> VerifiedDocument:
        """Verify ``data``. With ``crls`` (not ``None``), the signer certificate must not be
        revoked: a current CRL signed by its issuer must be among them."""
        try:
            root = etree.fromstring(data, parser=xml_parser())
        except etree.XMLSyntaxError as exc:
            raise WhitelistRefused(f"not well-formed XML: {exc}") from None
        signature = _check_shape(root)
        certs = _key_info_certs(signature)
        config = XAdESSignatureConfiguration(expect_references=2)
        if self.verification_time is not None:
            config = XAdESSignatureConfiguration(
                expect_references=2, verification_time=self.verification_time)
        try:
            results = _XAdESVerifier().verify(
                data, expect_config=config, ca_pem_file=str(self.trust_anchors),
                parser=xml_parser())
        except sx.InvalidDigest as exc:
            raise WhitelistRefused(_digest_reason(str(exc))) from None
        except sx.InvalidCertificate as exc:
            raise WhitelistRefused(f"signer certificate not trusted: {exc}") from None
        except sx.InvalidSignature as exc:
            raise WhitelistRefused(f"signature does not verify: {exc}") from None
        except sx.InvalidInput as exc:
            raise WhitelistRefused(f"signature not acceptable: {exc}") from None
        except (ValueError, etree.LxmlError) as exc:
            raise WhitelistRefused(f"signature not acceptable: {exc}") from None
        document = next((r for r in results if r.signed_xml is not None
                         and r.signed_xml.tag == root.tag), None)
        if document is None:
            raise WhitelistRefused("the signature does not cover the list (no whole-document "
                                   "reference)")
        signer = next((c for c in certs if c.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) == results[0].signature_key), None)
        if signer is None:  # signxml verified with a KeyInfo certificate: cannot happen
            raise WhitelistRefused("signing certificate not found in KeyInfo")
        cns, ous = _attr(signer.subject, NameOID.COMMON_NAME), _attr(
            signer.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        if cns != [self.signer_cn] or self.signer_ou not in ous:
            raise WhitelistRefused(
                f"signed by {signer.subject.rfc4514_string()!r}, not by "
                f"CN={self.signer_cn},OU={self.signer_ou}")
        if crls is not None:
            self._check_revocation(signer, certs, crls)
        return VerifiedDocument(
            root=document.signed_xml,
            signer=signer.subject.rfc4514_string(),
            signing_time=_signing_time(results),
            chain=self._chain(signer, certs),
        )

    def _check_revocation(self, signer: x509.Certificate, key_info: list[x509.Certificate],
                          crls: list[x509.CertificateRevocationList]) -> None:
        issuers = [c for c in [*self.anchors, *key_info] if c.subject == signer.issuer]
        issuer = None
        for candidate in issuers:
            try:
                signer.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            issuer = candidate
            break
        if issuer is None:
            raise WhitelistRefused("revocation: the signer's issuer certificate is unknown")
        now = self.verification_time or dt.datetime.now(dt.UTC)
        name = issuer.subject.rfc4514_string()
        usable = []
        for crl in crls:
            if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):
                continue
            if crl.last_update_utc > now or (crl.next_update_utc is not None
                                             and crl.next_update_utc < now):
                raise WhitelistRefused(
                    f"revocation: the CRL of {name} is not current (this update "
                    f"{crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ}, next update "
                    f"{crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ})" if crl.next_update_utc else
                    f"revocation: the CRL of {name} is not current")
            usable.append(crl)
        if not usable:
            raise WhitelistRefused(f"revocation status unknown: no valid CRL signed by {name}")
        for crl in usable:
            revoked = crl.get_revoked_certificate_by_serial_number(signer.serial_number)
            if revoked is not None:
                raise WhitelistRefused(
                    f"the signer certificate (serial {signer.serial_number:x}) was revoked on "
                    f"{revoked.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ} ({name}'s CRL)")

    def _chain(self, signer: x509.Certificate,
               key_info: list[x509.Certificate]) -> tuple[str, ...]:
        chain = [signer.subject.rfc4514_string()]
        by_subject = {c.subject: c for c in key_info}
        by_subject.update({a.subject: a for a in self.anchors})
        issuer = signer.issuer
        while issuer in by_subject and len(chain) < 8:
            chain.append(issuer.rfc4514_string())
            if by_subject[issuer].issuer == issuer:
                break
            issuer = by_subject[issuer].issuer
        return tuple(chain)


def _check_shape(root: etree._Element) -> etree._Element:
    signatures = list(root.iter(f"{{{DS}}}Signature"))
    if not signatures:
        raise WhitelistRefused("the list is not signed (no ds:Signature): an unsigned list is "
                               "treated as corrupted")
    if len(signatures) > 1:
        raise WhitelistRefused(f"{len(signatures)} ds:Signature elements; exactly one expected")
    signature = signatures[0]
    if signature.getparent() is not root:
        raise WhitelistRefused("the ds:Signature is not a child of the list's root element")
    for obj in signature.iterchildren(f"{{{DS}}}Object"):
        for child in obj:
            if child.tag != f"{{{XADES}}}QualifyingProperties":
                raise WhitelistRefused(f"unexpected {child.tag} inside ds:Object")
    refs = signature.findall(f"{{{DS}}}SignedInfo/{{{DS}}}Reference")
    whole = [r for r in refs if r.get("URI") == ""]
    props = [r for r in refs if r.get("Type") == SIGNED_PROPERTIES_TYPE]
    if len(whole) != 1 or len(props) != 1 or len(refs) != 2:
        raise WhitelistRefused("the signature must have one whole-document reference and one "
                               f"SignedProperties reference (found {len(refs)} references)")
    return signature


def _key_info_certs(signature: etree._Element) -> list[x509.Certificate]:
    from base64 import b64decode

    out = []
    for node in signature.iter(f"{{{DS}}}X509Certificate"):
        try:
            out.append(x509.load_der_x509_certificate(b64decode("".join((node.text or "")
                                                                        .split()))))
        except ValueError as exc:
            raise WhitelistRefused(f"unreadable certificate in KeyInfo: {exc}") from None
    if not out:
        raise WhitelistRefused("no X509Certificate in the signature's KeyInfo")
    return out


def _digest_reason(message: str) -> str:
    if "reference 0" in message:
        return "the list's content does not match its signature (digest mismatch): altered " \
               "after signing"
    if "certificate" in message.lower():
        return f"the signing certificate does not match SigningCertificateV2 ({message})"
    return f"the signed properties do not match the signature ({message})"


def _signing_time(results: list) -> str:  # noqa: ANN001
    for result in results:
        props = getattr(result, "signed_properties", None)
        if props is not None:
            node = props.find(f"{{{XADES}}}SigningTime")
            if node is not None and node.text:
                return node.text.strip()
    return ""
