"""WADO-RS retrieve (PS3.18 10.4): instances, frames and bulk data as ``multipart/related``.

Routes (under ``/dicom-web``; every one takes ``WadoAccess``, :mod:`dicomweb.deps`: what a
caller may not see, e.g. an instance its KOS does not reference (R10), is 404):

* ``GET /studies/{study}``, ``/studies/{study}/series/{series}``,
  ``/studies/{study}/series/{series}/instances/{instance}`` → ``multipart/related;
  type="application/dicom"``, one Part 10 file per part, each part's ``Content-Type`` stating
  its ``transfer-syntax`` (also stated on the response when all parts share one). Parts are
  in a stable order (series number, series, instance number, arrival). The body is streamed:
  one file at a time, 1 MiB at a time, so memory does not grow with the study.
* ``GET .../instances/{instance}/frames/{list}`` → one part per requested frame (1-based,
  comma-separated, in the order asked), ``application/octet-stream`` for native frames or the
  compressed bitstream's media type (``image/jls``, ``image/jp2``, ``image/jpeg``,
  ``image/dicom-rle``, ...) when sent as stored. 400 for a malformed list or one longer
  than ``max_frames_per_request`` (repeats count: each is sent), 404 for a frame number
  beyond Number of Frames or an instance without pixel data.
* ``GET .../instances/{instance}/bulkdata`` and ``.../bulkdata/{tag path}``: bulk data.

**BulkDataURI scheme** (what the metadata resource emits and this module serves):
``<instance URL>/bulkdata/<tag>`` for a top-level element, ``<tag>/<item>/<tag>...`` into
sequences, tags as 8 upper-case hex digits and item indexes 0-based, e.g.
``.../instances/1.2.3/bulkdata/7FE00010`` or ``.../bulkdata/00540016/0/00189604``.
``.../bulkdata`` alone is the Pixel Data. Pixel Data is returned like frames: a native value
as one ``application/octet-stream`` part (all frames), an encapsulated one as one part per
frame in its media type (or decoded to ``application/octet-stream`` if that is what the
Accept header allows). Any other element: one ``application/octet-stream`` part with its
value bytes as stored.

Negotiation rules: :mod:`dicomweb.accept`. Re-encoding: :mod:`gateway.imaging.transcode` (lossless
only). Errors: a malformed UID → 400 naming it; unknown study, series (in that study) or
instance (in that series) → 404; nothing acceptable → 406 naming what can be produced;
pixel data that cannot be cut out or decoded (an Image Pixel attribute missing or wrong, a
code stream the decoders refuse: :mod:`gateway.imaging.pixel_description`) → 422 naming why.
Paths are only built from index storage keys (:meth:`FileStore.path_of`), never from the
request. If an instance's file is replaced while a response is being streamed (a corrected
instance re-sent by the PACS), the current file is sent. The first part (instance or frame) is
prepared before the response starts, so a single instance that cannot be decoded gets a 422
(406 when only the target syntax's encoder refuses it); a transcoding
failure later in a multi-instance response can no longer change the status: the stream is
cut (no closing boundary, no final chunk), so the client sees an incomplete body, never a
silently short one, and the failure is logged.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from typing import IO

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from dicomweb import accept
from dicomweb.deps import Granted, RuntimeDep, WadoAccess, WadoAccessLean
from dicomweb.evicted import ensure_local
from dicomweb.http_methods import get_and_head
from dicomweb.multipart import CHUNK, Part, content_type, new_boundary, stream
from dicomweb.worker_threads import run_in_worker
from gateway.imaging import pixels, retrieval
from gateway.imaging.pixel_description import UnreadablePixels
from gateway.imaging.retrieval import InstanceRef
from gateway.imaging.transcode import (
    PRODUCIBLE,
    CannotEncode,
    SourceUnreadable,
    TranscodeError,
    can_produce,
    transcode,
)
from gateway.runtime import Runtime

log = logging.getLogger("drimbox.wado")
router = APIRouter()


# -- helpers ---------------------------------------------------------------------------------


def _ranges(request: Request) -> list[accept.MediaRange]:
    return accept.parse_accept(request.headers.getlist("accept"))


def lookup(
    request: Request, runtime: Runtime, access: Granted, study: str, series: str | None = None,
    instance: str | None = None,
) -> list[InstanceRef]:
    """The instances asked for that the caller may see (R10: a consumer gets only those of
    its KOS); none visible is 404, as for an unknown resource. Evicted ones are fetched back
    from the PACS first (:mod:`dicomweb.evicted`: 503 / 502 when they cannot be)."""
    try:
        refs = retrieval.find_instances(runtime.index, study, series, instance)
    except retrieval.BadUID as exc:
        raise HTTPException(400, str(exc)) from exc
    except retrieval.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    v = access.visible
    if not v.unlimited:
        refs = [r for r in refs if v.shows_study(r.study_instance_uid)
                and v.shows_series(r.series_instance_uid) and v.shows_instance(r.sop_instance_uid)]
        if not refs:
            level, uid = ("instance", instance) if instance else \
                ("series", series) if series else ("study", study)
            raise HTTPException(404, f"{level} {uid} not found")
    if any(r.evicted for r in refs):  # the lookup read each row's eviction: no second query
        ensure_local(request, runtime, access, "wado", study, (r.sop_instance_uid for r in refs))
    return refs


def _open(runtime: Runtime, ref: InstanceRef) -> tuple[IO[bytes], InstanceRef]:
    """Open an instance's file; if it was replaced since the lookup, open the current one."""
    try:
        return runtime.store.open(ref.storage_key), ref
    except FileNotFoundError:
        current = retrieval.refresh(runtime.index, ref)
        if current is None:
            raise
        return runtime.store.open(current.storage_key), current


