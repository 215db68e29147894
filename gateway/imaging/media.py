"""A study as DICOM media (PS3.10 / PS3.11 General Purpose media): a File-set with its
DICOMDIR, like the CD a patient used to get, written to a directory and handed out as a zip.

:func:`write_fileset` builds the DICOMDIR with pydicom's :class:`pydicom.fileset.FileSet`
(PATIENT / STUDY / SERIES / IMAGE-or-other records, File IDs ``PT000000/ST000000/…``) from the
headers of the stored files, then puts each stored file in its File ID **byte for byte** (the
instances are never re-encoded: what the patient takes away is what the modality sent). A
header missing a value that a directory record must have (Type 1 in PS3.3 F.5: Study Date,
Study Time, Study ID, Series Number, Patient ID) gets a neutral one in its record only.

:func:`zip_stream` streams a directory as a zip (stored, no compression: DICOM pixel data
hardly compresses and the machine has two cores), chunk by chunk, never whole in memory.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.fileset import FileSet

#: What a directory record must carry (pydicom refuses an empty Type 1 value): the neutral
#: value put in the record when the instance's header has none.
_RECORD_DEFAULTS = {"StudyDate": "19000101", "StudyTime": "000000", "StudyID": "1",
                    "SeriesNumber": 1, "InstanceNumber": 1, "PatientID": "INCONNU"}
FILESET_ID = "DRIMBOX"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class MediaFile:
    """One instance on the media: its SOP Instance UID and File ID (``/``-separated)."""

    sop_instance_uid: str
    file_id: str


def write_fileset(files: Iterable[Path], directory: Path,
                  fileset_id: str = FILESET_ID) -> list[MediaFile]:
    """Write ``files`` (stored Part 10 files) under ``directory`` with a ``DICOMDIR``;
    return where each went. ``directory`` must be empty (or not exist)."""
    directory.mkdir(parents=True, exist_ok=True)
    fs = FileSet()
    fs.ID = fileset_id
    sources: dict[str, Path] = {}
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)  # the records need the header only
        for keyword, value in _RECORD_DEFAULTS.items():
            if keyword not in ds or ds[keyword].VM == 0:
                setattr(ds, keyword, value)
        sources[str(ds.SOPInstanceUID)] = path
        fs.add(ds)
    fs.write(directory)
    placed = []
    for instance in fs:
        target = directory / instance.FileID  # FileID uses os.sep
        # The stored bytes, not pydicom's re-encoding of the header read above.
        with open(sources[instance.SOPInstanceUID], "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
        placed.append(MediaFile(instance.SOPInstanceUID,
                                instance.FileID.replace(os.sep, "/")))
    return placed


class _Sink:
    """What :class:`zipfile.ZipFile` writes to: bytes collected until the stream takes them
    (not seekable: zipfile then writes data descriptors)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def zip_stream(directory: Path) -> Iterator[bytes]:
    """The files under ``directory`` as a zip, ``DICOMDIR`` first, in chunks."""
    files = sorted((p for p in directory.rglob("*") if p.is_file()),
                   key=lambda p: (p.name != "DICOMDIR", p.relative_to(directory).as_posix()))
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:  # type: ignore[arg-type]
        for path in files:
            info = zipfile.ZipInfo.from_file(path, path.relative_to(directory).as_posix())
            info.compress_type = zipfile.ZIP_STORED
            with archive.open(info, "w", force_zip64=True) as out, open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    if sink.parts:
                        yield sink.take()
            if sink.parts:
                yield sink.take()
    if sink.parts:
        yield sink.take()
