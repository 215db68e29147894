# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""DMP messages without the network: MTOM both ways, the ITI-41 ebRIM we write against the ANS
samples and the strict checks, the VIHF and the Signature01 document (R4, R5, R6)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
from dataclasses import replace

import pytest
from cryptography import x509
from dmp_support import pki, publication  # noqa: F401
from lxml import etree
from samples import SAMPLES as ALL_SAMPLES

from adapters.dmp import checks, dsg, ebrim, query
from adapters.dmp import ns as N
from adapters.dmp.ns import DS, RIM, SAML2, XDSB, q
from adapters.dmp.soap import (
    SoapError,
    body_payload,
    element_bytes,
    envelope,
    fault,
    header_value,
    pack_mtom,
    parse_envelope,
    parse_fault,
    unpack_mtom,
)
from adapters.dmp.vihf import REQUIRED_ATTRIBUTES, VihfError, build_vihf, verify_vihf

SAMPLES = ALL_SAMPLES / "xds"


def _sample(path: str) -> bytes:
    p = SAMPLES / path
    if not p.exists():
        pytest.fail(f"official sample {p} is missing")
    return p.read_bytes()


def _cas(pki) -> list[x509.Certificate]:  # noqa: ANN001
    return [x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())]


# --------------------------------------------------------------------------------- MTOM/XOP

def test_mtom_round_trip_is_binary_exact() -> None:
    nasty = bytes(range(256)) * 4 + b"\r\n--MIMEBoundary_x\r\n\r\n" + b"\x00" * 10
    body = etree.Element(q(XDSB, "Thing"))
    env = envelope(N.ACTION_ITI41, "https://dmp/repository", body)
    ctype, data = pack_mtom(env, {"a@x": nasty, "b@x": b""}, N.ACTION_ITI41)
    assert ctype.startswith("multipart/related;") and 'type="application/xop+xml"' in ctype
    msg = unpack_mtom(ctype, data)
    assert msg.attachments == {"a@x": nasty, "b@x": b""}
    assert header_value(msg.envelope, "Action") == N.ACTION_ITI41
    assert header_value(msg.envelope, "To") == "https://dmp/repository"
    assert body_payload(msg.envelope).tag == q(XDSB, "Thing")


def test_mtom_written_by_another_stack_is_read() -> None:
    """A hand-written MTOM message laid out like the PoC's (CXF): root part not first, quoted
    parameters, a base64 part, an xop:Include with a percent-encoded cid."""
    kos = b"DICM\x00\x01binary\r\n"
    soap = (
        b'<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope">'
        b'<soap:Header><Action xmlns="http://www.w3.org/2005/08/addressing">A</Action></soap:Header>'
        b'<soap:Body><x:Document xmlns:x="urn:ihe:iti:xds-b:2007" id="d">'
        b'<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:0.2%40cxf"/>'
        b"</x:Document></soap:Body></soap:Envelope>"
    )
    data = (
        b"--MIMEBoundary_Bound\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: BASE64\r\nContent-ID: <0.2@cxf>\r\n\r\n"
        + base64.b64encode(kos) + b"\r\n"
        b"--MIMEBoundary_Bound\r\nContent-Type: application/xop+xml; charset=UTF-8; "
        b'type="application/soap+xml"\r\nContent-ID: <0.1>\r\n\r\n' + soap + b"\r\n"
        b"--MIMEBoundary_Bound--\r\n"
    )
    ctype = ('multipart/related; type="application/xop+xml"; boundary=MIMEBoundary_Bound; '
             'start="<0.1>"; start-info="application/soap+xml"')
    msg = unpack_mtom(ctype, data)
    doc = body_payload(msg.envelope)
    assert element_bytes(doc, msg.attachments) == kos


def test_mtom_errors_are_named() -> None:
    env = envelope("A", "", etree.Element("x"))
    ctype, data = pack_mtom(env, {"p@x": b"1"}, "A")
    with pytest.raises(SoapError, match="closing boundary"):
        unpack_mtom(ctype, data.rsplit(b"--", 2)[0])
    with pytest.raises(SoapError, match="boundary"):
        unpack_mtom('multipart/related; type="application/xop+xml"', data)
    with pytest.raises(SoapError, match="Content-Type"):
        unpack_mtom("text/html", b"<html/>")
    doc = etree.fromstring(b'<d><xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" '
                           b'href="cid:nope"/></d>')
    with pytest.raises(SoapError, match="missing MIME part"):
        element_bytes(doc, {})