def _chunks(f: IO[bytes], remaining: int | None = None) -> Iterator[bytes]:
    with f:
        while remaining is None or remaining > 0:
            block = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not block:
                return
            if remaining is not None:
                remaining -= len(block)
            yield block


def _unreadable(ref: InstanceRef, exc: Exception) -> HTTPException:
    """422: the stored instance's pixel data cannot be interpreted or decoded here (a Type 1
    attribute of the Image Pixel module missing or wrong, a code stream the decoders refuse);
    it is still retrievable as stored."""
    return HTTPException(422, f"instance {ref.sop_instance_uid}: {exc}")


def _not_acceptable(what: str, produced: str) -> HTTPException:
    return HTTPException(406, f"{what}; this server can send: {produced}")


def _multipart(parts: Iterator[Part], part_type: str, **params: str) -> StreamingResponse:
    boundary = new_boundary()
    return StreamingResponse(
        stream(parts, boundary), media_type=content_type(part_type, boundary, **params)
    )


WHOLE_BODY_MAX = 4 * CHUNK
"""A response whose parts are all in hand and at most this big is sent as one body (plain
``Response``, one write) instead of a stream: a streamed body costs a worker-thread
hand-off per chunk (Starlette iterates a sync generator in the thread pool)."""


def _whole(parts: list[Part], part_type: str, **params: str) -> Response:
    boundary = new_boundary()
    return Response(b"".join(stream(parts, boundary)),
                    media_type=content_type(part_type, boundary, **params))


async def _lean(access: Granted, work) -> Response:  # noqa: ANN001 - a callable
    """Run ``work`` (the lookup, the file, the response) in one worker-thread hand-off,
    then settle the decision's audit row there too: the answer leaves only once the row is
    committed (R15), whatever ``work`` raised."""

    def run() -> Response:
        try:
            return work()
        finally:
            access.audited()

    return await run_in_worker(run)


# -- instances -------------------------------------------------------------------------------


def instance_parts(runtime: Runtime, plan: list[tuple[InstanceRef, str]]) -> Iterator[Part]:
    for ref, ts in plan:
        f, current = _open(runtime, ref)
        part_type = f"application/dicom; transfer-syntax={ts}"
        if ts == current.transfer_syntax_uid:
            size = os.fstat(f.fileno()).st_size
            if len(plan) == 1 and size <= WHOLE_BODY_MAX:  # one small instance: read at once
                with f:
                    data = f.read()
                yield Part(part_type, [data], {"Content-Length": str(len(data))})
                continue
            yield Part(part_type, _chunks(f), {"Content-Length": str(size)})
            continue
        try:
            with f:  # the file already open: a replacement meanwhile cannot pull it away
                data = transcode(f, ts)
        except (SourceUnreadable, CannotEncode) as exc:  # the data, not the server
            log.warning("transcoding %s to %s failed: %s", current.sop_instance_uid, ts, exc)
            raise
        except TranscodeError:
            log.exception("transcoding %s to %s failed", current.sop_instance_uid, ts)
            raise
        yield Part(part_type, [data], {"Content-Length": str(len(data))})


