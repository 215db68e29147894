"""WADO-URI (PS3.18 9): one instance by its UIDs in the query string, as DICOM or rendered.

Route: ``GET`` and ``HEAD /wado`` (beside ``/dicom-web``, on a Source only, like WADO-RS)::

    /wado?requestType=WADO&studyUID=...&seriesUID=...&objectUID=...[&contentType=...][...]

Required: ``requestType=WADO`` and the three UIDs (400 naming what is missing or malformed;
an unknown instance, or one the caller may not see, is 404). Access and audit are WADO-RS's
(:data:`dicomweb.deps.WadoUriAccess`: the policy sees the query's UIDs and the
``KOS-SOPInstanceUID`` header; audited as a ``wado`` read).

**Media type** (PS3.18 9.3): ``contentType`` (also read under the name ``accept``; a list
with ``q`` values is allowed), else the Accept header. Offered: ``application/dicom``
(Retrieve DICOM Instance, 9.4) and, for an image, ``image/jpeg``, ``image/png``, ``image/gif``
(Retrieve Rendered Instance, 9.5); for an encapsulated document, its own type
(``application/pdf``...). A wildcard (``*/*``: a browser's ``text/html,...,*/*;q=0.8``, or no
contentType and no Accept at all) selects ``image/jpeg`` for an image, the document's type
for an encapsulated document, else ``application/dicom``. Nothing offered is acceptable: 406
listing what this instance can be sent as.

**application/dicom**: one Part 10 file, ``Content-Type: application/dicom;
transfer-syntax=<uid>``. ``transferSyntax`` picks the syntax (lossless transcoding only,
:mod:`gateway.imaging.transcode`); without it the default of PS3.18 8.7.3 / 9.4.1.2.3 is
Explicit VR Little Endian, except that pixel data stored lossy is sent as stored.
``transferSyntax=*`` sends it as stored. A malformed UID, or Implicit VR Little Endian /
Explicit VR Big Endian (not for web services, 8.7.3), is 400; one the server cannot produce
from what it stores is 406 naming those it can. ``charset`` (IANA names, ``q`` allowed): an
instance in none of those listed is re-encoded in UTF-8 when ``utf-8`` is among them
(:mod:`gateway.imaging.charsets`), else sent in its own character set.

**Rendered** (JPEG quality ``imageQuality`` 1..100, default 90): ``frameNumber`` (1-based,
default the first frame; past the last one: 404), ``windowCenter`` and ``windowWidth``
(together, numbers; else the dataset's own window), ``rows`` / ``columns`` (the image is
scaled to fit them, aspect ratio kept; one alone scales by it; at most ``render_max_size``,
400 beyond), ``region=xmin,ymin,xmax,ymax`` (fractions of the image, 0..1). ``annotation``,
``charset``, ``presentationUID`` and ``presentationSeriesUID`` are accepted and ignored
(no burned-in annotation, no presentation state applied). The rendering is WADO-RS's
(:mod:`gateway.imaging.rendering`), so are its limits.

**Refused** with 400: ``anonymize=yes`` (this server does not de-identify, PS3.15 Annex E:
answering with the identified object would betray the request), rendering parameters with
``application/dicom``, ``transferSyntax`` with a rendered type, malformed values.
"""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from PIL import Image
from pydicom import dcmread

from dicomweb import accept
from dicomweb.deps import URI_UIDS, RuntimeDep, WadoUriAccess
from dicomweb.http_methods import get_and_head
from dicomweb.params import check_uids
from dicomweb.wado import instance_parts, lookup
from gateway.imaging import charsets
from gateway.imaging.rendering import (
    FrameOutOfRange,
    Limits,
    NotAnImage,
    RenderOptions,
    TooLarge,
    Viewport,
    Window,
    encapsulated_document,
    encode,
    is_image,
    number_of_frames,
    render_frame,
)
from gateway.imaging.transcode import PRODUCIBLE, TranscodeError, can_produce
from gateway.ingest.uids import is_safe_uid

router = APIRouter()

PATH = "/wado"
DICOM = "application/dicom"
JPEG, PNG, GIF = "image/jpeg", "image/png", "image/gif"
RENDERED_TYPES = (JPEG, PNG, GIF)
_RENDER_PARAMS = ("frameNumber", "windowCenter", "windowWidth", "rows", "columns", "region",
                  "imageQuality")
_HEADERS = {"Cache-Control": "private, no-cache", "Vary": "Accept"}


