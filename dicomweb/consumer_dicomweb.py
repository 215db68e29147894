"""The consumer's DICOMweb over its cache (R17 "show in a DICOM viewer"): what OHIF reads to
show a retrieved study, under ``/consumer/dicom-web`` (the viewer's ``consumer`` data source,
:mod:`dicomweb.viewer`).

Only the practitioner session that retrieved a study reads it: the study is looked up among
that session's finished retrievals (``complete`` or ``partial``), and only its whole series
are served. Another session, or a study still being retrieved, gets 404 (as if it were not
there), audited ``consumer_dicomweb`` denied; every answer is audited too (allowed).

Routes (PS3.18, the subset OHIF's DICOMweb data source uses): QIDO ``/studies`` (filtered by
``StudyInstanceUID``), ``/studies/{study}/series``, ``/studies/{study}/series/{series}/
instances``; WADO-RS ``/studies/{study}[/series/{series}[/instances/{sop}]]`` (the cached
files as they came, ``multipart/related; type="application/dicom"``), ``.../metadata`` and
``.../instances/{sop}/frames/{list}`` (as stored: native frames as
``application/octet-stream``, compressed ones in their own media type). Reading a study
marks it in use (``viewed_at``): the cache does not evict it meanwhile.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from starlette.concurrency import run_in_threadpool

from dicomweb.accept import pixel_media_type
from dicomweb.multipart import Part, content_type, file_chunks, new_boundary, stream
from dicomweb.session_cookies import SESSION, read_cookie, sessions
from dicomweb.urls import client_address, request_public_url
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.access.sessions import aware, digest
from gateway.consumer.cache import COMPLETE, PARTIAL
from gateway.consumer.retrieve import SERIES_COMPLETE
from gateway.imaging.metadata import dataset_json
from gateway.imaging.pixels import (
    PIXEL_DATA,
    NoPixelData,
    NoSuchElement,
    frame_info,
    parse_tag_path,
    pixel_syntax,
    read_bulk,
    read_frame,
)
from gateway.index.models import ConsumerRetrieval
from gateway.ingest.uids import is_safe_uid

router = APIRouter()

PREFIX = "/consumer/dicom-web"
ACTION = "consumer_dicomweb"
_JSON = "application/dicom+json"
_HEADERS = {"Cache-Control": "no-store"}
#: ``viewed_at`` is written at most this often (every frame the viewer reads resolves it).
_TOUCH_EVERY = timedelta(seconds=30)


class _Study:
    """A session's finished retrieval of a study: its whole series' files."""

    def __init__(self, row: ConsumerRetrieval, folder: Path) -> None:
        self.row = row
        self.folder = folder
        whole = {s["uid"] for s in json.loads(row.series or "[]")
                 if s.get("state") == SERIES_COMPLETE}
        self.series: dict[str, list[Path]] = {
            uid: sorted((folder / uid).glob("*.dcm")) for uid in sorted(whole)
            if (folder / uid).is_dir()}

    def files(self, series: str | None = None, sop: str | None = None) -> list[Path] | None:
        if series is None:
            return [p for files in self.series.values() for p in files]
        if series not in self.series:
            return None
        files = self.series[series]
        if sop is None:
            return files
        return [p for p in files if p.stem == sop] or None


def _resolve(request: Request, study: str, what: str,
             touch: bool = True) -> tuple[_Study | None, Response | None]:
    """The study of this session, or the refusal (401 without a session, 404 otherwise);
    ``touch`` marks it in use (not for a mere listing)."""
    raw = read_cookie(request, SESSION)
    info = sessions(request).find(raw)
    index = request.app.state.runtime.index
    if info is None or info.kind != "practitioner" or info.needs_activity:
        record_access(index, AccessRecord(
            Principal(kind="anonymous", subject="anonymous", via="none"), ACTION, DENIED,
            "no_session", study_uid=study if is_safe_uid(study) else "",
            client_address=client_address(request)))
        return None, Response('{"error":"login required"}', 401, media_type="application/json")
    principal = Principal(kind="practitioner", subject=info.subject,
                          activity=info.activity or None, via="session")
    if not is_safe_uid(study):
        return None, Response('{"error":"bad study uid"}', 400, media_type="application/json")
    from sqlalchemy import select

    key = digest(raw)
    with index.read() as s:
        row = s.scalar(select(ConsumerRetrieval)
                       .where(ConsumerRetrieval.session_sha256 == key,
                              ConsumerRetrieval.study_instance_uid == study,
                              ConsumerRetrieval.state.in_((COMPLETE, PARTIAL)))
                       .order_by(ConsumerRetrieval.id.desc()).limit(1))
        if row is not None:
            s.expunge(row)
    now = datetime.now(UTC)
    if row is not None and touch and (
            row.viewed_at is None or aware(row.viewed_at) + _TOUCH_EVERY <= now):
        with index.write() as s:
            fresh = s.get(ConsumerRetrieval, row.id)
            if fresh is not None:
                fresh.viewed_at = fresh.last_used_at = now
    if row is None:
        record_access(index, AccessRecord(principal, ACTION, DENIED, "not_retrieved_by_session",
                                          study_uid=study,
                                          client_address=client_address(request)))
        return None, Response('{"error":"not found"}', 404, media_type="application/json")
    record_access(index, AccessRecord(principal, ACTION, ALLOWED, what, study_uid=study,
                                      patient_ins=row.patient_ins, kos_uid=row.kos_uid,
                                      client_address=client_address(request)))
    cache = request.app.state.consumer_cache
    return _Study(row, cache.folder(row.id)), None


def _not_found() -> Response:
    return Response('{"error":"not found"}', 404, media_type="application/json")


def _instance_url(request: Request, study: str, series: str, sop: str) -> str:
    return (f"{request_public_url(request)}{PREFIX}/studies/{study}/series/{series}"
            f"/instances/{sop}")


def _header(path: Path):  # noqa: ANN202
    return dcmread(path, stop_before_pixels=True)


def _json(items: list) -> Response:
    return Response(json.dumps(items), media_type=_JSON, headers=_HEADERS)


def _v(vr: str, value) -> dict:  # noqa: ANN001
    return {"vr": vr, "Value": [value]} if value not in (None, "") else {"vr": vr}


# -- QIDO ----------------------------------------------------------------------------------------


def _study_json(st: _Study) -> dict:
    files = st.files() or []
    ds = _header(files[0]) if files else None
    modalities = sorted({str(_header(f[0]).get("Modality", ""))
                         for f in st.series.values() if f} - {""})
    get = (lambda k: str(ds.get(k, "")) if ds is not None else "")  # noqa: E731
    return {
        "0020000D": _v("UI", st.row.study_instance_uid),
        "00080020": _v("DA", get("StudyDate")), "00080030": _v("TM", get("StudyTime")),
        "00080050": _v("SH", get("AccessionNumber")),
        "00081030": _v("LO", get("StudyDescription")),
        "00100020": _v("LO", get("PatientID")),
        "00100010": ({"vr": "PN", "Value": [{"Alphabetic": get("PatientName")}]}
                     if get("PatientName") else {"vr": "PN"}),
        "00080061": {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"},
        "00201206": _v("IS", len(st.series)), "00201208": _v("IS", len(files)),
    }


@router.get(PREFIX + "/studies", include_in_schema=False)
def qido_studies(request: Request, StudyInstanceUID: str | None = None,  # noqa: N803
                 PatientID: str | None = None) -> Response:  # noqa: N803
    """One study by ``StudyInstanceUID``, or the studies this session retrieved (the viewer's
    study panel asks by ``PatientID``); never another session's."""
    wanted = [u for u in (StudyInstanceUID or "").replace("\\", ",").split(",") if u]
    if len(wanted) > 1:
        return _json([])
    if wanted:
        st, refusal = _resolve(request, wanted[0], "qido_study")
        if refusal is not None:
            return _json([]) if refusal.status_code == 404 else refusal
        return _json([_study_json(st)])
    raw = read_cookie(request, SESSION)
    info = sessions(request).find(raw)
    if info is None or info.kind != "practitioner" or info.needs_activity:
        return Response('{"error":"login required"}', 401, media_type="application/json")
    from sqlalchemy import select

    index = request.app.state.runtime.index
    with index.read() as s:
        studies = sorted({uid for uid in s.scalars(
            select(ConsumerRetrieval.study_instance_uid)
            .where(ConsumerRetrieval.session_sha256 == digest(raw),
                   ConsumerRetrieval.state.in_((COMPLETE, PARTIAL))))})
    out = []
    for uid in studies:
        st, _ = _resolve(request, uid, "qido_studies", touch=False)
        if st is None:
            continue
        item = _study_json(st)
        if PatientID and item["00100020"].get("Value", [""])[0] != PatientID:
            continue
        out.append(item)
    return _json(out)


