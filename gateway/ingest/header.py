"""Read the attributes the index needs from the encoded bytes of a dataset, without decoding
pixel data and without re-encoding anything.

:func:`read_header` takes a dataset exactly as it travelled (the C-STORE Data Set, the part of
a Part 10 file after its meta information) and its transfer syntax, and returns an
:class:`InstanceHeader` of plain strings. Anything it cannot read raises
:class:`HeaderError` with a reason a person can act on.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from gateway.identity.codecs import ins_from_dicom
from gateway.identity.ins import INS_ISSUER_NAME
from gateway.ingest.completeness import LONG_VRS, VRS


class HeaderError(ValueError):
    """The dataset could not be parsed."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What the index keeps of one instance (strings as received, '' when absent)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    accession_number_issuer: str = ""
    referring_physician_name: str = ""
    study_description: str = ""
    study_id: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    instance_number: int | None = None
    # Added for QIDO-RS default return attributes (PS3.18 Table 10.6.3-4/-5).
    performed_procedure_step_start_date: str = ""
    performed_procedure_step_start_time: str = ""
    rows: int | None = None
    columns: int | None = None
    bits_allocated: int | None = None
    number_of_frames: int | None = None
    # The patient's INS as the images carry it (R19): set when valid, else the reason.
    ins_matricule: str = ""
    ins_oid: str = ""
    ins_refusal: str = ""


# The elements read, in tag order: pydicom stops parsing after the last one we need. Groups
# 0028 (image pixel description) and 0040 come before Pixel Data (7FE0,0010), which is
# never reached.
_LAST_TAG = 0x0040_0245  # PerformedProcedureStepStartTime

_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID",
    "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
    "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyDescription", "StudyID",
    "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined", "InstanceNumber",
)
_TAGS: dict[str, int] = {k: int(tag_for_keyword(k)) for k in _KEYWORDS}  # type: ignore[arg-type]


def _plain(ds: Dataset, keyword: str) -> str | None:
    """The value as text straight from the raw bytes when that is unambiguous, else ``None``.

    Converting elements through pydicom is most of the cost of reading a header (it runs on
    every C-STORE), so plain single-valued ASCII values are decoded here; anything else
    (non-ASCII bytes, a character-set escape, several values, an element pydicom has already
    converted) goes through pydicom, whose result is the reference. Only the keywords of
    ``_KEYWORDS`` (all of text VRs) take this path.
    """
    tag = _TAGS.get(keyword)
    if tag is None:  # only the text attributes above: binary VRs (Rows is US) go to pydicom
        return None
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return ""
    raw = elem.value
    if not isinstance(raw, bytes) or not raw.isascii() or b"\\" in raw or b"\x1b" in raw:
        return None
    return raw.decode("ascii").strip(" \x00\t\r\n")


def _text(ds: Dataset, keyword: str) -> str:
    plain = _plain(ds, keyword)
    if plain is not None:
        return plain.strip()
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip()
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    plain = _plain(ds, keyword)
    if plain is not None:
        if plain == "":
            return None
        try:
            return int(plain)
        except ValueError:
            pass  # e.g. "1.0": pydicom's IS decides
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _issuer_of_accession(ds: Dataset) -> str:
    seq = ds.get("IssuerOfAccessionNumberSequence")
    if not seq:
        return ""
    item = seq[0]
    return _text(item, "LocalNamespaceEntityID") or _text(item, "UniversalEntityID")


