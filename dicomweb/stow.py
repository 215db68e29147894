"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``POST /studies/{study}``.

The request is ``multipart/related; type="application/dicom"``, each part a Part 10 file.
The body is read as it arrives: each part is spooled to ``<data_dir>/staging`` (emptied at
start-up), split into File Meta Information and dataset, and handed to the one ingest path
(:meth:`gateway.ingest.ingestor.Ingestor.ingest`, ``source="stow"``) in a worker thread before the
next part is read, so one part at a time is held, and the same durability rule as C-STORE
holds: an instance is listed as stored only once it is fsync'ed and indexed.

Response (``application/dicom+json``): Retrieve URL (0008,1190) of the study when the stored
instances belong to one study; Referenced SOP Sequence (0008,1199) with each stored
instance's classes, UIDs and Retrieve URL; Failed SOP Sequence (0008,1198) with Failure
Reason (0008,1197), the DICOM status the C-STORE face would answer for the same rejection
(``gateway.ingest.dimse.STATUS_FOR_REJECTION``: 0xC000 cannot be parsed, 0xC001 missing UID, 0xC002
malformed UID, 0xC003/0xA900 meta information and dataset disagree, 0xC004 truncated or
corrupt dataset, 0xC005 image without Pixel Data, 0xC006 explicit VR bytes labelled implicit
VR, 0x0111 duplicate refused,
0xA700 out of resources, 0x0110 processing failure), 0xA900 for an instance of another study
than the URL's, 0xC000 for a part that is not ``application/dicom``.

Access (``StowAccess``, :mod:`dicomweb.deps`): centre staff or the ``admin`` role, or anyone
in ``dicomweb_auth = none`` development mode; a consumer DRIMbox never writes (403).

HTTP status: 200 all stored; 202 some stored, some failed; 409 none stored; 400 malformed
multipart body, no part, or a URL study that is not a UID (parts complete before a
malformation are kept); 413 a part larger than ``stow_max_part_bytes`` (reading stops there;
the parts before it are kept and counted in the message); 406 an Accept header without DICOM JSON; 415 not
``multipart/related`` of ``application/dicom`` (the metadata + bulk data form is not
supported). Every URL comes from the request's effective public base (``dicomweb.urls``).
"""

from __future__ import annotations

import logging
import mmap
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from dicomweb.deps import RuntimeDep, StowAccess
from dicomweb.multipart_reader import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    check_boundary,
    parse_media_type,
)
from dicomweb.urls import DicomWebURLs, URLsDep
from gateway import metrics
from gateway.ingest.dimse import STATUS_FOR_REJECTION
from gateway.ingest.header import HeaderError, read_header
from gateway.ingest.ingestor import Incoming, Ingestor, IngestRejected
from gateway.ingest.part10 import Part10Error, split_part10
from gateway.ingest.uids import is_safe_uid

log = logging.getLogger(__name__)

router = APIRouter()

DICOM_JSON = "application/dicom+json"
UNPARSEABLE = 0xC000
STUDY_MISMATCH = 0xA900
PROCESSING_FAILURE = 0x0110
_SOURCE = "stow"


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """What became of one part: stored (``failure is None``) or refused."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    failure: int | None = None
    detail: str = ""


def _error(status: int, message: str) -> JSONResponse:
    log.info("STOW-RS answered %d: %s", status, message)
    return JSONResponse({"error": message}, status_code=status)


def _accepts_dicom_json(accept: str | None) -> bool:
    if not accept:
        return True
    for item in accept.split(","):
        try:
            media, params = parse_media_type(item)
        except ValueError:
            continue
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        if media in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return True
    return False


