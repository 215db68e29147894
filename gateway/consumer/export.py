"""Export of a retrieved study into the centre's own PACS (R17, the import side).

A clinician (or an operator, ``drimbox consumer export``) asks that a study the consumer
retrieved from a Source DRIMbox be imported into the local PACS. This module owns:

* **what is exported**: the files of a *complete* retrieval in the retrieval cache
  (:meth:`gateway.consumer.cache.StudyCache.retrieved_files`; a retrieval with a missing
  series is never exported, so nothing half retrieved reaches the PACS), or any folder of
  Part 10 files the operator names (``drimbox consumer export --from``);
* **the identifier coercion** (:func:`coerce_dataset`): the instance's patient becomes the
  centre's own (the appel contextuel's ``PatientID`` and ``PatientIDIssuer``, R13), the INS
  kept in Other Patient IDs Sequence with its OID. Done on the encoded bytes: the top-level
  elements are walked and only (0010,0020), (0010,0021), (0010,0024) and (0010,1002) are
  replaced; every other byte (pixel data, UIDs, private elements) is copied as it was;
* **the job** (:func:`run_export`): check every instance first (readable, one study, the
  patient's INS when coercing) so that a bad file stops the job before anything is sent; ask
  the destination which instances it already has and skip them (a re-run completes a partial
  export without duplicates); send the rest one by one; report each instance's outcome.

The destinations (C-STORE, STOW-RS, Orthanc's REST API) are adapters
(``adapters/pacs/export.py``) behind :class:`Destination`.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from gateway.consumer.context import PatientContext
from gateway.identity.codecs import ins_from_dicom
from gateway.identity.ins import INS_ISSUER_NAME
from gateway.ingest.part10 import Part10Error, split_part10

DESTINATIONS = ("cstore", "stow", "orthanc")

PATIENT_ID = 0x0010_0020
ISSUER_OF_PATIENT_ID = 0x0010_0021
ISSUER_QUALIFIERS = 0x0010_0024
OTHER_PATIENT_IDS = 0x0010_1002
#: The only elements an export may change (R17 coercion); everything else is copied as is.
COERCED_TAGS = (PATIENT_ID, ISSUER_OF_PATIENT_ID, ISSUER_QUALIFIERS, OTHER_PATIENT_IDS)
SERIES_INSTANCE_UID = 0x0020_000E
_PATIENT_GROUP_LENGTH = 0x0010_0000  # retired; dropped rather than left wrong

#: (0040,0033) Universal Entity ID Type, enumerated values (PS3.3 10.14).
_ENTITY_ID_TYPES = {"DNS", "EUI64", "ISO", "URI", "UUID", "X400", "X500"}
_DEFAULT_REPERTOIRE = re.compile(r"^[\x20-\x5b\x5d-\x7e]*$")  # printable ASCII, no backslash

# Outcomes of one instance.
SENT = "sent"
PRESENT = "already_present"
FAILED = "failed"
NOT_SENT = "not_sent"
# Outcomes of a job.
COMPLETE = "complete"
PARTIAL = "partial"
REFUSED = "refused"


class ExportError(ValueError):
    """The job cannot start (nothing was sent); the message says why, without identities."""


class CoercionRefused(ExportError):
    """An instance cannot take the local identifiers (other patient, unreadable)."""


class DestinationUnavailable(Exception):
    """The destination cannot go on (no association, connection lost, HTTP 5xx)."""


# --- The local identity (the appel contextuel's PatientID / PatientIDIssuer). ---


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """The centre's identifier of the patient, and the INS every instance must carry."""

    patient_id: str
    issuer: str
    """HL7 PID-3.4 as the appel contextuel gives it: ``name``, or ``name&OID&ISO``."""
    ins: str
    ins_oid: str = ""
    """The INS's OID; '' takes the one the instance carries."""

    @classmethod
    def of(cls, patient: PatientContext) -> LocalIdentity:
        return cls(patient.patient_id, patient.patient_id_issuer, patient.ins, patient.ins_oid)

    def __post_init__(self) -> None:
        if not self.patient_id or len(self.patient_id) > 64 or not _DEFAULT_REPERTOIRE.match(
                self.patient_id):
            raise ExportError("the local PatientID must be 1-64 characters of the DICOM "
                              "default repertoire (printable ASCII, no backslash)")
        name, universal, kind = self.issuer_parts
        if len(name) > 64 or not _DEFAULT_REPERTOIRE.match(name + universal + kind):
            raise ExportError("the PatientIDIssuer must be printable ASCII, its name at most "
                              "64 characters")
        if not self.ins:
            raise ExportError("no INS: the identifiers of an instance can only be replaced for "
                              "the patient of the appel contextuel")

    @property
    def issuer_parts(self) -> tuple[str, str, str]:
        """(namespace id, universal id, universal id type) of PID-3.4."""
        parts = (self.issuer.split("&") + ["", "", ""])[:3]
        return parts[0].strip(), parts[1].strip(), parts[2].strip().upper()

    def masked(self) -> str:
        """For audit rows and logs: never the whole identifier."""
        return self.patient_id[:3] + "*" * max(0, min(len(self.patient_id) - 3, 8))