def test_soap_faults_round_trip() -> None:
    env = parse_envelope(etree.tostring(fault("Sender", "wsse:FailedCheck", "bad signature")))
    f = parse_fault(env)
    assert (f.code, f.subcode, f.reason) == ("Sender", "wsse:FailedCheck", "bad signature")


def test_the_dmp_response_sample_reads_as_success() -> None:
    """drimbox-poc/response.xml: the DMP's answer to an ITI-41 (its MIME headers were flattened
    in the sample, so only its envelope is read)."""
    raw = _sample("drimbox-poc/response.xml")
    start, end = raw.index(b"<soap:Envelope"), raw.index(b"</soap:Envelope>") + 16
    payload = body_payload(parse_envelope(raw[start:end]))
    assert query.response_status(payload) == N.RESPONSE_SUCCESS
    assert query.registry_errors(payload) == []


# ------------------------------------------------------------------------------ ebRIM (R4)

def _ids(pub, pki):  # noqa: ANN001, ANN202
    return ebrim.provide_and_register(pub.entry, pub.ss, pub.kos, pki.sign_key.read_bytes(),
                                      pki.sign_cert.read_bytes(), pub.signature_uid)


def _docs(sub) -> dict[str, bytes]:  # noqa: ANN001
    return {d.get("id"): sub.attachments[d[0].get("href")[4:]]
            for d in sub.body.findall(q(XDSB, "Document"))}


def _classifications(eo: etree._Element) -> set[tuple[str, str, str]]:
    return {(c.get("classificationScheme") or c.get("classificationNode"),
             c.get("nodeRepresentation") or "", (checks.slots(c).get("codingScheme") or [""])[0])
            for c in eo.findall(q(RIM, "Classification"))}


def test_our_itI41_passes_the_strict_checks(pki) -> None:  # noqa: ANN001
    pub = publication()
    sub = _ids(pub, pki)
    errors, parsed = checks.check_submission(sub.body, _docs(sub))
    assert errors == []
    assert parsed.ss_unique_id == pub.ss.unique_id and parsed.ss_patient_id == pub.entry.patient_id
    kos = next(e for e in parsed.entries if not e.is_signature)
    assert kos.slots["hash"] == [hashlib.sha1(pub.kos).hexdigest()]
    assert [e.id for e in parsed.entries] == ["DocumentKOS", "Signature01"]
    kinds = sorted(a.get("associationType").rsplit(":", 1)[1] for a in parsed.associations)
    assert kinds == ["HasMember", "HasMember", "signs"]


def test_classifications_match_the_ans_sample(pki) -> None:  # noqa: ANN001
    """Same classification schemes and codes as validateur-xds/XDS.xml for the KOS (except the
    sample's SNOMED-under-CCAM event code and its facility), the signature and the set."""
    sample = etree.fromstring(_sample("validateur-xds/XDS.xml"))
    pub = publication()
    ours = _ids(pub, pki).body
    def eo(root, oid):  # noqa: ANN001, ANN202, E306
        return root.find(f".//{q(RIM, 'ExtrinsicObject')}[@id='{oid}']")
    theirs_kos = {c for c in _classifications(eo(sample, "DocumentKOS"))
                  if c[0] not in (N.DE_EVENT, N.DE_FACILITY, N.DE_PRACTICE, N.DE_AUTHOR)}
    ours_kos = _classifications(eo(ours, "DocumentKOS"))
    assert theirs_kos <= ours_kos
    theirs_sig = {c for c in _classifications(eo(sample, "Signature01"))
                  if c[0] not in (N.DE_FACILITY, N.DE_PRACTICE)}
    assert theirs_sig <= _classifications(eo(ours, "Signature01"))
    rp = ours.find(f".//{q(RIM, 'RegistryPackage')}")
    schemes = {e.get("identificationScheme") for e in rp.findall(q(RIM, "ExternalIdentifier"))}
    assert schemes == {N.SS_PATIENT_ID, N.SS_SOURCE_ID, N.SS_UNIQUE_ID}
    assert N.SUBMISSION_SET_NODE in {c[0] for c in _classifications(rp)}


