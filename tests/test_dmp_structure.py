# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""The strict structural check of ITI-41 (rim.xsd and ITI TF-3 4.2 rules; no package ships the
ebRIM/XDS.b XSDs): each rule, broken on purpose in an otherwise valid submission, is refused by
the real ``drimbox dmp-sim`` over mutual TLS with XDSRegistryMetadataError and a codeContext
naming the object and the rule; nothing is stored (R4, R5)."""

from __future__ import annotations

import uuid

import pytest
from dmp_support import client, pki, publication, sim  # noqa: F401
from lxml import etree

from adapters.dmp import ebrim
from adapters.dmp import ns as N
from adapters.dmp.client import DmpClient
from adapters.dmp.errors import DmpRefusedError
from adapters.dmp.ns import RIM, q

KOS = f".//{q(RIM, 'ExtrinsicObject')}[@id='DocumentKOS']"
SS = f".//{q(RIM, 'RegistryPackage')}"


def _kos(body: etree._Element) -> etree._Element:
    return body.find(KOS)


def _slot(el: etree._Element, name: str) -> etree._Element:
    return el.find(f"{q(RIM, 'Slot')}[@name='{name}']")


def _cls(el: etree._Element, scheme: str) -> etree._Element:
    return el.find(f"{q(RIM, 'Classification')}[@classificationScheme='{scheme}']")


def _assoc(body: etree._Element, kind: str) -> etree._Element:
    return body.find(f".//{q(RIM, 'Association')}[@associationType='{kind}']")


def _add_value(slot: etree._Element, text: str) -> None:
    etree.SubElement(slot.find(q(RIM, "ValueList")), q(RIM, "Value")).text = text


def empty_slot(b):  # noqa: ANN001, ANN201
    vl = _slot(_kos(b), "languageCode").find(q(RIM, "ValueList"))
    for v in list(vl):
        vl.remove(v)


def long_value(b):  # noqa: ANN001, ANN201
    _slot(_kos(b), "sourcePatientInfo").find(f"{q(RIM, 'ValueList')}/{q(RIM, 'Value')}").text = \
        "PID-5|" + "X" * 300


def nameless_slot(b):  # noqa: ANN001, ANN201
    del _slot(_kos(b), "size").attrib["name"]


def name_without_value(b):  # noqa: ANN001, ANN201
    del _kos(b).find(f"{q(RIM, 'Name')}/{q(RIM, 'LocalizedString')}").attrib["value"]


def classification_without_scheme(b):  # noqa: ANN001, ANN201
    del _cls(_kos(b), N.DE_PRACTICE).attrib["classificationScheme"]


def two_coding_schemes(b):  # noqa: ANN001, ANN201
    _add_value(_slot(_cls(_kos(b), N.DE_CLASS), "codingScheme"), "1.2.250.1.213.1.1.4.1")


def code_without_display(b):  # noqa: ANN001, ANN201
    c = _cls(_kos(b), N.DE_TYPE)
    c.remove(c.find(q(RIM, "Name")))


def code_without_node_representation(b):  # noqa: ANN001, ANN201
    del _cls(_kos(b), N.DE_FORMAT).attrib["nodeRepresentation"]


def author_without_person_or_institution(b):  # noqa: ANN001, ANN201
    c = _cls(_kos(b), N.DE_AUTHOR)
    for s in c.findall(q(RIM, "Slot")):
        if s.get("name") in ("authorPerson", "authorInstitution"):
            c.remove(s)


def two_author_persons(b):  # noqa: ANN001, ANN201
    ebrim.slot(_cls(_kos(b), N.DE_AUTHOR), "authorPerson",
               "899700367909^DOC^KIT^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
               "899700367910^DOC^TWO^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS")


def author_with_a_code(b):  # noqa: ANN001, ANN201
    _cls(b.find(SS), N.SS_AUTHOR).set("nodeRepresentation", "AUTHOR")


def classification_without_id(b):  # noqa: ANN001, ANN201
    del _cls(_kos(b), N.DE_FACILITY).attrib["id"]


def duplicate_ss_unique_id(b):  # noqa: ANN001, ANN201
    ss = b.find(SS)
    ext = ss.find(f"{q(RIM, 'ExternalIdentifier')}[@identificationScheme='{N.SS_UNIQUE_ID}']")
    twin = etree.fromstring(etree.tostring(ext))
    twin.set("id", "ei-twin")
    twin.set("value", "1.2.3.4.5")
    ext.addnext(twin)


def two_submission_times(b):  # noqa: ANN001, ANN201
    _add_value(_slot(b.find(SS), "submissionTime"), "20260101000000")


def wrong_package_object_type(b):  # noqa: ANN001, ANN201
    b.find(SS).set("objectType", N.STABLE_DOCUMENT_ENTRY)


def has_member_from_a_document(b):  # noqa: ANN001, ANN201
    _assoc(b, N.HAS_MEMBER).set("sourceObject", "Signature01")


def has_member_to_nothing(b):  # noqa: ANN001, ANN201
    _assoc(b, N.HAS_MEMBER).set("targetObject", f"urn:uuid:{uuid.uuid4()}")


def signs_from_the_kos(b):  # noqa: ANN001, ANN201
    _assoc(b, N.SIGNS).set("sourceObject", "DocumentKOS")


CASES = [
    (empty_slot, "slot languageCode has no rim:ValueList/rim:Value"),
    (long_value, "slot sourcePatientInfo value longer than 256 characters"),
    (nameless_slot, "DocumentKOS: a Slot has no name"),
    (name_without_value, "DocumentKOS: rim:Name without a LocalizedString value"),
    (classification_without_scheme, "has neither classificationScheme nor classificationNode"),
    (two_coding_schemes, "classCode (urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a)"),
    (code_without_display, "typeCode (urn:uuid:f0306f51-975f-434e-a61c-c59651d33983)"),
    (code_without_node_representation, "formatCode (urn:uuid:a09d5840-386c-46f2-b5ad-"
                                       "9c3699a4309d) cl"),
    (author_without_person_or_institution, "has none of authorPerson, authorInstitution"),
    (two_author_persons, "authorPerson has 2 values, at most one"),
    (author_with_a_code, "nodeRepresentation must be empty, is 'AUTHOR'"),
    (classification_without_id, "DocumentKOS: a Classification has no id"),
    (duplicate_ss_unique_id, f"ExternalIdentifier {N.SS_UNIQUE_ID} appears twice"),
    (two_submission_times, "slot submissionTime must have exactly one value"),
    (wrong_package_object_type, "SubmissionSet01: objectType"),
    (has_member_from_a_document, "is not the SubmissionSet SubmissionSet01"),
    (has_member_to_nothing, "is not a DocumentEntry of the submission"),
    (signs_from_the_kos, "signs source 'DocumentKOS' is not a signature document"),
]


@pytest.mark.parametrize(("mutate", "words"), CASES, ids=[c[0].__name__ for c in CASES])
def test_each_structural_rule_is_refused(client: DmpClient, mutate, words: str) -> None:  # noqa: ANN001
    pub = publication()
    sub = ebrim.provide_and_register(pub.entry, pub.ss, pub.kos, client._sign_key,
                                     client._sign_cert, pub.signature_uid)
    mutate(sub.body)
    with pytest.raises(DmpRefusedError) as exc:
        client.call(client.endpoints.repository_url, N.ACTION_ITI41, sub.body, pub.vihf,
                    sub.attachments)
    contexts = [e.context for e in exc.value.errors if e.code == "XDSRegistryMetadataError"]
    assert any(words in c for c in contexts), contexts
    assert not client.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])


def test_the_unbroken_submission_passes(client: DmpClient) -> None:
    """The control: the same submission, untouched, is accepted without a warning."""
    pub = publication()
    warnings = client.provide_and_register(pub.entry, pub.ss, pub.kos, pub.vihf, pub.signature_uid)
    assert warnings == []
    assert client.get_documents(pub.vihf, unique_ids=[pub.entry.unique_id])
