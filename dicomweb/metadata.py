"""WADO-RS Retrieve Metadata (PS3.18 10.4): study, series and instance ``/metadata``.

The answer is ``application/dicom+json``: an array with one DICOM JSON object per instance,
binary values as ``BulkDataURI`` built from the configured public URL (see
:mod:`gateway.imaging.metadata`). Study and series metadata come precomputed and gzip-compressed:
a client sending ``Accept-Encoding: gzip`` receives the stored bytes as they are
(``Content-Encoding: gzip``), others the decompressed array. Every answer carries a weak
``ETag`` derived from the series versions and honours ``If-None-Match`` with 304; it is
``Cache-Control: private, no-cache`` (patient data: browsers may keep it but must revalidate,
shared caches must not).

Access: every route takes ``MetadataAccess`` (:mod:`dicomweb.deps`); a consumer holding a KOS
(R10) gets only the instances that KOS references, with an entity tag of that subset.

Errors: a malformed UID is 400 naming it; an unknown study, series or instance (or one
that exists elsewhere in the hierarchy) is 404; an Accept that excludes JSON is 406 (the XML
metadata representation is not offered).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request, Response

from dicomweb.deps import Granted, MetadataAccess, RuntimeDep
from dicomweb.evicted import ensure_local
from dicomweb.params import accepts_gzip, check_uids, etag_matches, media_matches, parse_accept
from gateway.imaging.metadata import CachedJson, restricted

router = APIRouter()

DICOM_JSON = "application/dicom+json"
_OFFERED = (DICOM_JSON, "application/json")


def _negotiate(request: Request) -> None:
    for r in parse_accept(request.headers.get("accept")):
        if any(media_matches(r.type, t) for t in _OFFERED):
            return
    raise HTTPException(406, "metadata is offered as application/dicom+json only")


def _visible(doc: CachedJson | None, access: Granted) -> CachedJson | None:
    """Only the instances the caller may see (the policy has already checked the study and
    series of the path against the caller's scope)."""
    sops = access.visible.sop_instance_uids
    if doc is None or sops is None:
        return doc
    return restricted(doc, sops)


def _computed(request: Request, runtime, access: Granted, study: str,  # noqa: ANN001
              compute: Callable[[], CachedJson | None]) -> CachedJson | None:
    """Metadata of evicted instances comes from the cache, computed before their files went
    (:mod:`gateway.ingest.retention`); when the cache must be computed again (a new public URL,
    a new format) and a file it needs is evicted, the study is fetched back from the PACS
    first (:mod:`dicomweb.evicted`)."""
    try:
        return compute()
    except FileNotFoundError:
        ensure_local(request, runtime, access, "metadata", study, None)
        return compute()


def _respond(request: Request, doc: CachedJson | None, what: str) -> Response:
    if doc is None:
        raise HTTPException(404, f"{what} not found")
    headers = {
        "ETag": f'W/"{doc.etag}"',
        "Cache-Control": "private, no-cache",
        "Vary": "Accept, Accept-Encoding",
    }
    if etag_matches(request.headers.get("if-none-match"), doc.etag):
        return Response(status_code=304, headers=headers)
    if accepts_gzip(request.headers.get("accept-encoding")):
        headers["Content-Encoding"] = "gzip"
        return Response(doc.gzipped, media_type=DICOM_JSON, headers=headers)
    return Response(doc.plain(), media_type=DICOM_JSON, headers=headers)


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, request: Request, runtime: RuntimeDep, access: MetadataAccess):
    """All instances of the study, series by series (Series Number order)."""
    check_uids(study=study)
    _negotiate(request)
    doc = _computed(request, runtime, access, study, lambda: runtime.metadata.study(study))
    return _respond(request, _visible(doc, access), "study")


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(
    study: str, series: str, request: Request, runtime: RuntimeDep, access: MetadataAccess
):
    """All instances of the series, in Instance Number order."""
    check_uids(study=study, series=series)
    _negotiate(request)
    doc = _computed(request, runtime, access, study,
                    lambda: runtime.metadata.series(study, series))
    return _respond(request, _visible(doc, access), "series")


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(
    study: str,
    series: str,
    instance: str,
    request: Request,
    runtime: RuntimeDep,
    access: MetadataAccess,
):
    """One instance, as a one-element array."""
    check_uids(study=study, series=series, instance=instance)
    _negotiate(request)
    doc = _computed(request, runtime, access, study,
                    lambda: runtime.metadata.instance(study, series, instance))
    return _respond(request, _visible(doc, access), "instance")