def _qualifier(universal_id: str, kind: str) -> Dataset:
    item = Dataset()
    item.UniversalEntityID = universal_id
    item.UniversalEntityIDType = kind
    return item


def _ids_key(item: Dataset) -> tuple[str, str, str]:
    qualifiers = item.get("IssuerOfPatientIDQualifiersSequence") or []
    oid = str(qualifiers[0].get("UniversalEntityID", "") or "") if qualifiers else ""
    return (str(item.get("PatientID", "") or "").strip(),
            str(item.get("IssuerOfPatientID", "") or "").strip(), oid.strip())


def coerced_elements(head: Dataset, identity: LocalIdentity) -> Dataset:
    """The new values of :data:`COERCED_TAGS` for an instance whose patient module is
    ``head`` (absent from the result: removed). Raise :class:`CoercionRefused` when the
    instance is not the INS's patient."""
    found = ins_from_dicom(head)
    if found.ins is None:
        raise CoercionRefused("the instance carries no usable INS (" + (found.ins_refusal or "")
                              + "): it cannot be attached to the local patient")
    if found.ins.matricule != identity.ins:
        raise CoercionRefused("the instance carries another patient's INS than the appel "
                              "contextuel's: not attached to the local patient")
    out = Dataset()
    out.PatientID = identity.patient_id
    name, universal, kind = identity.issuer_parts
    if name or universal:
        out.IssuerOfPatientID = name or universal
    if universal and kind in _ENTITY_ID_TYPES:
        out.IssuerOfPatientIDQualifiersSequence = [_qualifier(universal, kind)]
    ins = Dataset()
    ins.PatientID = identity.ins
    ins.IssuerOfPatientID = INS_ISSUER_NAME
    ins.TypeOfPatientID = "TEXT"
    ins.IssuerOfPatientIDQualifiersSequence = [_qualifier(identity.ins_oid or found.ins.oid,
                                                          "ISO")]
    others = [ins]
    seen = {_ids_key(ins)[0], identity.patient_id}
    # The identifier the Source gave as PatientID, when it was not the INS (its own IPP), is
    # kept among the other ids, as are the other ids the instance already had.
    source_main = Dataset()
    for keyword in ("PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence"):
        if keyword in head:
            source_main[keyword] = head[keyword]
    for item in [source_main, *(head.get("OtherPatientIDsSequence") or [])]:
        key = _ids_key(item)
        if not key[0] or key[0] in seen:
            continue
        seen.add(key[0])
        kept = Dataset()
        for keyword in ("PatientID", "IssuerOfPatientID", "TypeOfPatientID",
                        "IssuerOfPatientIDQualifiersSequence"):
            if keyword in item:
                kept[keyword] = item[keyword]
        kept.TypeOfPatientID = kept.get("TypeOfPatientID") or "TEXT"
        others.append(kept)
    out.OtherPatientIDsSequence = others
    return out


