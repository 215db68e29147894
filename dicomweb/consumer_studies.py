"""The consumer's retrieval of a prior study (R17; SPEC 1.3 steps 4-8), mounted with the
consumer role only (``roles`` consumer/both), under the clinician's PSC session.

* ``GET /consumer/studies/{document_unique_id}``: the priors list links here (the DMP
  document is a KOS). ITI-18 GetDocuments and ITI-43 of the KOS with the practitioner's VIHF
  (audited ``consumer_kos``), each series' RetrieveURL checked against the ANS whitelist
  (R11), then the series retrieved from the Source(s) into the local cache
  (:mod:`gateway.consumer.retrieve`, :mod:`gateway.consumer.cache`). The page shows the
  identity banner (R14), one line per series with its progress or the reason it failed, and
  the viewer's link once the retrieval has finished with whole series. Asked again by the
  same session, the page shows the same retrieval (a new one only after a failure or an
  eviction).
* ``GET /consumer/studies/{document_unique_id}/status``: the progress as JSON (the page
  polls it).

No patient context, no consent, a KOS of another patient, no PSC access token: a page that
says so (409, 403, 401), audited. The consumer's DICOMweb over the cache is
:mod:`dicomweb.consumer_dicomweb`.
"""

from __future__ import annotations

import html
import json
import logging
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from adapters.dmp.consumer import fetch_kos, practitioner_vihf
from adapters.source.wado import SourceClient
from dicomweb.consumer_banner import PAGE_HEADERS, identity_banner, render_page
from dicomweb.login import activity_redirect, login_redirect
from dicomweb.session_cookies import SESSION, read_cookie, sessions
from dicomweb.urls import client_address, request_public_url
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.access.sessions import SessionInfo, digest
from gateway.consumer.cache import COMPLETE, FAILED, PARTIAL, StudyCache, cache_root
from gateway.consumer.contexts import ContextStore
from gateway.consumer.retrieve import (
    ACTION_KOS,
    KosUnreadable,
    Retriever,
    read_kos,
    row_status,
    session_retrieval,
)
from gateway.consumer.trust import Decision
from gateway.identity.ins import Ins
from gateway.ingest.uids import is_safe_uid

log = logging.getLogger("drimbox.consumer")
router = APIRouter()

STUDIES_PATH = "/consumer/studies"
ACTION_STUDY_VIEW = "consumer_study_view"
_HEADERS = PAGE_HEADERS


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return render_page(title, body, status, ".series li{margin:.25em 0}")


def retriever(request: Request) -> Retriever:
    return request.app.state.consumer_retriever


def _practitioner(info: SessionInfo) -> Principal:
    return Principal(kind="practitioner", subject=info.subject, activity=info.activity or None,
                     via="session")


def _audit(request: Request, principal: Principal, action: str, outcome: str, reason: str,
           *, study: str = "", ins: str = "", kos: str = "") -> None:
    record_access(request.app.state.runtime.index, AccessRecord(
        principal, action, outcome, reason[:255], study_uid=study, patient_ins=ins,
        kos_uid=kos, client_address=client_address(request)))


def _trust(request: Request):  # noqa: ANN202
    """R11: whether a RetrieveURL may be called, and why, with the list's entry (whose
    certificate DN the Source must present); without a list,
    ``consumer_trust_sources_without_whitelist`` decides, https only, no DN checked."""
    runtime = request.app.state.runtime

    def trust(url: str) -> Decision:
        keeper = runtime.whitelist
        if keeper is not None:
            return keeper.is_trusted(url)
        if not runtime.settings.consumer_trust_sources_without_whitelist:
            return Decision(False, "aucune liste blanche ANS n'est configurée (whitelist_source)")
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme != "https":
            return Decision(False, f"{url!r} n'est pas en https (R12)")
        return Decision(True, "sans liste blanche (consumer_trust_sources_without_whitelist)")

    return trust


def _session(request: Request) -> tuple[str, SessionInfo | None, Response | None]:
    if getattr(request.app.state, "psc_login", None) is None:
        return "", None, _page("Connexion indisponible",
                               "<p>Pro Santé Connect n'est pas configuré.</p>", 503)
    raw = read_cookie(request, SESSION)
    info = sessions(request).find(raw)
    if info is None or info.kind != "practitioner":
        return raw, None, login_redirect(request)
    if info.needs_activity:
        return raw, None, activity_redirect(request) or login_redirect(request)
    return raw, info, None