@router.get(PREFIX + "/studies/{study}/series", include_in_schema=False)
def qido_series(study: str, request: Request) -> Response:
    st, refusal = _resolve(request, study, "qido_series")
    if refusal is not None:
        return refusal
    out = []
    for uid, files in st.series.items():
        ds = _header(files[0])
        out.append({"0020000D": _v("UI", study), "0020000E": _v("UI", uid),
                    "00080060": _v("CS", str(ds.get("Modality", ""))),
                    "00200011": _v("IS", str(ds.get("SeriesNumber", "") or "")),
                    "0008103E": _v("LO", str(ds.get("SeriesDescription", ""))),
                    "00201209": _v("IS", len(files))})
    return _json(out)


@router.get(PREFIX + "/studies/{study}/series/{series}/instances", include_in_schema=False)
def qido_instances(study: str, series: str, request: Request) -> Response:
    st, refusal = _resolve(request, study, "qido_instances")
    if refusal is not None:
        return refusal
    files = st.files(series)
    if files is None:
        return _not_found()
    out = []
    for p in files:
        ds = _header(p)
        out.append({"0020000D": _v("UI", study), "0020000E": _v("UI", series),
                    "00080018": _v("UI", p.stem), "00080016": _v("UI", str(ds.SOPClassUID)),
                    "00200013": _v("IS", str(ds.get("InstanceNumber", "") or ""))})
    return _json(out)