def test_the_ans_sample_breaks_the_ebrim_order_but_its_values_pass(pki) -> None:  # noqa: ANN001
    """The strict structural check is stricter than the ANS sample (its referenceIdList slot
    follows the classifications, which rim.xsd forbids); with the order fixed, its KOS entry
    and submission set satisfy every R4 value rule."""
    sample = etree.fromstring(_sample("validateur-xds/XDS.xml"))
    req = body_payload(sample)
    errors, _ = checks.check_structure(req)
    assert [e.is_warning for e in errors if "breaks the ebRIM order" in e.context] == [True, True]
    assert all(e.is_warning for e in errors)
    fixed = copy.deepcopy(req)
    for eo in fixed.iter(q(RIM, "ExtrinsicObject")):
        for s in reversed(eo.findall(q(RIM, "Slot"))):
            eo.remove(s)
            eo.insert(0, s)
    errors, parsed = checks.check_structure(fixed)
    assert errors == []
    kos = next(e for e in parsed.entries if e.id == "DocumentKOS")
    assert checks.check_entry(kos, parsed.ss_patient_id) == []
    assert checks.check_submission_set(parsed) == []


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda b: _drop(b, "DocumentKOS", N.DE_TYPE), "XDSRegistryMetadataError", "typeCode"),
        (lambda b: _drop(b, "DocumentKOS", N.DE_PRACTICE), "XDSRegistryMetadataError",
         "practiceSettingCode"),
        (lambda b: _set_code(b, N.DE_CLASS, "11488-4"), "XDSRegistryMetadataError", "classCode"),
        (lambda b: _slot(b, "creationTime", "2026-11-23"), "XDSRegistryMetadataError",
         "creationTime"),
        (lambda b: _slot(b, "languageCode", "en-US"), "XDSRegistryMetadataError", "languageCode"),
        (lambda b: _slot(b, "urn:ihe:iti:xds:2013:referenceIdList", "X^^^&1.2&ISO^urn:ihe:iti:"
                     "xds:2013:order"), "XDSRegistryMetadataError", "accession"),
        (lambda b: _remove_slot(b, "sourcePatientId"), "XDSRegistryMetadataError",
         "sourcePatientId"),
        (lambda b: _ext(b, N.SS_SOURCE_ID, ""), "XDSRegistryMetadataError", "sourceId"),
        (lambda b: _ext(b, N.DE_PATIENT_ID, "279035121518989^^^&1.2.3&ISO^NH"),
         "XDSUnknownPatientId", "INS OID"),
        (lambda b: _ext(b, N.DE_UNIQUE_ID, "not-an-oid"), "XDSRegistryMetadataError", "uniqueId"),
        (lambda b: b.remove(b.findall(q(XDSB, "Document"))[0]), "XDSMissingDocument",
         "DocumentKOS"),
    ],
)
def test_each_r4_rule_is_enforced(pki, mutate, code, words) -> None:  # noqa: ANN001
    sub = _ids(publication(), pki)
    docs = _docs(sub)
    mutate(sub.body)
    present = {d.get("id") for d in sub.body.findall(q(XDSB, "Document"))}
    errors, _ = checks.check_submission(sub.body, {k: v for k, v in docs.items() if k in present})
    assert errors, "the broken submission was accepted"
    assert any(e.code == code and words in e.context for e in errors), errors


def _kos(b: etree._Element) -> etree._Element:
    return b.find(f".//{q(RIM, 'ExtrinsicObject')}[@id='DocumentKOS']")


def _drop(b, oid, scheme) -> None:  # noqa: ANN001
    eo = b.find(f".//{q(RIM, 'ExtrinsicObject')}[@id='{oid}']")
    eo.remove(eo.find(f"{q(RIM, 'Classification')}[@classificationScheme='{scheme}']"))


def _set_code(b, scheme, code) -> None:  # noqa: ANN001
    _kos(b).find(f"{q(RIM, 'Classification')}[@classificationScheme='{scheme}']").set(
        "nodeRepresentation", code)


