"""Who may use the console, and the anti-CSRF token of its forms (R15: staff log in with
Pro Santé Connect; R22: every view and act is in the audit trail).

* A PSC login (the viewer's session, :mod:`dicomweb.session_cookies`) or any principal the
  gateway's resolvers prove (:func:`dicomweb.deps.principal_or_none`) whose roles include
  ``viewer`` (look) or ``admin`` (look and act, :data:`~gateway.access.policy.ROLE_ADMIN`).
* Without one: ``console_auth = psc`` sends the browser to the PSC login (``/auth/login``,
  back here after); ``console_auth = none`` (loopback development only, checked by the
  settings) lets it in as :data:`DEV_STAFF`, an ``admin``.
* A principal with neither role gets the 403 page (audited ``console`` denied).

Forms post a token derived from the browser's session cookie
(:func:`dicomweb.session_cookies.form_token`, purpose ``console``); in development without a
session, from a random ``drimbox-console`` cookie set by the first page.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from dicomweb.console.i18n import COOKIE as LANG_COOKIE
from dicomweb.console.i18n import Words, language
from dicomweb.deps import principal_or_none
from dicomweb.login import activity_redirect, login_redirect
from dicomweb.session_cookies import (
    SESSION,
    cookie_name,
    form_token,
    form_token_ok,
    read_cookie,
    set_cookie,
)
from dicomweb.urls import client_address
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.policy import ROLE_ADMIN, ROLE_VIEWER
from gateway.access.principal import Principal

FORM = "console"
DEV_COOKIE = "drimbox-console"
DEV_STAFF = Principal(kind="staff", subject="console-dev", roles=frozenset({ROLE_ADMIN,
                                                                            ROLE_VIEWER}),
                      via="loopback")
"""The console's user under ``console_auth = none`` (loopback development)."""
ACTION = "console"
"""The audit action of console page views and refusals; acts have their own."""


@dataclass
class Staff:
    principal: Principal
    t: Words
    csrf: str
    new_cookie: str = ""
    """A development cookie to set on the answer (no session yet)."""
    has_session: bool = False

    @property
    def can_act(self) -> bool:
        return ROLE_ADMIN in self.principal.roles

    @property
    def who(self) -> str:
        if self.principal.via == "loopback":
            return f"{self.t('dev_mode')}"
        roles = ", ".join(sorted(self.principal.roles & {ROLE_ADMIN, ROLE_VIEWER}))
        return self.t("signed_in_as", who=self.principal.subject, roles=roles)

    def finish(self, request: Request, response: Response) -> Response:
        """Set the cookies this answer owes the browser (the language, the dev token)."""
        settings = request.app.state.runtime.settings
        if self.new_cookie:
            set_cookie(response, settings, DEV_COOKIE, self.new_cookie, timedelta(hours=12))
        asked = request.query_params.get("lang", "")
        if asked and asked == self.t.lang:
            response.set_cookie(LANG_COOKIE, asked, max_age=365 * 86400, path="/",
                                samesite="lax", secure=settings.cookies_secure)
        return response


def audit(request: Request, principal: Principal, action: str, outcome: str, reason: str,
          study_uid: str = "") -> None:
    record_access(request.app.state.runtime.index, AccessRecord(
        principal, action, outcome, reason[:255], study_uid=study_uid,
        client_address=client_address(request)))


async def staff_or_refusal(request: Request, page: str) -> Staff | Response:
    """The console's user, or the answer that sends them away (login, activity, 403)."""
    from dicomweb.console.layout import page as render

    t = Words(language(request))
    settings = request.app.state.runtime.settings
    principal = await principal_or_none(request)
    raw = read_cookie(request, SESSION)
    if principal is None:
        if raw and (choose := activity_redirect(request)) is not None:
            return choose
        if settings.console_auth != "none":
            return login_redirect(request)
        dev = request.cookies.get(cookie_name(settings, DEV_COOKIE), "")
        new = "" if dev else secrets.token_urlsafe(32)
        return Staff(DEV_STAFF, t, form_token(dev or new, FORM), new_cookie=new)
    if not principal.roles & {ROLE_ADMIN, ROLE_VIEWER}:
        await run_in_threadpool(audit, request, principal, ACTION, DENIED,
                                f"staff_role_required: {page}")
        return render(t, t("forbidden_title"), f"<p id=refusal>{t('forbidden_text')}</p>",
                      current="", who=principal.subject, nav=(), status=403, logout=bool(raw))
    secret = raw or request.cookies.get(cookie_name(settings, DEV_COOKIE), "")
    return Staff(principal, t, form_token(secret, FORM) if secret else "", has_session=bool(raw))


def csrf_ok(request: Request, sent: str) -> bool:
    settings = request.app.state.runtime.settings
    secret = read_cookie(request, SESSION) or request.cookies.get(
        cookie_name(settings, DEV_COOKIE), "")
    return form_token_ok(secret, FORM, sent)


def viewed(request: Request, staff: Staff, what: str, study_uid: str = "") -> None:
    """A page view, in the audit trail (R22: who looked at what)."""
    audit(request, staff.principal, ACTION, ALLOWED, what, study_uid)
