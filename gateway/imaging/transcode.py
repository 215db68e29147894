"""Re-encoding stored instances in another transfer syntax (pydicom and its pixel plugins).

The gateway stores what it receives; a WADO-RS consumer may want something else. This module
says what can be produced (:func:`can_produce`) and produces it (:func:`transcode`), one
instance at a time, in memory (an instance, not a study).

Decoding uses whatever pydicom finds installed: its own RLE and native decoders, pylibjpeg
with pylibjpeg-libjpeg (JPEG baseline/extended/lossless), pylibjpeg-openjpeg (JPEG 2000 and
HTJ2K), pyjpegls (JPEG-LS). Encoding is **lossless only**: Explicit VR Little Endian,
Deflated Explicit VR Little Endian, RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless, and
JPEG 2000 (1.2.840.10008.1.2.4.91, which also allows a reversible code stream: we write one).
The server never makes a lossy copy of an image: a lossy target is served only to an instance
already stored in it. Transcoding never changes the SOP Instance UID (the pixel values are
unchanged; PS3.4 / PS3.5 8.2 only require a new UID after lossy compression). A dataset
without Pixel Data can be labelled with any of these syntaxes: only its encoding changes (a
compressed syntax encodes everything except Pixel Data as Explicit VR Little Endian).

Explicit VR Big Endian (retired) is converted with its pixel data byte-swapped; other OW
values of such a file are written as read (rare: no modality we know of still sends it).

Decoded colour images come out as RGB (pydicom's default conversion from YBR), with
Photometric Interpretation updated accordingly.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from pydicom.pixels import pack_bits
from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS
from pydicom.pixels.encoders.base import _PIXEL_DATA_ENCODERS
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from gateway.imaging.pixel_description import (
    UnreadablePixels,
    decoding_failed,
    describe,
    short_value,
)

_BIG_ENDIAN = "1.2.840.10008.1.2.2"
log = logging.getLogger("drimbox.transcode")
NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


class TranscodeError(RuntimeError):
    """The instance could not be decoded or encoded in the requested syntax."""


class SourceUnreadable(TranscodeError):
    """The stored instance cannot be decoded (its pixel data, or its dataset written again):
    the message names why (:mod:`gateway.imaging.pixel_description`)."""


class CannotEncode(TranscodeError):
    """The decoded pixel data cannot be encoded in the requested transfer syntax."""


def _available(registry: dict) -> frozenset[str]:
    out = set()
    for uid, entry in registry.items():
        coder = entry[0]
        try:
            if coder.is_available:
                out.add(str(uid))
        except Exception:  # a broken plugin only removes a capability
            log.warning("pixel plugin for %s unusable", uid, exc_info=True)
    return frozenset(out)


DECODABLE: frozenset[str] = _available(_PIXEL_DATA_DECODERS) | NATIVE
"""Stored transfer syntaxes whose pixel data we can decode here."""

_LOSSLESS_ENCODERS = {str(RLELossless), str(JPEGLSLossless), str(JPEG2000Lossless)}
_ENCODABLE = _available(_PIXEL_DATA_ENCODERS) & _LOSSLESS_ENCODERS
_ENCODE_AS = {ts: ts for ts in _ENCODABLE}
if str(JPEG2000Lossless) in _ENCODABLE:
    _ENCODE_AS[str(JPEG2000)] = str(JPEG2000Lossless)  # reversible code stream in .91

PRODUCIBLE: frozenset[str] = frozenset(
    {str(ExplicitVRLittleEndian), str(DeflatedExplicitVRLittleEndian), *_ENCODE_AS}
)
"""Transfer syntaxes we can write (from anything we can decode)."""


def _preferred_decoders() -> dict[str, str]:
    """Decoding plugin to ask for by name, where pydicom's own choice is slower: for JPEG-LS it
    tries pylibjpeg (libjpeg) before pyjpegls (CharLS), and CharLS decodes a 512x512 16-bit CT
    slice about 2.5x faster (10 ms against 25 ms on the benchmark machine)."""
    from pydicom.pixels import get_decoder

    out = {}
    for ts in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"):
        try:
            if "pyjpegls" in get_decoder(ts).available_plugins:
                out[ts] = "pyjpegls"
        except Exception:  # no decoder at all: pydicom's default path reports it
            pass
    return out


_DECODE_WITH = _preferred_decoders()


def can_produce(source: str, target: str) -> bool:
    """Whether an instance stored in ``source`` can be sent in ``target``."""
    if source == target:
        return True
    return target in PRODUCIBLE and (source in DECODABLE or source == str(DeflatedExplicitVRLittleEndian))


def transcode(source_file: Path | BinaryIO, target: str) -> bytes:
    """The Part 10 file of an instance (a path or an open binary file) re-encoded in
    ``target``. :class:`SourceUnreadable` when the stored pixel data or dataset cannot be
    decoded or written again, :class:`CannotEncode` when the pixel data cannot be put in
    ``target`` (e.g. a bit depth the encoder does not take)."""
    try:
        ds = dcmread(source_file)
        source = str(ds.file_meta.TransferSyntaxUID)
    except Exception as exc:
        raise SourceUnreadable(f"cannot transcode to {target}: the stored file cannot be "
                               f"read: {exc}") from exc
    _settle_vrs(ds)
    compressed = UID(source).is_compressed
    if "PixelData" in ds and (compressed or source == _BIG_ENDIAN) and source != target:
        try:
            describe(ds, decode=True)
            if compressed:
                ds.decompress(generate_instance_uid=False,
                              decoding_plugin=_DECODE_WITH.get(source, ""))
            elif source == _BIG_ENDIAN:  # retired; pixel bytes must be swapped
                arr = ds.pixel_array
                if int(ds.BitsAllocated) == 1:
                    ds.PixelData = pack_bits(arr.ravel())
                else:
                    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        except Exception as exc:
            raise SourceUnreadable(f"cannot transcode to {target}: "
                                   f"{decoding_failed(exc, source)}") from exc
    if "PixelData" in ds and source != target and target in _ENCODE_AS:
        try:
            short = short_value(describe(ds, decode=True), len(ds.PixelData))
            if short:
                raise UnreadablePixels(short)
        except UnreadablePixels as exc:
            raise SourceUnreadable(f"cannot transcode to {target}: {exc}") from exc
        try:
            ds.compress(_ENCODE_AS[target], generate_instance_uid=False)
        except Exception as exc:
            said = " ".join(str(exc).split())[:300]
            raise CannotEncode(f"the pixel data cannot be encoded in {UID(target).name}: "
                               f"{said}") from exc
    ds.file_meta.TransferSyntaxUID = UID(target)
    buf = io.BytesIO()
    tsuid = UID(target)
    try:
        dcmwrite(buf, ds, implicit_vr=tsuid.is_implicit_VR,
                 little_endian=tsuid.is_little_endian, enforce_file_format=True)
    except Exception as exc:
        said = " ".join(str(exc).split())[:300]
        raise SourceUnreadable(f"the dataset cannot be written in {tsuid.name}: {said}"
                               ) from exc
    return buf.getvalue()


def _settle_vrs(ds) -> None:  # noqa: ANN001 - a pydicom Dataset
    """Elements read without a VR (implicit VR bytes in a file labelled explicit VR, which
    pydicom reads, as the ingest does) take their dictionary VR, so that they can be
    written in any syntax."""
    if any(getattr(ds.get_item(tag), "VR", "") is None for tag in ds.keys()):
        for _ in ds.iterall():  # converting each raw element looks its VR up
            pass


_IMPLICIT = "1.2.840.10008.1.2"
_EXPLICIT = str(ExplicitVRLittleEndian)


def dataset_offset(part10: bytes) -> int:
    """Where the dataset starts in a Part 10 file: after the preamble, ``DICM`` and the file
    meta group (explicit VR little endian, PS3.10 7.1), walked element by element."""
    if part10[128:132] != b"DICM":
        return 0
    pos = 132
    while pos + 8 <= len(part10) and part10[pos:pos + 2] == b"\x02\x00":
        vr = part10[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            length = int.from_bytes(part10[pos + 8:pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(part10[pos + 6:pos + 8], "little")
            pos += 8 + length
    return pos


def can_send(source: str, target: str) -> bool:
    """Whether an instance stored in ``source`` can be sent as a dataset in ``target``
    (:func:`dataset_bytes`): itself, any little endian uncompressed syntax from what we can
    decode, or what :func:`can_produce` allows."""
    if source == target or can_produce(source, target):
        return True
    return target == _IMPLICIT and can_produce(source, _EXPLICIT)


def dataset_bytes(source_file: Path, source: str, target: str) -> bytes:
    """The dataset (no file meta) of a stored instance in ``target``: the stored bytes as they
    are when ``target`` is the stored syntax (byte for byte), else re-encoded (native little
    endian syntaxes between themselves, pixel values untouched) or transcoded."""
    raw = Path(source_file).read_bytes()
    if source == target:
        return raw[dataset_offset(raw):]
    try:
        if target == _IMPLICIT:
            if source != _EXPLICIT:
                raw = transcode(io.BytesIO(raw), _EXPLICIT)
            ds = dcmread(io.BytesIO(raw))
            buf = io.BytesIO()
            ds.file_meta.TransferSyntaxUID = UID(_IMPLICIT)
            dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=True)
            out = buf.getvalue()
        else:
            out = transcode(io.BytesIO(raw), target)
    except TranscodeError:
        raise
    except Exception as exc:
        raise TranscodeError(f"cannot transcode to {target}: {exc}") from exc
    return out[dataset_offset(out):]
