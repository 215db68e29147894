"""WADO-RS Retrieve Rendered and Thumbnail (PS3.18 9.5, 8.3.5, 10.4.1.1.3/4).

Routes, under ``/dicom-web``::

    /studies/{st}[/series/{se}[/instances/{i}[/frames/{list}]]]/rendered
    /studies/{st}[/series/{se}[/instances/{i}[/frames/{list}]]]/thumbnail

Media types: ``image/jpeg`` (default) and ``image/png``, chosen from the ``accept`` query
parameter or else the Accept header (``multipart/related; type=...`` is read for its
``type``). An encapsulated document (PDF, CDA) rendered at instance level is returned as
itself when its media type is acceptable (PS3.18 "Text" resources).

Query parameters (rendered): ``window=center,width[,linear|linear-exact|sigmoid]``,
``quality=1..100`` (JPEG), ``viewport=vw,vh[,sx,sy,sw,sh]``; ``annotation``, ``charset`` and
``iccprofile`` are accepted and ignored (PS3.18 lets a server ignore what it does not
support). Thumbnails take ``viewport`` (default 128,128) and use the dataset's own window.

What each level answers:

* instance: its first frame; a frame list of one: that frame; several frames, a series or a
  study: ``multipart/related`` with one rendered image per frame / image instance (first
  frame), each part with its Content-Location;
* thumbnail: one image; for a series its middle image instance, for a study the middle image
  instance of its first series (in Series Number order) that has images.

Access: every route takes ``RenderedAccess`` (:mod:`dicomweb.deps`); a consumer holding a KOS
(R10) gets renderings and thumbnails of that KOS's instances only (others are 404).

Limits (settings, each named in the 400 that enforces it): a ``viewport`` wider or taller
than ``render_max_size`` (an image bigger than that with no viewport is scaled down to fit);
a stored frame of more than ``render_max_source_pixels`` (Rows x Columns); a frame list
longer than ``max_frames_per_request`` (frames are rendered in the order asked, repeats
included, as PS3.18 says: the list is capped, not deduplicated).

Errors: malformed UID 400 (naming it); malformed frame list or parameter 400; unknown
study/series/instance 404; frame number past Number of Frames 404; nothing renderable in an
acceptable media type (a PDF asked for as an image, a series of reports) 406: the resource
exists, it has no representation in the media types the client accepts; an image whose pixel
data cannot be interpreted or decoded (a Type 1 Image Pixel attribute missing or wrong, a
code stream the decoders refuse, a Rescale Slope that is not a number) 422 naming why
(:mod:`gateway.imaging.pixel_description`). A series or study thumbnail, or the rendered
series or study, passes over such an image to the next one.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import uuid
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomweb.deps import Granted, RenderedAccess, RuntimeDep
from dicomweb.evicted import ensure_local
from dicomweb.http_methods import get_and_head
from dicomweb.params import check_uids, etag_matches, media_matches, parse_accept
from dicomweb.urls import DicomWebURLs
from gateway.imaging.rendering import (
    IMAGE_TYPES,
    FrameOutOfRange,
    Limits,
    NotAnImage,
    RenderOptions,
    TooLarge,
    Viewport,
    Window,
    encapsulated_document,
    is_image,
    number_of_frames,
    render,
)
from gateway.imaging.pixel_description import UnreadablePixels
from gateway.index.lookup import InstanceRef, find_instance, series_instances, series_versions
from gateway.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter()

THUMBNAIL_VIEWPORT = Viewport(128, 128)
THUMBNAIL_QUALITY = 75
_FRAME_LIST = re.compile(r"^[0-9]{1,9}(,[0-9]{1,9})*$")
_NUMBER = re.compile(r"^\s*[-+]?[0-9]{1,9}(\.0*)?\s*$")
_INTEGER = re.compile(r"^[0-9]{1,3}$")
# SOP classes that never carry pixel data: tried last when looking for a representative.
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key objects
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
)


# -- request parsing ----------------------------------------------------------------------


def _numbers(name: str, raw: str, count: tuple[int, ...]) -> list[float]:
    parts = raw.split(",")
    if len(parts) not in count:
        raise HTTPException(400, f"{name}={raw!r}: expected {' or '.join(map(str, count))} values")
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise HTTPException(400, f"{name}={raw!r}: values must be numbers") from None


def _viewport(raw: str | None, max_size: int) -> Viewport | None:
    if raw is None:
        return None
    parts = raw.split(",")
    if len(parts) not in (2, 6):
        raise HTTPException(400, f"viewport={raw[:80]!r}: expected 2 or 6 values")
    if not all(_NUMBER.match(p) for p in parts):
        raise HTTPException(400, f"viewport={raw[:80]!r}: values must be integers "
                                 "(at most 9 digits)")
    ints = [int(float(p)) for p in parts]
    if ints[0] > max_size or ints[1] > max_size:
        raise HTTPException(400, f"viewport {ints[0]}x{ints[1]} exceeds the limit "
                                 f"{max_size}x{max_size} (DRIMBOX_RENDER_MAX_SIZE)")
    try:
        return Viewport(ints[0], ints[1], tuple(ints[2:]) if len(ints) == 6 else None)
    except ValueError as exc:
        raise HTTPException(400, f"viewport={raw!r}: {exc}") from None


def _window(raw: str | None) -> Window | None:
    if raw is None:
        return None
    parts = raw.split(",")
    function = parts[2].strip().lower() if len(parts) == 3 else "linear"
    center, width = _numbers("window", ",".join(parts[:2]), (2,))
    try:
        return Window(center, width, function)
    except ValueError as exc:
        raise HTTPException(400, f"window={raw!r}: {exc}") from None


def _quality(raw: str | None) -> int:
    if raw is None:
        return 90
    if not _INTEGER.match(raw) or not 1 <= int(raw) <= 100:
        raise HTTPException(400, f"quality={raw[:80]!r}: an integer from 1 to 100")
    return int(raw)


def _choose(request: Request, offered: tuple[str, ...]) -> str | None:
    """The first offered media type the client accepts (``accept`` parameter first)."""
    header = request.query_params.get("accept") or request.headers.get("accept")
    for r in parse_accept(header):
        wanted = r.params.get("type", "*/*").lower() if r.type == "multipart/related" else r.type
        for media in offered:
            if media_matches(wanted, media):
                return media
    return None


def _limits(runtime: Runtime) -> Limits:
    s = runtime.settings
    return Limits(s.render_max_size, s.render_max_source_pixels)


def _options(request: Request, runtime: Runtime, thumbnail: bool) -> RenderOptions:
    q = request.query_params
    media = _choose(request, IMAGE_TYPES)
    max_size = runtime.settings.render_max_size
    if thumbnail:
        return RenderOptions(media or IMAGE_TYPES[0], THUMBNAIL_QUALITY, None,
                             _viewport(q.get("viewport"), max_size) or THUMBNAIL_VIEWPORT)
    return RenderOptions(media or IMAGE_TYPES[0], _quality(q.get("quality")),
                         _window(q.get("window")), _viewport(q.get("viewport"), max_size))


def _frames(raw: str, runtime: Runtime) -> list[int]:
    limit = runtime.settings.max_frames_per_request
    count = raw.count(",") + 1
    if count > limit:
        raise HTTPException(400, f"{count} frames requested, more than the limit {limit} "
                                 "(DRIMBOX_MAX_FRAMES_PER_REQUEST)")
    if not _FRAME_LIST.match(raw) or any(int(n) < 1 for n in raw.split(",")):
        raise HTTPException(400, f"frame list {raw[:80]!r}: positive integers separated by commas")
    return [int(n) for n in raw.split(",")]


# -- resolution ---------------------------------------------------------------------------


def _instance(runtime: Runtime, study: str, series: str, instance: str) -> InstanceRef:
    ref = find_instance(runtime.index, study, series, instance)
    if ref is None:
        raise HTTPException(404, "instance not found")
    return ref


def _shown(refs: list[InstanceRef], access: Granted) -> list[InstanceRef]:
    """The instances the caller may see (R10: those of its KOS for a consumer)."""
    v = access.visible
    return [r for r in refs if v.shows_series(r.series_instance_uid)
            and v.shows_instance(r.sop_instance_uid)]


def _series_refs(runtime: Runtime, access: Granted, study: str, series: str
                 ) -> list[InstanceRef]:
    refs = _shown(series_instances(runtime.index, study, series), access)
    if not refs:
        raise HTTPException(404, "series not found")
    return refs


def _study_series(runtime: Runtime, access: Granted, study: str) -> list[str]:
    versions = [v for v in series_versions(runtime.index, study)
                if access.visible.shows_series(v.series_instance_uid)]
    if not versions:
        raise HTTPException(404, "study not found")
    return [v.series_instance_uid for v in versions]


def _local(request: Request, runtime: Runtime, access: Granted, refs: list[InstanceRef]
           ) -> list[InstanceRef]:
    """Evicted instances fetched back from the PACS first (:mod:`dicomweb.evicted`)."""
    if refs:
        ensure_local(request, runtime, access, "rendered", refs[0].study_instance_uid,
                     (r.sop_instance_uid for r in refs))
    return refs


def _load(runtime: Runtime, ref: InstanceRef) -> Dataset:
    return dcmread(runtime.store.path_of(ref.storage_key))


def _likely_image(ref: InstanceRef) -> bool:
    return not ref.sop_class_uid.startswith(_NON_IMAGE_PREFIXES)


def _middle_out(refs: list[InstanceRef]) -> list[InstanceRef]:
    """Candidates for a representative: likely images first, from the middle outwards."""
    order: list[InstanceRef] = []
    for group in ([r for r in refs if _likely_image(r)], [r for r in refs if not _likely_image(r)]):
        mid = (len(group) - 1) // 2
        order += [group[i] for i in sorted(range(len(group)), key=lambda i: (abs(i - mid), -i))]
    return order


# -- responses ----------------------------------------------------------------------------


def _etag(ref: InstanceRef, frame: int, options: RenderOptions) -> str:
    key = f"render1|{ref.sha256}|{frame}|{options!r}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _too_large(exc: TooLarge) -> HTTPException:
    return HTTPException(400, f"{exc} (DRIMBOX_RENDER_MAX_SOURCE_PIXELS)")


def _image(request: Request, ref: InstanceRef, ds: Dataset, frame: int, options: RenderOptions,
           limits: Limits) -> Response:
    etag = _etag(ref, frame, options)
    headers = {"ETag": f'W/"{etag}"', "Cache-Control": "private, no-cache",
               "Vary": "Accept"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    try:
        body = render(ds, frame - 1, options, limits)
    except FrameOutOfRange as exc:
        raise HTTPException(404, str(exc)) from None
    except TooLarge as exc:
        raise _too_large(exc) from None
    except NotAnImage:
        raise HTTPException(406, "the instance has no image to render") from None
    except UnreadablePixels as exc:
        raise _unrenderable(ref, exc) from None
    except ValueError as exc:  # e.g. a viewport region outside the image
        raise HTTPException(400, str(exc)) from None
    return Response(body, media_type=options.media_type, headers=headers)


def _unrenderable(ref: InstanceRef, exc: UnreadablePixels) -> HTTPException:
    """422: the instance is an image whose pixel data cannot be interpreted or decoded here
    (:mod:`gateway.imaging.pixel_description`); the body names why."""
    return HTTPException(422, f"instance {ref.sop_instance_uid} cannot be rendered: {exc}")


def _render_or_fail(ref: InstanceRef, ds: Dataset, frame: int, options: RenderOptions,
                    limits: Limits) -> bytes:
    try:
        return render(ds, frame - 1, options, limits)
    except FrameOutOfRange as exc:
        raise HTTPException(404, str(exc)) from None
    except TooLarge as exc:
        raise _too_large(exc) from None
    except UnreadablePixels as exc:
        raise _unrenderable(ref, exc) from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _multipart(parts: Iterator[tuple[str, bytes]], media_type: str) -> StreamingResponse:
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        for location, data in parts:
            yield (f"--{boundary}\r\nContent-Type: {media_type}\r\n"
                   f"Content-Location: {location}\r\n\r\n").encode()
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return StreamingResponse(
        body(),
        media_type=f'multipart/related; type="{media_type}"; boundary={boundary}',
        headers={"Cache-Control": "private, no-cache"},
    )


def _not_acceptable() -> HTTPException:
    return HTTPException(406, f"rendered images are offered as {', '.join(IMAGE_TYPES)}")


def _render_instances(runtime: Runtime, refs: list[InstanceRef], request: Request
                      ) -> Response:
    """Study/series rendered: every image instance's first frame, as a multipart payload."""
    options, limits = _options(request, runtime, thumbnail=False), _limits(runtime)
    if _choose(request, IMAGE_TYPES) is None:
        raise _not_acceptable()
    urls = DicomWebURLs(runtime.settings.effective_public_url)
    # Read the first image before answering, so that "no image at all" is a 406, not an
    # empty multipart payload.
    datasets = ((ref, _load(runtime, ref)) for ref in refs)
    first, first_body, unreadable = None, b"", None
    for ref, ds in datasets:  # images whose pixel data cannot be decoded are passed over
        if not is_image(ds):
            continue
        try:
            first_body = _render_or_fail(ref, ds, 1, options, limits)
        except HTTPException as exc:
            if exc.status_code != 422:
                raise
            unreadable = unreadable or exc
            continue
        first = (ref, ds)
        break
    if first is None:
        if unreadable is not None:
            raise unreadable
        raise HTTPException(406, "nothing in this resource has an image to render")

    def parts() -> Iterator[tuple[str, bytes]]:
        ref, _ = first
        url = urls.instance(ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)
        yield f"{url}/rendered", first_body
        for ref, ds in datasets:
            if not is_image(ds):
                continue
            url = urls.instance(ref.study_instance_uid, ref.series_instance_uid,
                                ref.sop_instance_uid)
            try:
                yield f"{url}/rendered", render(ds, 0, options, limits)
            except Exception:  # the stream has started: skip the instance, log it
                log.exception("rendering %s failed", ref.sop_instance_uid)

    return _multipart(parts(), options.media_type)


