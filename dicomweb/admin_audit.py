"""``GET /admin/audit``: the audit trail for the centre's administrators (R15, R22).

``?format=fhir`` (default) answers a FHIR R4B Bundle of AuditEvents
(``application/fhir+json``), ``?format=kpi`` the DRIM-M KPI file (``text/csv``); ``since``
(ISO 8601 date or date-time, UTC when no offset is given) keeps the events recorded from then
on. Only principals with the ``admin`` role get it (``AdminAccess``; 401 without credentials,
403 without the role); the export itself is audited as action ``admin``. The formats are
described in :mod:`gateway.access.audit_export`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Response
from starlette.concurrency import run_in_threadpool

from dicomweb.deps import AdminAccess, RuntimeDep
from gateway.access.audit_export import fhir_audit_bundle, kpi_csv

router = APIRouter()


def parse_since(value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time; naive values are UTC. Raises ValueError."""
    if value is None or not value.strip():
        return None
    parsed = datetime.fromisoformat(value.strip())
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


# Not in /openapi.json: the public schema describes DICOMweb; admin endpoints stay out of it
# (and a schema fuzzer without the admin role could only ever see 401/403 there).
@router.get("/admin/audit", include_in_schema=False)
async def audit_export(
    runtime: RuntimeDep, _access: AdminAccess,
    format: Literal["fhir", "kpi"] = "fhir",  # noqa: A002 - the query parameter's name
    since: str | None = Query(None, description="ISO 8601 date or date-time"),
) -> Response:
    """Export the audit trail as FHIR AuditEvents or as the DRIM-M KPI file."""
    try:
        start = parse_since(since)
    except ValueError:
        raise HTTPException(400, f"since: {since!r} is not an ISO 8601 date or date-time") from None
    if format == "kpi":
        body = await run_in_threadpool(kpi_csv, runtime.index, start)
        return Response(body, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="ModelStat.csv"',
                                 "Cache-Control": "no-store"})
    bundle = await run_in_threadpool(fhir_audit_bundle, runtime.index,
                                     runtime.settings.ae_title, start)
    return Response(bundle.model_dump_json(exclude_none=True), media_type="application/fhir+json",
                    headers={"Cache-Control": "no-store"})
