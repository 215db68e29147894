"""Whether an encoded dataset is whole, read from its element headers alone.

Every ingest path (C-STORE, STOW-RS, ``drimbox import``) goes through
:meth:`gateway.ingest.ingestor.Ingestor.ingest`, which calls :func:`check_complete` before anything
touches the store or the index: a dataset cut short in transit or on a damaged disc is
refused, never acknowledged, and never replaces a stored copy (the stored file's hash would
match the bad bytes, so nothing downstream could tell).

The walk reads each element's tag, VR and length and skips its value (nothing is decoded,
pixel data least of all):

* every element's declared length is present (nothing runs past the end), every sequence and
  item of undefined length is terminated, trailing zero padding is tolerated;
* native Pixel Data (and Float / Double Float Pixel Data) holds at least Rows x Columns x
  Samples per Pixel x Bits Allocated x Number of Frames (PS3.5 8.1.1; YBR_FULL_422 two
  samples per pixel, PS3.3 C.7.6.3.1.2);
* encapsulated Pixel Data (PS3.5 A.4) is a Basic Offset Table item (empty, or one offset per
  frame), at least one fragment (one per frame, but for video), and the sequence delimiter;
* a dataset of an image storage SOP class whose IOD requires the Image Pixel module has Pixel
  Data (or a Pixel Data Provider URL, JPIP referenced pixel data: PS3.5 A.6);
* explicit VR bytes announced as implicit VR little endian are named as such (their first
  length would otherwise read as a few hundred kilobytes).

Each problem raises a :class:`DatasetDefect` subclass whose message names it.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

#: Image storage SOP classes whose IOD has the Image Pixel module as mandatory, so an instance
#: without Pixel Data cannot be displayed (PS3.3 A; PS3.4 B.5). Classes without pixel data (SR,
#: KOS, encapsulated documents, presentation states, waveforms, RT Dose whose grid is
#: optional, MR spectroscopy...) are not listed.
PIXEL_DATA_REQUIRED: frozenset[str] = frozenset(
    "1.2.840.10008.5.1.4.1.1." + suffix
    for suffix in (
        "1",  # Computed Radiography Image Storage
        "1.1", "1.1.1",  # Digital X-Ray, for presentation / for processing
        "1.2", "1.2.1",  # Digital Mammography X-Ray
        "1.3", "1.3.1",  # Digital Intra-Oral X-Ray
        "2", "2.1", "2.2",  # CT, Enhanced CT, Legacy Converted Enhanced CT
        "3.1",  # Ultrasound Multi-frame
        "4", "4.1", "4.3", "4.4",  # MR, Enhanced MR, Enhanced MR Color, Legacy Converted
        "6.1", "6.2", "6.3",  # Ultrasound, Enhanced US Volume, Photoacoustic
        "7", "7.1", "7.2", "7.3", "7.4",  # Secondary Capture (single and multi-frame)
        "12.1", "12.1.1", "12.2", "12.2.1",  # XA, Enhanced XA, XRF, Enhanced XRF
        "13.1.1", "13.1.2", "13.1.3", "13.1.4", "13.1.5",  # 3D X-Ray, breast tomo/projection
        "14.1", "14.2",  # Intravascular OCT
        "20",  # Nuclear Medicine
        "30",  # Parametric Map (Float / Double Float Pixel Data count)
        "66.4",  # Segmentation
        "77.1.1", "77.1.1.1", "77.1.2", "77.1.2.1", "77.1.3",  # VL endoscopic, microscopic
        "77.1.4", "77.1.4.1",  # VL photographic (and video)
        "77.1.5.1", "77.1.5.2", "77.1.5.4", "77.1.5.7",  # ophthalmic photography, OCT
        "77.1.6", "77.1.7",  # whole slide microscopy, dermoscopic photography
        "81.1", "82.1",  # ophthalmic thickness map, corneal topography map
        "128", "128.1", "130",  # PET, Legacy Converted Enhanced PET, Enhanced PET
        "481.1",  # RT Image
    )
)


class DatasetDefect(ValueError):
    """The dataset must not be kept; the message says why."""


class Truncated(DatasetDefect):
    """A length runs past the end, a sequence is not terminated, the pixel data is short."""


class PixelDataMissing(DatasetDefect):
    """An image storage SOP class that requires Pixel Data has none."""


class WrongVREncoding(DatasetDefect):
    """The bytes are encoded with explicit VR where the transfer syntax says implicit VR."""


_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 64
#: Explicit VRs with a 4-byte length (PS3.5 7.1.2), and every VR (the rest: 2-byte length).
LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
VRS = LONG_VRS | frozenset(
    (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
     b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")
)
# Top-level elements the pixel data checks need (tag -> name); their values are read, no other.
_SOP_CLASS = 0x0008_0016
_SAMPLES = 0x0028_0002
_PHOTOMETRIC = 0x0028_0004
_FRAMES = 0x0028_0008
_ROWS = 0x0028_0010
_COLUMNS = 0x0028_0011
_BITS_ALLOCATED = 0x0028_0100
_PIXEL_DATA_PROVIDER_URL = 0x0028_7FE0  # JPIP referenced pixel data: none in the dataset
_PIXEL_TAGS = (0x7FE0_0010, 0x7FE0_0008, 0x7FE0_0009)  # Pixel Data, Float, Double Float
_KEPT = frozenset((_SOP_CLASS, _SAMPLES, _PHOTOMETRIC, _FRAMES, _ROWS, _COLUMNS,
                   _BITS_ALLOCATED, _PIXEL_DATA_PROVIDER_URL, *_PIXEL_TAGS))
_VIDEO_PREFIXES = ("1.2.840.10008.1.2.4.10", "1.2.840.10008.1.2.4.11")  # MPEG-2/4, HEVC


class _Element:
    __slots__ = ("length", "offset", "undefined")

    def __init__(self, offset: int, length: int, undefined: bool) -> None:
        self.offset = offset  # of the value
        self.length = length
        self.undefined = undefined


class _Walker:
    """One walk over one dataset; ``top`` collects the :data:`_KEPT` top-level elements."""

    def __init__(self, buf: bytes | memoryview, implicit: bool, little: bool) -> None:
        self.buf = buf
        self.implicit = implicit
        self.order = "<" if little else ">"
        self.tag_len = struct.Struct(self.order + "HHL")
        self.explicit_head = struct.Struct(self.order + "HH2sH")
        self.long_len = struct.Struct(self.order + "L")
        self.top: dict[int, _Element] = {}
        self.fragments = 0
        self.offset_table = 0

    def dataset(self, pos: int, end: int, depth: int, in_item: bool) -> int:
        """Walk elements from ``pos`` to ``end`` (or to the item delimiter when ``in_item``)."""
        if depth > _MAX_DEPTH:
            raise Truncated("sequences nested too deeply")
        buf = self.buf
        implicit = self.implicit
        while pos < end:
            if end - pos < 8:
                if not in_item and not any(bytes(buf[pos:end])):
                    return end
                raise Truncated(f"{end - pos} stray bytes at offset {pos}")
            if implicit:
                group, elem, length = self.tag_len.unpack_from(buf, pos)
                vr: bytes | None = None
                head = 8
            else:
                group, elem, vr, length = self.explicit_head.unpack_from(buf, pos)
                head = 8
                if vr in LONG_VRS:
                    if end - pos < 12:
                        raise Truncated(f"element ({group:04X},{elem:04X}) is cut short")
                    (length,) = self.long_len.unpack_from(buf, pos + 8)
                    head = 12
                elif vr not in VRS:
                    # An element in implicit VR (or a delimiter): tolerated, as pydicom does.
                    group, elem, length = self.tag_len.unpack_from(buf, pos)
                    vr = None
            if group == 0xFFFE:
                if elem == 0xE00D and in_item:
                    return pos + 8
                raise Truncated(f"unexpected delimiter (FFFE,{elem:04X}) at offset {pos}")
            if group == 0 and elem == 0 and not in_item and not any(bytes(buf[pos:end])):
                return end  # trailing zero padding
            pos += head
            tag = (group << 16) | elem
            top = depth == 0 and tag in _KEPT
            if length == _UNDEFINED:
                name = f"({group:04X},{elem:04X})"
                if top:
                    self.top[tag] = _Element(pos, 0, True)
                if vr is None and group == 0x7FE0:
                    pos = self.encapsulated(pos, end, name, top)
                elif vr in (None, b"SQ"):
                    pos = self.sequence(pos, end, depth + 1, name)
                elif vr == b"UN":
                    pos = _Walker(buf, True, True).sequence(pos, end, depth + 1, name)
                elif vr in (b"OB", b"OW"):
                    pos = self.encapsulated(pos, end, name, top)
                else:
                    raise Truncated(f"element {name} has undefined length with VR {vr.decode()}")
                continue
            if pos + length > end:
                raise Truncated(f"element ({group:04X},{elem:04X}) declares {length} bytes "
                                f"but only {end - pos} remain")
            if top:
                self.top[tag] = _Element(pos, length, False)
            if vr == b"SQ":
                self.sequence(pos, pos + length, depth + 1, f"({group:04X},{elem:04X})",
                              defined=True)
            pos += length
        if in_item:
            raise Truncated("an item of undefined length is not terminated")
        return pos

    def sequence(self, pos: int, end: int, depth: int, tag: str, defined: bool = False) -> int:
        while True:
            if defined and pos >= end:
                return pos
            if pos + 8 > end:
                raise Truncated(f"sequence {tag} is not terminated")
            group, elem, length = self.tag_len.unpack_from(self.buf, pos)
            pos += 8
            if (group, elem) == (0xFFFE, 0xE0DD) and not defined:
                return pos
            if (group, elem) != (0xFFFE, 0xE000):
                raise Truncated(f"sequence {tag} holds ({group:04X},{elem:04X}) instead of an item")
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, depth, True)
            elif pos + length > end:
                raise Truncated(f"an item of sequence {tag} runs past the end")
            else:
                self.dataset(pos, pos + length, depth, False)
                pos += length

    def encapsulated(self, pos: int, end: int, tag: str, top: bool) -> int:
        """Items of encapsulated pixel data up to the sequence delimiter; counts fragments."""
        items = 0
        while True:
            if pos + 8 > end:
                raise Truncated(f"encapsulated {tag} is not terminated")
            group, elem, length = self.tag_len.unpack_from(self.buf, pos)
            pos += 8
            if (group, elem) == (0xFFFE, 0xE0DD):
                if top:
                    self.fragments = max(items - 1, 0)
                return pos
            if (group, elem) != (0xFFFE, 0xE000) or length == _UNDEFINED:
                raise Truncated(f"encapsulated {tag} holds a malformed fragment")
            if pos + length > end:
                raise Truncated(
                    f"a fragment of {tag} declares {length} bytes but only {end - pos} remain"
                )
            if items == 0 and top:
                self.offset_table = length
            items += 1
            pos += length

    def us(self, tag: int) -> int | None:
        e = self.top.get(tag)
        if e is None or e.undefined or e.length < 2:
            return None
        return int(struct.unpack_from(self.order + "H", self.buf, e.offset)[0])

    def text(self, tag: int) -> str:
        e = self.top.get(tag)
        if e is None or e.undefined:
            return ""
        raw = bytes(self.buf[e.offset : e.offset + e.length])
        return raw.decode("ascii", "replace").strip(" \x00")


def _looks_explicit(buf: bytes | memoryview) -> bool:
    """Whether the first element reads as explicit VR (PS3.5 7.1.2) rather than implicit."""
    if len(buf) < 8:
        return False
    vr = bytes(buf[4:6])
    if vr not in VRS:
        return False
    if vr in LONG_VRS:
        return bytes(buf[6:8]) == b"\x00\x00" and len(buf) >= 12 and (
            12 + int.from_bytes(buf[8:12], "little") <= len(buf)
            or int.from_bytes(buf[8:12], "little") == _UNDEFINED
        )
    return 8 + int.from_bytes(buf[6:8], "little") <= len(buf)


def check_complete(dataset: bytes | memoryview, transfer_syntax_uid: str) -> None:
    """Raise a :class:`DatasetDefect` unless ``dataset`` (as received, in
    ``transfer_syntax_uid``) is whole. Unknown transfer syntaxes are left to the header
    reader (which refuses them)."""
    ts = UID(transfer_syntax_uid)
    if not ts.is_transfer_syntax:
        return
    buf: bytes | memoryview = dataset
    if ts == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            buf = inflater.decompress(bytes(dataset))
        except zlib.error as exc:
            raise Truncated(f"deflated dataset does not inflate: {exc}") from None
        if not inflater.eof:
            raise Truncated("deflated dataset is truncated")
    if ts.is_implicit_VR and _looks_explicit(buf):
        raise WrongVREncoding(
            f"explicit VR data sent as implicit VR little endian ({ts}): first element has "
            f"VR {bytes(buf[4:6]).decode()}"
        )
    walker = _Walker(buf, ts.is_implicit_VR, ts.is_little_endian)
    try:
        walker.dataset(0, len(buf), 0, False)
    except struct.error:
        raise Truncated("an element header is cut short") from None
    _check_pixel_data(walker, ts)


def _check_pixel_data(w: _Walker, ts: UID) -> None:
    pixel_tag = next((t for t in _PIXEL_TAGS if t in w.top), None)
    if pixel_tag is None:
        sop_class = w.text(_SOP_CLASS)
        if sop_class in PIXEL_DATA_REQUIRED and _PIXEL_DATA_PROVIDER_URL not in w.top:
            raise PixelDataMissing(f"no Pixel Data (7FE0,0010) in an instance of "
                                   f"{UID(sop_class).name}")
        return
    pixels = w.top[pixel_tag]
    frames_text = w.text(_FRAMES)
    try:
        frames = int(frames_text) if frames_text else 1
    except ValueError:
        frames = 1
    if ts.is_encapsulated and pixel_tag == 0x7FE0_0010:
        if not pixels.undefined:
            raise Truncated(f"Pixel Data is not encapsulated (defined length {pixels.length}) "
                            f"in the encapsulated transfer syntax {ts}")
        if w.fragments == 0:
            raise Truncated("encapsulated Pixel Data has no fragment")
        video = ts.startswith(_VIDEO_PREFIXES)
        if not video and w.fragments < frames:
            raise Truncated(f"encapsulated Pixel Data has {w.fragments} fragment(s) for "
                            f"{frames} frames")
        if w.offset_table and w.offset_table != 4 * frames and not video:
            raise Truncated(f"Basic Offset Table of {w.offset_table} bytes for {frames} frames")
        return
    if pixels.undefined:
        raise Truncated(f"Pixel Data is encapsulated but the transfer syntax {ts} is native")
    rows, columns, bits = w.us(_ROWS), w.us(_COLUMNS), w.us(_BITS_ALLOCATED)
    if not rows or not columns or not bits:
        return  # nothing to compare with: the pixel description is the header's business
    samples = w.us(_SAMPLES) or 1
    if w.text(_PHOTOMETRIC) == "YBR_FULL_422" and samples == 3:
        samples = 2  # two chroma samples shared by two pixels (PS3.3 C.7.6.3.1.2)
    needed = (rows * columns * samples * max(frames, 1) * bits + 7) // 8
    if pixels.length < needed:
        raise Truncated(
            f"Pixel Data holds {pixels.length} bytes of the {needed} that {max(frames, 1)} "
            f"frame(s) of {rows} x {columns} x {samples} samples x {bits} bits need"
        )