def _retrieve(
    request: Request, runtime: Runtime, access: Granted, study: str, series: str | None,
    instance: str | None,
) -> Response:
    refs = lookup(request, runtime, access, study, series, instance)
    offers = accept.instance_offers(_ranges(request))
    produced = 'multipart/related; type="application/dicom" with transfer-syntax ' + ", ".join(
        sorted(PRODUCIBLE)
    )
    if not offers:
        raise _not_acceptable('the Accept header allows no multipart/related; '
                              'type="application/dicom"', produced)
    plan = []
    for ref in refs:
        ts = accept.select(ref.transfer_syntax_uid, offers, can_produce)
        if ts is None:
            raise _not_acceptable(
                f"instance {ref.sop_instance_uid} is stored in {ref.transfer_syntax_uid} and "
                "none of the accepted transfer syntaxes can be produced from it",
                produced + " (lossy ones only as stored)",
            )
        plan.append((ref, ts))
    syntaxes = {ts for _, ts in plan}
    params = {"transfer_syntax": syntaxes.pop()} if len(syntaxes) == 1 else {}
    parts = instance_parts(runtime, plan)
    try:  # the first part is made before the status line: its failure gets a real status
        first = next(parts)
    except SourceUnreadable as exc:
        raise _unreadable(plan[0][0], exc) from exc
    except CannotEncode as exc:
        raise _not_acceptable(f"instance {plan[0][0].sop_instance_uid}: {exc}",
                              "transfer-syntax=* (as stored)") from exc
    except TranscodeError as exc:
        raise HTTPException(500, f"instance {plan[0][0].sop_instance_uid}: {exc}") from exc
    if len(plan) == 1 and sum(len(b) for b in first.body) <= WHOLE_BODY_MAX:
        return _whole([first], "application/dicom", **params)
    return _multipart(itertools.chain([first], parts), "application/dicom", **params)


@get_and_head(router, "/studies/{study}")
async def retrieve_study(
    study: str, request: Request, runtime: RuntimeDep, access: WadoAccessLean
) -> Response:
    """Retrieve every instance of a study."""
    return await _lean(access, lambda: _retrieve(request, runtime, access, study, None, None))


@get_and_head(router, "/studies/{study}/series/{series}")
async def retrieve_series(
    study: str, series: str, request: Request, runtime: RuntimeDep, access: WadoAccessLean
) -> Response:
    """Retrieve every instance of a series."""
    return await _lean(access, lambda: _retrieve(request, runtime, access, study, series, None))


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(
    study: str, series: str, instance: str, request: Request, runtime: RuntimeDep,
    access: WadoAccessLean,
) -> Response:
    """Retrieve one instance (a small one as one body, read at once)."""
    return await _lean(
        access, lambda: _retrieve(request, runtime, access, study, series, instance))


# -- frames and bulk data --------------------------------------------------------------------


def _parse_frame_list(text: str, limit: int) -> list[int]:
    """1-based frame numbers in the order asked, repeats kept (PS3.18 10.4.1.1.3); a list
    longer than ``limit`` (``max_frames_per_request``) is 400: each entry costs a frame."""
    count = text.count(",") + 1
    if count > limit:
        raise HTTPException(400, f"{count} frames requested, more than the limit {limit} "
                                 "(DRIMBOX_MAX_FRAMES_PER_REQUEST)")
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or len(item) > 9 or int(item) < 1:
            raise HTTPException(400, f"frame list {text!r}: {item!r} is not a frame number (1-based)")
        numbers.append(int(item))
    return numbers


def _pixel_target(request: Request, info: pixels.FrameInfo) -> str:
    """The transfer syntax to send pixel data in. "As stored" (``transfer-syntax=*``) is the
    stored syntax of the pixel data: for a native dataset in Implicit VR Little Endian,
    Explicit VR Big Endian or Deflated Explicit VR Little Endian, that is native little
    endian, Explicit VR Little Endian (the first two are not for web services, PS3.18 8.7.3;
    Deflate compresses the whole dataset, not a pixel syntax of its own)."""
    offers = accept.pixel_offers(_ranges(request))
    stored = pixels.pixel_syntax(info.transfer_syntax)
    ts = accept.select(stored, offers,
                       lambda _, target: pixels.can_produce_frame(info.transfer_syntax, target))
    if ts is None:
        raise _not_acceptable(
            "no accepted media type / transfer syntax fits this pixel data",
            f'multipart/related; type="{accept.pixel_media_type(stored)}"; '
            f"transfer-syntax={stored} (as stored) or type=\"application/octet-stream\"",
        )
    return ts


def _frame_info(runtime: Runtime, ref: InstanceRef):
    path = runtime.store.path_of(ref.storage_key)
    try:
        return path, pixels.frame_info(path)
    except pixels.NoPixelData as exc:
        raise HTTPException(404, f"instance {ref.sop_instance_uid} has no pixel data") from exc


def _first_made(ref: InstanceRef, parts: Iterator[Part]) -> Iterator[Part]:
    """``parts`` with the first one made before the status line, so that pixel data that
    cannot be cut out or decoded is a 422 rather than a cut stream (a later frame that fails
    still cuts the stream: the status has gone)."""
    try:
        first = next(parts)
    except StopIteration:
        return iter(())
    except UnreadablePixels as exc:
        raise _unreadable(ref, exc) from exc
    return itertools.chain([first], parts)


def _frame_parts(path, info: pixels.FrameInfo, numbers: list[int], ts: str) -> Iterator[Part]:
    part_type = f"{accept.pixel_media_type(ts)}; transfer-syntax={ts}"
    for n in numbers:
        yield Part(part_type, [pixels.read_frame(path, info, n, ts)])