@router.get(STUDIES_PATH + "/{document_unique_id}", include_in_schema=False)
def study_page(document_unique_id: str, request: Request) -> Response:
    raw, info, early = _session(request)
    if early is not None:
        return early
    assert info is not None
    principal = _practitioner(info)
    if not is_safe_uid(document_unique_id):
        _audit(request, principal, ACTION_KOS, DENIED, "bad_document_uid")
        return _page("Document invalide", "<p>Identifiant de document invalide.</p>", 400)
    store: ContextStore = request.app.state.consumer_contexts
    current = store.current(raw)
    if current is None:
        _audit(request, principal, ACTION_KOS, DENIED, "no_patient_context",
               kos=document_unique_id)
        return _page("Aucun patient", "<p>Aucun patient n'est sélectionné : ouvrez d'abord "
                     "la page du patient (appel contextuel ou recherche).</p>"
                     f"<p><a href='{request_public_url(request)}/consumer'>Retour</a></p>", 409)
    patient = current.patient
    if not patient.consent:
        _audit(request, principal, ACTION_KOS, DENIED, "no_consent", ins=patient.ins,
               kos=document_unique_id)
        return _page("Consultation refusée", "<p>Le patient n'a pas consenti à la "
                     "consultation (InformationEtConsentement = false).</p>", 403)
    key = digest(raw)
    index = request.app.state.runtime.index
    row = session_retrieval(index, key, kos_uid=document_unique_id)
    if row is not None and row.state != FAILED:
        _audit(request, principal, ACTION_STUDY_VIEW, ALLOWED, row.state,
               study=row.study_instance_uid, ins=row.patient_ins, kos=row.kos_uid)
        return _render(request, info, patient, document_unique_id,
                       {**row_status(row), "kos": row.kos_uid})
    token = sessions(request).access_token(raw)
    if not token:
        _audit(request, principal, ACTION_KOS, DENIED, "no_psc_access_token", ins=patient.ins,
               kos=document_unique_id)
        return _page("Reconnexion nécessaire", "<p>La session ne détient pas de jeton Pro "
                     "Santé Connect utilisable auprès des DRIMbox sources : déconnectez-vous "
                     "puis reconnectez-vous.</p>", 401)
    settings = request.app.state.runtime.settings
    try:  # the same VIHF as the priors search: this practitioner, the chosen activity (R6)
        vihf = practitioner_vihf(settings, info, Ins(patient.ins, patient.ins_oid))
    except ValueError as exc:
        _audit(request, principal, ACTION_KOS, DENIED, f"no_activity: {exc}", ins=patient.ins,
               kos=document_unique_id)
        return _page("Activité incomplète", "<p id=error>L'activité choisie à la connexion ne "
                     f"permet pas d'interroger le DMP ({html.escape(str(exc))}) : "
                     "reconnectez-vous en choisissant une activité de votre structure.</p>", 409)
    try:
        from adapters.dmp.client import DmpClient

        with DmpClient.from_settings(settings) as dmp:
            data = fetch_kos(dmp, vihf, document_unique_id, patient.ins)
    except KosUnreadable as exc:
        _audit(request, principal, ACTION_KOS, DENIED, "kos_unusable: " + str(exc),
               ins=patient.ins, kos=document_unique_id)
        return _page("Examen indisponible", f"<p id=error>{html.escape(str(exc))}</p>", 404)
    except ValueError as exc:  # the DMP is not configured
        _audit(request, principal, ACTION_KOS, DENIED, "dmp_not_configured", ins=patient.ins,
               kos=document_unique_id)
        log.error("consumer: %s", exc)
        return _page("DMP indisponible", "<p>L'accès au DMP n'est pas configuré.</p>", 503)
    except Exception as exc:  # noqa: BLE001 - DmpError and transport failures
        _audit(request, principal, ACTION_KOS, DENIED, f"dmp_error: {type(exc).__name__}",
               ins=patient.ins, kos=document_unique_id)
        log.warning("consumer: the DMP refused or failed ITI-18/43 (%s)", type(exc).__name__)
        return _page("DMP indisponible", "<p id=error>Le DMP n'a pas fourni le document "
                     "(refus ou indisponibilité). Réessayez plus tard.</p>", 502)
    rid, refusal = follow_kos(request, key, principal, patient, document_unique_id, data, token)
    if refusal is not None:
        return refusal
    status = retriever(request).status(rid)
    if status is None:
        row = session_retrieval(index, key, kos_uid=document_unique_id)
        status = row_status(row) if row is not None else {"state": FAILED, "series": []}
    return _render(request, info, patient, document_unique_id,
                   {**status, "kos": document_unique_id})


