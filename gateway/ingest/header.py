"""Read the attributes the index needs from the encoded bytes of a dataset, without decoding
pixel data and without re-encoding anything.

:func:`read_header` takes a dataset exactly as it travelled (the C-STORE Data Set, the part of
a Part 10 file after its meta information) and its transfer syntax, and returns an
:class:`InstanceHeader` of plain strings. Anything it cannot read raises
:class:`HeaderError` with a reason a person can act on.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from gateway.identity.codecs import ins_from_dicom
from gateway.identity.ins import INS_ISSUER_NAME


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


def read_header(dataset: bytes | memoryview, transfer_syntax: str) -> InstanceHeader:
    """Parse the header of an encoded dataset. Raises :class:`HeaderError`."""
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
