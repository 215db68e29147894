"""``GET /viewer/source?studyUID=...&idCDA=...``: the R18 viewer link.

The link a CR names (``viewer_link_template``) opens the study's images in our viewer:

* without a PSC session, the browser goes to the PSC login and comes back to the same URL
  (``/auth/login?next=...``), then to the activity choice when there are several;
* the study must have a CR in force whose idCDA is the one the link names (the ``reports``
  table, :func:`gateway.index.reports.current_report`): otherwise 404, exactly as for a study
  that does not exist (the link never reveals whether a study is here);
* when it matches, the session is granted that study (:meth:`SessionStore.grant_study`: the
  practitioner sees it even without the ``viewer`` role, and only it) and the browser goes to
  ``/viewer?StudyInstanceUIDs=...``.

Every decision is audited (action ``viewer_link``; reasons ``id_cda_matches``,
``id_cda_mismatch``, ``bad_request``). The audit row names the practitioner and the study,
never the full idCDA-to-patient mapping beyond what the study row holds.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from dicomweb.login import activity_redirect, login_redirect
from dicomweb.session_cookies import SESSION, read_cookie, roles_of, sessions
from dicomweb.urls import client_address, request_public_url
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.index.models import Study
from gateway.index.reports import current_report
from gateway.ingest.uids import is_safe_uid

router = APIRouter()

ACTION = "viewer_link"


def _page(status: int, text: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html lang=fr><head><meta charset=utf-8><title>{text}"
                        f"</title></head><body><h1>{text}</h1></body></html>", status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _matches(runtime, study_uid: str, id_cda: str) -> tuple[bool, str]:  # noqa: ANN001
    """Whether the study's CR in force has this idCDA; and the study's INS for the audit."""
    from sqlalchemy import select

    with runtime.index.read() as s:
        ins = s.scalar(select(Study.ins_matricule)
                       .where(Study.study_instance_uid == study_uid)) or ""
        report = current_report(s, study_uid)
    return report is not None and bool(id_cda) and report.id_cda == id_cda, ins


@router.get("/viewer/source", include_in_schema=False)
def viewer_source(request: Request, studyUID: str | None = None,  # noqa: N803 - R18 names
                  idCDA: str | None = None) -> Response:  # noqa: N803
    runtime = request.app.state.runtime
    raw = read_cookie(request, SESSION)
    info = sessions(request).find(raw) if raw else None
    if info is None or info.kind != "practitioner":
        return login_redirect(request)
    if info.needs_activity:
        return activity_redirect(request) or login_redirect(request)
    principal = Principal(kind="practitioner", subject=info.subject,
                          roles=roles_of(runtime.settings, info.subject),
                          activity=info.activity, via="session")
    client = client_address(request)

    def audit(outcome: str, reason: str, study: str = "", ins: str = "") -> None:
        record_access(runtime.index, AccessRecord(principal, ACTION, outcome, reason,
                                                  study_uid=study, patient_ins=ins,
                                                  client_address=client))

    if not studyUID or not idCDA or not is_safe_uid(studyUID) or len(idCDA) > 255:
        audit(DENIED, "bad_request", studyUID if studyUID and is_safe_uid(studyUID) else "")
        return _page(400, "Lien invalide : studyUID et idCDA sont requis")
    ok, ins = _matches(runtime, studyUID, idCDA)
    if not ok:
        audit(DENIED, "id_cda_mismatch", studyUID, ins)
        return _page(404, "Examen introuvable")
    sessions(request).grant_study(raw, studyUID)
    audit(ALLOWED, "id_cda_matches", studyUID, ins)
    base = request_public_url(request)
    return RedirectResponse(f"{base}/viewer?StudyInstanceUIDs={quote(studyUID, safe='')}", 302)

