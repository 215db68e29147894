"""The console's actions (POST, role ``admin``): publish, unpublish, share, revoke a share
link, retry an outbox row. Each posts the form's anti-CSRF token
(:func:`dicomweb.console.access.csrf_ok`) and goes through a confirmation page first (the
same form posted again with ``confirm=yes``); each is audited with its outcome (actions
``publish``, ``unpublish``, ``share-create``, ``share-revoke``, ``outbox-retry``).

They call what the CLI calls: :class:`~gateway.publication.workflow.PublicationWorkflow`
(``drimbox publish`` / ``unpublish``), :func:`gateway.index.outbox.retry_now` (``drimbox
outbox retry``), :class:`~gateway.access.share_links.ShareLinks` and
:mod:`gateway.access.handout` (``drimbox share``, ``POST /admin/share-links``).
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request, Response

from dicomweb.console import views
from dicomweb.console.access import Staff, audit, csrf_ok
from dicomweb.console.layout import e, when
from dicomweb.console.pages import render, source_only, staff_for
from dicomweb.session_cookies import share_links
from dicomweb.urls import request_public_url
from gateway.access.audit import ALLOWED, DENIED
from gateway.access.handout import qr_svg, share_url
from gateway.access.share_links import CannotShare
from gateway.index import outbox
from gateway.index.facts import UnknownStudy
from gateway.ingest.uids import is_safe_uid
from gateway.publication.workflow import PublicationWorkflow

router = APIRouter(include_in_schema=False)


def _actor(request: Request, csrf: str, action: str, study_uid: str = "") -> Staff | Response:
    """The admin allowed to act, or the refusal (login, 403 without the role or the token)."""
    staff = staff_for(request, action)
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    if not csrf_ok(request, csrf):
        audit(request, staff.principal, action, DENIED, "csrf_token_mismatch", study_uid)
        return render(request, staff, t("csrf_title"), f"<p id=refusal>{e(t('csrf_text'))}</p>",
                      "", status=403)
    if not staff.can_act:
        audit(request, staff.principal, action, DENIED, "admin_role_required", study_uid)
        return render(request, staff, t("forbidden_title"),
                      f"<p id=refusal>{e(t('admin_only'))}</p>", "", status=403)
    return staff


def _confirm(request: Request, staff: Staff, label: str, path: str, back: str,
             fields: dict[str, str], summary: str) -> Response:
    """The confirmation step: the same form, posted again with ``confirm=yes``."""
    t = staff.t
    hidden = "".join(views.hidden(k, v) for k, v in fields.items())
    body = (f"<p>{summary}</p><p>{e(t('confirm_text'))}</p>"
            f"<form method=post action='{e(path)}'>{views.hidden('csrf', staff.csrf)}{hidden}"
            f"{views.hidden('confirm', 'yes')}<button type=submit id=confirm>{e(t('confirm'))}"
            f"</button> <a href='{e(back)}' id=cancel>{e(t('cancel'))}</a></form>")
    return render(request, staff, t("confirm_title", action=label), body, "")


def _result(request: Request, staff: Staff, ok: bool, message: str, back: str,
            extra: str = "") -> Response:
    t = staff.t
    body = (f"<p id=result class={'ok' if ok else 'bad'} role=status>{e(message)}</p>{extra}"
            f"<p><a href='{e(back)}' id=back>{e(t('back'))}</a></p>")
    return render(request, staff, t("done_title" if ok else "failed_title"), body, "",
                  status=200 if ok else 409)


def _study(uid: str) -> str:
    if not is_safe_uid(uid):
        raise HTTPException(400, "study: not a DICOM UID")
    return uid


def _workflow(request: Request) -> PublicationWorkflow:
    runtime = request.app.state.runtime
    return PublicationWorkflow(runtime.index, runtime.settings)


def _publication_act(request: Request, uid: str, csrf: str, confirm: str, action: str,
                     reason: str = "") -> Response:
    """``publish`` (``drimbox publish``) or ``unpublish`` (``drimbox unpublish``)."""
    source_only(request)
    uid = _study(uid)
    staff = _actor(request, csrf, action, uid)
    if not isinstance(staff, Staff):
        return staff
    t, back = staff.t, views.study_href(uid)
    if confirm != "yes":
        fields = {"reason": reason} if action == "unpublish" else {}
        summary = f"{e(t('study'))} <code>{e(uid)}</code>" + (
            f" — {e(t('unpublish_reason'))} : {e(reason)}" if reason else "")
        return _confirm(request, staff, t(action), f"{back}/{action}", back, fields, summary)
    workflow = _workflow(request)
    try:
        result = (workflow.request_publication(uid) if action == "publish"
                  else workflow.request_withdrawal(uid, reason=reason))
    except UnknownStudy:
        raise HTTPException(404, "study not found") from None
    if not result.queued:
        audit(request, staff.principal, action, DENIED, result.reason, uid)
        return _result(request, staff, False, t("nothing_queued", reason=result.reason), back)
    audit(request, staff.principal, action, ALLOWED, f"outbox #{result.outbox_id}", uid)
    return _result(request, staff, True, t("queued", id=result.outbox_id, kind=result.kind,
                                           kos=result.kos_uid), back)


@router.post("/console/studies/{uid}/publish")
def publish(uid: str, request: Request, csrf: str = Form(""), confirm: str = Form("")) -> Response:
    return _publication_act(request, uid, csrf, confirm, "publish")


@router.post("/console/studies/{uid}/unpublish")
def unpublish(uid: str, request: Request, csrf: str = Form(""), confirm: str = Form(""),
              reason: str = Form("")) -> Response:
    return _publication_act(request, uid, csrf, confirm, "unpublish", reason.strip()[:200])


@router.post("/console/studies/{uid}/share")
def share(uid: str, request: Request, csrf: str = Form(""), confirm: str = Form(""),
          days: str = Form("")) -> Response:
    return _share_act(request, _study(uid), csrf, confirm, days, f"{views.study_href(uid)}/share")


@router.post("/console/shares")
def share_from_list(request: Request, csrf: str = Form(""), confirm: str = Form(""),
                    days: str = Form(""), study_uid: str = Form("")) -> Response:
    """The shares page's form: the study named by its UID."""
    return _share_act(request, study_uid.strip(), csrf, confirm, days, "/console/shares")


