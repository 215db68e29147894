"""The consumer DRIMbox's HTTP face (R13, R14, R15; SPEC 1.3 flow B), mounted only when the
``roles`` setting includes ``consumer`` (404 otherwise).

* ``POST /consumer/context``: the *appel contextuel*. Form-urlencoded, exactly the parameters
  of :mod:`gateway.consumer.context` (case-sensitive). 303 to ``/consumer`` when they are
  right; 400 with a page naming each missing, unknown, repeated, empty or malformed parameter
  otherwise (415 for another content type, 413 above 16 KiB). The context is kept
  server-side (:class:`gateway.consumer.contexts.ContextStore`), bound to the browser by the
  short-lived ``drimbox-context`` cookie; no trait ever travels in a URL.
* ``GET /consumer``: the consumer page. Without a PSC session, to the PSC login (the viewer's
  flow, ``/auth/login?next=/consumer``) and back. With one, a pending context is claimed for
  the session (``Situation``, when it names one of the practitioner's activities, selects it;
  it also pre-selects it at the login's callback); then the identity banner (R14,
  :mod:`dicomweb.consumer_banner`), or, with no context, the search form, which posts the same
  parameters to the same endpoint (for a clinician whose software sends no appel contextuel).

Cross-site requests, by design. The appel contextuel comes from another origin (the LPS, or a
local page it opens), so it can carry no anti-CSRF token and no SameSite=Lax cookie. Any site
can therefore make a browser post a context. What that allows: replacing the patient the
browser's next consumer page shows. What it does not: the POST's answer is a redirect that
reveals nothing; the page needs the practitioner's own PSC login; the context only names a
patient, it carries no access right (the DMP search, later, is made with the practitioner's
own identity and its own checks); and the banner always shows the strict INS traits the
clinician must check against the patient in front of them (identitovigilance). Both routes
are audited: ``consumer_context`` (each context received, allowed or refused, with the
refused parameter names) and ``consumer_view`` (each page view); rows carry the INS matricule
at most, never the names or the birth date.
"""

from __future__ import annotations

import html
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from dicomweb.consumer_banner import PAGE_HEADERS, identity_banner, render_page
from dicomweb.consumer_priors import PRIORS_CSS, install_dmp, priors_section
from dicomweb.login import activity_redirect, login_redirect
from dicomweb.session_cookies import (
    SESSION,
    clear_cookie,
    read_cookie,
    sessions,
    set_cookie,
)
from dicomweb.urls import client_address, request_public_url
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.access.sessions import SessionInfo
from gateway.consumer import context as ctx
from gateway.consumer.contexts import (
    PENDING_CONTEXT_SECONDS,
    SOURCE_APPEL,
    SOURCE_FORM,
    ContextStore,
    CurrentContext,
)
from gateway.consumer.xdm_inbox import InboxItem, XdmInbox

router = APIRouter()

PAGE_PATH = "/consumer"
CONTEXT_PATH = "/consumer/context"
CONTEXT_COOKIE = "drimbox-context"
MAX_BODY = 16 * 1024
ACTION_CONTEXT = "consumer_context"
ACTION_VIEW = "consumer_view"
_HEADERS = PAGE_HEADERS
XDM_PATH = "/consumer/xdm"
"""The XDM upload (R23, :mod:`dicomweb.consumer_xdm`)."""
XDM_FIELD = "archive"


XDM_INBOX_PATH = XDM_PATH + "/inbox"
"""``/{KOS uniqueId}``: follow an archive of the XDM inbox (``drimbox xdm import``)."""


def xdm_form(base: str, inbox: list[InboxItem] | None = None) -> str:
    """The XDM part of the consumer page: the patient's archives of the XDM inbox, each with
    its button, and the upload form."""
    e = html.escape
    listed = "".join(
        f"<li class=xdm-archive data-kos='{e(i.kos_uid)}'>Examen {e(i.study_uid)} "
        f"(archive {e(i.filename)}, reçue le {e(i.received_at[:10])}"
        f"{', signée par ' + e(i.signer) if i.signer else ''})"
        f"<form method=post action='{e(base)}{XDM_INBOX_PATH}/{e(i.kos_uid)}'>"
        "<button>Récupérer les images</button></form></li>" for i in inbox or [])
    inbox_part = (f"<section id=xdm-inbox><h2>Archives IHE XDM reçues</h2><ul>{listed}</ul>"
                  "</section>" if listed else "")
    return (inbox_part
            + "<details id=xdm-import><summary>Importer une archive IHE XDM (reçue par "
            "messagerie sécurisée, sur un support)</summary>"
            f"<form id=xdm-form method=post enctype='multipart/form-data' "
            f"action='{e(base)}{XDM_PATH}'>"
            f"<p><input type=file name={XDM_FIELD} accept='.zip,application/zip' required></p>"
            "<button id=xdm-submit>Importer</button></form></details>")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return render_page(title, body, status, PRIORS_CSS)