def _thumbnail_of(runtime: Runtime, request: Request, refs: list[InstanceRef],
                  access: Granted) -> Response:
    options = _options(request, runtime, thumbnail=True)
    if _choose(request, IMAGE_TYPES) is None:
        raise _not_acceptable()
    candidates = _local(request, runtime, access, _middle_out(refs)[:10])
    unreadable = None
    for ref in candidates:
        ds = _load(runtime, ref)
        if is_image(ds):
            middle = (number_of_frames(ds) + 1) // 2
            try:
                return _image(request, ref, ds, middle, options, _limits(runtime))
            except HTTPException as exc:  # undecodable: the next candidate, if any
                if exc.status_code != 422:
                    raise
                unreadable = unreadable or exc
    if unreadable is not None:
        raise unreadable
    raise HTTPException(406, "nothing in this resource has an image for a thumbnail")


# -- routes -------------------------------------------------------------------------------


@get_and_head(router, "/studies/{study}/rendered")
def study_rendered(study: str, request: Request, runtime: RuntimeDep, access: RenderedAccess):
    check_uids(study=study)
    refs = _shown([r for se in _study_series(runtime, access, study)
                   for r in series_instances(runtime.index, study, se)], access)
    if not refs:
        raise HTTPException(404, "study not found")
    return _render_instances(runtime, _local(request, runtime, access, refs), request)


