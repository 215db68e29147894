"""QIDO-RS: search for studies, series and instances (PS3.18 10.6).

Routes (GET and HEAD, under ``/dicom-web``)::

    /studies    /series    /instances
    /studies/{study}/series    /studies/{study}/instances
    /studies/{study}/series/{series}/instances

The search itself (parameters, matching rules, paging, order, server maxima) is
``gateway.imaging.query``; this module translates HTTP to it and its results to DICOM JSON
(``dicomweb.dicom_json``). Choices, documented here for clients:

* **Empty result: 200 with ``[]``**, as Orthanc and dcm4chee answer (PS3.18 also allows 204;
  many clients, the DRIM-M consumer included, read the body unconditionally).
* A UID in the path is a matching key: an unknown study or series gives 200 ``[]`` (as
  dcm4chee does), not 404, and costs no extra query. A malformed one is 400 naming it.
* Unknown parameters and malformed values: 400 with a JSON body
  ``{"error": "...", "parameter": "<name>"}``. A matching key we do not index is refused
  (400), never silently ignored; an ``includefield`` we do not index is simply absent.
  ``limit`` (1..2^63-1), ``offset`` (0..2^63-1) and integer matching keys (within their VR,
  e.g. SeriesNumber -2^31..2^31-1) outside their range or not plain ASCII digits are 400
  ``"offset must be an integer between 0 and 9223372036854775807, not '...'"``.
* More matches than the server maximum (studies 1000, series 1000, instances 10000):
  the first page and ``Warning: 299 <host>: The number of results exceeded the maximum
  supported by the server. Additional results can be requested.`` (PS3.18 8.3.4.4 wording).
* ``fuzzymatching=true`` is supported for person names (see ``gateway.imaging.query``), so no
  ``Warning`` is sent for it.
* RetrieveURL (0008,1190) is built from the configured public URL
  (``DRIMBOX_PUBLIC_URL``), never from the request's Host header.
* Accept: ``application/dicom+json`` (also ``application/json``, ``*/*``), or ``multipart/related;
  type="application/dicom+xml"`` (PS3.18 10.6.3): one Native DICOM Model document per
  result (:mod:`dicomweb.dicom_xml`, made from the same DICOM JSON objects), no match being
  204 (a multipart body needs at least one part); anything else is 406
  (:func:`dicomweb.accept.json_or_xml`). Every route depends on ``QidoAccessLean``
  (``dicomweb.deps``): the results reveal patient data, and a consumer holding a KOS (R10)
  finds only that KOS's study, series and instances (counts and ModalitiesInStudy included).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from dicomweb import accept, dicom_json, dicom_xml
from dicomweb.deps import Granted, QidoAccessLean, RuntimeDep
from dicomweb.http_methods import get_and_head
from dicomweb.urls import DicomWebURLs
from dicomweb.worker_threads import run_in_worker
from gateway.imaging.query import Level, QueryError, SearchScope, parse_query, search, uids_of
from gateway.ingest.uids import is_safe_uid

router = APIRouter()

MEDIA_TYPE = "application/dicom+json"
_TOO_MANY = (
    '299 {host}: "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)


def _error(status: int, message: str, parameter: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return JSONResponse(body, status_code=status)




def _search(
    request: Request,
    runtime: Any,
    access: Granted,
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    for name, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)):
        if uid is not None and not is_safe_uid(uid):
            return _error(400, f"{name} in the path is not a UID: {uid!r}", name)
    representation = accept.json_or_xml(accept.parse_accept(request.headers.getlist("accept")))
    if representation is None:
        return _error(406, f"QIDO-RS answers {MEDIA_TYPE} or {accept.XML_OFFERED}")
    try:
        query = parse_query(level, request.query_params.multi_items(), study, series)
    except QueryError as exc:
        return _error(400, exc.message, exc.parameter)
    v = access.visible
    scope = None if v.unlimited else SearchScope(v.study_uids, v.series_uids, v.sop_instance_uids)
    result = search(runtime.index, query, scope)

    urls = DicomWebURLs(runtime.settings.effective_public_url)
    build = {Level.STUDY: urls.study, Level.SERIES: urls.series, Level.INSTANCE: urls.instance}
    wants_url = any(a.keyword == "RetrieveURL" for a in query.returned)
    if wants_url:
        for row in result.rows:
            row["RetrieveURL"] = build[level](*uids_of(row, query))
    headers = {}
    if result.truncated:
        host = urls.base.split("://", 1)[-1].split("/", 1)[0]
        headers["Warning"] = _TOO_MANY.format(host=host)
    if representation == accept.XML:
        if not result.rows:
            return Response(status_code=204, headers=headers)
        return dicom_xml.response(
            (dicom_json.dataset(query.returned, row) for row in result.rows), headers)
    body = dicom_json.dumps(query.returned, result.rows)
    return Response(body, 200, headers=headers, media_type=MEDIA_TYPE)




async def _answer(
    request: Request,
    runtime: Any,
    access: Granted,
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    """The lean path: the search, the encoding and the audit row's commit in one worker
    thread hand-off; the answer leaves only once the audit row is committed (R15)."""

    def work() -> Response:
        try:
            return _search(request, runtime, access, level, study, series)
        finally:
            access.audited()

    return await run_in_worker(work)


@get_and_head(router, "/studies")
async def search_studies(
    request: Request, runtime: RuntimeDep, access: QidoAccessLean
) -> Response:
    """Search for studies (PS3.18 10.6, Table 10.6.3-3 return attributes)."""
    return await _answer(request, runtime, access, Level.STUDY)


@get_and_head(router, "/series")
async def search_series(
    request: Request, runtime: RuntimeDep, access: QidoAccessLean
) -> Response:
    """Search for series in all studies (study and series attributes returned)."""
    return await _answer(request, runtime, access, Level.SERIES)


@get_and_head(router, "/instances")
async def search_instances(
    request: Request, runtime: RuntimeDep, access: QidoAccessLean
) -> Response:
    """Search for instances in all studies (study, series and instance attributes)."""
    return await _answer(request, runtime, access, Level.INSTANCE)


@get_and_head(router, "/studies/{study}/series")
async def search_study_series(
    study: str, request: Request, runtime: RuntimeDep, access: QidoAccessLean
) -> Response:
    """Search for the series of one study (series attributes returned)."""
    return await _answer(request, runtime, access, Level.SERIES, study)


@get_and_head(router, "/studies/{study}/instances")
async def search_study_instances(
    study: str, request: Request, runtime: RuntimeDep, access: QidoAccessLean
) -> Response:
    """Search for the instances of one study (series and instance attributes returned)."""
    return await _answer(request, runtime, access, Level.INSTANCE, study)


@get_and_head(router, "/studies/{study}/series/{series}/instances")
async def search_series_instances(
    study: str, series: str, request: Request, runtime: RuntimeDep, access: QidoAccessLean
) -> Response:
    """Search for the instances of one series (instance attributes returned)."""
    return await _answer(request, runtime, access, Level.INSTANCE, study, series)