def _slot(b, name, value) -> None:  # noqa: ANN001
    _kos(b).find(f"{q(RIM, 'Slot')}[@name='{name}']").find(f".//{q(RIM, 'Value')}").text = value
    for v in _kos(b).find(f"{q(RIM, 'Slot')}[@name='{name}']").findall(f".//{q(RIM, 'Value')}")[1:]:
        v.getparent().remove(v)


def _remove_slot(b, name) -> None:  # noqa: ANN001
    _kos(b).remove(_kos(b).find(f"{q(RIM, 'Slot')}[@name='{name}']"))


def _ext(b, scheme, value) -> None:  # noqa: ANN001
    b.find(f".//{q(RIM, 'ExternalIdentifier')}[@identificationScheme='{scheme}']").set("value", value)


# ------------------------------------------------------------------------------- VIHF (R6)

def test_vihf_has_the_spec_fields_and_verifies(pki) -> None:  # noqa: ANN001
    pub = publication()
    a = build_vihf(pub.vihf, pki.sign_key.read_bytes(), pki.sign_cert.read_bytes())
    # The signature sits right after the Issuer (SAML core 5.4.1) and is exclusive-c14n RSA-SHA256.
    assert [etree.QName(c).localname for c in a][:3] == ["Issuer", "Signature", "Subject"]
    assert a.find(f".//{q(DS, 'CanonicalizationMethod')}").get("Algorithm") == \
        "http://www.w3.org/2001/10/xml-exc-c14n#"
    v = verify_vihf(etree.fromstring(etree.tostring(a)), _cas(pki))
    assert set(REQUIRED_ATTRIBUTES) <= set(v.attributes)
    assert v.attributes["urn:oasis:names:tc:xacml:2.0:resource:resource-id"] == [pub.entry.patient_id]
    assert v.attributes["urn:oasis:names:tc:xacml:2.0:subject:role"] == ["10", "SM26"]
    assert v.issuer.startswith("CN=DRIMbox signature, OU=499700367909006")


def test_vihf_field_names_are_those_of_the_ans_sample(pki) -> None:  # noqa: ANN001
    sample = etree.fromstring(_sample("validateur-xds/XDS.xml"))
    theirs = {a.get("Name") for a in sample.iter(q(SAML2, "Attribute"))}
    ours = build_vihf(publication().vihf, pki.sign_key.read_bytes(), pki.sign_cert.read_bytes())
    assert theirs == {a.get("Name") for a in ours.iter(q(SAML2, "Attribute"))}


@pytest.mark.parametrize(
    ("breakage", "subcode"),
    [
        ("unsigned", "wsse:FailedCheck"),
        ("tampered", "wsse:FailedCheck"),
        ("wrapped", "wsse:FailedCheck"),
        ("no_attribute", "wsse:FailedCheck"),
        ("untrusted", "wsse:InvalidSecurityToken"),
        ("expired", "wsse:InvalidSecurityToken"),
        ("not_ins", "wsse:InvalidSecurityToken"),
    ],
)
def test_broken_vihf_is_refused(pki, breakage, subcode) -> None:  # noqa: ANN001
    pub = publication()
    key, cert = pki.sign_key.read_bytes(), pki.sign_cert.read_bytes()
    if breakage == "untrusted":
        key, cert = pki.rogue_sign_key.read_bytes(), pki.rogue_sign_cert.read_bytes()
    vihf = pub.vihf
    if breakage == "not_ins":
        vihf = replace(vihf, patient_id="IPP101^^^&1.2.3&ISO^PI")
    issued = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2 if breakage == "expired" else 0)
    a = build_vihf(vihf, key, cert, now=issued)
    if breakage == "unsigned":
        a.remove(a.find(q(DS, "Signature")))
    elif breakage == "tampered":
        a.find(f".//{q(SAML2, 'AttributeValue')}").text = "2.0"
    elif breakage == "wrapped":  # signature moved: the ID it references is no longer the assertion
        a.set("ID", "_other")
    elif breakage == "no_attribute":
        st = a.find(q(SAML2, "AttributeStatement"))
        st.remove(st[0])
    with pytest.raises(VihfError) as exc:
        verify_vihf(a, _cas(pki))
    assert exc.value.subcode == subcode


