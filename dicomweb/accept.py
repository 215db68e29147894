"""Accept header parsing and transfer-syntax negotiation for WADO-RS (PS3.18 8.7); the choice
between DICOM JSON and XML for QIDO-RS results and WADO-RS metadata (:func:`json_or_xml`).

Pure functions, no I/O: the routes give the raw ``Accept`` values and what each instance is
stored in; this module says what to send, or that nothing acceptable can be produced.

Parsing (RFC 9110 12.5.1, PS3.18 8.7.7):

* every ``Accept`` header line is read and split on commas outside quotes; empty elements
  (a DRIM-M consumer ends its list with ``,``) are skipped;
* parameter names are case-insensitive, values may be quoted; ``boundary`` is ignored;
* ``q`` defaults to 1; a range with ``q=0`` is *not acceptable* and dropped; a range with an
  invalid ``q`` or media type is ignored (PS3.18 8.7.7: invalid values shall be ignored);
* DRIM-M compatibility: an element with no media type at all, only parameters
  (``Accept: transfer-syntax=1.2.840.10008.1.2.4.50;q=0.9``, as in the ANS validator sample
  ``OK_Instances_v2``), is read as ``multipart/related; type="application/dicom"`` with those
  parameters;
* no Accept header at all is read as ``*/*`` (RFC 9110), not refused.

Negotiation (PS3.18 8.7.8): each acceptable range becomes a list of *offers*
``(transfer syntax, q)`` for the resource's part media type; a range without a
``transfer-syntax`` parameter offers the default of its media type (Table 8.7.3-2/-4/-5:
Explicit VR Little Endian for ``application/dicom`` and ``application/octet-stream``,
``image/jls`` → JPEG-LS lossless, ...); ``transfer-syntax=*`` offers "as stored". Then, per
instance (:func:`select`):

1. the stored transfer syntax is sent as stored when any offer with ``q > 0`` accepts it
   (no decode, no re-encode: fastest and exact), even if another offer has a higher ``q``;
2. otherwise the offer with the highest ``q`` (ties: the order in the header) that the server
   can produce from the stored syntax is chosen, i.e. a transcode;
3. otherwise the instance cannot be served (the route answers 406).

Implicit VR Little Endian and Explicit VR Big Endian "shall not be used with Web Services"
(PS3.18 8.7.3): they are never offered back, and an instance stored in either is sent as
Explicit VR Little Endian (a lossless re-encoding of the same dataset) where "as stored"
would apply. A default offer (no ``transfer-syntax`` parameter) for an instance stored lossy
sends it as stored: PS3.18 8.7.3 exempts pixel data the server only has in lossy form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
ANY = "*"
"""``transfer-syntax=*``: as stored."""
DEFAULT = "default"
"""No ``transfer-syntax`` parameter: the media type's default (see :func:`select`)."""

NATIVE = frozenset({EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE})
NOT_FOR_WEB = frozenset({IMPLICIT_LE, EXPLICIT_BE})

LOSSY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102",
    "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
    "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.112",
})
"""Transfer syntaxes whose pixel data may have been lossy compressed (.91 and .203 may hold
reversible code streams, but the server cannot know without decoding: treated as lossy)."""

# Frame / bulk data media types and their transfer syntaxes (PS3.18 Table 8.7.3-4/-5).
PIXEL_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "application/octet-stream": (EXPLICIT_LE,),
    "image/jpeg": ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                   "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                   "1.2.840.10008.1.2.4.203"),
    "video/mpeg": ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"),
    "video/mp4": ("1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
                  "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
                  "1.2.840.10008.1.2.4.106"),
    "video/H265": ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"),
}
_TS_TO_PIXEL_TYPE = {ts: mt for mt, tss in PIXEL_MEDIA_TYPES.items() for ts in tss}


def pixel_media_type(transfer_syntax: str) -> str:
    """The media type of a frame or of pixel bulk data encoded in ``transfer_syntax``."""
    if transfer_syntax in NATIVE or transfer_syntax == DEFLATED_LE:
        return "application/octet-stream"
    return _TS_TO_PIXEL_TYPE.get(transfer_syntax, "application/octet-stream")