def _store(request: Request) -> ContextStore:
    return request.app.state.consumer_contexts


def _audit(request: Request, principal: Principal, action: str, outcome: str, reason: str = "",
           ins: str = "") -> None:
    record_access(request.app.state.runtime.index, AccessRecord(
        principal, action, outcome, reason[:255], patient_ins=ins,
        client_address=client_address(request)))


def _practitioner(info: SessionInfo, via: str = "session") -> Principal:
    return Principal(kind="practitioner", subject=info.subject, activity=info.activity or None,
                     via=via)


def _sender(request: Request) -> Principal:
    """Who posted a context: the practitioner when the browser sent its session (our own search
    form, same site), else the clinician's software, unproven."""
    info = sessions(request).find(read_cookie(request, SESSION))
    if info is not None and info.kind == "practitioner":
        return _practitioner(info)
    return Principal(kind="anonymous", subject="lps", via="appel-contextuel")


def _refused(request: Request, status: int, problems: list[ctx.Problem]) -> Response:
    names = ", ".join(sorted({p.parameter for p in problems}))
    _audit(request, _sender(request), ACTION_CONTEXT, DENIED,
           "bad_parameters: " + names if status == 400 else names)
    items = "".join(
        f"<li data-parameter='{html.escape(p.parameter)}' data-problem='{p.kind}'>"
        f"<code>{html.escape(p.parameter)}</code> : {html.escape(_KIND_FR.get(p.kind, p.kind))}"
        + (f" ({html.escape(p.rule)})" if p.rule else "") + "</li>"
        for p in problems)
    return _page("Appel contextuel refusé",
                 "<p>Paramètres de l'appel contextuel incorrects :</p>"
                 f"<ul id=problems>{items}</ul>", status)


_KIND_FR = {"missing": "manquant", "unknown": "inconnu", "repeated": "répété",
            "empty": "vide", "malformed": "mal formé"}


@router.post(CONTEXT_PATH, include_in_schema=False)
async def appel_contextuel(request: Request) -> Response:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return await run_in_threadpool(_refused, request, 415, [ctx.Problem(
            "Content-Type", "malformed", "application/x-www-form-urlencoded")])
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return await run_in_threadpool(_refused, request, 413, [ctx.Problem(
                "body", "malformed", f"at most {MAX_BODY} bytes")])
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, encoding="utf-8",
                          errors="strict")
    except UnicodeDecodeError:
        return await run_in_threadpool(_refused, request, 400, [ctx.Problem(
            "body", "malformed", "percent-encoded UTF-8")])
    return await run_in_threadpool(_accept, request, pairs)


def _accept(request: Request, pairs: list[tuple[str, str]]) -> Response:
    try:
        patient = ctx.parse(pairs)
    except ctx.ContextRefused as exc:
        return _refused(request, 400, exc.problems)
    same_site = request.headers.get("sec-fetch-site") == "same-origin" or (
        request.headers.get("origin", "") == _origin(request_public_url(request)))
    source = SOURCE_FORM if same_site else SOURCE_APPEL
    raw = _store(request).put_pending(patient, source)
    _audit(request, _sender(request), ACTION_CONTEXT, ALLOWED, source, patient.ins)
    response = RedirectResponse(request_public_url(request) + PAGE_PATH, 303)
    set_cookie(response, request.app.state.runtime.settings, CONTEXT_COOKIE, raw,
               timedelta(seconds=PENDING_CONTEXT_SECONDS))
    return response


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@router.get(PAGE_PATH, include_in_schema=False)
def consumer_page(request: Request) -> Response:
    if getattr(request.app.state, "psc_login", None) is None:
        return _page("Connexion indisponible",
                     "<p>Pro Santé Connect n'est pas configuré (DRIMBOX_PSC_ISSUER).</p>", 503)
    settings = request.app.state.runtime.settings
    raw = read_cookie(request, SESSION)
    info = sessions(request).find(raw)
    if info is None or info.kind != "practitioner":
        return login_redirect(request)
    pending = read_cookie(request, CONTEXT_COOKIE)
    claimed = None
    if pending:
        claimed = _store(request).claim(pending, raw, info.expires_at)
        if claimed is not None:
            info = _apply_situation(request, raw, info, claimed)
    if info.needs_activity:
        response = activity_redirect(request) or login_redirect(request)
    else:
        response = _render(request, info, claimed or _store(request).current(raw))
    if pending:
        clear_cookie(response, settings, CONTEXT_COOKIE)
    return response