# ------------------------------------------------------------------------ Signature01 (R5)

def test_signature_document_lists_the_submission_with_digests(pki) -> None:  # noqa: ANN001
    pub = publication()
    sub = _ids(pub, pki)
    docs = _docs(sub)
    rp = sub.body.find(f".//{q(RIM, 'RegistryPackage')}")
    v = dsg.verify_signature_document(docs["Signature01"], pub.ss.unique_id, rp,
                                      {pub.entry.unique_id: pub.kos}, _cas(pki))
    assert v.manifest[f"urn:oid:{pub.entry.unique_id}"] == base64.b64encode(
        hashlib.sha256(pub.kos).digest()).decode()
    assert set(v.manifest) == {f"urn:oid:{pub.ss.unique_id}", f"urn:oid:{pub.entry.unique_id}"}
    root = etree.fromstring(docs["Signature01"])
    refs = [r.get("Type") for r in root.find(q(DS, "SignedInfo")).findall(q(DS, "Reference"))]
    assert refs == [dsg.MANIFEST_TYPE, dsg.SIGNED_PROPS_TYPE]
    with pytest.raises(dsg.SignatureDocumentError, match="digest"):
        dsg.verify_signature_document(docs["Signature01"], pub.ss.unique_id, rp,
                                      {pub.entry.unique_id: pub.kos + b"x"}, _cas(pki))
    forged = docs["Signature01"].replace(b"SigningTime>20", b"SigningTime>19")
    with pytest.raises(dsg.SignatureDocumentError, match="does not verify"):
        dsg.verify_signature_document(forged, pub.ss.unique_id, rp,
                                      {pub.entry.unique_id: pub.kos}, _cas(pki))
    with pytest.raises(dsg.SignatureDocumentError, match="trusted CA"):
        dsg.verify_signature_document(docs["Signature01"], pub.ss.unique_id, rp,
                                      {pub.entry.unique_id: pub.kos},
                                      [x509.load_pem_x509_certificate(pki.rogue_ca_cert.read_bytes())])


def test_stored_query_values_are_quoted() -> None:
    req = query.find_documents("1^^^&1.2&ISO^NH", event_codes=())
    values = {s.get("name"): [v.text for v in s.iter(q(RIM, "Value"))]
              for s in req.iter(q(RIM, "Slot"))}
    assert values["$XDSDocumentEntryPatientId"] == ["'1^^^&1.2&ISO^NH'"]
    assert values["$XDSDocumentEntryStatus"] == [f"('{N.STATUS_APPROVED}')"]
    from adapters.dmp.simulator import parse_param
    assert parse_param("('a','it''s', 'c')") == ["a", "it's", "c"]
    assert parse_param("20261123") == ["20261123"]


def test_sha1_vihf_is_refused_unless_allowed(pki) -> None:  # noqa: ANN001
    """The 2023 DMP samples sign the VIHF RSA-SHA1; we refuse it unless told otherwise."""
    from signxml import CanonicalizationMethod, DigestAlgorithm, SignatureMethod, XMLSigner

    class Sha1Signer(XMLSigner):
        def check_deprecated_methods(self) -> None:  # the test needs a SHA-1 signature
            pass

    pub = publication()
    a = build_vihf(pub.vihf, pki.sign_key.read_bytes(), pki.sign_cert.read_bytes())
    a.remove(a.find(q(DS, "Signature")))
    a.find(q(SAML2, "Issuer")).addnext(etree.Element(q(DS, "Signature"), Id="placeholder"))
    signed = Sha1Signer(signature_algorithm=SignatureMethod.RSA_SHA1,
                        digest_algorithm=DigestAlgorithm.SHA1,
                        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0
                        ).sign(a, key=pki.sign_key.read_bytes(),
                               cert=[x509.load_pem_x509_certificate(pki.sign_cert.read_bytes())],
                               reference_uri=f"#{a.get('ID')}", id_attribute="ID")
    with pytest.raises(VihfError) as exc:
        verify_vihf(signed, _cas(pki))
    assert exc.value.subcode == "wsse:FailedCheck"
    assert verify_vihf(signed, _cas(pki), allow_sha1=True).subject_id == pub.vihf.subject_id