class AcceptError(ValueError):
    """The Accept header holds nothing this resource can serve (answer 406)."""


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header."""

    media_type: str
    """``type/subtype`` in lower case (``*/*`` and ``type/*`` are wildcards)."""
    params: dict[str, str] = field(default_factory=dict)
    """Media type parameters (names in lower case), without ``q`` and ``boundary``."""
    q: float = 1.0
    position: int = 0

    @property
    def part_type(self) -> str | None:
        """For ``multipart/related``: the ``type`` parameter (media type of the parts)."""
        t = self.params.get("type")
        return t.lower() if t else None

    @property
    def transfer_syntax(self) -> str:
        return self.params.get("transfer-syntax", DEFAULT)


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out, cur, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return v


def _parse_q(v: str) -> float | None:
    try:
        q = float(v)
    except ValueError:
        return None
    return q if 0.0 <= q <= 1.0 else None


def parse_accept(values: Iterable[str] | None) -> list[MediaRange]:
    """Every acceptable range (``q > 0``) of the given Accept header values, best first.

    Ordering: ``q`` descending, then position in the header(s) (stable). An absent or empty
    header gives ``*/*``.
    """
    ranges: list[MediaRange] = []
    position = 0
    seen_any = False
    for value in values or ():
        for element in _split(value, ","):
            element = element.strip()
            if not element:
                continue
            seen_any = True
            pieces = [p.strip() for p in _split(element, ";")]
            if "=" in pieces[0]:  # DRIM-M: parameters only, no media type
                media_type, param_pieces = 'multipart/related', ['type="application/dicom"', *pieces]
            else:
                media_type, param_pieces = pieces[0].lower(), pieces[1:]
            type_, slash, subtype = media_type.partition("/")
            if not slash or not type_ or not subtype or (type_ == "*" and subtype != "*"):
                continue
            params: dict[str, str] = {}
            q: float | None = 1.0
            for piece in param_pieces:
                if not piece:
                    continue
                name, eq, val = piece.partition("=")
                name = name.strip().lower()
                if not eq or not name:
                    continue
                if name == "q":
                    q = _parse_q(_unquote(val))
                elif name != "boundary":
                    params[name] = _unquote(val)
            if q is None or q == 0.0:
                continue
            ranges.append(MediaRange(media_type, params, q, position))
            position += 1
    if not seen_any:
        ranges.append(MediaRange("*/*"))
    ranges.sort(key=lambda r: (-r.q, r.position))
    return ranges


@dataclass(frozen=True, slots=True)
class Offer:
    """A transfer syntax (or :data:`ANY` / :data:`DEFAULT`) the client accepts, with its q."""

    transfer_syntax: str
    q: float
    position: int


def _offer_ts(r: MediaRange, allowed: tuple[str, ...], default: str) -> Offer | None:
    ts = r.transfer_syntax
    if ts == DEFAULT:
        return Offer(default, r.q, r.position)
    if ts == ANY:
        return Offer(ANY, r.q, r.position)
    if ts in NOT_FOR_WEB:
        return None
    if allowed and ts not in allowed:
        return None
    return Offer(ts, r.q, r.position)


def instance_offers(ranges: list[MediaRange]) -> list[Offer]:
    """Offers for a retrieve of instances (parts of type ``application/dicom``).

    Accepted: ``multipart/related`` with ``type="application/dicom"`` (or no ``type``: its
    default for this resource), ``multipart/*``, ``*/*``. Anything else (e.g.
    ``application/octet-stream``, or ``application/dicom`` as a single part) offers nothing.
    """
    offers: list[Offer] = []
    for r in ranges:
        if r.media_type in ("multipart/related", "multipart/*"):
            if r.part_type not in (None, "application/dicom", "application/*", "*/*"):
                continue
        elif r.media_type != "*/*":
            continue
        offer = _offer_ts(r, (), DEFAULT)
        if offer:
            offers.append(offer)
    return offers


def pixel_offers(ranges: list[MediaRange]) -> list[Offer]:
    """Offers for frames and pixel bulk data (parts of a pixel media type).

    ``multipart/related; type=X`` where X is ``application/octet-stream`` (uncompressed,
    default Explicit VR Little Endian), ``image/jls``, ``image/jp2``, ``image/jpeg``,
    ``image/dicom-rle``, ``image/jphc``, a video type, or ``image/*``; ``*/*`` or a
    multipart without ``type`` means ``application/octet-stream``. DRIM-M compatibility: the
    ANS ``OK_Frames`` sample asks frames with ``type="application/dicom"`` and a list of
    transfer syntaxes; that is read as "these transfer syntaxes, each in its own pixel media
    type" (``application/octet-stream`` for Explicit VR Little Endian).
    """
    offers: list[Offer] = []
    for r in ranges:
        if r.media_type in ("multipart/related", "multipart/*"):
            part = r.part_type or "application/octet-stream"
        elif r.media_type == "*/*":
            part = "application/octet-stream"
        else:
            continue
        if part in ("*/*", "application/*"):
            part = "application/octet-stream"
        if part == "application/dicom":
            offer = _offer_ts(r, (), EXPLICIT_LE)
        elif part == "image/*":
            allowed = tuple(ts for mt, tss in PIXEL_MEDIA_TYPES.items()
                            if mt.startswith("image/") for ts in tss)
            offer = _offer_ts(r, allowed, ANY)
        elif part in PIXEL_MEDIA_TYPES:
            allowed = PIXEL_MEDIA_TYPES[part]
            offer = _offer_ts(r, allowed, allowed[0])
            if offer and offer.transfer_syntax == ANY and part != "application/octet-stream":
                # image/jls; transfer-syntax=* : any of that media type's syntaxes
                offers.extend(Offer(ts, r.q, r.position) for ts in allowed)
                continue
        else:
            continue
        if offer:
            offers.append(offer)
    return offers


def select(
    stored: str,
    offers: list[Offer],
    can_produce: Callable[[str, str], bool],
) -> str | None:
    """The transfer syntax to send an instance (or frame) stored in ``stored``, or ``None``.

    ``can_produce(source, target)`` says whether the server can transcode. See the module
    docstring for the rules.
    """
    as_stored = EXPLICIT_LE if stored in NOT_FOR_WEB else stored
    for offer in offers:
        ts = offer.transfer_syntax
        if ts == ANY or ts == as_stored:
            return as_stored
        if ts == DEFAULT and (as_stored == EXPLICIT_LE or stored in LOSSY):
            return as_stored
    for offer in sorted(offers, key=lambda o: (-o.q, o.position)):
        ts = EXPLICIT_LE if offer.transfer_syntax == DEFAULT else offer.transfer_syntax
        if ts != ANY and can_produce(stored, ts):
            return ts
    return None


# -- metadata and search results: DICOM JSON or the Native DICOM Model XML ------------------

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
JSON = "json"
XML = "xml"
_JSON_RANGES = frozenset({DICOM_JSON, "application/json", "application/*", "*/*"})
XML_OFFERED = f'multipart/related; type="{DICOM_XML}"'


def json_or_xml(ranges: list[MediaRange]) -> str | None:
    """The representation of QIDO-RS results and WADO-RS metadata (PS3.18 8.7.6, 10.4.3,
    10.6.3): :data:`JSON` for ``application/dicom+json`` (also ``application/json``,
    ``application/*``, ``*/*``), :data:`XML` for ``multipart/related;
    type="application/dicom+xml"`` (one Native DICOM Model document per part, PS3.19), the
    acceptable range with the highest ``q`` winning (ties: the order in the header); ``None``
    when the Accept header allows neither (answer 406). A single-part
    ``application/dicom+xml`` is not a representation PS3.18 defines for these resources."""
    for r in ranges:
        if r.media_type in _JSON_RANGES:
            return JSON
        if r.media_type in ("multipart/related", "multipart/*") and r.part_type == DICOM_XML:
            return XML
    return None