# -- request parsing ----------------------------------------------------------------------


def _bad(message: str) -> HTTPException:
    return HTTPException(400, message)


def _int(q: Any, name: str, low: int, high: int) -> int | None:
    raw = q.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not low <= int(raw) <= high:
        raise _bad(f"{name}={raw[:40]!r}: an integer from {low} to {high}")
    return int(raw)


def _float(q: Any, name: str) -> float | None:
    raw = q.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _bad(f"{name}={raw[:40]!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _bad(f"{name}={raw[:40]!r} is not a finite number")
    return value


def _check_request(q: Any) -> tuple[str, str, str]:
    request_type = q.get("requestType")
    if request_type != "WADO":
        raise _bad("requestType=WADO is required" if request_type is None
                   else f"requestType={request_type[:40]!r}: only WADO is supported")
    uids = []
    for name in URI_UIDS:
        value = q.get(name)
        if not value:
            raise _bad(f"{name} is required")
        uids.append(value)
    check_uids(**dict(zip(URI_UIDS, uids, strict=True)))
    anonymize = q.get("anonymize")
    if anonymize is not None:
        if anonymize.strip().lower() == "yes":
            raise _bad("anonymize=yes is not supported: this server does not de-identify "
                       "(PS3.15 Annex E); ask without it for the object as stored")
        raise _bad(f"anonymize={anonymize[:40]!r}: the only defined value is 'yes'")
    study, series, instance = uids
    return study, series, instance


def _wanted(request: Request) -> list[accept.MediaRange]:
    q = request.query_params
    value = q.get("contentType") or q.get("accept")
    if value is not None:
        ranges = accept.parse_accept([value])
        if not ranges:
            raise _bad(f"contentType={value[:80]!r} names no media type")
        return ranges
    return accept.parse_accept(request.headers.getlist("accept"))


def _choose(ranges: list[accept.MediaRange], offered: list[str], default: str) -> str | None:
    """The offered type of the best acceptable range (``*/*``: ``default``)."""
    for r in ranges:
        if r.media_type == "*/*":
            return default
        major, _, minor = r.media_type.partition("/")
        if minor == "*":
            matching = [t for t in offered if t.startswith(major + "/")]
            if matching:
                return default if default in matching else matching[0]
        elif r.media_type in offered:
            return r.media_type
    return None


# -- application/dicom --------------------------------------------------------------------


def _transfer_syntax(q: Any, stored: str) -> str:
    raw = q.get("transferSyntax")
    if raw is None:
        offer = accept.Offer(accept.DEFAULT, 1.0, 0)
    else:
        raw = raw.strip()
        if raw != accept.ANY and not is_safe_uid(raw):
            raise _bad(f"transferSyntax={raw[:80]!r} is not a UID")
        if raw in accept.NOT_FOR_WEB:
            raise _bad(f"transferSyntax={raw}: Implicit VR Little Endian and Explicit VR Big "
                       "Endian are not used by web services (PS3.18 8.7.3)")
        offer = accept.Offer(raw, 1.0, 0)
    ts = accept.select(stored, [offer], can_produce)
    if ts is None:
        raise HTTPException(406, f"the instance is stored in {stored} and cannot be sent in "
                                 f"{raw}; this server can send: {', '.join(sorted(PRODUCIBLE))} "
                                 "(lossy ones only as stored)")
    return ts


def _utf8_wanted(q: Any, path: Any) -> bool:
    raw = q.get("charset")
    if raw is None:
        return False
    requested = charsets.parse(raw)
    if not requested:
        return False
    header = dcmread(path, stop_before_pixels=True, specific_tags=[0x00080005])
    return charsets.needs_utf8(requested, charsets.stored_charset(
        header.get("SpecificCharacterSet")))


def _dicom(q: Any, runtime: Any, ref: Any, ts: str) -> Response:
    parts = instance_parts(runtime, [(ref, ts)])
    try:
        part = next(parts)
    except TranscodeError as exc:
        raise HTTPException(500, f"instance {ref.sop_instance_uid}: {exc}") from exc
    if _utf8_wanted(q, runtime.store.path_of(ref.storage_key)):
        body = charsets.to_utf8(b"".join(part.body))
        return Response(body, media_type=part.content_type, headers=_HEADERS)
    headers = {**_HEADERS, **part.headers}
    return StreamingResponse(iter(part.body), media_type=part.content_type, headers=headers)


# -- rendered -----------------------------------------------------------------------------


def _viewport(q: Any, ds: Any, max_size: int) -> Viewport | None:
    rows = _int(q, "rows", 1, max_size)
    columns = _int(q, "columns", 1, max_size)
    region = None
    raw = q.get("region")
    if raw is not None:
        try:
            x0, y0, x1, y1 = (float(v) for v in raw.split(","))
        except ValueError:
            raise _bad(f"region={raw[:80]!r}: four numbers xmin,ymin,xmax,ymax") from None
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise _bad(f"region={raw[:80]!r}: fractions with 0 <= min < max <= 1")
        width, height = int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)
        sx, sy = round(x0 * width), round(y0 * height)
        region = (sx, sy, max(1, round(x1 * width) - sx), max(1, round(y1 * height) - sy))
        if rows is None and columns is None:
            rows, columns = min(region[3], max_size), min(region[2], max_size)
    if rows is None and columns is None:
        return None
    return Viewport(columns or max_size, rows or max_size, region)


