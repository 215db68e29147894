"""DICOM JSON (PS3.18 F.2) to the Native DICOM Model XML (PS3.19 A.1, PS3.18 F.3).

The XML answers of QIDO-RS and WADO-RS metadata are made from the very JSON objects the
JSON answers carry (cached metadata, QIDO-RS rows), so both say the same thing:

* one ``NativeDicomModel`` document per dataset, in the PS3.19 namespace, with
  ``xml:space="preserve"``, UTF-8;
* one ``DicomAttribute`` per JSON attribute, in tag order, with ``tag`` (8 upper-case hex
  digits), ``vr``, ``keyword`` for a public attribute pydicom's dictionary knows, and
  ``privateCreator`` for a private one whose block has a creator in the same dataset;
* values as numbered ``Value`` elements (``number`` from 1); a JSON ``null`` (an empty value
  among several) is an empty ``Value`` keeping its number; numbers in their shortest text
  (``2.5``, ``1`` for the float 1.0);
* ``PN``: numbered ``PersonName`` elements with ``Alphabetic`` / ``Ideographic`` /
  ``Phonetic`` groups split into ``FamilyName``, ``GivenName``, ``MiddleName``,
  ``NamePrefix``, ``NameSuffix`` (the ``^``-separated components that are not empty);
* ``SQ``: numbered ``Item`` elements, each holding its attributes;
* ``BulkDataURI`` → ``<BulkData uri="..."/>`` (the same URI as in JSON), ``InlineBinary``
  → ``<InlineBinary>`` with the same base64 text.

Characters XML 1.0 cannot carry (C0 controls other than TAB, LF, CR) are replaced by U+FFFD.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lxml import etree
from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _q(name: str) -> str:
    return f"{{{NAMESPACE}}}{name}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return _NOT_XML.sub("\ufffd", str(value))


def _creators(dataset: Mapping[str, Any]) -> dict[tuple[int, int], str]:
    """Private creators of the dataset: (group, block) → creator text."""
    out = {}
    for key, attr in dataset.items():
        tag = int(key, 16)
        group, element = tag >> 16, tag & 0xFFFF
        if group % 2 and 0x10 <= element <= 0xFF:
            values = attr.get("Value") or []
            if values and values[0] is not None:
                out[(group, element)] = str(values[0]).strip()
    return out


def _person_name(parent: etree._Element, number: int, value: Any) -> None:
    pn = etree.SubElement(parent, _q("PersonName"), number=str(number))
    if not isinstance(value, Mapping):
        return
    for group in _PN_GROUPS:
        text = value.get(group)
        if not text:
            continue
        g = etree.SubElement(pn, _q(group))
        for name, component in zip(_PN_COMPONENTS, str(text).split("^"), strict=False):
            if component:
                etree.SubElement(g, _q(name)).text = _text(component)


def _fill(parent: etree._Element, dataset: Mapping[str, Any]) -> None:
    creators = _creators(dataset)
    for key in sorted(dataset, key=lambda k: int(k, 16)):
        attr = dataset[key]
        tag = int(key, 16)
        group, element = tag >> 16, tag & 0xFFFF
        vr = str(attr.get("vr", "UN"))
        el = etree.SubElement(parent, _q("DicomAttribute"), tag=f"{tag:08X}", vr=vr)
        if group % 2 == 0:
            keyword = keyword_for_tag(tag)
            if keyword:
                el.set("keyword", keyword)
        elif element >= 0x1000 and (group, element >> 8) in creators:
            el.set("privateCreator", creators[(group, element >> 8)])
        if "BulkDataURI" in attr:
            etree.SubElement(el, _q("BulkData"), uri=_text(attr["BulkDataURI"]))
            continue
        if "InlineBinary" in attr:
            etree.SubElement(el, _q("InlineBinary")).text = _text(attr["InlineBinary"])
            continue
        for number, value in enumerate(attr.get("Value") or (), start=1):
            if vr == "SQ":
                item = etree.SubElement(el, _q("Item"), number=str(number))
                _fill(item, value or {})
            elif vr == "PN":
                _person_name(el, number, value)
            else:
                v = etree.SubElement(el, _q("Value"), number=str(number))
                if value is not None:
                    v.text = _text(value)


def document(dataset: Mapping[str, Any]) -> bytes:
    """The ``application/dicom+xml`` document of one DICOM JSON dataset."""
    root = etree.Element(_q("NativeDicomModel"), nsmap={None: NAMESPACE})
    root.set(_XML_SPACE, "preserve")
    _fill(root, dataset)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
