"""Viewer login with Pro Santé Connect (R15): the HTTP routes.

* ``GET /auth/login?next=/viewer…``: starts a login (state, nonce, PKCE verifier kept
  server-side, bound to this browser by the ``drimbox-login`` cookie) and redirects to PSC.
* ``GET /auth/callback``: PSC's answer. The state must be this browser's; the code is
  exchanged, the ID token and userinfo checked (:mod:`adapters.psc.login`). A session is
  opened (``drimbox-session`` cookie); with several activities the practitioner picks one.
* ``GET /auth/activity``, ``POST /auth/activity``: the activity choice (a server page). With
  several activities, a pre-selector (``app.state.activity_preselectors``; the consumer's
  ``Situation``, R13) may name one at the callback: it is chosen and the page skipped (it
  stays reachable to change it).
* ``GET /auth/logout``: a confirmation page whose form posts the logout with the session's
  anti-CSRF token (:func:`dicomweb.session_cookies.form_token`); ``POST /auth/logout`` with
  that token deletes the session row, clears the cookie and sends the browser to PSC's
  ``end_session_endpoint`` when PSC advertises one, then to ``/auth/logged-out``. A POST with a
  live session and no or a wrong token is 403 and the session stays.

Every decision is appended to the audit trail (actions ``login``, ``activity``, ``logout``).
Failures answer a short French page with 400 (bad request, no login under way) or 401
(PSC refused or its answer failed a check); the reason code goes to the audit, not the page.
Failures are counted per client address (:class:`gateway.access.throttle.FailureThrottle`):
at ``login_max_failures_per_address`` within ``failure_window_minutes`` the address gets 429
with ``Retry-After`` on ``/auth/login`` and ``/auth/callback`` for ``failure_lock_minutes``
(audited ``rate_limited``).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from adapters.psc.login import LoginFailed, PscRelyingParty
from dicomweb.deps import psc_client_auth
from dicomweb.session_cookies import (
    LOGIN,
    SESSION,
    clear_cookie,
    form_token,
    form_token_ok,
    read_cookie,
    sessions,
    set_cookie,
)
from dicomweb.urls import client_address, request_public_url
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.access.sessions import PENDING_LOGIN_SECONDS, Activity
from gateway.access.throttle import FailureThrottle

router = APIRouter()

DEFAULT_NEXT = "/viewer"
LOGOUT_FORM = "logout"


def safe_next(value: str | None) -> str:
    """A local path to return to after login (never another site: ``//host``, ``/\\host``)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return DEFAULT_NEXT
    if any(c in value for c in "\r\n"):
        return DEFAULT_NEXT
    return value


def login_redirect(request: Request) -> RedirectResponse:
    """Where a page needing a login sends the browser (``/viewer`` without a session)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    base = request_public_url(request)
    return RedirectResponse(f"{base}/auth/login?next={quote(target, safe='')}", 302)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=fr><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<meta name=viewport content='width=device-width, initial-scale=1'></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                         # Not framed by another site (a click on a hidden logout button).
                         "X-Frame-Options": "DENY",
                         "Content-Security-Policy": "frame-ancestors 'none'"})


def _rp(request: Request) -> PscRelyingParty | None:
    return getattr(request.app.state, "psc_login", None)


def _audit(request: Request, subject: str, action: str, outcome: str, reason: str = "",
           activity: str | None = None) -> None:
    runtime = request.app.state.runtime
    principal = Principal(kind="practitioner", subject=subject or "unknown", activity=activity,
                          via="psc-login")
    record_access(runtime.index, AccessRecord(principal, action, outcome, reason,
                                              client_address=client_address(request)))


def too_many(request: Request, throttle: FailureThrottle | None, action: str,
             page: Callable[[str, str, int], Response]) -> Response | None:
    """429 with ``Retry-After`` (audited ``rate_limited``) while the client's address is
    locked out by ``throttle``; None otherwise."""
    if throttle is None:
        return None
    left = throttle.locked(client_address(request))
    if not left:
        return None
    record_access(request.app.state.runtime.index, AccessRecord(
        Principal(kind="anonymous", subject="anonymous", via="rate-limit"), action, DENIED,
        "rate_limited", client_address=client_address(request)))
    response = page("Trop de tentatives",
                    "<p>Trop de tentatives ont échoué depuis cette adresse. Réessayez dans "
                    f"{max(1, round(left / 60))} minute(s).</p>", 429)
    response.headers["Retry-After"] = str(max(1, int(left + 0.999)))
    return response


def _failed(request: Request, reason: str, status: int = 401, subject: str = "") -> Response:
    _audit(request, subject, "login", DENIED, reason)
    throttle = getattr(request.app.state, "login_throttle", None)
    if throttle is not None:
        throttle.failure(client_address(request))
    response = _page("Connexion impossible",
                     "<p>La connexion avec Pro Santé Connect a échoué.</p>"
                     f"<p><a href='/auth/login'>Réessayer</a></p>", status)
    clear_cookie(response, request.app.state.runtime.settings, LOGIN)
    return response


_NOT_CONFIGURED = (
    "<p>Pro Santé Connect n'est pas configuré (réglages <code>psc_issuer</code>, "
    "<code>psc_client_id</code> : docs/access.md).</p>"
    "<p>Pour essayer sur ce poste : <code>make sandbox</code> démarre la chaîne complète "
    "avec un simulateur de Pro Santé Connect ; ou <code>DRIMBOX_CONSOLE_AUTH=none "
    "DRIMBOX_DICOMWEB_AUTH=none make run</code> ouvre la console et le visualiseur sans "
    "connexion, en boucle locale seulement.</p>")
"""What a login page says when PSC is not configured (a first ``make run``): how to go on."""


@router.get("/auth/login", include_in_schema=False)
def login(request: Request, next: str | None = None) -> Response:  # noqa: A002 - query name
    if (locked := too_many(request, request.app.state.login_throttle, "login", _page)):
        return locked
    rp = _rp(request)
    if rp is None:
        return _page("Connexion indisponible", _NOT_CONFIGURED, 404)
    state, nonce, verifier = rp.new_secrets()
    try:
        url = rp.authorization_url(state, nonce, verifier)
    except LoginFailed as exc:
        _audit(request, "", "login", DENIED, exc.reason)
        return _page("Connexion indisponible",
                     "<p>Pro Santé Connect ne répond pas. Réessayez plus tard.</p>", 502)
    raw = sessions(request).start_login(state, nonce, verifier, safe_next(next))
    response = RedirectResponse(url, 302)
    set_cookie(response, request.app.state.runtime.settings, LOGIN, raw,
               timedelta(seconds=PENDING_LOGIN_SECONDS))
    return response


@router.get("/auth/callback", include_in_schema=False)
def callback(request: Request, code: str | None = None, state: str | None = None,
             error: str | None = None) -> Response:
    if (locked := too_many(request, request.app.state.login_throttle, "login", _page)):
        return locked
    rp = _rp(request)
    if rp is None:
        return _page("Connexion indisponible", "<p>Pro Santé Connect n'est pas configuré.</p>",
                     404)
    pending = sessions(request).take_login(read_cookie(request, LOGIN))
    if pending is None:
        return _failed(request, "no_login_under_way", 400)
    if not state or state != pending.state:
        return _failed(request, "state_mismatch", 400)
    if error:
        return _failed(request, "psc_" + error[:40])
    if not code:
        return _failed(request, "no_code", 400)
    try:
        result = rp.complete(code, pending.code_verifier, pending.nonce)
    except LoginFailed as exc:
        return _failed(request, exc.reason)
    if not result.activities:
        return _failed(request, "no_activity", 403, result.subject_name_id)
    settings = request.app.state.runtime.settings
    chosen = result.activities[0].id if len(result.activities) == 1 else ""
    preselected = "" if chosen else _preselected(request, result.activities)
    chosen = chosen or preselected
    raw = sessions(request).create("practitioner", result.subject_name_id, activity=chosen,
                                   activities=result.activities, id_token=result.id_token,
                                   access_token=result.access_token)
    _audit(request, result.subject_name_id, "login", ALLOWED, activity=chosen or None,
           reason="activity_preselected" if preselected else
           "" if chosen else "activity_to_choose")
    base = request_public_url(request)
    target = pending.return_to if chosen else f"/auth/activity?next={quote(pending.return_to)}"
    response = RedirectResponse(base + target, 303)
    clear_cookie(response, settings, LOGIN)
    set_cookie(response, settings, SESSION, raw,
               timedelta(hours=settings.viewer_session_hours))
    return response


def _preselected(request: Request, activities: tuple[Activity, ...]) -> str:
    """The activity a pre-selector names for this browser (the consumer's ``Situation``, R13):
    the callables in ``app.state.activity_preselectors`` are asked in order; an answer that is
    not one of the practitioner's activities is ignored. '' when none applies."""
    ids = {a.id for a in activities}
    for preselect in getattr(request.app.state, "activity_preselectors", ()):
        chosen = preselect(request)
        if chosen and chosen in ids:
            return chosen
    return ""


@router.get("/auth/activity", include_in_schema=False)
def activity_page(request: Request, next: str | None = None) -> Response:  # noqa: A002
    info = sessions(request).find(read_cookie(request, SESSION))
    if info is None or info.kind != "practitioner":
        return RedirectResponse(f"{request_public_url(request)}/auth/login?next="
                                f"{quote(safe_next(next), safe='')}", 302)
    nxt = html.escape(safe_next(next))
    buttons = "".join(
        "<li><form method=post action='/auth/activity'>"
        f"<input type=hidden name=next value='{nxt}'>"
        f"<button name=activity value='{html.escape(a.id)}' id='activity-{html.escape(a.id)}'>"
        f"{html.escape(a.label)}</button></form></li>"
        for a in info.activities
    )
    return _page("Choisissez votre activité",
                 "<p>Sous quelle activité consultez-vous les examens ?</p>"
                 f"<ul>{buttons}</ul>")


@router.post("/auth/activity", include_in_schema=False)
def choose_activity(request: Request, activity: str = Form(...),
                    next: str = Form(DEFAULT_NEXT)) -> Response:  # noqa: A002
    raw = read_cookie(request, SESSION)
    info = sessions(request).find(raw)
    if info is None or info.kind != "practitioner":
        return RedirectResponse(request_public_url(request) + "/auth/login", 303)
    chosen = sessions(request).choose_activity(raw, activity)
    if chosen is None:
        _audit(request, info.subject, "activity", DENIED, "unknown_activity")
        return _page("Activité inconnue", "<p>Cette activité n'est pas la vôtre.</p>", 400)
    _audit(request, info.subject, "activity", ALLOWED, activity=chosen.id)
    return RedirectResponse(request_public_url(request) + safe_next(next), 303)


@router.get("/auth/logout", include_in_schema=False)
def logout_page(request: Request) -> Response:
    """A confirmation page whose form posts the logout. A link or an image on another site can
    only reach this GET, which changes nothing."""
    raw = read_cookie(request, SESSION)
    info = sessions(request).find(raw)
    if info is None or info.kind != "practitioner":
        return RedirectResponse(request_public_url(request) + "/auth/logged-out", 303)
    token = html.escape(form_token(raw, LOGOUT_FORM))
    return _page("Se déconnecter",
                 "<p>Terminer votre session du visualiseur (et votre session Pro Santé "
                 "Connect) ?</p>"
                 "<form method=post action='/auth/logout'>"
                 f"<input type=hidden name=csrf value='{token}'>"
                 "<button id=logout>Se déconnecter</button></form>"
                 "<p><a href='/viewer' id=stay>Revenir au visualiseur</a></p>")


@router.post("/auth/logout", include_in_schema=False)
async def logout(request: Request, csrf: str = Form("")) -> Response:
    """The logout itself: only with the session's form token (``csrf``), so that a third-party
    page cannot end a session (besides SameSite=Lax keeping the cookie off cross-site POSTs).
    Without a live session there is nothing to end: straight to the logged-out page."""
    settings = request.app.state.runtime.settings
    raw = read_cookie(request, SESSION)
    target = request_public_url(request) + "/auth/logged-out"
    current = await run_in_threadpool(sessions(request).find, raw)
    if current is not None and not form_token_ok(raw, LOGOUT_FORM, csrf):
        await run_in_threadpool(_audit, request, current.subject, "logout", DENIED,
                                "csrf_token_mismatch", current.activity or None)
        return _page("Déconnexion refusée",
                     "<p>La demande de déconnexion ne vient pas de cette application.</p>"
                     "<p><a href='/auth/logout'>Se déconnecter</a></p>", 403)
    info = await run_in_threadpool(sessions(request).end, raw) if current is not None else None
    if info is not None:
        await run_in_threadpool(_audit, request, info.subject, "logout", ALLOWED, "",
                                info.activity or None)
        rp = _rp(request)
        if rp is not None:
            end = await run_in_threadpool(rp.end_session_url, info.id_token, target)
            target = end or target
    response = RedirectResponse(target, 303)
    clear_cookie(response, settings, SESSION)
    return response


@router.get("/auth/logged-out", include_in_schema=False)
def logged_out() -> Response:
    return _page("Vous êtes déconnecté",
                 "<p>Votre session du visualiseur est terminée.</p>"
                 "<p><a href='/viewer' id=login-again>Se reconnecter</a></p>")


def install(app: FastAPI) -> None:
    """Mount the login routes; with ``dicomweb_auth = psc``, the PSC relying party."""
    settings = app.state.runtime.settings
    app.state.login_throttle = FailureThrottle(settings.login_max_failures_per_address,
                                               settings.failure_window_minutes * 60,
                                               settings.failure_lock_minutes * 60)
    app.include_router(router, tags=["login"])
    if settings.psc_issuer and settings.psc_client_id:
        app.state.psc_login = PscRelyingParty(
            settings.psc_issuer, settings.psc_discovery_path, psc_client_auth(app),
            settings.effective_public_url + "/auth/callback",
        )


def activity_redirect(request: Request) -> RedirectResponse | None:
    """To the activity choice, when this browser's session still needs one."""
    info = sessions(request).find(read_cookie(request, SESSION))
    if info is None or not info.needs_activity:
        return None
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{request_public_url(request)}/auth/activity?next="
                            f"{quote(target, safe='')}", 302)