def _past_last_tag(tag: int, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_TAG  # int(): pydicom's Tag compares slowly


def _ins_fields(ds: Dataset) -> dict[str, str]:
    """The INS the images carry (PatientID + issuer + qualifiers, or OtherPatientIDsSequence)."""
    if "IssuerOfPatientIDQualifiersSequence" not in ds and "OtherPatientIDsSequence" not in ds:
        if _text(ds, "IssuerOfPatientID") != INS_ISSUER_NAME:
            return {"ins_refusal": "absent: no INS in PatientID or OtherPatientIDsSequence"}
    try:
        ids = ins_from_dicom(ds)
    except Exception as exc:  # a malformed sequence must not refuse the instance itself
        return {"ins_refusal": f"format: patient identifiers unreadable ({type(exc).__name__})"}
    if ids.ins is None:
        return {"ins_refusal": ids.ins_refusal or "absent"}
    return {"ins_matricule": ids.ins.matricule, "ins_oid": ids.ins.oid}


# -- the walk of the common case --------------------------------------------------------------
#
# A C-STORE header is about 60 elements before the last one the index needs; pydicom reads
# each into a DataElement and converts the wanted ones (0.29 ms per instance on the ingest
# corpus, a fifth of the association thread's work). For the common case, little endian and
# plain ASCII values, the walk below reads the wanted values straight from the bytes (about
# 0.06 ms); only the elements that need pydicom (the patient identifier and accession issuer
# sequences, read by gateway.identity.codecs) are handed to it, as a small dataset of their
# own encodings. Anything else (big endian, deflate, a non-ASCII or multi-valued value, an
# element cut short) goes the pydicom way, whose result is the reference:
# tests/test_header_walk.py compares the two on every sample.

_SPECIFIC_CHARACTER_SET = 0x0008_0005
_PYDICOM_TAGS = (  # handed to pydicom with the INS elements (gateway.identity.codecs)
    0x0008_0051,  # IssuerOfAccessionNumberSequence
    0x0010_0020,  # PatientID
    0x0010_0021,  # IssuerOfPatientID
    0x0010_0024,  # IssuerOfPatientIDQualifiersSequence
    0x0010_1002,  # OtherPatientIDsSequence
)
#: Character sets decoded here (PS3.3 C.12.1.1.2: Latin-1 and UTF-8, what French modalities
#: send); any other, or none with non-ASCII bytes, goes to pydicom.
_CODECS = {b"ISO_IR 100": "latin_1", b"ISO_IR 192": "utf_8"}
#: The values whose VR (PN, LO, SH) may hold characters beyond ASCII.
_CHARSET_TAGS = frozenset(_TAGS[k] for k in (
    "PatientName", "ReferringPhysicianName", "PatientID", "IssuerOfPatientID",
    "StudyDescription", "SeriesDescription", "AccessionNumber", "StudyID"))
_ROWS, _COLUMNS, _BITS_ALLOCATED = 0x0028_0010, 0x0028_0011, 0x0028_0100
_NUMBER_OF_FRAMES = 0x0028_0008
_PPS_DATE, _PPS_TIME = 0x0040_0244, 0x0040_0245
_WANTED = frozenset(_TAGS.values()) | {
    _SPECIFIC_CHARACTER_SET, *_PYDICOM_TAGS, _ROWS, _COLUMNS, _BITS_ALLOCATED,
    _NUMBER_OF_FRAMES, _PPS_DATE, _PPS_TIME}
_UNDEFINED = 0xFFFF_FFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFE_E000, 0xFFFE_E00D, 0xFFFE_E0DD


class _NotPlain(Exception):
    """The fast walk cannot answer: pydicom decides."""


def _skip_items(buf: memoryview, pos: int, explicit: bool) -> int:
    """Past the sequence delimiter of an undefined-length sequence whose first item is at
    ``pos``."""
    while True:
        if pos + 8 > len(buf):
            raise _NotPlain
        group, elem, length = struct.unpack_from("<HHI", buf, pos)
        tag = group << 16 | elem
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise _NotPlain
        pos = _skip_elements(buf, pos + 8, explicit, None) if length == _UNDEFINED \
            else pos + 8 + length


def _skip_elements(buf: memoryview, pos: int, explicit: bool,
                   found: dict[int, tuple[int, int, int]] | None) -> int:
    """Walk elements from ``pos``: at the top level (``found`` given) up to the last tag the
    index needs, recording the wanted ones as (element start, value start, end); inside an
    undefined-length item, past its delimiter."""
    n = len(buf)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | elem
        if found is not None and tag > _LAST_TAG:
            return pos
        if found is None and tag == _ITEM_END:
            return pos + 8
        if explicit and group != 0xFFFE:
            vr = bytes(buf[pos + 4:pos + 6])
            if vr in LONG_VRS:
                if pos + 12 > n:
                    raise _NotPlain
                length, start = struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
            elif vr in VRS:
                length, start = struct.unpack_from("<H", buf, pos + 6)[0], pos + 8
            else:
                raise _NotPlain
        else:
            length, start = struct.unpack_from("<I", buf, pos + 4)[0], pos + 8
        if length == _UNDEFINED:
            end = _skip_items(buf, start, explicit)
        else:
            end = start + length
            if end > n:
                raise _NotPlain
        if found is not None and tag in _WANTED:
            found[tag] = (pos, start, end)
        pos = end
    if found is None:
        raise _NotPlain  # an item without its delimiter
    return pos


def _read_plain(buf: memoryview, explicit: bool) -> InstanceHeader:
    found: dict[int, tuple[int, int, int]] = {}
    _skip_elements(buf, 0, explicit, found)
    if not found:
        raise _NotPlain

    charset = found.get(_SPECIFIC_CHARACTER_SET)
    codec = _CODECS.get(bytes(buf[charset[1]:charset[2]]).strip(b" \x00") if charset else b"")

    def text(tag: int) -> str:
        where = found.get(tag)
        if where is None:
            return ""
        raw = bytes(buf[where[1]:where[2]])
        if b"\\" in raw or b"\x1b" in raw:
            raise _NotPlain
        if raw.isascii():
            value = raw.decode("ascii")
        elif codec is not None and tag in _CHARSET_TAGS:
            try:
                value = raw.decode(codec)
            except UnicodeDecodeError:
                raise _NotPlain from None
        else:
            raise _NotPlain
        return value.strip(" \x00\t\r\n").strip()

    def integer(tag: int) -> int | None:
        value = text(tag)
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            raise _NotPlain from None

    def unsigned_short(tag: int) -> int | None:
        where = found.get(tag)
        if where is None or where[2] == where[1]:
            return None
        if where[2] - where[1] != 2:
            raise _NotPlain
        return struct.unpack_from("<H", buf, where[1])[0]

    t = _TAGS
    mini = b"".join(bytes(buf[found[tag][0]:found[tag][2]])
                    for tag in (_SPECIFIC_CHARACTER_SET, *_PYDICOM_TAGS) if tag in found)
    read = _identifiers if len(mini) <= _CACHED_IDENTIFIERS_MAX else _read_identifiers
    accession_issuer, ins = read(mini, explicit)
    return InstanceHeader(
        sop_class_uid=text(t["SOPClassUID"]),
        sop_instance_uid=text(t["SOPInstanceUID"]),
        study_instance_uid=text(t["StudyInstanceUID"]),
        series_instance_uid=text(t["SeriesInstanceUID"]),
        patient_id=text(t["PatientID"]),
        issuer_of_patient_id=text(t["IssuerOfPatientID"]),
        patient_name=text(t["PatientName"]),
        patient_birth_date=text(t["PatientBirthDate"]),
        patient_sex=text(t["PatientSex"]),
        study_date=text(t["StudyDate"]),
        study_time=text(t["StudyTime"]),
        accession_number=text(t["AccessionNumber"]),
        accession_number_issuer=accession_issuer,
        referring_physician_name=text(t["ReferringPhysicianName"]),
        study_description=text(t["StudyDescription"]),
        study_id=text(t["StudyID"]),
        modality=text(t["Modality"]),
        series_number=integer(t["SeriesNumber"]),
        series_description=text(t["SeriesDescription"]),
        body_part_examined=text(t["BodyPartExamined"]),
        instance_number=integer(t["InstanceNumber"]),
        performed_procedure_step_start_date=text(_PPS_DATE),
        performed_procedure_step_start_time=text(_PPS_TIME),
        rows=unsigned_short(_ROWS),
        columns=unsigned_short(_COLUMNS),
        bits_allocated=unsigned_short(_BITS_ALLOCATED),
        number_of_frames=integer(_NUMBER_OF_FRAMES),
        **ins,
    )


#: Identifier encodings longer than this are read without being cached: a peer sending
#: megabytes of OtherPatientIDsSequence must not fill 256 cache entries with them (real ones
#: are a few hundred bytes).
_CACHED_IDENTIFIERS_MAX = 4096


def _read_identifiers(encoded: bytes, explicit: bool) -> tuple[str, dict[str, str]]:
    """The accession number's issuer and the INS fields, from the encodings of the elements
    that carry them."""
    ds = read_dataset(io.BytesIO(encoded), is_implicit_VR=not explicit, is_little_endian=True)
    return _issuer_of_accession(ds), _ins_fields(ds)


#: The same for every instance of a study, so read by pydicom once (bounded entries and sizes).
_identifiers = functools.lru_cache(maxsize=256)(_read_identifiers)


def read_header(dataset: bytes | memoryview, transfer_syntax: str) -> InstanceHeader:
    """Parse the header of an encoded dataset. Raises :class:`HeaderError`."""
    ts = UID(transfer_syntax)
    if ts.is_transfer_syntax and ts.is_little_endian and ts != DeflatedExplicitVRLittleEndian:
        try:
            header = _read_plain(memoryview(dataset), not ts.is_implicit_VR)
        except Exception:  # noqa: BLE001, S110 - _NotPlain, or bytes pydicom explains better
            pass
        else:
            if header.sop_instance_uid:
                return header
    return read_header_pydicom(dataset, transfer_syntax)


def read_header_pydicom(dataset: bytes | memoryview, transfer_syntax: str) -> InstanceHeader:
    """:func:`read_header` through pydicom alone (the reference, and every unusual case)."""
    ts = UID(transfer_syntax)
    raw = bytes(dataset)
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw)
        except zlib.error as exc:
            raise HeaderError(f"deflated dataset does not inflate: {exc}") from None
    if not ts.is_transfer_syntax:
        raise HeaderError(f"unknown transfer syntax {transfer_syntax}")
    try:
        ds = read_dataset(
            io.BytesIO(raw),
            is_implicit_VR=ts.is_implicit_VR,
            is_little_endian=ts.is_little_endian,
            stop_when=_past_last_tag,
        )
        if len(ds) == 0:
            raise HeaderError("empty dataset")
        header = InstanceHeader(
            sop_class_uid=_text(ds, "SOPClassUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            patient_id=_text(ds, "PatientID"),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_sex=_text(ds, "PatientSex"),
            study_date=_text(ds, "StudyDate"),
            study_time=_text(ds, "StudyTime"),
            accession_number=_text(ds, "AccessionNumber"),
            accession_number_issuer=_issuer_of_accession(ds),
            referring_physician_name=_text(ds, "ReferringPhysicianName"),
            study_description=_text(ds, "StudyDescription"),
            study_id=_text(ds, "StudyID"),
            modality=_text(ds, "Modality"),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            body_part_examined=_text(ds, "BodyPartExamined"),
            instance_number=_int(ds, "InstanceNumber"),
            performed_procedure_step_start_date=_text(ds, "PerformedProcedureStepStartDate"),
            performed_procedure_step_start_time=_text(ds, "PerformedProcedureStepStartTime"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            bits_allocated=_int(ds, "BitsAllocated"),
            number_of_frames=_int(ds, "NumberOfFrames"),
            **_ins_fields(ds),
        )
    except HeaderError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise HeaderError(f"dataset cannot be parsed: {type(exc).__name__}: {exc}") from None
    return header