# -- WADO-RS -------------------------------------------------------------------------------------


def _metadata(request: Request, study: str, files: list[Path]) -> Response:
    out = []
    for p in files:
        ds = dcmread(p)
        out.append(dataset_json(ds, _instance_url(request, study, str(ds.SeriesInstanceUID),
                                                  p.stem)))
    return _json(out)


@router.get(PREFIX + "/studies/{study}/metadata", include_in_schema=False)
def study_metadata(study: str, request: Request) -> Response:
    st, refusal = _resolve(request, study, "metadata")
    return refusal or _metadata(request, study, st.files() or [])


@router.get(PREFIX + "/studies/{study}/series/{series}/metadata", include_in_schema=False)
def series_metadata(study: str, series: str, request: Request) -> Response:
    st, refusal = _resolve(request, study, "metadata")
    if refusal is not None:
        return refusal
    files = st.files(series)
    return _not_found() if files is None else _metadata(request, study, files)


@router.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}/metadata",
            include_in_schema=False)
def instance_metadata(study: str, series: str, sop: str, request: Request) -> Response:
    st, refusal = _resolve(request, study, "metadata")
    if refusal is not None:
        return refusal
    files = st.files(series, sop)
    return _not_found() if files is None else _metadata(request, study, files)


def _instances(files: list[Path]) -> Response:
    boundary = new_boundary()
    parts = (Part("application/dicom", file_chunks(p)) for p in files)
    return StreamingResponse(stream(parts, boundary), headers=_HEADERS,
                             media_type=content_type("application/dicom", boundary))


@router.get(PREFIX + "/studies/{study}", include_in_schema=False)
def retrieve_study(study: str, request: Request) -> Response:
    st, refusal = _resolve(request, study, "wado_study")
    return refusal or _instances(st.files() or [])


@router.get(PREFIX + "/studies/{study}/series/{series}", include_in_schema=False)
def retrieve_series(study: str, series: str, request: Request) -> Response:
    st, refusal = _resolve(request, study, "wado_series")
    if refusal is not None:
        return refusal
    files = st.files(series)
    return _not_found() if files is None else _instances(files)


@router.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}", include_in_schema=False)
def retrieve_instance(study: str, series: str, sop: str, request: Request) -> Response:
    st, refusal = _resolve(request, study, "wado_instance")
    if refusal is not None:
        return refusal
    files = st.files(series, sop)
    return _not_found() if files is None else _instances(files)


@router.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
            include_in_schema=False)
async def retrieve_frames(study: str, series: str, sop: str, frames: str,
                          request: Request) -> Response:
    st, refusal = await run_in_threadpool(_resolve, request, study, "wado_frames")
    if refusal is not None:
        return refusal
    files = st.files(series, sop)
    if files is None:
        return _not_found()
    try:
        numbers = [int(n) for n in frames.split(",") if n.strip().isascii() and n.strip()]
    except ValueError:
        numbers = []
    if not numbers or len(numbers) > request.app.state.runtime.settings.max_frames_per_request:
        return Response('{"error":"bad frame list"}', 400, media_type="application/json")

    def read() -> tuple[str, list[bytes]] | None:
        try:
            info = frame_info(files[0])
            target = pixel_syntax(info.transfer_syntax)
            return target, [read_frame(files[0], info, n, target) for n in numbers]
        except (NoPixelData, IndexError):
            return None

    got = await run_in_threadpool(read)
    if got is None:
        return _not_found()
    target, data = got
    media = pixel_media_type(target)
    boundary = new_boundary()
    part_type = media if media == "application/octet-stream" else \
        f"{media}; transfer-syntax={target}"
    parts = [Part(part_type, [d]) for d in data]
    return StreamingResponse(stream(parts, boundary), headers=_HEADERS,
                             media_type=content_type(media, boundary, transfer_syntax=target))


@router.get(PREFIX + "/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag_path:path}",
            include_in_schema=False)
def retrieve_bulkdata(study: str, series: str, sop: str, tag_path: str,
                      request: Request) -> Response:
    """A BulkDataURI of the metadata (e.g. an encapsulated PDF), as
    ``application/octet-stream``; Pixel Data is read through ``frames``."""
    st, refusal = _resolve(request, study, "wado_bulkdata")
    if refusal is not None:
        return refusal
    files = st.files(series, sop)
    if files is None:
        return _not_found()
    try:
        tags = parse_tag_path(tag_path.strip("/").split("/"))
    except ValueError:
        return Response('{"error":"bad bulk data path"}', 400, media_type="application/json")
    if tags == [PIXEL_DATA]:
        return _not_found()
    try:
        value = read_bulk(files[0], tags)
    except NoSuchElement:
        return _not_found()
    boundary = new_boundary()
    return StreamingResponse(stream(iter([Part("application/octet-stream", [value])]), boundary),
                             headers=_HEADERS,
                             media_type=content_type("application/octet-stream", boundary))
