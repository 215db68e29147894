"""What a dataset's Image Pixel module says about its pixel data, checked, and the error that
names what is missing or wrong when the pixel data cannot be interpreted or decoded here.

PS3.3 C.7.6.3 makes Samples per Pixel (0028,0002), Photometric Interpretation (0028,0004),
Rows (0028,0010), Columns (0028,0011), Bits Allocated (0028,0100), Bits Stored (0028,0101),
High Bit (0028,0102) and Pixel Representation (0028,0103) Type 1 for every image, Planar
Configuration (0028,0006) Type 1C when there is more than one sample per pixel; Number of
Frames (0028,0008) is Type 1 in multi-frame IODs and means 1 when absent. The gateway stores
an image whatever its header says (the ingest checks only what it needs to keep the file
whole); what serves pixels (frames, rendering, transcoding) asks :func:`describe` first:

* ``layout`` only (an uncompressed frame cut out of the file as stored): the attributes that
  give a frame's size: Rows, Columns, Samples per Pixel, Bits Allocated (Photometric
  Interpretation when present, for YBR_FULL_422's two samples per pixel, PS3.3 C.7.6.3.1.2);
* decoding (frames as native pixels, rendering, transcoding): every Type 1 attribute above but
  High Bit (which decoders ignore), with values they can use.

Anything missing or unusable raises :class:`UnreadablePixels` naming the attribute, its tag
and the value found (e.g. ``Pixel Representation (0028,0103) is missing``);
:func:`decoding_failed` turns a decoder's exception into the same error, naming the transfer
syntax and what the decoder said. The HTTP face answers it with 422 (docs/dicomweb.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

PHOTOMETRIC = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422",
    "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_422", "HSV", "ARGB", "CMYK", "XYB",
})
"""Photometric Interpretation values of PS3.3 C.7.6.3.1.2 (retired ones included)."""

_NAMES = {
    "SamplesPerPixel": ("Samples per Pixel", "0028,0002"),
    "PhotometricInterpretation": ("Photometric Interpretation", "0028,0004"),
    "PlanarConfiguration": ("Planar Configuration", "0028,0006"),
    "NumberOfFrames": ("Number of Frames", "0028,0008"),
    "Rows": ("Rows", "0028,0010"),
    "Columns": ("Columns", "0028,0011"),
    "BitsAllocated": ("Bits Allocated", "0028,0100"),
    "BitsStored": ("Bits Stored", "0028,0101"),
    "PixelRepresentation": ("Pixel Representation", "0028,0103"),
}


class UnreadablePixels(ValueError):
    """The instance's pixel data cannot be interpreted or decoded here; the message says
    why (the attribute missing or wrong, or what the decoder reported)."""


def attribute(keyword: str) -> str:
    """``Pixel Representation (0028,0103)`` for ``PixelRepresentation``."""
    name, tag = _NAMES[keyword]
    return f"{name} ({tag})"


@dataclass(frozen=True, slots=True)
class PixelDescription:
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    photometric: str
    """Upper case; '' when absent (allowed only for a layout)."""
    frames: int

    @property
    def frame_bits(self) -> int:
        """Bits of one uncompressed frame (PS3.5 8.1.1; YBR_FULL_422 holds two samples per
        pixel, PS3.3 C.7.6.3.1.2)."""
        samples = 2 if self.photometric == "YBR_FULL_422" and self.samples == 3 else self.samples
        return self.rows * self.columns * samples * self.bits_allocated


def short_value(d: PixelDescription, length: int) -> str | None:
    """Why an uncompressed Pixel Data value of ``length`` bytes cannot hold the frames ``d``
    announces (``None`` when it can)."""
    needed = (d.frame_bits * d.frames + 7) // 8
    if length >= needed:
        return None
    return (f"Pixel Data (7FE0,0010) holds {length} bytes, {d.frames} frame(s) of "
            f"{d.rows}x{d.columns}x{d.samples} at {d.bits_allocated} bits need {needed}")


def _missing(keyword: str) -> UnreadablePixels:
    return UnreadablePixels(f"{attribute(keyword)} is missing")


def _integer(ds: Dataset, keyword: str, allowed: str, ok) -> int:  # noqa: ANN001
    if keyword not in ds:
        raise _missing(keyword)
    raw = ds[keyword].value
    if raw is None or raw == "" or raw == b"":
        raise UnreadablePixels(f"{attribute(keyword)} is empty")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise UnreadablePixels(f"{attribute(keyword)} is {str(raw)[:40]!r}, not {allowed}"
                               ) from None
    if not ok(value):
        raise UnreadablePixels(f"{attribute(keyword)} is {value}, not {allowed}")
    return value


def frame_count(ds: Dataset) -> int:
    """Number of Frames, 1 when absent or empty; anything but a positive integer is refused."""
    raw = ds.get("NumberOfFrames")
    if raw is None or raw == "":
        return 1
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise UnreadablePixels(f"{attribute('NumberOfFrames')} is {str(raw)[:40]!r}, not a "
                               "positive integer") from None
    if value < 1:
        raise UnreadablePixels(f"{attribute('NumberOfFrames')} is {value}, not a positive "
                               "integer")
    return value


def describe(ds: Dataset, *, decode: bool) -> PixelDescription:
    """The pixel data's layout, checked (all Type 1 attributes when ``decode``); raises
    :class:`UnreadablePixels`."""
    rows = _integer(ds, "Rows", "a positive integer", lambda v: 0 < v < 1 << 16)
    columns = _integer(ds, "Columns", "a positive integer", lambda v: 0 < v < 1 << 16)
    samples = _integer(ds, "SamplesPerPixel", "1, 3 or 4", lambda v: v in (1, 3, 4))
    bits = _integer(ds, "BitsAllocated", "1 or a multiple of 8 up to 64",
                    lambda v: v == 1 or (v % 8 == 0 and 8 <= v <= 64))
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if decode:
        if "PhotometricInterpretation" not in ds:
            raise _missing("PhotometricInterpretation")
        if photometric not in PHOTOMETRIC:
            shown = repr(photometric[:40]) if photometric else "empty"
            raise UnreadablePixels(f"{attribute('PhotometricInterpretation')} is {shown}, "
                                   "not a value of PS3.3 C.7.6.3.1.2")
        _integer(ds, "BitsStored", f"from 1 to Bits Allocated ({bits})",
                 lambda v: 1 <= v <= bits)
        _integer(ds, "PixelRepresentation", "0 (unsigned) or 1 (signed)", lambda v: v in (0, 1))
        if samples > 1:
            _integer(ds, "PlanarConfiguration", "0 or 1", lambda v: v in (0, 1))
    return PixelDescription(rows, columns, samples, bits, photometric, frame_count(ds))


def decoding_failed(exc: BaseException, transfer_syntax: str) -> UnreadablePixels:
    """A decoder's exception as :class:`UnreadablePixels` (its message on one line)."""
    if isinstance(exc, UnreadablePixels):
        return exc
    ts = UID(transfer_syntax)
    name = ts.name if ts.is_transfer_syntax else transfer_syntax
    said = " ".join(str(exc).split()) or type(exc).__name__
    if len(said) > 400:
        said = said[:397] + "..."
    return UnreadablePixels(f"the pixel data ({name}) cannot be decoded: {said}")


def bit_slice(data: bytes, start: int, count: int) -> bytes:
    """``count`` bits of ``data`` from bit ``start``, repacked from bit 0 (1-bit pixel data
    packs pixels from the least significant bit, PS3.5 8.1.1; a frame of a multi-frame
    1-bit image need not start on a byte)."""
    import numpy as np

    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    if start + count > bits.size:
        raise UnreadablePixels(f"the pixel data holds {bits.size} bits, the frame needs bits "
                               f"{start} to {start + count}")
    return np.packbits(bits[start : start + count], bitorder="little").tobytes()
