"""DICOM JSON (PS3.18 Annex F) for index rows: the QIDO-RS response body.

Input: the attributes to return (each with tag and VR, from ``gateway.imaging.query``) and rows
mapping keywords to plain values as the index holds them (strings as received, integers,
lists). Output, per PS3.18 F.2:

* keys are the 8-digit upper-case tags, in tag order; each value is ``{"vr": VR}`` plus
  ``"Value": [...]`` only when the attribute has a value (an empty attribute has no
  ``Value``, F.2.5);
* PN values are objects ``{"Alphabetic": ..., "Ideographic": ..., "Phonetic": ...}`` (the
  ``=``-separated groups that are present, F.2.2);
* IS, DS and the binary numbers (US, UL, ...) are JSON numbers (F.2.3); a stored IS/DS
  string that is not a number is returned as an empty attribute rather than invalid JSON;
* other strings (DA, TM, UI, CS, LO, SH, UR...) are JSON strings; multiple values, stored
  with the DICOM ``\\`` delimiter (or held as a list), become several array items, an empty
  one among them ``null`` (F.2: ``CT\\\\MR`` is ``["CT", null, "MR"]``);
* the body is UTF-8: when a row holds non-ASCII text, SpecificCharacterSet (0008,0005) is
  ``ISO_IR 192`` (the values were decoded from their original character set at ingest).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol


class HasTagAndVR(Protocol):
    keyword: str
    tag: int
    vr: str


_NUMBER_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"}
_SINGLE_STRING_VRS = {"UR", "UT", "ST", "LT"}  # no value multiplicity (backslash is text)
_SPECIFIC_CHARACTER_SET = 0x0008_0005


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None


def _person_name(value: str) -> dict[str, str]:
    groups = value.split("=")
    out = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            out[name] = group
    return out


def _values(value: Any, vr: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, str):
        if value == "":
            return []
        items = [value] if vr in _SINGLE_STRING_VRS else value.split("\\")
    else:
        items = [value]
    if vr in _NUMBER_VRS:
        numbers: list[Any] = []
        for v in items:
            if isinstance(v, str) and not v.strip():
                numbers.append(None)  # an empty value among several: null (F.2)
                continue
            number = _number(v)
            if number is None:
                return []
            numbers.append(number)
        return numbers
    if vr == "PN":
        return [_person_name(str(v)) if v else None for v in items]
    return [str(v) if v != "" else None for v in items]


def element(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute object."""
    values = _values(value, vr)
    if not values or all(v is None for v in values):
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def dataset(attributes: Sequence[HasTagAndVR], row: Mapping[str, Any]) -> dict[str, Any]:
    """The DICOM JSON object for one row (attributes missing from ``row`` are empty)."""
    out: dict[str, Any] = {}
    non_ascii = False
    for attr in sorted(attributes, key=lambda a: a.tag):
        value = row.get(attr.keyword)
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        out[f"{attr.tag:08X}"] = element(attr.vr, value)
    if non_ascii and f"{_SPECIFIC_CHARACTER_SET:08X}" not in out:
        out = {f"{_SPECIFIC_CHARACTER_SET:08X}": {"vr": "CS", "Value": ["ISO_IR 192"]}, **out}
    return out


def dumps(attributes: Sequence[HasTagAndVR], rows: Iterable[Mapping[str, Any]]) -> bytes:
    """The ``application/dicom+json`` body: an array of datasets."""
    return json.dumps(
        [dataset(attributes, row) for row in rows], ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")
