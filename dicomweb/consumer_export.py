"""Import of a retrieved study into the centre's PACS (R17), the clinician's side, mounted only
with the consumer role (``roles`` consumer or both).

* ``GET /consumer/studies/{document_unique_id}/export``: a confirmation page whose form posts
  the export with the session's anti-CSRF token (a link on another site reaches only this GET,
  which changes nothing); without a PSC session, to the login and back. :func:`export_form` gives the same form for other consumer pages.
* ``POST /consumer/studies/{document_unique_id}/export``: the export itself
  (:func:`gateway.consumer.export.run_export`) to the ``export_destination``. Form field
  ``csrf`` (:func:`dicomweb.session_cookies.form_token` of purpose ``consumer-export``). The
  answer says what happened to each instance: an HTML page, or the report as JSON when the
  request accepts ``application/json``. Status: 200 every instance is in the PACS (sent or
  already there); 502 some failed or were not sent (the PACS refused them, or stopped
  answering: run it again to complete it); 409 nothing sent because a check failed (the
  retrieval is not complete, the study is not the current patient's, an instance of another
  patient, no patient context to take the local identifiers from); 404 this session has not
  retrieved the study; 503 export is not configured; 401 no PSC session; 403 a missing or
  wrong token.

``document_unique_id`` is the KOS's document unique id in the DMP (its SOP Instance UID), as
the retrieval names a cached study. What is exported is this session's retrieval of it in
the retrieval cache (``app.state.consumer_cache``), and only once it is ``complete``: a
retrieval with a series refused or cut short is never exported, so nothing half retrieved
is half imported.

The local identifiers (``export_coerce_identifiers``) are the appel contextuel's
``PatientID`` / ``PatientIDIssuer`` of the session's current patient context. Every export
is audited (action ``consumer_export``: destination, counts, outcome; the INS matricule at
most, never the local identifier in full nor the names).
"""

from __future__ import annotations

import html

from fastapi import APIRouter, FastAPI, Form, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from adapters.pacs.export import destination
from dicomweb.consumer import _page
from dicomweb.login import activity_redirect, login_redirect
from dicomweb.session_cookies import SESSION, form_token, form_token_ok, read_cookie, sessions
from dicomweb.urls import client_address, request_public_url
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.access.sessions import SessionInfo, digest
from gateway.consumer.cache import COMPLETE as RETRIEVED
from gateway.consumer.cache import StudyCache
from gateway.consumer.export import (
    COMPLETE,
    REFUSED,
    ExportError,
    ExportReport,
    LocalIdentity,
    run_export,
)
from gateway.consumer.retrieve import session_retrieval
from gateway.ingest.uids import is_safe_uid

router = APIRouter()

EXPORT_PATH = "/consumer/studies/{document_unique_id}/export"
EXPORT_FORM = "consumer-export"
ACTION = "consumer_export"

_OUTCOME_FR = {"sent": "envoyée", "already_present": "déjà dans le PACS", "failed": "refusée",
               "not_sent": "non envoyée"}


def _principal(info: SessionInfo) -> Principal:
    return Principal(kind="practitioner", subject=info.subject, activity=info.activity or None,
                     via="session")


def _audit(request: Request, principal: Principal, outcome: str, reason: str,
           document_unique_id: str, study_uid: str = "", ins: str = "") -> None:
    record_access(request.app.state.runtime.index, AccessRecord(
        principal, ACTION, outcome, reason[:255], study_uid=study_uid, patient_ins=ins,
        kos_uid=document_unique_id, client_address=client_address(request)))


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "").lower()


def _answer(request: Request, status: int, title: str, message: str,
            report: ExportReport | None = None) -> Response:
    if _wants_json(request):
        body = report.to_dict() if report is not None else {"outcome": REFUSED,
                                                            "refused": message}
        return JSONResponse(body, status, headers={"Cache-Control": "no-store"})
    rows = ""
    if report is not None and report.outcomes:
        rows = ("<table id=instances><thead><tr><th>Instance (SOP Instance UID)</th>"
                "<th>Résultat</th><th>Détail</th></tr></thead><tbody>"
                + "".join(
                    f"<tr data-outcome='{o.outcome}'><td><code>{html.escape(o.sop_instance_uid)}"
                    f"</code></td><td>{html.escape(_OUTCOME_FR.get(o.outcome, o.outcome))}</td>"
                    f"<td>{html.escape(o.reason)}</td></tr>" for o in report.outcomes)
                + "</tbody></table>")
    counts = ""
    if report is not None:
        c = report.counts
        counts = (f"<p id=counts data-outcome='{report.outcome}'>Envoyées : {c['sent']} ; déjà "
                  f"présentes : {c['already_present']} ; refusées : {c['failed']} ; non "
                  f"envoyées : {c['not_sent']}.</p>")
    return _page(title, f"<p id=message>{html.escape(message)}</p>{counts}{rows}"
                 f"<p><a href='{request_public_url(request)}/consumer'>Retour</a></p>", status)


def export_form(request: Request, document_unique_id: str) -> str:
    """The export button of a cached study, for the consumer pages (this session's token)."""
    token = form_token(read_cookie(request, SESSION), EXPORT_FORM)
    action = request_public_url(request) + EXPORT_PATH.format(
        document_unique_id=html.escape(document_unique_id))
    return (f"<form method=post action='{action}' class=export>"
            f"<input type=hidden name=csrf value='{html.escape(token)}'>"
            "<button>Importer dans le PACS de l'établissement</button></form>")


