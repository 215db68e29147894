"""Splitting a DICOM Part 10 file (PS3.10 7.1) into its File Meta Information and its dataset.

:func:`split_part10` reads the preamble, the ``DICM`` prefix and the group 0002 elements
(always explicit VR little endian) and returns the parsed meta information with the offset at
which the dataset starts. The dataset itself is not touched: it goes to the ingest path
exactly as received, in the transfer syntax the meta information names.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset

# Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_MAX_META = 1 << 20  # no sane File Meta Information is anywhere near 1 MiB


class Part10Error(ValueError):
    """The bytes are not a Part 10 file."""


@dataclass(frozen=True, slots=True)
class Part10:
    meta: FileMetaDataset
    dataset_offset: int
    """Where the dataset starts (just after the last group 0002 element)."""

    @property
    def transfer_syntax_uid(self) -> str:
        return str(self.meta.get("TransferSyntaxUID", "") or "").strip()

    @property
    def sop_class_uid(self) -> str:
        return str(self.meta.get("MediaStorageSOPClassUID", "") or "").strip()

    @property
    def sop_instance_uid(self) -> str:
        return str(self.meta.get("MediaStorageSOPInstanceUID", "") or "").strip()


def _meta_start(view: memoryview) -> int:
    """Offset of the first group 0002 element. Besides the standard 128-byte preamble +
    ``DICM``, two lenient forms are read: ``DICM`` with no preamble, and the meta elements
    with neither (what pydicom's ``dcmwrite`` produces for an in-memory dataset without a
    preamble, e.g. ``dicomweb-client``'s ``store_instances``)."""
    if len(view) >= 132 and bytes(view[128:132]) == b"DICM":
        return 132
    if bytes(view[:4]) == b"DICM":
        return 4
    if len(view) >= 8 and bytes(view[:2]) == b"\x02\x00" and bytes(view[4:6]).isalpha():
        return 0
    raise Part10Error("not a DICOM Part 10 file (no 'DICM' after a 128-byte preamble)")


def split_part10(data: bytes | memoryview) -> Part10:
    """Locate and parse the File Meta Information. Raises :class:`Part10Error`.

    The group is walked element by element rather than trusting (0002,0000) File Meta
    Information Group Length, like pydicom does, so a wrong group length is harmless.
    """
    view = memoryview(data)
    start = _meta_start(view)
    pos = start
    end = len(view)
    while pos + 8 <= end:
        group, _element = struct.unpack_from("<HH", view, pos)
        if group != 0x0002:
            break
        vr = bytes(view[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise Part10Error("File Meta Information is truncated")
            (length,) = struct.unpack_from("<I", view, pos + 8)
            header = 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", view, pos + 6)
            header = 8
        else:
            raise Part10Error("File Meta Information is not explicit VR little endian")
        if length > _MAX_META:
            raise Part10Error("File Meta Information element too large")
        if length == 0xFFFFFFFF:
            raise Part10Error("undefined length in the File Meta Information")
        pos += header + length
        if pos > end or pos - start > _MAX_META:
            raise Part10Error("File Meta Information is truncated or too large")
    if pos == start:
        raise Part10Error("no File Meta Information (group 0002)")
    try:
        ds = read_dataset(io.BytesIO(bytes(view[start:pos])), is_implicit_VR=False,
                          is_little_endian=True)
        meta = FileMetaDataset(ds)
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise Part10Error(f"File Meta Information cannot be parsed: {exc}") from None
    part = Part10(meta, pos)
    if not part.transfer_syntax_uid:
        raise Part10Error("File Meta Information has no Transfer Syntax UID")
    return part