def _native_value(path, info: pixels.FrameInfo, ts: str) -> Iterator[Part]:
    """Native pixel data that is not a slice of the file (deflated, big endian): one part,
    the frames decoded one after the other."""
    first = pixels.read_frame(path, info, 1, ts)
    rest = (pixels.read_frame(path, info, n, ts) for n in range(2, info.number_of_frames + 1))
    yield Part(f"application/octet-stream; transfer-syntax={ts}", itertools.chain([first], rest))


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
async def retrieve_frames(
    study: str, series: str, instance: str, frames: str, request: Request,
    runtime: RuntimeDep, access: WadoAccessLean,
) -> Response:
    """Retrieve frames of one instance (1-based frame numbers, comma-separated); one frame
    is made before the answer and sent as one body."""
    return await _lean(access, lambda: _frames(study, series, instance, frames, request,
                                               runtime, access))


def _frames(
    study: str, series: str, instance: str, frames: str, request: Request,
    runtime: Runtime, access: Granted,
) -> Response:
    numbers = _parse_frame_list(frames, runtime.settings.max_frames_per_request)
    (ref,) = lookup(request, runtime, access, study, series, instance)
    path, info = _frame_info(runtime, ref)
    if info.problem:
        raise _unreadable(ref, UnreadablePixels(info.problem))
    beyond = [n for n in numbers if n > info.number_of_frames]
    if beyond:
        raise HTTPException(
            404, f"frame {beyond[0]} does not exist (the instance has "
                 f"{info.number_of_frames} frame{'s' if info.number_of_frames > 1 else ''})")
    ts = _pixel_target(request, info)
    parts = _first_made(ref, _frame_parts(path, info, numbers, ts))
    if len(numbers) == 1:
        return _whole(list(parts), accept.pixel_media_type(ts), transfer_syntax=ts)
    return _multipart(parts, accept.pixel_media_type(ts), transfer_syntax=ts)


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}/bulkdata")
def retrieve_pixel_bulkdata(
    study: str, series: str, instance: str, request: Request, runtime: RuntimeDep,
    access: WadoAccess,
) -> StreamingResponse:
    """Retrieve the Pixel Data of one instance (same as ``.../bulkdata/7FE00010``)."""
    return _bulkdata(study, series, instance, "7FE00010", request, runtime, access)


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path:path}")
def retrieve_bulkdata(
    study: str, series: str, instance: str, tag_path: str, request: Request,
    runtime: RuntimeDep, access: WadoAccess,
) -> StreamingResponse:
    """Retrieve bulk data of one instance by tag path (see the module docstring)."""
    return _bulkdata(study, series, instance, tag_path, request, runtime, access)


def _bulkdata(
    study: str, series: str, instance: str, tag_path: str, request: Request, runtime: Runtime,
    access: Granted,
) -> StreamingResponse:
    try:
        path_tags = pixels.parse_tag_path(tag_path.strip("/").split("/"))
    except ValueError as exc:
        raise HTTPException(400, f"bulk data path {tag_path!r}: {exc}") from exc
    (ref,) = lookup(request, runtime, access, study, series, instance)
    if path_tags == [pixels.PIXEL_DATA]:
        path, info = _frame_info(runtime, ref)
        ts = _pixel_target(request, info)
        native_as_stored = not info.encapsulated and (
            ts == info.transfer_syntax
            or (ts == accept.EXPLICIT_LE and info.transfer_syntax in pixels.LITTLE_NATIVE))
        if native_as_stored:
            f = open(path, "rb")  # noqa: SIM115 - closed by _chunks
            f.seek(info.value_offset)
            parts = iter([Part(f"application/octet-stream; transfer-syntax={ts}",
                               _chunks(f, info.value_length),
                               {"Content-Length": str(info.value_length)})])
        elif not info.encapsulated:
            parts = _native_value(path, info, ts)
        else:
            parts = _frame_parts(path, info, list(range(1, info.number_of_frames + 1)), ts)
        return _multipart(_first_made(ref, parts), accept.pixel_media_type(ts),
                          transfer_syntax=ts)
    offers = accept.pixel_offers(_ranges(request))
    if not any(o.transfer_syntax in (accept.EXPLICIT_LE, accept.ANY) for o in offers):
        raise _not_acceptable("bulk data is sent as application/octet-stream",
                              'multipart/related; type="application/octet-stream"')
    try:
        value = pixels.read_bulk(runtime.store.path_of(ref.storage_key), path_tags)
    except pixels.NoSuchElement as exc:
        raise HTTPException(404, f"bulk data {tag_path}: {exc}") from exc
    return _multipart(iter([Part("application/octet-stream", [value])]),
                      "application/octet-stream")
