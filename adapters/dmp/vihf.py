"""The VIHF 3.0: a SAML 2.0 assertion in ``wsse:Security``, signed by the structure (R6; SPEC 3.4).

:func:`build_vihf` writes the fields of SPEC 3.4 in the order of the ANS samples and signs the
assertion with the structure's ORG signature certificate: XMLDSig *enveloped*, exclusive
c14n, reference ``#<assertion ID>``, the ``ds:Signature`` placed right after ``saml2:Issuer``
as SAML 2.0 core 5.4.1 requires. The samples sign RSA-SHA1; we sign **RSA-SHA256 / SHA-256**
(SHA-1 signatures are deprecated; signxml refuses to create them).

:func:`verify_vihf` is what the simulator (and a real DMP) does: signature valid over the whole
assertion, certificate issued by a trusted CA, ``Issuer`` equal to the certificate subject, and
the mandatory attributes present. It returns the parsed attributes.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from dataclasses import dataclass

from cryptography import x509
from lxml import etree
from signxml import (
    CanonicalizationMethod,
    DigestAlgorithm,
    SignatureConfiguration,
    SignatureMethod,
    XMLSigner,
    XMLVerifier,
)
from signxml.exceptions import InvalidInput, InvalidSignature

from adapters.dmp.ns import DS, HL7, SAML2, XSI, q

VIHF_VERSION = "3.0"
REQUIRED_ATTRIBUTES = (
    "VIHF_Version",
    "Secteur_Activite",
    "Ressource_URN",
    "urn:oasis:names:tc:xspa:1.0:subject:subject-id",
    "Identifiant_Structure",
    "LPS_ID",
    "LPS_Nom",
    "LPS_ID_HOMOLOGATION_DMP",
    "LPS_Version",
    "urn:oasis:names:tc:xacml:2.0:resource:resource-id",
    "Authentification_Mode",
    "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse",
    "urn:oasis:names:tc:xacml:2.0:subject:role",
)
AUTHN_TLS_CLIENT = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
X509_SUBJECT_NAME = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Role:
    code: str
    system: str
    display: str = ""


@dataclass(frozen=True, slots=True)
class VihfContext:
    """Who acts, for which structure and patient (SPEC 3.4). For publication the subject is the
    report's author (FAQ 8801)."""

    subject_id: str
    """``saml2:NameID``: the PS national id (RPPS/ADELI) of the author."""
    subject_name: str
    """``subject-id``: "Prénom Nom"."""
    structure_id: str
    """``Identifiant_Structure``."""
    activity_sector: str
    """``Secteur_Activite`` code (TRE_R02), e.g. ``SA07``."""
    roles: tuple[Role, ...]
    patient_id: str
    """``resource-id``: ``<INS>^^^&<OID>&ISO^NH``."""
    lps_id: str
    lps_name: str
    lps_version: str
    lps_homologation_id: str
    authentication_mode: str = "INDIRECTE"
    confidentiality_code: str = ""


class VihfError(ValueError):
    """The VIHF is missing, malformed, untrusted or its signature does not verify."""

    def __init__(self, subcode: str, message: str) -> None:
        super().__init__(message)
        self.subcode = subcode
        """``wsse:InvalidSecurity`` (absent), ``wsse:InvalidSecurityToken`` (malformed or
        untrusted), ``wsse:FailedCheck`` (signature)."""


def issuer_dn(cert: x509.Certificate) -> str:
    """The subject DN as the samples write it: ``CN=..., OU=..., O=..., C=FR``."""
    return ", ".join(cert.subject.rfc4514_string().split(","))


def _norm_dn(dn: str) -> list[str]:
    return [p.strip() for p in dn.split(",") if p.strip()]


def _attr(stmt: etree._Element, name: str, *values: str | etree._Element) -> None:
    a = etree.SubElement(stmt, q(SAML2, "Attribute"), Name=name)
    for v in values:
        av = etree.SubElement(a, q(SAML2, "AttributeValue"))
        if isinstance(v, str):
            av.text = v
        else:
            av.append(v)


def _ce(tag: str, code: str, system: str, display: str, system_name: str = "") -> etree._Element:
    el = etree.Element(q(HL7, tag), nsmap={None: HL7, "xsi": XSI})
    el.set("code", code)
    el.set("codeSystem", system)
    el.set("codeSystemName", system_name)
    el.set("displayName", display)
    el.set(q(XSI, "type"), "CE")
    return el


