"""``GET /download/studies/{study}``: the study as DICOM media, a zip holding a DICOMDIR and
every instance byte for byte (:mod:`gateway.imaging.media`, streamed: no copy on disk), like the CD it replaces. The
viewer offers it ("Télécharger l'examen", :mod:`dicomweb.viewer`) in a share link's session.

Access is the DICOMweb gate's (:func:`dicomweb.deps.guard`, action ``download``): a share
session gets its own study only (403 otherwise, audited ``study_not_shared``), centre staff
any study, a consumer DRIMbox only the instances of the manifest it names (R10); each call is
audited (action ``download``, allowed or denied). Evicted instances are fetched back from the
PACS first, as for WADO-RS (:mod:`dicomweb.evicted`).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import StreamingResponse

from dicomweb.deps import Granted, RuntimeDep, guard
from dicomweb.evicted import ensure_local
from gateway.imaging import retrieval
from gateway.imaging.media import stream_study_media_zip

router = APIRouter()

DOWNLOAD_PREFIX = "/download/studies"
DownloadAccess = Annotated[Granted, Depends(guard("download"))]


def download_path(study_uid: str) -> str:
    return f"{DOWNLOAD_PREFIX}/{quote(study_uid, safe='')}"


@router.get(DOWNLOAD_PREFIX + "/{study}", response_class=StreamingResponse)
def download_study(study: str, request: Request, access: DownloadAccess,
                   runtime: RuntimeDep) -> StreamingResponse:
    """The study as a zip of DICOM media (DICOMDIR + instances)."""
    try:
        refs = retrieval.find_instances(runtime.index, study)
    except retrieval.BadUID as exc:
        raise HTTPException(400, str(exc)) from None
    except retrieval.NotFound:
        raise HTTPException(404, "study not found") from None
    visible = access.visible
    refs = [r for r in refs if visible.shows_series(r.series_instance_uid)
            and visible.shows_instance(r.sop_instance_uid)]
    if not refs:
        raise HTTPException(404, "study not found")
    ensure_local(request, runtime, access, "download", study,
                 [r.sop_instance_uid for r in refs])
    store = runtime.store
    body = stream_study_media_zip([store.path_of(r.storage_key) for r in refs])
    return StreamingResponse(body, media_type="application/zip", headers={
        "Content-Disposition": 'attachment; filename="examen.zip"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