def _session(request: Request) -> tuple[str, SessionInfo | None]:
    raw = read_cookie(request, SESSION)
    info = sessions(request).find(raw)
    if info is None or info.kind != "practitioner" or info.needs_activity:
        return raw, None
    return raw, info


@router.get(EXPORT_PATH, include_in_schema=False)
def export_page(request: Request, document_unique_id: str) -> Response:
    _raw, info = _session(request)
    if info is None:  # as the consumer page: to the PSC login (or the activity choice) and back
        return activity_redirect(request) or login_redirect(request)
    if not is_safe_uid(document_unique_id):
        return _answer(request, 404, "Examen inconnu", "Identifiant de document invalide.")
    return _page("Importer l'examen dans le PACS",
                 "<p>Envoyer les images de cet examen au PACS de l'établissement, avec "
                 "l'identifiant local du patient (IPP) ?</p>"
                 + export_form(request, document_unique_id))


@router.post(EXPORT_PATH, include_in_schema=False)
async def export_study(request: Request, document_unique_id: str,
                       csrf: str = Form("")) -> Response:
    return await run_in_threadpool(_export, request, document_unique_id, csrf)


def _export(request: Request, document_unique_id: str, csrf: str) -> Response:
    raw, info = _session(request)
    if info is None:
        return _answer(request, 401, "Connexion requise",
                       "Connectez-vous avec Pro Santé Connect depuis la page du patient.")
    principal = _principal(info)
    if not form_token_ok(raw, EXPORT_FORM, csrf):
        _audit(request, principal, DENIED, "csrf_token_mismatch", document_unique_id)
        return _answer(request, 403, "Import refusé",
                       "La demande d'import ne vient pas de cette application.")
    settings = request.app.state.runtime.settings
    if not is_safe_uid(document_unique_id):
        _audit(request, principal, DENIED, "not_a_uid", "")
        return _answer(request, 404, "Examen inconnu", "Identifiant de document invalide.")
    current = request.app.state.consumer_contexts.current(raw)
    ins = current.patient.ins if current is not None else ""
    try:
        target = destination(settings)
    except ExportError as exc:
        _audit(request, principal, DENIED, f"not_configured: {exc}", document_unique_id, ins=ins)
        return _answer(request, 503, "Import indisponible", str(exc))
    try:
        row = session_retrieval(request.app.state.runtime.index, digest(raw),
                                kos_uid=document_unique_id)
        if row is None:
            _audit(request, principal, DENIED, "not_cached", document_unique_id, ins=ins)
            return _answer(request, 404, "Examen non récupéré",
                           "Cet examen n'est pas dans le cache : récupérez-le d'abord.")
        if row.state != RETRIEVED:
            _audit(request, principal, DENIED, f"retrieval_{row.state}", document_unique_id,
                   row.study_instance_uid, ins)
            return _answer(request, 409, "Import refusé",
                           "L'examen n'a pas été entièrement récupéré (état : "
                           f"{row.state}) : rien n'a été envoyé au PACS, pour ne pas y "
                           "importer un examen incomplet. Relancez la récupération.")
        if current is not None and row.patient_ins != current.patient.ins:
            _audit(request, principal, DENIED, "other_patient", document_unique_id,
                   row.study_instance_uid, ins)
            return _answer(request, 409, "Import refusé",
                           "Cet examen n'est pas celui du patient en cours : rien n'a été "
                           "envoyé.")
        cache: StudyCache = request.app.state.consumer_cache
        files = cache.retrieved_files(row.id)
        identity = None
        if settings.export_coerce_identifiers:
            if current is None:
                _audit(request, principal, DENIED, "no_patient_context", document_unique_id)
                return _answer(request, 409, "Import refusé",
                               "Aucun contexte patient : ouvrez la page du patient depuis son "
                               "dossier (appel contextuel) pour que l'IPP local soit connu.")
            try:
                identity = LocalIdentity.of(current.patient)
            except ExportError as exc:
                _audit(request, principal, DENIED, f"bad_local_identifier: {exc}",
                       document_unique_id, ins=ins)
                return _answer(request, 409, "Import refusé", str(exc))
        report = run_export(files, target, identity)
    finally:
        target.close()
    _audit(request, principal, ALLOWED if report.outcome == COMPLETE else DENIED,
           report.summary(), document_unique_id, report.study_uid, ins)
    if report.outcome == REFUSED:
        return _answer(request, 409, "Import refusé",
                       f"Rien n'a été envoyé au PACS : {report.refused}", report)
    if report.outcome == COMPLETE:
        return _answer(request, 200, "Examen importé dans le PACS",
                       "Toutes les images sont dans le PACS.", report)
    return _answer(request, 502, "Import incomplet",
                   "Certaines images ne sont pas dans le PACS (voir le détail) ; relancez "
                   "l'import pour le compléter : ce qui y est déjà n'est pas renvoyé."
                   + (f" Le PACS a cessé de répondre : {report.stopped}" if report.stopped
                      else ""), report)


def install(app: FastAPI) -> None:
    """Mount the export routes (consumer role only; after :func:`dicomweb.consumer.install`,
    whose context store they read)."""
    app.include_router(router, tags=["consumer"])