def _share_act(request: Request, uid: str, csrf: str, confirm: str, days: str,
               path: str) -> Response:
    """A share link (``drimbox share``): its URL once, its QR code, the handout's link."""
    source_only(request)
    safe = is_safe_uid(uid)
    staff = _actor(request, csrf, "share-create", uid if safe else "")
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    back = views.study_href(uid) if safe else "/console/shares"
    if not safe:
        return _result(request, staff, False, f"{t('study_uid')} : {uid!r}", back)
    settings = request.app.state.runtime.settings
    try:
        n = int(days) if days.strip() else settings.share_link_days
    except ValueError:
        n = 0
    if confirm != "yes":
        return _confirm(request, staff, t("share"), path, back,
                        {"days": str(n), "study_uid": uid},
                        f"{e(t('study'))} <code>{e(uid)}</code> — {e(t('share_days'))} : {n}")
    links = share_links(request)
    try:
        new = links.create(uid, n, staff.principal.subject)
    except CannotShare as exc:
        audit(request, staff.principal, "share-create", DENIED, str(exc)[:60], uid)
        return _result(request, staff, False, str(exc), back)
    audit(request, staff.principal, "share-create", ALLOWED, f"link {new.link.id}", uid)
    url = share_url(request_public_url(request), new.token)
    qr = base64.b64encode(qr_svg(url).encode()).decode()
    extra = ("<dl class=facts>"
             f"<dt>{e(t('share_url'))}</dt><dd><code id=share-url>{e(url)}</code></dd>"
             f"<dt>{e(t('expires'))}</dt><dd>{e(when(new.link.expires_at))} UTC</dd></dl>"
             f"<div class=qr><img id=share-qr src='data:image/svg+xml;base64,{qr}' "
             f"alt='{e(t('qr_alt'))}'></div>"
             f"<p><a id=handout href='{e(url)}/handout' target=_blank rel=noopener>"
             f"{e(t('handout'))}</a></p>")
    return _result(request, staff, True, t("share_made"), back, extra)


@router.post("/console/shares/{link_id}/revoke")
def revoke(link_id: str, request: Request, csrf: str = Form(""),
           confirm: str = Form("")) -> Response:
    source_only(request)
    links = share_links(request)
    known = links.get(link_id)
    study_uid = known.study_uid if known else ""
    staff = _actor(request, csrf, "share-revoke", study_uid)
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    back = views.study_href(study_uid) if study_uid else "/console/shares"
    if known is None:
        return _result(request, staff, False, t("no_link", id=link_id), "/console/shares")
    if confirm != "yes":
        return _confirm(request, staff, t("revoke"),
                        f"/console/shares/{quote(link_id, safe='')}/revoke", back, {},
                        f"<code>{e(link_id)}</code> — {e(t('study'))} <code>{e(study_uid)}</code>")
    link = links.revoke(link_id)
    if link is None:
        return _result(request, staff, False, t("no_link", id=link_id), back)
    audit(request, staff.principal, "share-revoke", ALLOWED, f"link {link.id}", link.study_uid)
    return _result(request, staff, True, t("revoked_done", id=link.id), back)


@router.post("/console/outbox/{row_id}/retry")
def retry(row_id: int, request: Request, csrf: str = Form(""),
          confirm: str = Form("")) -> Response:
    source_only(request)
    index = request.app.state.runtime.index
    with index.read() as s:
        row = outbox.get_row(s, row_id)
    study_uid = row.study_instance_uid if row else ""
    staff = _actor(request, csrf, "outbox-retry", study_uid)
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    if confirm != "yes":
        summary = f"#{row_id}" + (f" — {e(row.kind)}, {e(t(row.state))}, {e(t('study'))} "
                                  f"<code>{e(study_uid)}</code>" if row else "")
        return _confirm(request, staff, t("retry"), f"/console/outbox/{row_id}/retry",
                        "/console/outbox", {}, summary)
    with index.write() as s:
        why_not = outbox.retry_now(s, row_id)
    if why_not:
        audit(request, staff.principal, "outbox-retry", DENIED, why_not, study_uid)
        return _result(request, staff, False, why_not, "/console/outbox")
    audit(request, staff.principal, "outbox-retry", ALLOWED, f"outbox #{row_id}", study_uid)
    return _result(request, staff, True, t("retried", id=row_id), "/console/outbox")
