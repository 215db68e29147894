"""Frames and bulk data read from a stored instance file, without loading the whole file.

* :func:`frame_info` reads the header only (Pixel Data is deferred) and tells how many frames
  there are, in which transfer syntax, and where the Pixel Data value starts in the file.
* :func:`read_frame` returns one frame (1-based) either as stored (a native frame is a slice
  of the file; an encapsulated frame is its fragments joined) or decoded to native little
  endian bytes (``application/octet-stream``), decoding only that frame.
* :func:`read_bulk` returns the raw value of any element addressed by a tag path
  (``[tag, item, tag, item, ..., tag]``; items 0-based), for BulkDataURIs.

A frame that cannot be cut out (the header does not give its size) or decoded raises
:class:`~gateway.imaging.pixel_description.UnreadablePixels` naming why. YBR_FULL_422
uncompressed frames hold two samples per pixel; 1-bit frames that do not start on a byte are
cut out bit by bit.

Frames can be produced as stored or as native Explicit VR Little Endian; no other frame
re-encoding is offered (a client that wants another compressed syntax retrieves instances).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.encaps import get_frame
from pydicom.pixels import pack_bits, pixel_array
from pydicom.tag import Tag
from pydicom.uid import UID

from gateway.imaging.pixel_description import (
    UnreadablePixels,
    bit_slice,
    decoding_failed,
    describe,
    frame_count,
    short_value,
)

PIXEL_DATA = 0x7FE00010
EXPLICIT_LE = "1.2.840.10008.1.2.1"
LITTLE_NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
_WHOLE_FILE = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"})
"""Deflated (offsets are in the inflated stream) and big endian (bytes to swap)."""
_NATIVE_FAMILY = LITTLE_NATIVE | _WHOLE_FILE


class NoPixelData(LookupError):
    """The instance has no Pixel Data (7FE0,0010)."""


class NoSuchElement(LookupError):
    """The tag path names no element of the instance."""


@dataclass(frozen=True, slots=True)
class FrameInfo:
    transfer_syntax: str
    number_of_frames: int
    value_offset: int
    """File offset of the Pixel Data value."""
    value_length: int
    """Bytes of the value; 0xFFFFFFFF when encapsulated (undefined length)."""
    frame_length: int
    """Bytes of one native frame (0 when encapsulated)."""
    frame_bits: int = 0
    """Bits of one native frame (not a multiple of 8 for some 1-bit images)."""
    problem: str = ""
    """Why no frame can be cut out or decoded ('' when frames can be read)."""

    @property
    def encapsulated(self) -> bool:
        return self.value_length == 0xFFFFFFFF


def frame_info(path: Path) -> FrameInfo:
    """Where the frames are. When the header does not say how big an uncompressed frame is
    (:func:`describe`) or names no valid Number of Frames, :attr:`FrameInfo.problem` says
    so: the whole value can still be sent as stored, no frame can."""
    ds = dcmread(path, defer_size=256)
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if raw is None:
        raise NoPixelData("the instance has no pixel data")
    ts = str(ds.file_meta.TransferSyntaxUID)
    if getattr(raw, "value_tell", None) is None:  # small enough not to be deferred
        ds2 = dcmread(path, defer_size=0)  # every value deferred: offsets known
        raw = ds2.get_item(PIXEL_DATA, keep_deferred=True)
    try:
        if raw.length == 0xFFFFFFFF:
            return FrameInfo(ts, frame_count(ds), raw.value_tell, raw.length, 0)
        layout = describe(ds, decode=False)
    except UnreadablePixels as exc:
        return FrameInfo(ts, 1, raw.value_tell, raw.length, 0, problem=str(exc))
    frame_length = (layout.frame_bits + 7) // 8  # 1-bit frames may not end on a byte
    short = short_value(layout, raw.length)
    if short:
        return FrameInfo(ts, layout.frames, raw.value_tell, raw.length, 0, problem=short)
    return FrameInfo(ts, layout.frames, raw.value_tell, raw.length, frame_length,
                     layout.frame_bits)


def read_frame(path: Path, info: FrameInfo, number: int, target: str) -> bytes:
    """Frame ``number`` (1-based) as stored (``target == info.transfer_syntax``) or as
    native little endian (``target`` Explicit VR Little Endian); :class:`UnreadablePixels`
    when it cannot be cut out or decoded."""
    if info.problem:
        raise UnreadablePixels(info.problem)
    if not 1 <= number <= info.number_of_frames:
        raise IndexError(number)
    stored = info.transfer_syntax
    as_stored = target == stored or (target == EXPLICIT_LE and stored in LITTLE_NATIVE)
    if as_stored and not info.encapsulated:
        return _native_frame(path, info, number)
    if as_stored:
        with open(path, "rb") as f:
            f.seek(info.value_offset)
            try:
                return get_frame(f, number - 1, number_of_frames=info.number_of_frames)
            except (ValueError, KeyError, EOFError) as exc:
                raise UnreadablePixels(f"frame {number} cannot be found in the encapsulated "
                                       f"Pixel Data (7FE0,0010): {exc}") from None
    if target != EXPLICIT_LE:
        raise ValueError(f"frames are offered as stored or native, not {target}")
    return decode_frame(path, info, number)


def _native_frame(path: Path, info: FrameInfo, number: int) -> bytes:
    if info.frame_bits % 8:  # 1-bit frames not aligned on bytes
        start = (number - 1) * info.frame_bits
        with open(path, "rb") as f:
            f.seek(info.value_offset + start // 8)
            data = f.read((start % 8 + info.frame_bits + 7) // 8)
        return bit_slice(data, start % 8, info.frame_bits)
    with open(path, "rb") as f:
        f.seek(info.value_offset + (number - 1) * info.frame_length)
        data = f.read(info.frame_length)
    if len(data) != info.frame_length:
        raise UnreadablePixels(f"frame {number} is cut short in Pixel Data (7FE0,0010)")
    return data


def decode_frame(path: Path, info: FrameInfo, number: int) -> bytes:
    """Frame ``number`` decoded to native little endian bytes (1-bit pixels packed again,
    PS3.5 8.1.1)."""
    stored = info.transfer_syntax
    try:
        if stored in _WHOLE_FILE:  # no file offset to seek to: read the dataset, then slice
            ds = dcmread(path)
            describe(ds, decode=True)
            arr = pixel_array(ds, index=number - 1)
        else:
            ds = dcmread(path, stop_before_pixels=True)
            describe(ds, decode=True)
            try:
                arr = pixel_array(str(path), index=number - 1)
            except Exception:  # noqa: BLE001 - e.g. a dataset not in its syntax's VR form
                arr = pixel_array(dcmread(path), index=number - 1)
    except Exception as exc:  # noqa: BLE001 - whatever the decoder says, named
        raise decoding_failed(exc, stored) from None
    if int(ds.BitsAllocated) == 1:
        return pack_bits(arr)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def pixel_syntax(stored: str) -> str:
    """What "as stored" means for the pixel data of an instance stored in ``stored``: the
    native syntaxes (implicit, big endian, deflated) give native little endian, Explicit VR
    Little Endian; a compressed syntax is its own."""
    return EXPLICIT_LE if stored in _NATIVE_FAMILY else stored


def can_produce_frame(source: str, target: str) -> bool:
    if source == target or (target == EXPLICIT_LE and source in LITTLE_NATIVE):
        return True
    from gateway.imaging.transcode import DECODABLE

    return target == EXPLICIT_LE and (
        source in _WHOLE_FILE or (source in DECODABLE and UID(source).is_compressed))


def parse_tag_path(segments: Sequence[str]) -> list[int]:
    """``["00081111", "0", "7FE00010"]`` → ``[tag, item, tag]``; ``ValueError`` if malformed."""
    if not segments or len(segments) % 2 == 0:
        raise ValueError("a bulk data path is tag(/item/tag)*")
    out: list[int] = []
    for i, seg in enumerate(segments):
        if i % 2 == 0:
            if len(seg) != 8 or any(c not in "0123456789abcdefABCDEF" for c in seg):
                raise ValueError(f"{seg!r} is not an 8-hex-digit tag")
            out.append(int(seg, 16))
        else:
            if not seg.isdigit() or len(seg) > 6:
                raise ValueError(f"{seg!r} is not an item index")
            out.append(int(seg))
    return out


def read_bulk(path: Path, tag_path: list[int]) -> bytes:
    """The raw value bytes of the element at ``tag_path`` (not for encapsulated Pixel Data)."""
    ds = dcmread(path)
    node = ds
    for depth, key in enumerate(tag_path):
        if depth % 2 == 0:
            elem = node.get(Tag(key)) if hasattr(node, "get") else None
            if elem is None:
                raise NoSuchElement("no such element")
            node = elem
        else:
            if node.VR != "SQ" or key >= len(node.value):
                raise NoSuchElement("no such item")
            node = node.value[key]
    value = node.value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise NoSuchElement("the element holds no bulk data")