def store_part(ingestor: Ingestor, path: Path, study: str | None) -> PartOutcome:
    """Split one spooled part and ingest its dataset (blocking: run in a worker thread)."""
    size = path.stat().st_size
    if size == 0:
        return PartOutcome(failure=UNPARSEABLE, detail="empty part")
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    try:
        return _store_view(ingestor, view, study)
    finally:
        view.release()
        try:
            mapped.close()
        except BufferError:  # a view is still referenced somewhere: unmapped when collected
            log.debug("STOW-RS: spool mapping left to the garbage collector")


def _store_view(ingestor: Ingestor, view: memoryview, study: str | None) -> PartOutcome:
    try:
        part = split_part10(view)
    except Part10Error as exc:
        return PartOutcome(failure=UNPARSEABLE, detail=str(exc))
    sop_class, sop_instance = part.sop_class_uid, part.sop_instance_uid
    dataset = view[part.dataset_offset :]
    try:
        if study is not None:
            try:
                header = read_header(dataset, part.transfer_syntax_uid)
            except HeaderError:
                header = None  # the ingest path refuses it with its own reason below
            if header is not None and header.study_instance_uid != study:
                return PartOutcome(
                    sop_class, sop_instance, header.study_instance_uid,
                    failure=STUDY_MISMATCH,
                    detail=f"Study Instance UID {header.study_instance_uid[:64]} is not the "
                    f"study of the request URL",
                )
        try:
            result = ingestor.ingest(
                Incoming(
                    dataset=dataset,
                    transfer_syntax_uid=part.transfer_syntax_uid,
                    source=_SOURCE,
                    expected_sop_class_uid=sop_class or None,
                    expected_sop_instance_uid=sop_instance or None,
                )
            )
        except IngestRejected as exc:
            return PartOutcome(sop_class, sop_instance,
                               failure=STATUS_FOR_REJECTION[exc.reason], detail=exc.detail)
    finally:
        dataset.release()
    h = result.header
    metrics.INSTANCES_RECEIVED.labels(_SOURCE).inc()
    metrics.BYTES_RECEIVED.labels(_SOURCE).inc(result.size)
    return PartOutcome(h.sop_class_uid, h.sop_instance_uid, h.study_instance_uid,
                       h.series_instance_uid)


def _ui(value: str) -> dict:
    """A UI element; a value that is not a well-formed UID is left out rather than echoed."""
    return {"vr": "UI", "Value": [value]} if value and is_safe_uid(value) else {"vr": "UI"}


def response_dataset(
    outcomes: list[PartOutcome], urls: DicomWebURLs, study: str | None
) -> dict:
    """The Store Instances Response Module (PS3.18 10.5.3) in DICOM JSON (PS3.18 F)."""
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    body: dict = {}
    studies = {o.study_instance_uid for o in stored}
    if stored and (study is not None or len(studies) == 1):
        body["00081190"] = {"vr": "UR", "Value": [urls.study(study or studies.pop())]}
    if failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _ui(o.sop_class_uid),
                    "00081155": _ui(o.sop_instance_uid),
                    "00081197": {"vr": "US", "Value": [o.failure]},
                }
                for o in failed
            ],
        }
    if stored:
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _ui(o.sop_class_uid),
                    "00081155": _ui(o.sop_instance_uid),
                    "00081190": {
                        "vr": "UR",
                        "Value": [urls.instance(o.study_instance_uid, o.series_instance_uid,
                                                o.sop_instance_uid)],
                    },
                }
                for o in stored
            ],
        }
    return body


