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

XML: ``Accept: multipart/related; type="application/dicom+xml"`` gets the same instances as
Native DICOM Model documents (PS3.19), one part per instance, made from the same JSON
(:mod:`dicomweb.dicom_xml`): the same values and the same BulkData URIs. Its entity tag is
the JSON one with ``-xml`` appended. Which of the two: :func:`dicomweb.accept.json_or_xml`.
HEAD answers the headers of GET.

Errors: a malformed UID is 400 naming it; an unknown study, series or instance (or one
that exists elsewhere in the hierarchy) is 404; an Accept that allows neither JSON nor the
multipart XML is 406.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request, Response

from dicomweb import accept, dicom_xml
from dicomweb.deps import Granted, MetadataAccess, RuntimeDep
from dicomweb.evicted import ensure_local
from dicomweb.http_methods import get_and_head
from dicomweb.params import accepts_gzip, check_uids, etag_matches
from gateway.imaging.metadata import CachedJson, restricted

router = APIRouter()

DICOM_JSON = accept.DICOM_JSON


def _negotiate(request: Request) -> str:
    """:data:`accept.JSON` or :data:`accept.XML`; 406 when the client accepts neither."""
    chosen = accept.json_or_xml(accept.parse_accept(request.headers.getlist("accept")))
    if chosen is None:
        raise HTTPException(406, f"metadata is offered as {DICOM_JSON} and as "
                                 f"{accept.XML_OFFERED}")
    return chosen


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


def _respond(request: Request, doc: CachedJson | None, what: str,
             representation: str = accept.JSON) -> Response:
    if doc is None:
        raise HTTPException(404, f"{what} not found")
    etag = doc.etag if representation == accept.JSON else f"{doc.etag}-xml"
    headers = {
        "ETag": f'W/"{etag}"',
        "Cache-Control": "private, no-cache",
        "Vary": "Accept, Accept-Encoding",
    }
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if representation == accept.XML:
        return dicom_xml.response(json.loads(doc.plain()), headers)
    if accepts_gzip(request.headers.get("accept-encoding")):
        headers["Content-Encoding"] = "gzip"
        return Response(doc.gzipped, media_type=DICOM_JSON, headers=headers)
    return Response(doc.plain(), media_type=DICOM_JSON, headers=headers)


@get_and_head(router, "/studies/{study}/metadata")
def study_metadata(study: str, request: Request, runtime: RuntimeDep, access: MetadataAccess):
    """All instances of the study, series by series (Series Number order)."""
    check_uids(study=study)
    representation = _negotiate(request)
    doc = _computed(request, runtime, access, study, lambda: runtime.metadata.study(study))
    return _respond(request, _visible(doc, access), "study", representation)


@get_and_head(router, "/studies/{study}/series/{series}/metadata")
def series_metadata(
    study: str, series: str, request: Request, runtime: RuntimeDep, access: MetadataAccess
):
    """All instances of the series, in Instance Number order."""
    check_uids(study=study, series=series)
    representation = _negotiate(request)
    doc = _computed(request, runtime, access, study,
                    lambda: runtime.metadata.series(study, series))
    return _respond(request, _visible(doc, access), "series", representation)


@get_and_head(router, "/studies/{study}/series/{series}/instances/{instance}/metadata")
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
    representation = _negotiate(request)
    doc = _computed(request, runtime, access, study,
                    lambda: runtime.metadata.instance(study, series, instance))
    return _respond(request, _visible(doc, access), "instance", representation)