def build_vihf(ctx: VihfContext, key_pem: bytes, cert_pem: bytes,
               now: dt.datetime | None = None) -> etree._Element:
    """The signed ``saml2:Assertion`` (R6)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    instant = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    aid = f"_{uuid.uuid4()}"
    a = etree.Element(q(SAML2, "Assertion"), nsmap={"saml2": SAML2, "xsi": XSI},
                      ID=aid, IssueInstant=instant, Version="2.0")
    iss = etree.SubElement(a, q(SAML2, "Issuer"), Format=X509_SUBJECT_NAME)
    iss.text = issuer_dn(cert)
    etree.SubElement(a, q(DS, "Signature"), nsmap={"ds": DS}, Id="placeholder")
    subj = etree.SubElement(a, q(SAML2, "Subject"))
    etree.SubElement(subj, q(SAML2, "NameID")).text = ctx.subject_id
    authn = etree.SubElement(a, q(SAML2, "AuthnStatement"), AuthnInstant=instant)
    ac = etree.SubElement(authn, q(SAML2, "AuthnContext"))
    etree.SubElement(ac, q(SAML2, "AuthnContextClassRef")).text = AUTHN_TLS_CLIENT
    st = etree.SubElement(a, q(SAML2, "AttributeStatement"))
    _attr(st, "VIHF_Version", VIHF_VERSION)
    _attr(st, "Secteur_Activite", f"{ctx.activity_sector}^1.2.250.1.71.4.2.4")
    _attr(st, "Ressource_URN", "urn:dmp")
    _attr(st, "urn:oasis:names:tc:xspa:1.0:subject:subject-id", ctx.subject_name)
    _attr(st, "Identifiant_Structure", ctx.structure_id)
    _attr(st, "LPS_ID", ctx.lps_id)
    _attr(st, "LPS_Nom", ctx.lps_name)
    _attr(st, "LPS_ID_HOMOLOGATION_DMP", ctx.lps_homologation_id)
    _attr(st, "LPS_Version", ctx.lps_version)
    _attr(st, "urn:oasis:names:tc:xacml:2.0:resource:resource-id", ctx.patient_id)
    _attr(st, "Authentification_Mode", ctx.authentication_mode)
    _attr(st, "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse",
          _ce("PurposeOfUse", "normal", "1.2.250.1.213.1.1.4.248", "Acces normal",
              "mode acces VIHF 1.0"))
    _attr(st, "urn:oasis:names:tc:xacml:2.0:subject:role",
          *(_ce("Role", r.code, r.system, r.display) for r in ctx.roles))
    if ctx.confidentiality_code:
        _attr(st, "urn:oasis:names:tc:xacml:2.0:resource:patient:hl7:confidentiality-code",
              ctx.confidentiality_code)
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    )
    return signer.sign(a, key=key_pem, cert=[cert], reference_uri=f"#{aid}", id_attribute="ID")


@dataclass(frozen=True, slots=True)
class VerifiedVihf:
    issuer: str
    subject_id: str
    attributes: dict[str, list[str]]
    certificate: x509.Certificate


def verify_vihf(assertion: etree._Element | None, trusted_cas: list[x509.Certificate],
                now: dt.datetime | None = None,
                max_age: dt.timedelta = dt.timedelta(hours=1),
                allow_sha1: bool = False) -> VerifiedVihf:
    """Check a VIHF as the DMP would (R6); raise :class:`VihfError` naming the fault. The signing
    certificate must be issued directly by one of ``trusted_cas`` and valid now; the assertion
    must be at most ``max_age`` old (5 minutes of clock skew allowed). RSA-SHA1 / SHA-1 (what
    the 2023 DMP samples use) is refused unless ``allow_sha1``."""
    if assertion is None:
        raise VihfError("wsse:InvalidSecurity", "no VIHF (saml2:Assertion) in wsse:Security")
    if assertion.tag != q(SAML2, "Assertion") or assertion.get("Version") != "2.0":
        raise VihfError("wsse:InvalidSecurityToken", "the token is not a SAML 2.0 assertion")
    aid = assertion.get("ID")
    if not aid:
        raise VihfError("wsse:InvalidSecurityToken", "the assertion has no ID")
    sig = assertion.find(q(DS, "Signature"))
    if sig is None:
        raise VihfError("wsse:FailedCheck", "the VIHF is not signed (no ds:Signature)")
    # Verify a standalone copy: exclusive c14n makes the digest independent of the envelope.
    standalone = etree.fromstring(etree.tostring(assertion))
    config = SignatureConfiguration(
        require_x509=True,
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA512,
                                     SignatureMethod.ECDSA_SHA256}
                                    | ({SignatureMethod.RSA_SHA1} if allow_sha1 else set())),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA512}
                                    | ({DigestAlgorithm.SHA1} if allow_sha1 else set())),
    )
    try:
        certs = sig.findall(f".//{q(DS, 'X509Certificate')}")
        if not certs:
            raise VihfError("wsse:InvalidSecurityToken", "the VIHF signature carries no certificate")
        cert = x509.load_der_x509_certificate(base64.b64decode("".join(certs[0].text.split())))
        result = XMLVerifier().verify(standalone, x509_cert=cert, id_attribute="ID",
                                      expect_config=config)
    except (InvalidSignature, InvalidInput) as exc:
        raise VihfError("wsse:FailedCheck", f"the VIHF signature does not verify: {exc}") from exc
    except ValueError as exc:
        raise VihfError("wsse:InvalidSecurityToken", f"unreadable VIHF certificate: {exc}") from exc
    signed = result.signed_xml
    if signed is None or signed.get("ID") != aid:
        raise VihfError("wsse:FailedCheck", "the signature does not cover the whole assertion")
    if not any(_issued_by(cert, ca) for ca in trusted_cas):
        raise VihfError("wsse:InvalidSecurityToken",
                        f"the VIHF certificate ({cert.subject.rfc4514_string()}) is not issued by a "
                        "trusted CA")
    issuer = (signed.findtext(q(SAML2, "Issuer")) or "").strip()
    if _norm_dn(issuer) != _norm_dn(issuer_dn(cert)):
        raise VihfError("wsse:InvalidSecurityToken",
                        f"saml2:Issuer {issuer!r} is not the signing certificate's subject")
    subject = (signed.findtext(f"{q(SAML2, 'Subject')}/{q(SAML2, 'NameID')}") or "").strip()
    if not subject:
        raise VihfError("wsse:InvalidSecurityToken", "saml2:Subject/NameID is missing")
    if signed.find(f"{q(SAML2, 'AuthnStatement')}/{q(SAML2, 'AuthnContext')}/"
                   f"{q(SAML2, 'AuthnContextClassRef')}") is None:
        raise VihfError("wsse:InvalidSecurityToken", "AuthnStatement/AuthnContextClassRef is missing")
    attrs: dict[str, list[str]] = {}
    for a in signed.iter(q(SAML2, "Attribute")):
        vals = []
        for v in a.findall(q(SAML2, "AttributeValue")):
            child = next((c for c in v if isinstance(c.tag, str)), None)
            vals.append(child.get("code", "") if child is not None else (v.text or "").strip())
        attrs[a.get("Name", "")] = vals
    missing = [n for n in REQUIRED_ATTRIBUTES if not any(attrs.get(n, []))]
    if missing:
        raise VihfError("wsse:InvalidSecurityToken", f"VIHF attributes missing: {', '.join(missing)}")
    if attrs["VIHF_Version"] != [VIHF_VERSION]:
        raise VihfError("wsse:InvalidSecurityToken", f"VIHF_Version {attrs['VIHF_Version']} is not 3.0")
    if attrs["Ressource_URN"] != ["urn:dmp"]:
        raise VihfError("wsse:InvalidSecurityToken", "Ressource_URN is not urn:dmp")
    if not re.fullmatch(r"[A-Z0-9]+\^1\.2\.250\.1\.71\.4\.2\.4", attrs["Secteur_Activite"][0]):
        raise VihfError("wsse:InvalidSecurityToken",
                        "Secteur_Activite is not <code>^1.2.250.1.71.4.2.4")
    if attrs["urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"] != ["normal"]:
        raise VihfError("wsse:InvalidSecurityToken", "PurposeOfUse is not 'normal'")
    rid = attrs["urn:oasis:names:tc:xacml:2.0:resource:resource-id"][0]
    if not re.fullmatch(r"[^^&]+\^\^\^&[0-9.]+&ISO\^NH", rid):
        raise VihfError("wsse:InvalidSecurityToken",
                        f"resource-id {rid!r} is not <INS>^^^&<OID>&ISO^NH")
    _check_instant(signed.get("IssueInstant", ""), now or dt.datetime.now(dt.UTC), max_age)
    return VerifiedVihf(issuer, subject, attrs, cert)


def _check_instant(value: str, now: dt.datetime, max_age: dt.timedelta) -> None:
    try:
        issued = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise VihfError("wsse:InvalidSecurityToken", f"IssueInstant {value!r} is not a dateTime") \
            from None
    if issued.tzinfo is None:
        raise VihfError("wsse:InvalidSecurityToken", "IssueInstant has no time zone")
    if issued > now + CLOCK_SKEW:
        raise VihfError("wsse:InvalidSecurityToken", f"IssueInstant {value} is in the future")
    if now - issued > max_age:
        raise VihfError("wsse:InvalidSecurityToken", f"the VIHF issued at {value} has expired")


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError
        return False
    now = dt.datetime.now(dt.UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
