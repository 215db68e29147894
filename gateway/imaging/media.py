"""A study's stored instances as DICOM media: a PS3.10 File-set with its DICOMDIR, General
Purpose profile of PS3.11 (file IDs of at most 8 components of 8 characters ``A-Z 0-9 _``).

pydicom's :class:`~pydicom.fileset.FileSet` builds the directory records and chooses the file
IDs (``PTnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn``); the instances themselves are written **as
stored**, byte for byte, never re-encoded: pydicom is only given their headers (read without
the pixel data), and each file it would write is replaced by the original bytes. The DICOMDIR
references files by path only, so the original bytes are what the records describe (same SOP
class, SOP instance and transfer syntax).

Two outputs:

* :func:`write_study_media` — a folder (a CD/USB image, the "download the exam" button);
* :func:`add_study_media_to_zip` / :func:`stream_study_media_zip` — the same layout inside a
  zip archive (an open :class:`zipfile.ZipFile`, or a stream of chunks for an HTTP response),
  without copying the images to disk.

``files`` is an iterable of Part 10 files, each a path or the file's bytes. ``prefix`` is the
folder of the File-set inside the target (``""``: the DICOMDIR at the root).

Directory records need a few Type 1 attributes (PS3.3 F.5: Patient ID, Study Date/Time/ID,
Series Number, Instance Number, ...). When an instance lacks one, the record gets an invented
value (like ``dcmmkdir +I``); the instance file is untouched.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

MediaSource = str | os.PathLike[str] | bytes

# Values a directory record requires (Type 1) and the value invented when the instance has none.
_INVENTED: dict[str, str | int] = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
    "SeriesNumber": 1,
    "InstanceNumber": 1,
    "ContentDate": "19000101",
    "ContentTime": "000000",
    "CompletionFlag": "COMPLETE",
    "VerificationFlag": "UNVERIFIED",
}


class MediaError(ValueError):
    """A file cannot be placed on the media (not DICOM, no SOP Instance UID, ...)."""


@dataclass(frozen=True)
class MediaEntry:
    """One instance on the media: its file ID (POSIX, relative to the DICOMDIR) and source."""

    file_id: str
    sop_instance_uid: str
    source: MediaSource


@dataclass(frozen=True)
class MediaLayout:
    """A planned File-set: the encoded DICOMDIR and where each instance goes."""

    dicomdir: bytes
    entries: tuple[MediaEntry, ...]


def _header(source: MediaSource) -> Dataset:
    try:
        if isinstance(source, bytes):
            ds = dcmread(io.BytesIO(source), stop_before_pixels=True)
        else:
            ds = dcmread(source, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise MediaError(f"not a DICOM Part 10 file: {exc}") from exc
    if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
        raise MediaError("the file has no SOP Class or SOP Instance UID")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
        raise MediaError(f"{ds.SOPInstanceUID}: no File Meta Information (not a Part 10 file)")
    return ds


def _with_record_attributes(ds: Dataset) -> Dataset:
    """Fill the Type 1 record attributes the instance lacks (the header only, not the file)."""
    for keyword, value in _INVENTED.items():
        if keyword not in ds or ds[keyword].VM == 0:
            setattr(ds, keyword, value)
    if "ConceptNameCodeSequence" in ds and len(ds.ConceptNameCodeSequence) == 0:
        del ds.ConceptNameCodeSequence
    return ds


def plan_study_media(files: Iterable[MediaSource]) -> MediaLayout:
    """The DICOMDIR and file IDs for ``files`` (duplicates of a SOP instance: the first kept)."""
    fs = FileSet()
    sources: dict[str, MediaSource] = {}
    for source in files:
        ds = _header(source)
        uid = str(ds.SOPInstanceUID)
        if uid in sources:
            continue
        sources[uid] = source
        try:
            fs.add(_with_record_attributes(ds))
        except ValueError as exc:
            raise MediaError(f"{uid}: no directory record for this instance: {exc}") from exc
    if not sources:
        raise MediaError("no instance to write")
    with tempfile.TemporaryDirectory(prefix="drimbox-media-") as tmp:
        # pydicom writes header-only stand-ins next to the DICOMDIR: only the DICOMDIR is kept.
        fs.write(tmp)
        dicomdir = (Path(tmp) / "DICOMDIR").read_bytes()
        entries = tuple(
            MediaEntry(
                file_id=PurePosixPath(*Path(instance.FileID).parts).as_posix(),
                sop_instance_uid=str(instance.SOPInstanceUID),
                source=sources[str(instance.SOPInstanceUID)],
            )
            for instance in fs
        )
    return MediaLayout(dicomdir=dicomdir, entries=entries)


def _member(prefix: str, name: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def write_study_media(
    files: Iterable[MediaSource], target_dir: str | os.PathLike[str], prefix: str = ""
) -> MediaLayout:
    """Write the File-set into ``target_dir/prefix``: ``DICOMDIR`` and the files as stored."""
    layout = plan_study_media(files)
    root = Path(target_dir) / prefix.strip("/") if prefix.strip("/") else Path(target_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "DICOMDIR").write_bytes(layout.dicomdir)
    for entry in layout.entries:
        dst = root.joinpath(*entry.file_id.split("/"))
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(entry.source, bytes):
            dst.write_bytes(entry.source)
        else:
            shutil.copyfile(entry.source, dst)
    return layout


def add_study_media_to_zip(
    archive: zipfile.ZipFile, files: Iterable[MediaSource], prefix: str = ""
) -> MediaLayout:
    """Add the File-set to an open zip archive under ``prefix`` (the images stored, not deflated:
    they are mostly compressed already, and media readers prefer it)."""
    layout = plan_study_media(files)
    archive.writestr(_member(prefix, "DICOMDIR"), layout.dicomdir, zipfile.ZIP_DEFLATED)
    for entry in layout.entries:
        name = _member(prefix, entry.file_id)
        if isinstance(entry.source, bytes):
            archive.writestr(name, entry.source, zipfile.ZIP_STORED)
        else:
            with open(entry.source, "rb") as src, archive.open(name, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return layout


class _ChunkSink(io.RawIOBase):
    """A write-only, non-seekable file that hands over what was written (zipfile streams into
    it with data descriptors)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._offset = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._offset += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._offset

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def stream_study_media_zip(files: Iterable[MediaSource], prefix: str = "") -> Iterator[bytes]:
    """The zip archive of the File-set, as chunks (for a streamed HTTP response); no temporary
    copy of the images."""
    layout = plan_study_media(files)
    sink = _ChunkSink()
    with zipfile.ZipFile(sink, "w") as archive:  # type: ignore[arg-type]
        archive.writestr(_member(prefix, "DICOMDIR"), layout.dicomdir, zipfile.ZIP_DEFLATED)
        yield sink.take()
        for entry in layout.entries:
            name = _member(prefix, entry.file_id)
            with archive.open(name, "w", force_zip64=True) as dst:
                if isinstance(entry.source, bytes):
                    dst.write(entry.source)
                    yield sink.take()
                else:
                    with open(entry.source, "rb") as src:
                        while block := src.read(1 << 20):
                            dst.write(block)
                            yield sink.take()
            yield sink.take()
    yield sink.take()
