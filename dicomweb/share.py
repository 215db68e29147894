"""Patient share links over HTTP (the domain rules are in
:mod:`gateway.access.share_links`).

Patient side (the token is the secret; pages carry ``Referrer-Policy: no-referrer`` so it
does not leak to other sites):

* ``GET /share/{token}``: asks for the birth date (404 unknown link, 410 expired or revoked,
  429 locked with ``Retry-After``);
* ``POST /share/{token}`` (form ``birth_date``): right date → a share session limited to the
  study (``drimbox-share`` cookie) and 303 to ``/viewer?StudyInstanceUIDs=…``; wrong date →
  403 with the form again; the last allowed wrong date, or any try while locked → 429;
* ``GET /share/{token}/handout``: the printable handout (centre, study date/description, QR).

Staff side (role ``admin``, proven by a principal resolver, e.g. a PSC login listed in
``staff_roles``): ``POST /admin/share-links`` ``{"study_uid": …, "days": N}`` → 201 with the
URL (shown once); ``GET /admin/share-links``; ``DELETE /admin/share-links/{id}`` → 204.
A cookie session can only send these as JSON, which a cross-site form cannot (with
SameSite=Lax this closes CSRF).

Every decision is audited: actions ``share-open`` (reason unknown, expired, revoked, locked,
wrong_birth_date, bad_birth_date, no_birth_date, rate_limited), ``share-create``,
``share-revoke``. Beyond the per-link lock, failures (an unknown link, a wrong birth date) are
counted per client address over every link (``share_max_failures_per_address``): an address
that guesses links or dates is locked out of ``/share`` for ``failure_lock_minutes`` (429 with
``Retry-After``).
"""

from __future__ import annotations

import html
from datetime import timedelta

from anyio.from_thread import run as run_async
from fastapi import APIRouter, FastAPI, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from dicomweb.deps import principal_or_none
from dicomweb.login import too_many
from dicomweb.session_cookies import SHARE, sessions, set_cookie, share_links
from dicomweb.urls import client_address, request_public_url
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.handout import handout_html, share_url
from gateway.access.principal import Principal
from gateway.access.share_links import CannotShare, ShareLinkDenied, ShareLinkInfo, ShareLinks
from gateway.access.throttle import FailureThrottle

router = APIRouter()

_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Robots-Tag": "noindex"}
_STATUS = {"unknown": 404, "expired": 410, "revoked": 410, "locked": 429,
           "wrong_birth_date": 403, "bad_birth_date": 400, "no_birth_date": 403}
_MESSAGES = {
    "unknown": "Ce lien n'existe pas. Vérifiez l'adresse.",
    "expired": "Ce lien a expiré. Demandez un nouveau lien au centre d'imagerie.",
    "revoked": "Ce lien a été désactivé par le centre d'imagerie.",
    "locked": "Trop d'erreurs de date de naissance : le lien est bloqué pour un moment.",
    "wrong_birth_date": "La date de naissance ne correspond pas.",
    "bad_birth_date": "Saisissez une date de naissance (JJ/MM/AAAA).",
    "no_birth_date": "Ce lien ne peut pas être ouvert. Contactez le centre d'imagerie.",
}


def _page(title: str, body: str, status: int = 200, headers: dict | None = None) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=fr><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>",
        status, headers={**_HEADERS, **(headers or {})})


def _client(request: Request) -> str:
    return client_address(request)


def _locked_out(request: Request) -> Response | None:
    return too_many(request, request.app.state.share_throttle, "share-open",
                    lambda title, body, status: _page(title, body, status))


def _audit(request: Request, action: str, outcome: str, reason: str, link_id: str,
           study_uid: str, principal: Principal | None = None) -> None:
    principal = principal or Principal(kind="share", subject=link_id or "unknown",
                                       study_uid=study_uid or None, via="share-link")
    record_access(request.app.state.runtime.index, AccessRecord(
        principal, action, outcome, reason, study_uid=study_uid,
        client_address=_client(request)))


def _form(token: str, message: str = "") -> str:
    note = f"<p id=message role=alert>{html.escape(message)}</p>" if message else ""
    return (
        f"{note}<form method=post action='/share/{html.escape(token)}'>"
        "<label for=birth_date>Votre date de naissance</label> "
        "<input type=date id=birth_date name=birth_date required> "
        "<button type=submit id=open>Voir mes images</button></form>"
    )


def _denied(request: Request, exc: ShareLinkDenied, token: str) -> HTMLResponse:
    _audit(request, "share-open", DENIED, exc.reason, exc.link_id, exc.study_uid)
    if exc.reason in ("unknown", "wrong_birth_date"):
        request.app.state.share_throttle.failure(_client(request))
    status = _STATUS[exc.reason]
    headers = {"Retry-After": str(exc.retry_after)} if exc.reason == "locked" else {}
    message = _MESSAGES[exc.reason]
    if exc.reason in ("wrong_birth_date", "bad_birth_date"):
        if exc.attempts_left:
            message += f" Essais restants : {exc.attempts_left}."
        return _page("Vos images médicales", _form(token, message), status, headers)
    return _page("Vos images médicales", f"<p id=message role=alert>{message}</p>", status,
                 headers)