def _apply_situation(request: Request, raw: str, info: SessionInfo,
                     claimed: CurrentContext) -> SessionInfo:
    """R13/R15: ``Situation`` selects the practitioner's activity when it names one of theirs."""
    wanted = claimed.patient.situation
    if not wanted or wanted == info.activity or wanted not in {a.id for a in info.activities}:
        return info
    chosen = sessions(request).choose_activity(raw, wanted)
    if chosen is None:
        return info
    _audit(request, _practitioner(info), "activity", ALLOWED, "situation")
    return sessions(request).find(raw) or info


def _render(request: Request, info: SessionInfo, current: CurrentContext | None) -> Response:
    base = request_public_url(request)
    label = next((a.label for a in info.activities if a.id == info.activity), info.activity)
    header = ("<p id=practitioner>Activité : <span id=activity "
              f"data-activity='{html.escape(info.activity)}'>{html.escape(label)}</span>"
              + (f" - <a href='{base}/auth/activity?next={PAGE_PATH}'>changer</a>"
                 if len(info.activities) > 1 else "")
              + f" - <a href='{base}/auth/logout'>se déconnecter</a></p>")
    principal = _practitioner(info)
    if current is None:
        _audit(request, principal, ACTION_VIEW, ALLOWED, "search_form")
        return _page("Rechercher un patient", header + _search_form(base, info))
    patient = current.patient
    _audit(request, principal, ACTION_VIEW, ALLOWED, "context", patient.ins)
    consent = ("" if patient.consent else
               "<p id=no-consent role=alert>Le patient n'a pas consenti à la consultation "
               "(InformationEtConsentement = false) : aucune recherche ne sera faite.</p>")
    return _page("Examens du patient",
                 header + identity_banner(patient) + consent
                 + priors_section(request, info, patient, principal)
                 + (xdm_form(base, XdmInbox(request.app.state.runtime.settings.data_dir)
                             .for_patient(patient.ins, patient.ins_oid))
                    if patient.consent else "")
                 + "<details id=other-patient><summary>Autre patient</summary>"
                 + _search_form(base, info) + "</details>")


def _search_form(base: str, info: SessionInfo) -> str:
    """The appel contextuel's parameters, typed by the clinician (same names, same endpoint)."""
    def field(name: str, label: str, extra: str = "") -> str:
        return (f"<p><label>{html.escape(label)} <input name='{name}' required {extra}>"
                "</label></p>")

    situations = "".join(f"<option value='{html.escape(a.id)}'>{html.escape(a.label)}</option>"
                         for a in info.activities)
    return (
        f"<form id=search method=post action='{base}{CONTEXT_PATH}'>"
        + field(ctx.INS_VALUE, "Matricule INS", "maxlength=15 pattern='[0-9]{5}([0-9]{2}|2A|2B)"
                "[0-9]{8}'")
        + "<p><label>Nature du matricule <select name='Patient.identifier.system'>"
        "<option value='1.2.250.1.213.1.4.8'>INS-NIR</option>"
        "<option value='1.2.250.1.213.1.4.9'>INS-NIA</option>"
        "<option value='1.2.250.1.213.1.4.10'>INS-NIR de test</option>"
        "<option value='1.2.250.1.213.1.4.11'>INS-NIR de démonstration</option>"
        "</select></label></p>"
        + field(ctx.FAMILY, "Nom de naissance", "maxlength=100")
        + field(ctx.GIVEN, "Prénoms de naissance", "maxlength=200")
        + "<p><label>Sexe <select name='Patient.gender'><option value=female>Féminin</option>"
        "<option value=male>Masculin</option><option value=other>Indéterminé</option>"
        "</select></label></p>"
        + field(ctx.BIRTH_DATE, "Date de naissance", "type=date")
        + field(ctx.BIRTHPLACE, "Lieu de naissance (code INSEE)", "maxlength=5")
        + field(ctx.PATIENT_ID, "IPP", "maxlength=64")
        + field(ctx.PATIENT_ID_ISSUER, "Émetteur de l'IPP", "maxlength=255")
        + "<p><label>Le patient a été informé et consent <select "
        "name='InformationEtConsentement'><option value=true>oui</option>"
        "<option value=false>non</option></select></label></p>"
        + "<p><label>Activité <select name=Situation><option value=''>(actuelle)</option>"
        f"{situations}</select></label></p>"
        "<button id=search-submit>Rechercher</button></form>")


def _situation_of(request: Request) -> str:
    """Pre-selector for the login's callback (:func:`dicomweb.login._preselected`)."""
    patient = _store(request).pending(read_cookie(request, CONTEXT_COOKIE))
    return patient.situation if patient is not None else ""


def install(app: FastAPI) -> None:
    """Mount the consumer routes and the ``Situation`` pre-selector (consumer role only)."""
    app.state.consumer_contexts = ContextStore(app.state.runtime.index)
    install_dmp(app)
    app.include_router(router, tags=["consumer"])
    preselectors = getattr(app.state, "activity_preselectors", None)
    if preselectors is None:
        preselectors = app.state.activity_preselectors = []
    preselectors.append(_situation_of)
