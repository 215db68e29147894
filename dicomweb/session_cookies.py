"""The viewer's cookies and the principals they prove (R15).

Three cookies, all HttpOnly, SameSite=Lax, path ``/``, and Secure with the ``__Host-``
prefix unless the public URL is plain-http loopback (development):

* ``drimbox-session``: a PSC login's session (:class:`gateway.access.sessions.SessionStore`);
* ``drimbox-share``: a share link's session, limited to one study;
* ``drimbox-login``: a login under way (state, nonce and PKCE verifier stay server-side).

:func:`session_principal` and :func:`share_principal` are registered in
``app.state.principal_resolvers`` (the seam of :mod:`dicomweb.deps`): each returns a
:class:`~gateway.access.principal.Principal` or None. The cookie value is a random id; the browser
never holds a PSC token.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from gateway.access.policy import ROLE_VIEWER
from gateway.access.principal import Principal
from gateway.access.sessions import SessionStore
from gateway.access.share_links import ShareLinks
from gateway.config import Settings

SESSION = "drimbox-session"
SHARE = "drimbox-share"
LOGIN = "drimbox-login"


def cookie_name(settings: Settings, base: str) -> str:
    return f"__Host-{base}" if settings.cookies_secure else base


def set_cookie(response: Response, settings: Settings, base: str, value: str,
               max_age: timedelta) -> None:
    response.set_cookie(cookie_name(settings, base), value,
                        max_age=int(max_age.total_seconds()), path="/",
                        secure=settings.cookies_secure, httponly=True, samesite="lax")


def clear_cookie(response: Response, settings: Settings, base: str) -> None:
    response.delete_cookie(cookie_name(settings, base), path="/",
                           secure=settings.cookies_secure, httponly=True, samesite="lax")


def read_cookie(request: Request, base: str) -> str:
    return request.cookies.get(cookie_name(request.app.state.runtime.settings, base), "")


def form_token(raw: str, purpose: str) -> str:
    """The anti-CSRF token of a form posted by this browser's session (``purpose`` names the
    form, e.g. ``logout``): derived from the cookie's random value, which a third-party page can
    neither read (HttpOnly) nor send along a cross-site POST (SameSite=Lax). It differs from
    the index key (the plain SHA-256 of the value), so reading the index reveals no token."""
    return hashlib.sha256(f"drimbox-form\0{purpose}\0{raw}".encode()).hexdigest()


def form_token_ok(raw: str, purpose: str, sent: str) -> bool:
    return bool(raw) and secrets.compare_digest(form_token(raw, purpose), sent or "")


def sessions(request: Request) -> SessionStore:
    return request.app.state.viewer_sessions


def share_links(request: Request) -> ShareLinks:
    return request.app.state.share_links


def roles_of(settings: Settings, subject_name_id: str) -> frozenset[str]:
    return frozenset(settings.staff_roles.get(subject_name_id, ()))


async def session_principal(request: Request) -> Principal | None:
    """A practitioner logged in with PSC who has chosen an activity."""
    raw = read_cookie(request, SESSION)
    if not raw:
        return None
    info = await run_in_threadpool(sessions(request).find, raw)
    if info is None or info.kind != "practitioner" or info.needs_activity:
        return None
    settings = request.app.state.runtime.settings
    roles = roles_of(settings, info.subject)
    # R18: a practitioner who opened a CR's viewer link sees that study, even
    # without the ``viewer`` role; with the role, every study as before.
    granted = info.study_uid if info.study_uid and ROLE_VIEWER not in roles else None
    return Principal(kind="practitioner", subject=info.subject, roles=roles,
                     activity=info.activity, via="session", study_uid=granted)


async def share_principal(request: Request) -> Principal | None:
    """A patient who opened a share link: one study, while the link is neither revoked nor
    expired (checked on every request, so revocation takes effect at once)."""
    raw = read_cookie(request, SHARE)
    if not raw:
        return None

    def find() -> Principal | None:
        info = sessions(request).find(raw)
        if info is None or info.kind != "share" or not info.share_link_id:
            return None
        if not share_links(request).is_usable(info.share_link_id):
            return None
        return Principal(kind="share", subject=info.share_link_id, study_uid=info.study_uid,
                         via="share-link")

    return await run_in_threadpool(find)


def install(app) -> None:  # noqa: ANN001 - FastAPI
    """The session store and share links on ``app.state``; both resolvers registered."""
    runtime = app.state.runtime
    settings = runtime.settings
    app.state.viewer_sessions = SessionStore(
        runtime.index, timedelta(hours=settings.viewer_session_hours),
        timedelta(minutes=settings.viewer_session_idle_minutes))
    app.state.share_links = ShareLinks(
        runtime.index, settings.share_max_attempts,
        timedelta(minutes=settings.share_lock_minutes), settings.share_link_max_days)
    resolvers = getattr(app.state, "principal_resolvers", None)
    if resolvers is None:
        resolvers = app.state.principal_resolvers = []
    resolvers.extend([session_principal, share_principal])