@router.get("/share/{token}", include_in_schema=False)
def share_open_form(token: str, request: Request) -> Response:
    if (locked := _locked_out(request)) is not None:
        return locked
    try:
        share_links(request).lookup(token)
    except ShareLinkDenied as exc:
        return _denied(request, exc, token)
    return _page("Vos images médicales", _form(token))


@router.post("/share/{token}", include_in_schema=False)
def share_open(token: str, request: Request, birth_date: str = Form("")) -> Response:
    if (locked := _locked_out(request)) is not None:
        return locked
    try:
        link = share_links(request).check_birth_date(token, birth_date)
    except ShareLinkDenied as exc:
        return _denied(request, exc, token)
    settings = request.app.state.runtime.settings
    left = link.expires_at - share_links(request).now()
    lifetime = min(timedelta(hours=settings.viewer_session_hours), left)
    raw = sessions(request).create("share", link.id, study_uid=link.study_uid,
                                   share_link_id=link.id, lifetime=lifetime)
    _audit(request, "share-open", ALLOWED, "", link.id, link.study_uid)
    base = request_public_url(request)
    response = RedirectResponse(f"{base}/viewer?StudyInstanceUIDs={link.study_uid}", 303,
                                headers=_HEADERS)
    set_cookie(response, settings, SHARE, raw, lifetime)
    return response


@router.get("/share/{token}/handout", include_in_schema=False)
def share_handout(token: str, request: Request) -> Response:
    links = share_links(request)
    try:
        link = links.lookup(token)
    except ShareLinkDenied as exc:
        if exc.reason != "locked":  # a locked link's handout is still the patient's paper
            return _denied(request, exc, token)
        link = links.get(exc.link_id)
        assert link is not None
    settings = request.app.state.runtime.settings
    page = handout_html(settings.institution_name, links.summary(link.study_uid),
                        share_url(request_public_url(request), token),
                        f"{link.expires_at:%d/%m/%Y}", settings.share_max_attempts,
                        settings.share_lock_minutes)
    return HTMLResponse(page, headers=_HEADERS)


# -- staff ------------------------------------------------------------------------------------


class NewLinkRequest(BaseModel):
    study_uid: str = Field(min_length=1, max_length=64)
    days: int | None = Field(default=None, ge=1)


def _link_json(link: ShareLinkInfo, now) -> dict:  # noqa: ANN001
    return {"id": link.id, "study_uid": link.study_uid,
            "created_at": link.created_at.isoformat(), "created_by": link.created_by,
            "expires_at": link.expires_at.isoformat(),
            "revoked_at": link.revoked_at.isoformat() if link.revoked_at else None,
            "status": link.status(now)}


def _admin(request: Request) -> Principal:
    """The caller, when it has the ``admin`` role (routes run in a worker thread)."""
    principal = run_async(principal_or_none, request)
    if principal is None:
        raise HTTPException(401, "authentication required",
                            headers={"WWW-Authenticate": 'Bearer realm="drimbox"'})
    if "admin" not in principal.roles:
        raise HTTPException(403, "the admin role is required")
    return principal


@router.post("/admin/share-links", tags=["admin"], status_code=201)
def create_share_link(body: NewLinkRequest, request: Request) -> JSONResponse:
    """Make a share link for a study (role admin). The URL is in this answer only."""
    admin = _admin(request)
    settings = request.app.state.runtime.settings
    links: ShareLinks = share_links(request)
    try:
        new = links.create(body.study_uid, body.days or settings.share_link_days, admin.subject)
    except CannotShare as exc:
        _audit(request, "share-create", DENIED, str(exc)[:60], "", body.study_uid, admin)
        raise HTTPException(422, str(exc)) from None
    _audit(request, "share-create", ALLOWED, f"link {new.link.id}", new.link.id,
           body.study_uid, admin)
    url = share_url(request_public_url(request), new.token)
    return JSONResponse({**_link_json(new.link, links.now()), "url": url,
                         "handout_url": url + "/handout"}, 201,
                        headers={"Cache-Control": "no-store"})


@router.get("/admin/share-links", tags=["admin"])
def list_share_links(request: Request, study_uid: str | None = None) -> JSONResponse:
    """Share links, newest first (role admin); tokens are never shown again."""
    _admin(request)
    links = share_links(request)
    now = links.now()
    return JSONResponse([_link_json(link, now) for link in links.list(study_uid)])


@router.delete("/admin/share-links/{link_id}", tags=["admin"], status_code=204)
def revoke_share_link(link_id: str, request: Request) -> Response:
    """Revoke a link (role admin): its sessions end at once."""
    admin = _admin(request)
    link = share_links(request).revoke(link_id)
    if link is None:
        raise HTTPException(404, "no such share link")
    _audit(request, "share-revoke", ALLOWED, f"link {link.id}", link.id, link.study_uid,
           admin)
    return Response(status_code=204)


def install(app: FastAPI) -> None:
    settings = app.state.runtime.settings
    app.state.share_throttle = FailureThrottle(settings.share_max_failures_per_address,
                                               settings.failure_window_minutes * 60,
                                               settings.failure_lock_minutes * 60)
    app.include_router(router)