def _window(q: Any) -> Window | None:
    center, width = _float(q, "windowCenter"), _float(q, "windowWidth")
    if (center is None) != (width is None):
        raise _bad("windowCenter and windowWidth go together")
    if center is None or width is None:
        return None
    try:
        return Window(center, width)
    except ValueError as exc:
        raise _bad(f"windowWidth={width}: {exc}") from None


def _encode(image: Any, media_type: str, quality: int) -> bytes:
    if media_type != GIF:
        return encode(image, media_type, quality)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="GIF")
    return buf.getvalue()


def _rendered(q: Any, runtime: Any, ds: Any, media_type: str) -> Response:
    settings = runtime.settings
    limits = Limits(settings.render_max_size, settings.render_max_source_pixels)
    frame = _int(q, "frameNumber", 1, 999_999_999) or 1
    quality = _int(q, "imageQuality", 1, 100) or 90
    try:
        options = RenderOptions(JPEG if media_type == GIF else media_type, quality, _window(q),
                                _viewport(q, ds, settings.render_max_size))
    except ValueError as exc:
        raise _bad(str(exc)) from None
    try:
        image = render_frame(ds, frame - 1, options, limits)
    except FrameOutOfRange:
        raise HTTPException(404, f"frameNumber={frame}: the instance has "
                                 f"{number_of_frames(ds)} frame(s)") from None
    except TooLarge as exc:
        raise _bad(f"{exc} (DRIMBOX_RENDER_MAX_SOURCE_PIXELS)") from None
    except NotAnImage:
        raise HTTPException(406, "the instance has no image to render") from None
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return Response(_encode(image, media_type, quality), media_type=media_type,
                    headers=_HEADERS)


# -- the route ----------------------------------------------------------------------------


@get_and_head(router, PATH)
def wado_uri(request: Request, runtime: RuntimeDep, access: WadoUriAccess) -> Response:
    """Retrieve one instance as DICOM or rendered (PS3.18 9.4, 9.5)."""
    q = request.query_params
    study, series, instance = _check_request(q)
    ranges = _wanted(request)
    (ref,) = lookup(request, runtime, access, study, series, instance)
    path = runtime.store.path_of(ref.storage_key)
    ds = None
    offered = [DICOM]
    default = DICOM
    document = None
    if ranges and any(r.media_type != DICOM for r in ranges):  # a rendered type may win
        ds = dcmread(path, stop_before_pixels=False)
        if is_image(ds):
            offered = [JPEG, PNG, GIF, DICOM]
            default = JPEG
        else:
            document = encapsulated_document(ds)
            if document is not None:
                offered = [document[0], DICOM]
                default = document[0]
    chosen = _choose(ranges, offered, default)
    if chosen is None:
        asked = ", ".join(r.media_type for r in ranges)
        raise HTTPException(406, f"{asked} not available; this instance can be sent as "
                                 f"{', '.join(offered)}")
    if chosen == DICOM:
        present = [name for name in _RENDER_PARAMS if name in q]
        if present:
            raise _bad(f"{', '.join(present)}: for rendered images, not application/dicom")
        return _dicom(q, runtime, ref, _transfer_syntax(q, ref.transfer_syntax_uid))
    if "transferSyntax" in q:
        raise _bad(f"transferSyntax applies to application/dicom, not {chosen}")
    if document is not None and chosen == document[0]:
        return Response(document[1], media_type=chosen, headers=_HEADERS)
    return _rendered(q, runtime, ds, chosen)