@get_and_head(router, "/studies/{study}/series/{series}/rendered")
def series_rendered(study: str, series: str, request: Request, runtime: RuntimeDep,
                    access: RenderedAccess):
    check_uids(study=study, series=series)
    refs = _local(request, runtime, access, _series_refs(runtime, access, study, series))
    return _render_instances(runtime, refs, request)


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}/rendered")
def instance_rendered(study: str, series: str, instance: str, request: Request,
                      runtime: RuntimeDep, access: RenderedAccess):
    check_uids(study=study, series=series, instance=instance)
    options = _options(request, runtime, thumbnail=False)
    (ref,) = _local(request, runtime, access, [_instance(runtime, study, series, instance)])
    ds = _load(runtime, ref)
    if not is_image(ds):
        doc = encapsulated_document(ds)
        if doc is not None and _choose(request, (doc[0],)) is not None:
            return Response(doc[1], media_type=doc[0],
                            headers={"Cache-Control": "private, no-cache"})
        raise HTTPException(406, "the instance has no image to render")
    if _choose(request, IMAGE_TYPES) is None:
        raise _not_acceptable()
    return _image(request, ref, ds, 1, options, _limits(runtime))


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered")
def frames_rendered(study: str, series: str, instance: str, frames: str, request: Request,
                    runtime: RuntimeDep, access: RenderedAccess):
    check_uids(study=study, series=series, instance=instance)
    numbers = _frames(frames, runtime)
    options, limits = _options(request, runtime, thumbnail=False), _limits(runtime)
    if _choose(request, IMAGE_TYPES) is None:
        raise _not_acceptable()
    (ref,) = _local(request, runtime, access, [_instance(runtime, study, series, instance)])
    ds = _load(runtime, ref)
    if not is_image(ds):
        raise HTTPException(406, "the instance has no image to render")
    total = number_of_frames(ds)
    past = [n for n in numbers if n > total]
    if past:
        raise HTTPException(404, f"frame {past[0]} requested, the instance has {total}")
    if len(numbers) == 1:
        return _image(request, ref, ds, numbers[0], options, limits)
    url = DicomWebURLs(runtime.settings.effective_public_url).instance(study, series, instance)
    # The first frame is rendered before the status line: a frame too large is a real 400.
    first = _render_or_fail(ref, ds, numbers[0], options, limits)
    rest = ((f"{url}/frames/{n}/rendered", _render_or_fail(ref, ds, n, options, limits))
            for n in numbers[1:])
    return _multipart(itertools.chain([(f"{url}/frames/{numbers[0]}/rendered", first)], rest),
                      options.media_type)