# --- Byte-level editing of top-level elements. ---


def _encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    ts = UID(transfer_syntax)
    if ts.is_private or not ts.is_transfer_syntax:
        # An unknown syntax: DICOM says explicit VR little endian for its dataset.
        return False, True, False
    return ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated


def element_spans(raw: bytes, implicit: bool, little: bool) -> list[tuple[int, int, int]]:
    """``(tag, start, end)`` of each top-level element of an encoded dataset (not deflated).
    Bytes after the last element that pydicom cannot read as one raise :class:`ExportError`."""
    fp = io.BytesIO(raw)
    spans: list[tuple[int, int, int]] = []
    start = 0
    try:
        for elem in data_element_generator(fp, implicit, little, defer_size=256):
            end = fp.tell()
            spans.append((int(elem.tag), start, end))
            start = end
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise CoercionRefused(f"the dataset cannot be walked at byte {start}: {exc}") from None
    if start != len(raw):
        raise CoercionRefused(f"the dataset has {len(raw) - start} unreadable trailing bytes")
    return spans


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise CoercionRefused(f"the deflated dataset cannot be inflated: {exc}") from None


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = c.compress(data) + c.flush()
    return out + b"\0" * (len(out) % 2)  # PS3.5 A.5: padded to an even length


def read_head(dataset: bytes, transfer_syntax: str) -> Dataset:
    """The elements up to Series Instance UID (the patient module, the UIDs; no pixel data)."""
    implicit, little, deflated = _encoding(transfer_syntax)
    raw = _inflate(dataset) if deflated else dataset
    try:
        return read_dataset(io.BytesIO(raw), implicit, little,
                            stop_when=lambda tag, _vr, _len: tag > SERIES_INSTANCE_UID)
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise CoercionRefused(f"the dataset cannot be read: {exc}") from None


def coerce_dataset(dataset: bytes, transfer_syntax: str, identity: LocalIdentity) -> bytes:
    """``dataset`` (encoded in ``transfer_syntax``) with the local identifiers: every
    top-level element but :data:`COERCED_TAGS` keeps its exact bytes; a deflated dataset is
    inflated, edited and deflated again."""
    implicit, little, deflated = _encoding(transfer_syntax)
    raw = _inflate(dataset) if deflated else dataset
    head = read_head(raw, transfer_syntax if not deflated else "1.2.840.10008.1.2.1")
    new = coerced_elements(head, identity)
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    charset = head.get("SpecificCharacterSet", "ISO_IR 6")
    write_dataset(fp, new, parent_encoding=convert_encodings(charset))
    encoded = fp.getvalue()
    replacement = {tag: encoded[s:e] for tag, s, e in element_spans(encoded, implicit, little)}
    out = bytearray()
    pending = sorted(replacement.items())
    for tag, start, end in element_spans(raw, implicit, little):
        while pending and pending[0][0] < tag:
            out += pending.pop(0)[1]
        if pending and pending[0][0] == tag:
            out += pending.pop(0)[1]
            continue
        if tag in COERCED_TAGS or tag == _PATIENT_GROUP_LENGTH:
            continue  # not in the new set: removed (a group length would now be wrong)
        out += raw[start:end]
    for _tag, value in pending:
        out += value
    return _deflate(bytes(out)) if deflated else bytes(out)


# --- The job. ---


