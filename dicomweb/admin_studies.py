"""``GET /admin/studies/{study_uid}``: one study's state for the centre's administrators:
received content, the CR in force (idCDA, received_at), the publication
(current KOS, entryUUID, outbox rows: published, replaced, withdrawn, refused, errors) with its
timestamped history, and the R18 viewer link. The body is what ``drimbox study show UID
--json`` prints (:func:`gateway.publication.study_status.study_status`). Role ``admin`` only
(``AdminAccess``: 401 without credentials, 403 without the role); every call is audited as
action ``admin`` with the study's UID.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Response
from starlette.concurrency import run_in_threadpool

from dicomweb.deps import AdminAccess, RuntimeDep
from gateway.index.facts import UnknownStudy
from gateway.ingest.uids import is_safe_uid
from gateway.publication.study_status import study_status

router = APIRouter()


@router.get("/admin/studies/{study}", include_in_schema=False)
async def study_admin(study: str, runtime: RuntimeDep, _access: AdminAccess) -> Response:
    if not is_safe_uid(study):
        raise HTTPException(400, "study: not a DICOM UID")
    try:
        data = await run_in_threadpool(study_status, runtime.index, runtime.settings, study)
    except UnknownStudy:
        raise HTTPException(404, "study not found") from None
    return Response(json.dumps(data, default=str), media_type="application/json",
                    headers={"Cache-Control": "no-store"})