@get_and_head(router, "/studies/{study}/thumbnail")
def study_thumbnail(study: str, request: Request, runtime: RuntimeDep, access: RenderedAccess):
    check_uids(study=study)
    for se in _study_series(runtime, access, study):
        refs = _shown(series_instances(runtime.index, study, se), access)
        if any(_likely_image(r) for r in refs):
            return _thumbnail_of(runtime, request, refs, access)
    raise HTTPException(406, "nothing in this study has an image for a thumbnail")


@get_and_head(router, "/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: str, series: str, request: Request, runtime: RuntimeDep,
                     access: RenderedAccess):
    check_uids(study=study, series=series)
    return _thumbnail_of(runtime, request, _series_refs(runtime, access, study, series), access)


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}/thumbnail")
def instance_thumbnail(study: str, series: str, instance: str, request: Request,
                       runtime: RuntimeDep, access: RenderedAccess):
    check_uids(study=study, series=series, instance=instance)
    return _thumbnail_of(runtime, request, [_instance(runtime, study, series, instance)], access)


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail")
def frame_thumbnail(study: str, series: str, instance: str, frames: str, request: Request,
                    runtime: RuntimeDep, access: RenderedAccess):
    check_uids(study=study, series=series, instance=instance)
    numbers = _frames(frames, runtime)
    options = _options(request, runtime, thumbnail=True)
    if _choose(request, IMAGE_TYPES) is None:
        raise _not_acceptable()
    (ref,) = _local(request, runtime, access, [_instance(runtime, study, series, instance)])
    ds = _load(runtime, ref)
    if not is_image(ds):
        raise HTTPException(406, "the instance has no image for a thumbnail")
    if numbers[0] > number_of_frames(ds):
        raise HTTPException(404, f"frame {numbers[0]} requested, the instance has "
                                 f"{number_of_frames(ds)}")
    return _image(request, ref, ds, numbers[0], options, _limits(runtime))