async def _store(
    request: Request, runtime, urls: DicomWebURLs, study: str | None
) -> JSONResponse:
    if study is not None and not is_safe_uid(study):
        return _error(400, "the study in the URL is not a UID")
    try:
        media, params = parse_media_type(request.headers.get("content-type", ""))
    except ValueError:
        return _error(415, 'expected multipart/related; type="application/dicom"')
    root_type = params.get("type", "application/dicom").lower()
    if media != "multipart/related" or root_type != "application/dicom":
        return _error(415, 'expected multipart/related; type="application/dicom" (PS3.18 '
                      "10.5.1.1); the metadata and bulk data form is not supported")
    if not _accepts_dicom_json(request.headers.get("accept")):
        return _error(406, f"the response is {DICOM_JSON}")
    try:
        reader = MultipartReader(check_boundary(params.get("boundary", "")))
    except MultipartError as exc:
        return _error(400, str(exc))

    staging = runtime.store.staging_dir
    max_part = runtime.settings.stow_max_part_bytes
    outcomes: list[PartOutcome] = []
    spool: Path | None = None
    out = None
    part_type = ""
    try:
        try:
            async for chunk in request.stream():
                for event in reader.feed(chunk):
                    if isinstance(event, PartStart):
                        part_type = event.headers.get("content-type", "application/dicom")
                        spool = staging / f"stow-{uuid.uuid4().hex}.part"
                        out = open(spool, "xb")  # noqa: SIM115 - closed at PartEnd/finally
                    elif isinstance(event, PartData):
                        assert out is not None
                        out.write(event.data)
                        if out.tell() > max_part:
                            stored = sum(o.failure is None for o in outcomes)
                            log.warning("STOW-RS: part %d larger than stow_max_part_bytes "
                                        "(%d); %d stored before it", len(outcomes) + 1,
                                        max_part, stored)
                            return _error(413, f"part {len(outcomes) + 1} is larger than "
                                          f"stow_max_part_bytes ({max_part} bytes); "
                                          f"{stored} instance(s) before it were stored")
                    elif isinstance(event, PartEnd):
                        assert out is not None and spool is not None
                        out.close()
                        out = None
                        outcomes.append(await _one_part(runtime.ingestor, spool, part_type,
                                                        study))
                        spool.unlink()
                        spool = None
            reader.close()
        except MultipartError as exc:
            log.info("STOW-RS: malformed multipart body after %d part(s): %s",
                     len(outcomes), exc)
            return _error(400, f"malformed multipart body: {exc}")
        except ClientDisconnect:
            log.info("STOW-RS: client went away after %d part(s)", len(outcomes))
            return _error(400, "the request body ended early")
    finally:
        if out is not None:
            out.close()
        if spool is not None:
            spool.unlink(missing_ok=True)

    if not outcomes:
        return _error(400, "the multipart body has no part")
    for o in outcomes:
        if o.failure is not None:
            metrics.STOW_FAILURES.labels(f"0x{o.failure:04X}").inc()
            log.warning("STOW-RS refused %s: 0x%04X %s", o.sop_instance_uid or "a part",
                        o.failure, o.detail)
    stored = sum(o.failure is None for o in outcomes)
    status = 200 if stored == len(outcomes) else 202 if stored else 409
    return JSONResponse(response_dataset(outcomes, urls, study), status_code=status,
                        media_type=DICOM_JSON)


async def _one_part(ingestor: Ingestor, spool: Path, part_type: str,
                    study: str | None) -> PartOutcome:
    try:
        media, _ = parse_media_type(part_type)
    except ValueError:
        media = part_type
    if media != "application/dicom":
        return PartOutcome(failure=UNPARSEABLE,
                           detail=f"part media type {part_type[:60]!r} is not application/dicom")
    try:
        return await run_in_threadpool(store_part, ingestor, spool, study)
    except Exception:  # a bug or an OS error: fail this part, keep the answer for the others
        log.exception("STOW-RS: part could not be processed")
        return PartOutcome(failure=PROCESSING_FAILURE, detail="processing failure")


@router.post("/studies", summary="STOW-RS: store instances (PS3.18 10.5)")
async def store_instances(
    request: Request, runtime: RuntimeDep, urls: URLsDep, _access: StowAccess
) -> JSONResponse:
    return await _store(request, runtime, urls, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study (PS3.18 10.5)")
async def store_study_instances(
    study: str, request: Request, runtime: RuntimeDep, urls: URLsDep, _access: StowAccess
) -> JSONResponse:
    return await _store(request, runtime, urls, study)