@dataclass(frozen=True, slots=True)
class CachedInstance:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One instance as it leaves: its dataset bytes in its own transfer syntax."""

    instance: CachedInstance
    meta: bytes
    """The File Meta Information elements, as in the cached file."""
    dataset: bytes

    @property
    def sop_class_uid(self) -> str:
        return self.instance.sop_class_uid

    @property
    def sop_instance_uid(self) -> str:
        return self.instance.sop_instance_uid

    @property
    def transfer_syntax(self) -> str:
        return self.instance.transfer_syntax

    def part10(self) -> bytes:
        return b"\0" * 128 + b"DICM" + self.meta + self.dataset


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    sop_instance_uid: str
    sop_class_uid: str
    outcome: str
    reason: str = ""


class Destination(Protocol):
    """Where instances go (``adapters/pacs/export.py``)."""

    name: str

    def present(self, instances: Sequence[CachedInstance]) -> set[str] | None:
        """SOP Instance UIDs among ``instances`` the destination holds; None when it cannot
        tell (everything is then sent, which a PACS takes harmlessly, and nothing verified)."""

    def send(self, instances: Sequence[CachedInstance],
             load: Callable[[CachedInstance], Outgoing]) -> Iterator[InstanceOutcome]:
        """Send each instance (``load`` gives its bytes), yielding one outcome per instance in
        order. Raise :class:`DestinationUnavailable` when it cannot go on."""


@dataclass(slots=True)
class ExportReport:
    destination: str
    study_uid: str = ""
    coerced: bool = False
    outcomes: list[InstanceOutcome] = field(default_factory=list)
    refused: str = ""
    """Why nothing was sent (a check before sending failed), '' otherwise."""
    stopped: str = ""
    """Why the destination stopped answering mid-way, '' otherwise."""

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(o.outcome for o in self.outcomes)
        return {k: c.get(k, 0) for k in (SENT, PRESENT, FAILED, NOT_SENT)}

    @property
    def outcome(self) -> str:
        if self.refused:
            return REFUSED
        counts = self.counts
        if counts[FAILED] == 0 and counts[NOT_SENT] == 0:
            return COMPLETE
        return PARTIAL

    @property
    def failures(self) -> list[InstanceOutcome]:
        return [o for o in self.outcomes if o.outcome in (FAILED, NOT_SENT)]

    def summary(self) -> str:
        """One line for the audit trail: destination, counts, outcome (no identity)."""
        c = self.counts
        text = (f"{self.destination}: {self.outcome}; sent {c[SENT]}, already present "
                f"{c[PRESENT]}, failed {c[FAILED]}, not sent {c[NOT_SENT]}"
                + ("; identifiers coerced" if self.coerced else ""))
        if self.refused:
            text += f"; refused: {self.refused}"
        if self.stopped:
            text += f"; stopped: {self.stopped}"
        return text

    def to_dict(self) -> dict:
        return {"destination": self.destination, "study_uid": self.study_uid,
                "outcome": self.outcome, "coerced": self.coerced, "counts": self.counts,
                "refused": self.refused, "stopped": self.stopped,
                "instances": [asdict(o) for o in self.outcomes]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def inspect_files(files: Iterable[Path]) -> list[CachedInstance]:
    """Read each file's meta information and study/series UIDs. Raise :class:`ExportError`
    naming the file (by name only) that is not a readable Part 10 instance."""
    found: list[CachedInstance] = []
    seen: set[str] = set()
    for path in files:
        try:
            data = path.read_bytes()
            part = split_part10(data)
            head = read_head(data[part.dataset_offset:], part.transfer_syntax_uid)
        except (OSError, Part10Error, CoercionRefused) as exc:
            raise ExportError(f"{path.name}: not a readable DICOM Part 10 file ({exc})") from None
        sop = part.sop_instance_uid or str(head.get("SOPInstanceUID", "") or "")
        sop_class = part.sop_class_uid or str(head.get("SOPClassUID", "") or "")
        study = str(head.get("StudyInstanceUID", "") or "")
        series = str(head.get("SeriesInstanceUID", "") or "")
        if not (sop and sop_class and study and series):
            raise ExportError(f"{path.name}: no SOP Class, SOP Instance, Study or Series UID")
        if sop in seen:
            continue  # the same instance twice in the cache is sent once
        seen.add(sop)
        found.append(CachedInstance(path, sop_class, sop, part.transfer_syntax_uid, study,
                                    series))
    return found


def loader(identity: LocalIdentity | None) -> Callable[[CachedInstance], Outgoing]:
    """How an instance's bytes are made: the cached file's, coerced when ``identity``."""

    def load(instance: CachedInstance) -> Outgoing:
        data = instance.path.read_bytes()
        part = split_part10(data)
        meta_start = 132 if data[128:132] == b"DICM" else (4 if data[:4] == b"DICM" else 0)
        meta, dataset = data[meta_start:part.dataset_offset], data[part.dataset_offset:]
        if identity is not None:
            dataset = coerce_dataset(dataset, instance.transfer_syntax, identity)
        return Outgoing(instance, meta, dataset)

    return load


def run_export(files: Iterable[Path], destination: Destination,
               identity: LocalIdentity | None = None, study_uid: str = "") -> ExportReport:
    """Export the instances of ``files`` (one study) to ``destination``.

    1. every file is read and, when ``identity`` is given, coerced in memory: one failure
       refuses the job and nothing is sent;
    2. the instances the destination already holds are skipped (``already_present``);
    3. the others are sent in order; each gets ``sent`` or ``failed`` (with the PACS's
       reason); when the destination stops answering, the rest are ``not_sent``.

    A re-run sends only what is missing: it completes an interrupted export.
    """
    report = ExportReport(destination.name, study_uid, coerced=identity is not None)
    try:
        instances = inspect_files(files)
        if not instances:
            raise ExportError("the study has no cached instance")
        studies = {i.study_uid for i in instances}
        if len(studies) != 1 or (study_uid and studies != {study_uid}):
            raise ExportError("the cached files are not all of the one study asked for")
        report.study_uid = instances[0].study_uid
        load = loader(identity)
        if identity is not None:
            for instance in instances:  # dry run: nothing leaves if one instance is refused
                try:
                    load(instance)
                except (ExportError, Part10Error, OSError) as exc:
                    raise ExportError(f"instance {instance.sop_instance_uid}: {exc}") from None
    except ExportError as exc:
        report.refused = str(exc)
        return report
    try:
        present = destination.present(instances) or set()
    except DestinationUnavailable as exc:
        report.refused = f"the destination does not answer: {exc}"
        return report
    todo = [i for i in instances if i.sop_instance_uid not in present]
    report.outcomes += [InstanceOutcome(i.sop_instance_uid, i.sop_class_uid, PRESENT)
                        for i in instances if i.sop_instance_uid in present]
    done: set[str] = set()
    try:
        for outcome in destination.send(todo, load):
            done.add(outcome.sop_instance_uid)
            report.outcomes.append(outcome)
    except DestinationUnavailable as exc:
        report.stopped = str(exc)
    report.outcomes += [InstanceOutcome(i.sop_instance_uid, i.sop_class_uid, NOT_SENT,
                                        report.stopped or "not sent")
                        for i in todo if i.sop_instance_uid not in done]
    _verify(report, destination, instances)
    return report


def _verify(report: ExportReport, destination: Destination,
            instances: Sequence[CachedInstance]) -> None:
    """Ask again what the PACS holds: an instance it acknowledged but does not hold (a PACS
    filter that answers success, e.g. Orthanc's Lua ``ReceivedInstanceFilter`` over C-STORE
    and its DICOMweb plugin's STOW-RS) is a failure, not a success."""
    if not any(o.outcome == SENT for o in report.outcomes):
        return
    try:
        held = destination.present(instances)
    except DestinationUnavailable:
        return
    if held is None:
        return
    report.outcomes = [
        InstanceOutcome(o.sop_instance_uid, o.sop_class_uid, FAILED,
                        "the PACS acknowledged it but does not hold it afterwards "
                        "(refused by a filter of the PACS?)")
        if o.outcome == SENT and o.sop_instance_uid not in held else o
        for o in report.outcomes]