def follow_kos(request: Request, key: str, principal: Principal, patient,  # noqa: ANN001
               document_unique_id: str, data: bytes, token: str,
               origin: str = "") -> tuple[int, Response | None]:
    """A KOS's bytes, fetched from the DMP or imported from an XDM archive (R23), become a
    retrieval of this session: read (:func:`read_kos`), checked against the current patient,
    audited ``consumer_kos``, started (each RetrieveURL checked against the whitelist).
    ``(retrieval id, None)``, or ``(0, the page that says why not)``."""
    try:
        plan = read_kos(data)
    except KosUnreadable as exc:
        _audit(request, principal, ACTION_KOS, DENIED, origin + "kos_unusable: " + str(exc),
               ins=patient.ins, kos=document_unique_id)
        return 0, _page("Examen indisponible", f"<p id=error>{html.escape(str(exc))}</p>", 404)
    if plan.patient_id and plan.patient_id != patient.ins:
        _audit(request, principal, ACTION_KOS, DENIED, origin + "kos_other_patient",
               ins=patient.ins, kos=document_unique_id, study=plan.study_uid)
        return 0, _page("Examen refusé", "<p id=error>Le KOS ne désigne pas le patient en cours "
                        "(identifiant patient différent).</p>", 409)
    _audit(request, principal, ACTION_KOS, ALLOWED, f"{origin}{len(plan.series)} series",
           ins=patient.ins, kos=document_unique_id, study=plan.study_uid)
    rid = retriever(request).start(key, plan, token, principal, patient.ins, _trust(request),
                                   client_address(request))
    return rid, None


@router.get(STUDIES_PATH + "/{document_unique_id}/status", include_in_schema=False)
def study_status(document_unique_id: str, request: Request) -> Response:
    raw, info, early = _session(request)
    if early is not None or info is None:
        return JSONResponse({"error": "no session"}, 401, headers=_HEADERS)
    if not is_safe_uid(document_unique_id):
        return JSONResponse({"error": "bad document uid"}, 400, headers=_HEADERS)
    row = session_retrieval(request.app.state.runtime.index, digest(raw),
                            kos_uid=document_unique_id)
    if row is None:
        return JSONResponse({"error": "no retrieval"}, 404, headers=_HEADERS)
    status = {**(retriever(request).status(row.id) or row_status(row)), "kos": row.kos_uid}
    return JSONResponse(_with_viewer(request, status), headers=_HEADERS)


def _with_viewer(request: Request, status: dict) -> dict:
    if status["state"] in (COMPLETE, PARTIAL):
        doc = status.get("kos") or ""
        status = {**status,
                  "viewer": f"{request_public_url(request)}{STUDIES_PATH}/{doc}/view"}
    return status


def ohif_url(base: str, study_uid: str) -> str:
    """OHIF with the consumer's data source (``dicomweb.viewer``: ``consumer``)."""
    return f"{base}/viewer/viewer/consumer?StudyInstanceUIDs={quote(study_uid, safe='')}"


@router.get(STUDIES_PATH + "/{document_unique_id}/view", include_in_schema=False)
def study_view(document_unique_id: str, request: Request) -> Response:
    """The retrieved study in OHIF (same origin, the ``consumer`` data source), framed under
    the identity banner (R14) so that the clinician checks the patient while looking."""
    raw, info, early = _session(request)
    if early is not None:
        return early
    assert info is not None
    base = request_public_url(request)
    row = (session_retrieval(request.app.state.runtime.index, digest(raw),
                             kos_uid=document_unique_id)
           if is_safe_uid(document_unique_id) else None)
    current = request.app.state.consumer_contexts.current(raw)
    if row is None or row.state not in (COMPLETE, PARTIAL) or current is None:
        _audit(request, _practitioner(info), ACTION_STUDY_VIEW, DENIED, "not_retrieved",
               kos=document_unique_id if is_safe_uid(document_unique_id) else "")
        return _page("Examen non disponible", "<p>Cet examen n'a pas été récupéré (ou plus "
                     "entièrement) pour cette session.</p>"
                     f"<p><a href='{base}/consumer'>Retour au patient</a></p>", 404)
    if row.patient_ins != current.patient.ins:
        _audit(request, _practitioner(info), ACTION_STUDY_VIEW, DENIED, "other_patient",
               kos=row.kos_uid, study=row.study_instance_uid, ins=current.patient.ins)
        return _page("Autre patient", "<p>Cet examen n'est pas celui du patient en cours."
                     f"</p><p><a href='{base}/consumer'>Retour au patient</a></p>", 409)
    _audit(request, _practitioner(info), ACTION_STUDY_VIEW, ALLOWED, "viewer",
           kos=row.kos_uid, study=row.study_instance_uid, ins=row.patient_ins)
    response = _page("Examen antérieur", identity_banner(current.patient)
                     + (f"<p id=partial role=alert>Examen incomplet : certaines séries n'ont "
                        f"pas pu être récupérées (<a href='{base}{STUDIES_PATH}/"
                        f"{row.kos_uid}'>détail</a>).</p>" if row.state == PARTIAL else "")
                     + f"<iframe id=viewer title='Visualiseur' src='"
                     f"{html.escape(ohif_url(base, row.study_instance_uid))}' "
                     "style='width:100%;height:80vh;border:0'></iframe>")
    # Framing our own viewer only.
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'; frame-src 'self'"
    return response


