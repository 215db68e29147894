"""The character set of a retrieved instance (the ``charset`` query parameter, PS3.18 8.3.3.2).

A client may list the charsets it reads (IANA names, ``q`` values allowed, ``*`` for any).
An instance already in one of them is sent as stored: its Specific Character Set (0008,0005)
is mapped to the IANA name (:data:`IANA`), and plain ASCII (no Specific Character Set) is in
every charset listed here. Otherwise, when ``utf-8`` is acceptable, the instance is re-encoded
in UTF-8 (``ISO_IR 192``): every text value decoded from its stored character set and written
again, the pixel data and every binary value untouched, the transfer syntax kept. Any other
request is answered as stored ("if possible", PS3.18): converting between legacy character
sets is not offered.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from pydicom import dcmread
from pydicom.filewriter import dcmwrite

UTF8 = "utf-8"
IANA = {
    "ISO_IR 6": "us-ascii", "ISO 2022 IR 6": "us-ascii",
    "ISO_IR 100": "iso-8859-1", "ISO 2022 IR 100": "iso-8859-1",
    "ISO_IR 101": "iso-8859-2", "ISO 2022 IR 101": "iso-8859-2",
    "ISO_IR 109": "iso-8859-3", "ISO 2022 IR 109": "iso-8859-3",
    "ISO_IR 110": "iso-8859-4", "ISO 2022 IR 110": "iso-8859-4",
    "ISO_IR 144": "iso-8859-5", "ISO 2022 IR 144": "iso-8859-5",
    "ISO_IR 127": "iso-8859-6", "ISO 2022 IR 127": "iso-8859-6",
    "ISO_IR 126": "iso-8859-7", "ISO 2022 IR 126": "iso-8859-7",
    "ISO_IR 138": "iso-8859-8", "ISO 2022 IR 138": "iso-8859-8",
    "ISO_IR 148": "iso-8859-9", "ISO 2022 IR 148": "iso-8859-9",
    "ISO_IR 203": "iso-8859-15", "ISO 2022 IR 203": "iso-8859-15",
    "ISO_IR 166": "tis-620", "ISO 2022 IR 166": "tis-620",
    "ISO_IR 192": UTF8, "GB18030": "gb18030", "GBK": "gbk",
}
"""DICOM Defined Terms (PS3.3 C.12.1.1.2) → IANA charset names, single-byte and Unicode."""
_ASCII_SUPERSETS = frozenset(IANA.values())
"""Every charset of :data:`IANA` holds ASCII as it is."""


def parse(value: str) -> list[str]:
    """The charsets of a ``charset`` parameter, best ``q`` first, ``q=0`` left out; lower
    case."""
    ranked = []
    for position, item in enumerate(value.split(",")):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if name and q > 0:
            ranked.append((-q, position, name))
    return [name for _, _, name in sorted(ranked)]


def stored_charset(specific_character_set: str | Iterable[str] | None) -> str | None:
    """The IANA name of a stored Specific Character Set (``us-ascii`` when absent), or None
    for one with no single name (ISO 2022 code extensions, Japanese, Korean)."""
    if not specific_character_set:
        return "us-ascii"
    values = ([specific_character_set] if isinstance(specific_character_set, str)
              else [v for v in specific_character_set if v])
    names = {IANA.get(v.strip()) for v in values if v.strip()} or {"us-ascii"}
    return names.pop() if len(names) == 1 else None


def needs_utf8(requested: list[str], stored: str | None) -> bool:
    """True when the instance must be re-encoded in UTF-8 to satisfy ``requested``."""
    if not requested or "*" in requested or (stored is not None and stored in requested):
        return False
    if stored == "us-ascii" and any(c in _ASCII_SUPERSETS for c in requested):
        return False
    return UTF8 in requested


def to_utf8(part10: bytes) -> bytes:
    """The Part 10 file ``part10`` with its text in UTF-8 (Specific Character Set
    ``ISO_IR 192``), in its own transfer syntax."""
    ds = dcmread(io.BytesIO(part10))
    ds.decode()  # every text value to Python strings, sequences included
    ds.SpecificCharacterSet = "ISO_IR 192"
    for item in _items(ds):
        if "SpecificCharacterSet" in item:
            item.SpecificCharacterSet = "ISO_IR 192"
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _items(ds):  # noqa: ANN001, ANN202 - sequence items, depth first
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield item
                yield from _items(item)