_STATES_FR = {"pending": "en attente", "retrieving": "récupération en cours",
              "complete": "complète", "refused": "refusée", "failed": "échec"}


def _render(request: Request, info: SessionInfo, patient, document_uid: str,  # noqa: ANN001
            status: dict) -> Response:
    status = _with_viewer(request, status)
    items = "".join(
        f"<li data-series='{html.escape(s['uid'])}' data-state='{html.escape(s['state'])}'>"
        f"Série {html.escape(s['uid'])} ({html.escape(s.get('host', ''))}) : "
        f"<span class=state>{html.escape(_STATES_FR.get(s['state'], s['state']))}</span> "
        f"<span class=count>{s['received']}/{s['expected']}</span> "
        f"<span class=message>{html.escape(s['message'])}</span></li>"
        for s in status["series"])
    link = (f"<p id=open><a id=viewer-link href='{html.escape(status['viewer'])}'>Ouvrir dans "
            "le visualiseur</a></p>" if "viewer" in status else "<p id=open></p>")
    if request.app.state.runtime.settings.export_destination and status["state"] in (
            "retrieving", COMPLETE):
        # Import into the centre's PACS: offered once the retrieval is complete (a partial
        # one is never exported); while it runs, the form waits hidden and the poll shows it.
        from dicomweb.consumer_export import export_form

        hidden = "" if status["state"] == COMPLETE else " hidden"
        link += f"<div id=export{hidden}>{export_form(request, document_uid)}</div>"
    status_url = f"{request_public_url(request)}{STUDIES_PATH}/{document_uid}/status"
    script = (
        "<script>(function(){var url=" + json.dumps(status_url) + ";"
        "var fr=" + json.dumps(_STATES_FR) + ";"
        "function tick(){fetch(url,{credentials:'same-origin'}).then(function(r){return r.json()})"
        ".then(function(s){document.getElementById('retrieval').dataset.state=s.state;"
        "(s.series||[]).forEach(function(x){var li=document.querySelector("
        "'li[data-series=\"'+x.uid+'\"]');if(!li)return;li.dataset.state=x.state;"
        "li.querySelector('.state').textContent=fr[x.state]||x.state;"
        "li.querySelector('.count').textContent=x.received+'/'+x.expected;"
        "li.querySelector('.message').textContent=x.message;});"
        "if(s.viewer){var p=document.getElementById('open');p.innerHTML='';var a="
        "document.createElement('a');a.id='viewer-link';a.href=s.viewer;a.textContent="
        "'Ouvrir dans le visualiseur';p.appendChild(a);}"
        "var ex=document.getElementById('export');if(ex&&s.state==='complete'){ex.hidden=false;}"
        "if(s.state==='retrieving'){setTimeout(tick,1000);}}).catch(function(){"
        "setTimeout(tick,3000);});}"
        "if(document.getElementById('retrieval').dataset.state==='retrieving'){"
        "setTimeout(tick,1000);}})();</script>")
    state_fr = {"retrieving": "Récupération en cours", "complete": "Examen récupéré",
                "partial": "Examen récupéré en partie", "failed": "Échec de la récupération"}
    body = (identity_banner(patient)
            + f"<section id=retrieval data-state='{html.escape(status['state'])}'>"
            f"<h2>{html.escape(state_fr.get(status['state'], status['state']))}</h2>"
            f"<ul class=series>{items}</ul>{link}</section>"
            f"<p><a href='{request_public_url(request)}/consumer'>Retour au patient</a></p>"
            + script)
    return _page("Examen antérieur", body)


def install(app: FastAPI) -> None:
    """The retrieval routes, the retriever and the consumer's DICOMweb (consumer role)."""
    runtime = app.state.runtime
    settings = runtime.settings
    if not hasattr(app.state, "consumer_contexts"):
        app.state.consumer_contexts = ContextStore(runtime.index)
    from datetime import timedelta

    cache = StudyCache(runtime.index, cache_root(settings.data_dir),
                       settings.consumer_cache_max_bytes,
                       timedelta(minutes=settings.consumer_cache_in_use_minutes))
    swept = cache.sweep_interrupted()
    if swept:
        log.warning("consumer: %d retrieval(s) interrupted by the last stop marked failed",
                    swept)
    app.state.consumer_cache = cache
    app.state.consumer_retriever = Retriever(
        runtime.index, cache, SourceClient.from_settings(settings),
        parallel=settings.consumer_retrieve_parallel_series,
        attempts=settings.consumer_retrieve_attempts,
        backoff=settings.consumer_retrieve_backoff_seconds)
    app.include_router(router, tags=["consumer"])
    from dicomweb import consumer_dicomweb

    app.include_router(consumer_dicomweb.router, tags=["consumer"])
