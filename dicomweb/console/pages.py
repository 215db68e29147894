"""The console's pages (GET): home ``/``, ``/console/studies`` and a study's page,
``/console/outbox``, ``/console/audit`` (and its FHIR / KPI downloads),
``/console/shares``, ``/console/consumer``; ``/console/live.json`` (the fragments the
home and outbox pages poll); ``/console/static/`` (one CSS, one small JS file).

Every page asks :func:`dicomweb.console.access.staff_or_refusal` first and is audited
(action ``console``, the page in the reason, the study's UID on a study page).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from anyio.from_thread import run as run_async
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from sqlalchemy import text

from dicomweb.console import views
from dicomweb.console.access import Staff, audit, staff_or_refusal, viewed
from dicomweb.console.layout import da, e, link, page, person_name, state_span, table, when
from dicomweb.session_cookies import share_links
from gateway.access.audit import DENIED
from gateway.access.audit_export import fhir_audit_bundle, kpi_csv
from gateway.index import outbox
from gateway.index.activity import (
    AuditQuery,
    audit_actions,
    audit_events,
    counts_since,
    last_errors,
    recent_retrievals,
)
from gateway.index.facts import UnknownStudy
from gateway.index.study_search import StudyQuery, find_studies, study_heading
from gateway.ingest.uids import is_safe_uid
from gateway.publication.study_status import study_status

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"console.css": "text/css; charset=utf-8",
                "console.js": "text/javascript; charset=utf-8"}


def staff_for(request: Request, what: str) -> Staff | Response:
    """The console's user (routes run in a worker thread), or the answer sending them away."""
    return run_async(staff_or_refusal, request, what)


def nav(request: Request) -> tuple[str, ...]:
    s = request.app.state.runtime.settings
    keys = ["home"]
    if s.source_enabled:
        keys += ["studies", "outbox"]
    keys.append("audit")
    if s.source_enabled:
        keys.append("shares")
    if s.consumer_enabled:
        keys.append("consumer")
    return tuple(keys)


def render(request: Request, staff: Staff, title: str, body: str, current: str, *,
           status: int = 200, live_view: str = "", live_query: str = "") -> Response:
    return staff.finish(request, page(
        staff.t, title, body, current=current, who=staff.who, nav=nav(request), status=status,
        live_view=live_view, live_query=live_query, logout=staff.has_session))


def source_only(request: Request) -> None:
    if not request.app.state.runtime.settings.source_enabled:
        raise HTTPException(404, "the Source role is off")


def _runtime(request: Request):  # noqa: ANN202
    return request.app.state.runtime


def _midnight() -> datetime:
    return datetime.combine(datetime.now(UTC).date(), time(), UTC)


# -- home ---------------------------------------------------------------------------------

def _index_ok(request: Request) -> bool:
    try:
        with _runtime(request).index.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - the page says so
        return False
    return True


def home_fragments(request: Request, staff: Staff) -> dict[str, str]:
    t = staff.t
    runtime = _runtime(request)
    s = runtime.settings
    ok = _index_ok(request)
    out = {"health": views.health(t, ok, s.dmp_configured, bool(s.psc_issuer))}
    if not ok:
        return out
    with runtime.index.read() as session:
        out["counts"] = views.day_counts(t, counts_since(session, _midnight()))
        out["outbox"] = views.outbox_counts(t, outbox.counts_by_state(session))
        out["errors"] = views.errors(t, last_errors(session))
    return out


@router.get("/")
def home(request: Request) -> Response:
    staff = staff_for(request, "home")
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    s = _runtime(request).settings
    parts = home_fragments(request, staff)
    listeners = [(n, h, p, s.listener_tls(n)) for n, h, p in s.listeners()]
    body = (
        "<div class=grid>"
        f"<section class=card aria-labelledby=h-health><h2 id=h-health>{e(t('health'))}</h2>"
        f"<div data-live=health aria-live=polite>{parts['health']}</div></section>"
        f"<section class=card aria-labelledby=h-listeners><h2 id=h-listeners>"
        f"{e(t('listeners'))}</h2>"
        f"{views.listeners(t, listeners, s.source_enabled, s.consumer_enabled)}</section>"
        f"<section class=card aria-labelledby=h-today><h2 id=h-today>{e(t('today'))}</h2>"
        f"<div data-live=counts>{parts.get('counts', '')}</div></section>"
        f"<section class=card aria-labelledby=h-outbox><h2 id=h-outbox>"
        f"{e(t('outbox_by_state'))}</h2>"
        f"<div data-live=outbox aria-live=polite>{parts.get('outbox', '')}</div></section>"
        "</div>"
        f"<section aria-labelledby=h-errors><h2 id=h-errors>{e(t('last_errors'))}</h2>"
        f"<div data-live=errors>{parts.get('errors', '')}</div></section>"
        f"<p class=note>{e(t('live_note'))}</p>")
    viewed(request, staff, "home")
    return render(request, staff, t("home"), body, "home", live_view="home")


@router.get("/console")
def console_root() -> Response:
    return RedirectResponse("/", 303)


# -- studies ------------------------------------------------------------------------------

def _da(value: str) -> str:
    """``YYYY-MM-DD`` (a date input) or ``YYYYMMDD`` to DICOM DA; '' when not a date."""
    digits = value.strip().replace("-", "")
    if len(digits) == 8 and digits.isdigit():
        try:
            date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        except ValueError:
            return ""
        return digits
    return ""


def _field(label: str, name: str, value: str, kind: str = "text", extra: str = "") -> str:
    return (f"<div><label for=f-{name}>{e(label)}</label>"
            f"<input id=f-{name} name={name} type={kind} value='{e(value)}'{extra}></div>")


@router.get("/console/studies")
def studies(request: Request, ins: str = "", name: str = "", date_from: str = "",
            date_to: str = "", accession: str = "", modality: str = "") -> Response:
    source_only(request)
    staff = staff_for(request, "studies")
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    query = StudyQuery(ins=ins.strip(), name=name.strip(), date_from=_da(date_from),
                       date_to=_da(date_to), accession=accession.strip(),
                       modality=modality.strip().upper()[:16])
    filtered = not query.empty
    if not filtered:
        query = StudyQuery(limit=50)  # the latest studies
    with _runtime(request).index.read() as s:
        rows = find_studies(s, query)
    form = (
        f"<form class=filters method=get action='/console/studies' role=search "
        f"aria-label='{e(t('search_studies'))}'>"
        + _field(t("ins"), "ins", ins, extra=" inputmode=numeric autocomplete=off")
        + _field(t("name"), "name", name, extra=" autocomplete=off")
        + _field(t("date_from"), "date_from", date_from, "date")
        + _field(t("date_to"), "date_to", date_to, "date")
        + _field(t("accession"), "accession", accession, extra=" autocomplete=off")
        + _field(t("modality"), "modality", modality, extra=" size=6")
        + f"<div><button type=submit id=search>{e(t('search'))}</button></div></form>")
    heading = t("results", n=len(rows)) if filtered else t("latest")
    body = form + f"<h2 id=results>{e(heading)}</h2>" + views.study_rows(t, rows)
    viewed(request, staff, "studies")
    return render(request, staff, t("studies"), body, "studies")


def study_body(request: Request, staff: Staff, uid: str) -> str | None:
    t = staff.t
    runtime = _runtime(request)
    try:
        st = study_status(runtime.index, runtime.settings, uid)
    except UnknownStudy:
        return None
    with runtime.index.read() as s:
        head = study_heading(s, uid)
    links = share_links(request)
    now = links.now()
    shares = links.list(uid)
    pub = st["publication"]
    ins = (f"<code>{e(st['ins_matricule'])}</code> ({e(st['ins_oid'])})"
           if st["ins_matricule"] else f"<span class=bad>{e(st['ins_refusal'] or '—')}</span>")
    stable = (t("stable_since", at=when(st["stable_at"])) if st["stable"] else t("receiving"))
    publishable = (f"<span class=ok id=publishable>{e(t('yes'))}</span>" if st["publishable"]
                   else f"<span class=bad id=publishable>"
                        f"{e(t('why_not', reason=st['reason']))}</span>")
    report = st["report"]
    report_line = (e(t("report_line", id=report["id_cda"], type=report["message_type"],
                       at=when(report["received_at"]))) if report else e(t("report_none")))
    viewer = f"/viewer?StudyInstanceUIDs={uid}"
    r18 = (f"<a id=r18-link href='{e(st['viewer_link'])}'>{e(t('r18_link'))}</a>"
           if st["viewer_link"] else f"<span class=note>{e(t('no_r18_link'))}</span>")
    facts = (
        "<dl class=facts id=study-facts>"
        f"<dt>{e(t('patient'))}</dt><dd id=patient-name>"
        f"{e(person_name(head.patient_name) if head else '')}</dd>"
        f"<dt>{e(t('date'))}</dt><dd>{e(da(head.study_date) if head else '')}</dd>"
        f"<dt>{e(t('description'))}</dt><dd>{e(head.study_description if head else '')}</dd>"
        f"<dt>{e(t('accession'))}</dt><dd>{e(head.accession_number if head else '')}</dd>"
        f"<dt>{e(t('modality'))}</dt><dd>{e(', '.join(head.modalities) if head else '')}</dd>"
        f"<dt>{e(t('study_uid'))}</dt><dd><code>{e(uid)}</code></dd>"
        f"<dt>{e(t('content'))}</dt><dd id=counts>{st['series_count']} / "
        f"{st['instance_count']} ({e(t('series_instances'))})</dd>"
        f"<dt>{e(t('received'))}</dt><dd>{e(when(st['created_at']))} → "
        f"{e(when(st['updated_at']))}</dd>"
        f"<dt>{e(t('stable'))}</dt><dd id=stable>{e(stable)}</dd>"
        f"<dt>INS</dt><dd id=ins>{ins}</dd>"
        f"<dt>{e(t('publishable'))}</dt><dd>{publishable}</dd>"
        f"<dt>{e(t('report'))}</dt><dd id=report>{report_line}</dd>"
        f"<dt>{e(t('links'))}</dt><dd><a id=viewer-link href='{e(viewer)}'>"
        f"{e(t('open_viewer'))}</a> · {r18}</dd></dl>")
    pub_state = pub["state"]
    publication = (
        f"<dl class=facts><dt>{e(t('pub_state'))}</dt>"
        f"<dd id=publication-state data-state='{e(pub_state)}'>{e(t('pub_' + pub_state))}</dd>"
        + (f"<dt>{e(t('current_kos'))}</dt><dd><code>{e(pub['current_kos_uid'])}</code></dd>"
           f"<dt>{e(t('entry_uuid'))}</dt><dd><code>{e(pub['current_entry_uuid'])}</code></dd>"
           if pub["current_kos_uid"] else "") + "</dl>"
        f"<h3>{e(t('outbox_rows'))}</h3>"
        + views.outbox_rows(t, [outbox.OutboxRow(**r) for r in pub["rows"]], staff.csrf,
                            staff.can_act)
        + (f"<h3>{e(t('problems'))}</h3><ul id=problems>"
           + "".join(f"<li class=bad>{e(p)}</li>" for p in st["problems"]) + "</ul>"
           if st["problems"] else "")
        + f"<h3>{e(t('mssante_messages'))}</h3>"
        + table(["#", t("recipient"), t("address"), t("state"), t("attempts"), "Message-ID",
                 t("smtp_answer")],
                [[e(m["id"]), e(f"{m['recipient_kind']} {m['recipient_id']}".strip()),
                  e(m["address"]), e(m["state"]), e(m["attempts"]),
                  f"<code>{e(m['message_id'])}</code>",
                  e(m["smtp_reply"] or m["error_text"] or m["last_error"])]
                 for m in st["mssante"]], t("no_rows"), "mssante")
        + f"<h3>{e(t('history'))}</h3>"
        + table([t("when"), t("what"), "#", "KOS", t("detail")],
                [[e(when(h["at"])), e(h["event"]), e(h["outbox_id"] or ""),
                  f"<code>{e(h['kos_uid'])}</code>", e(h["detail"])] for h in pub["history"]],
                t("no_rows"), "history"))
    if staff.can_act:
        path = views.study_href(uid)
        actions = (
            "<div class=actions>"
            + views.action_form(f"{path}/publish", staff.csrf, t("publish"),
                                button_id="publish")
            + "<form method=post action='" + e(path) + "/unpublish'>"
            + views.hidden("csrf", staff.csrf)
            + f"<label for=unpublish-reason>{e(t('unpublish_reason'))}</label> "
            f"<input id=unpublish-reason name=reason maxlength=200> "
            f"<button type=submit class=danger id=unpublish>{e(t('unpublish'))}</button></form>"
            + "<form method=post action='" + e(path) + "/share'>"
            + views.hidden("csrf", staff.csrf)
            + f"<label for=share-days>{e(t('share_days'))}</label> "
            f"<input id=share-days name=days type=number min=1 "
            f"max={runtime.settings.share_link_max_days} "
            f"value={runtime.settings.share_link_days}> "
            f"<button type=submit id=share>{e(t('share'))}</button></form></div>")
    else:
        actions = f"<p class=note id=viewer-only>{e(t('viewer_only'))}</p>"
    return (facts
            + f"<section aria-labelledby=h-actions><h2 id=h-actions>{e(t('actions'))}</h2>"
            f"{actions}</section>"
            f"<section aria-labelledby=h-pub><h2 id=h-pub>{e(t('publication'))}</h2>"
            f"{publication}</section>"
            f"<section aria-labelledby=h-shares><h2 id=h-shares>{e(t('shares'))}</h2>"
            + views.share_rows(t, shares, now, staff.csrf, staff.can_act) + "</section>")


@router.get("/console/studies/{uid}")
def study_page(uid: str, request: Request) -> Response:
    source_only(request)
    staff = staff_for(request, "study")
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    if not is_safe_uid(uid):
        return render(request, staff, t("study_not_found"), "", "studies", status=404)
    body = study_body(request, staff, uid)
    if body is None:
        return render(request, staff, t("study_not_found"), f"<p><code>{e(uid)}</code></p>",
                      "studies", status=404)
    viewed(request, staff, "study", uid)
    return render(request, staff, f"{t('study')} {uid}", body, "studies")


# -- outbox -------------------------------------------------------------------------------

def outbox_fragments(request: Request, staff: Staff, state: str) -> dict[str, str]:
    with _runtime(request).index.read() as s:
        rows = outbox.list_rows(s, state or None, None, 200)
        counts = outbox.counts_by_state(s)
    return {"outbox-counts": views.outbox_counts(staff.t, counts),
            "outbox-rows": views.outbox_rows(staff.t, rows, staff.csrf, staff.can_act)}


@router.get("/console/outbox")
def outbox_page(request: Request, state: str = "") -> Response:
    source_only(request)
    staff = staff_for(request, "outbox")
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    state = state if state in outbox.STATES else ""
    parts = outbox_fragments(request, staff, state)
    options = "".join(f"<option value='{s}'{' selected' if s == state else ''}>"
                      f"{e(t(s or 'all'))}</option>" for s in ("", *outbox.STATES))
    body = (
        f"<form class=filters method=get action='/console/outbox'><div>"
        f"<label for=f-state>{e(t('state'))}</label><select id=f-state name=state>{options}"
        f"</select></div><div><button type=submit id=filter>{e(t('filter'))}</button></div>"
        "</form>"
        f"<h2>{e(t('outbox_by_state'))}</h2><div data-live=outbox-counts aria-live=polite>"
        f"{parts['outbox-counts']}</div>"
        f"<h2>{e(t('outbox_rows'))}</h2><div data-live=outbox-rows>{parts['outbox-rows']}</div>"
        f"<p class=note>{e(t('live_note'))}</p>")
    viewed(request, staff, "outbox")
    return render(request, staff, t("outbox"), body, "outbox", live_view="outbox",
                  live_query=f"&state={state}" if state else "")


@router.get("/console/live.json")
def live(request: Request, view: str = "home", state: str = "") -> Response:
    """The fragments of the home or outbox page (server-rendered, escaped). Not audited per
    poll: the page load that starts the polling is."""
    staff = staff_for(request, "live")
    if not isinstance(staff, Staff):
        return JSONResponse({}, 401 if staff.status_code in (302, 303) else staff.status_code)
    if view == "outbox" and _runtime(request).settings.source_enabled:
        state = state if state in outbox.STATES else ""
        body = outbox_fragments(request, staff, state)
    else:
        body = home_fragments(request, staff)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


# -- audit --------------------------------------------------------------------------------

def _day(value: str) -> datetime | None:
    """A date input (``YYYY-MM-DD``) as midnight UTC; None when empty; ValueError if bad."""
    if not value.strip():
        return None
    return datetime.combine(date.fromisoformat(value.strip()), time(), UTC)


@router.get("/console/audit")
def audit_page(request: Request, subject: str = "", study: str = "", action: str = "",
               outcome: str = "", since: str = "", until: str = "") -> Response:
    staff = staff_for(request, "audit")
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    problem = ""
    try:
        start = _day(since)
    except ValueError:
        start, problem = None, t("bad_date", value=since)
    try:
        end = _day(until)
        end = end + timedelta(days=1) if end else None
    except ValueError:
        end, problem = None, t("bad_date", value=until)
    outcome = outcome if outcome in ("allowed", "denied") else ""
    query = AuditQuery(subject=subject.strip(), study_uid=study.strip(), action=action.strip(),
                       outcome=outcome, since=start, until=end)
    with _runtime(request).index.read() as s:
        rows = audit_events(s, query)
        actions = audit_actions(s)
    action_opts = f"<option value=''>{e(t('all'))}</option>" + "".join(
        f"<option{' selected' if a == action else ''}>{e(a)}</option>" for a in actions)
    outcome_opts = "".join(
        f"<option value='{v}'{' selected' if v == outcome else ''}>{e(t(v or 'all'))}</option>"
        for v in ("", "allowed", "denied"))
    form = (
        "<form class=filters method=get action='/console/audit' id=audit-filters>"
        + _field(t("subject"), "subject", subject, extra=" autocomplete=off")
        + _field(t("study_uid"), "study", study, extra=" autocomplete=off")
        + f"<div><label for=f-action>{e(t('action'))}</label>"
        f"<select id=f-action name=action>{action_opts}</select></div>"
        f"<div><label for=f-outcome>{e(t('outcome'))}</label>"
        f"<select id=f-outcome name=outcome>{outcome_opts}</select></div>"
        + _field(t("since"), "since", since, "date") + _field(t("until"), "until", until, "date")
        + f"<div><button type=submit id=audit-filter>{e(t('filter'))}</button></div></form>")
    since_q = start.date().isoformat() if start else ""
    downloads = ""
    if staff.can_act:
        downloads = (
            f"<p>{e(t('downloads'))} : "
            f"<a id=download-fhir href='{e(link('/console/audit/export', format='fhir', since=since_q))}'>"
            f"{e(t('download_fhir'))}</a> · "
            f"<a id=download-kpi href='{e(link('/console/audit/export', format='kpi', since=since_q))}'>"
            f"{e(t('download_kpi'))}</a></p>")
    note = f"<p class=bad role=alert>{e(problem)}</p>" if problem else ""
    rows_html = table(
        [t("when"), t("subject"), t("action"), t("outcome"), t("reason"), t("study"), "INS",
         t("client")],
        [[e(when(r.recorded_at)), f"{e(r.subject)} <span class=note>({e(r.principal_kind)}"
          f"{', ' + e(r.via) if r.via else ''})</span>", e(r.action),
          f"<span class={'ok' if r.outcome == 'allowed' else 'bad'}>{e(t(r.outcome))}</span>",
          e(r.reason),
          views.study_link(r.study_instance_uid) if r.study_instance_uid else "",
          f"<code>{e(r.patient_ins)}</code>", e(r.client_address)] for r in rows],
        t("no_rows"), "audit-events",
        [f"data-action='{e(r.action)}' data-outcome='{e(r.outcome)}'" for r in rows])
    body = (form + note + downloads + f"<h2 id=events>{e(t('events', n=len(rows)))}</h2>"
            + rows_html)
    viewed(request, staff, "audit")
    return render(request, staff, t("audit"), body, "audit")


@router.get("/console/audit/export")
def audit_export(request: Request, format: str = "fhir",  # noqa: A002 - the query name
                 since: str = "") -> Response:
    """The FHIR AuditEvent Bundle or the DRIM-M KPI file, as ``GET /admin/audit`` and
    ``drimbox audit export`` make them (the same functions); role ``admin``."""
    staff = staff_for(request, "audit-export")
    if not isinstance(staff, Staff):
        return staff
    if not staff.can_act:
        audit(request, staff.principal, "console", DENIED, "admin_role_required: audit-export")
        return render(request, staff, staff.t("forbidden_title"),
                      f"<p id=refusal>{e(staff.t('admin_only'))}</p>", "audit", status=403)
    try:
        start = _day(since)
    except ValueError:
        raise HTTPException(400, "since: not a date") from None
    runtime = _runtime(request)
    viewed(request, staff, f"audit-export {format}")
    headers = {"Cache-Control": "no-store"}
    if format == "kpi":
        return Response(kpi_csv(runtime.index, start), media_type="text/csv; charset=utf-8",
                        headers={**headers,
                                 "Content-Disposition": 'attachment; filename="ModelStat.csv"'})
    bundle = fhir_audit_bundle(runtime.index, runtime.settings.ae_title, start)
    return Response(bundle.model_dump_json(exclude_none=True), media_type="application/fhir+json",
                    headers={**headers,
                             "Content-Disposition": 'attachment; filename="audit-events.json"'})


# -- share links --------------------------------------------------------------------------

@router.get("/console/shares")
def shares_page(request: Request) -> Response:
    source_only(request)
    staff = staff_for(request, "shares")
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    links = share_links(request)
    settings = _runtime(request).settings
    form = ""
    if staff.can_act:
        form = (
            "<form class=filters method=post action='/console/shares' id=new-share>"
            + views.hidden("csrf", staff.csrf)
            + _field(t("study_uid"), "study_uid", "", extra=" required size=40 autocomplete=off")
            + _field(t("share_days"), "days", str(settings.share_link_days), "number",
                     f" min=1 max={settings.share_link_max_days}")
            + f"<div><button type=submit id=new-share-submit>{e(t('share'))}</button></div>"
            "</form>")
    body = form + views.share_rows(t, links.list(None), links.now(), staff.csrf, staff.can_act)
    viewed(request, staff, "shares")
    return render(request, staff, staff.t("shares"), body, "shares")


# -- consumer -----------------------------------------------------------------------------

@router.get("/console/consumer")
def consumer_page(request: Request) -> Response:
    staff = staff_for(request, "consumer")
    if not isinstance(staff, Staff):
        return staff
    t = staff.t
    if not _runtime(request).settings.consumer_enabled:
        return render(request, staff, t("consumer"), f"<p>{e(t('consumer_off'))}</p>",
                      "consumer", status=404)
    with _runtime(request).index.read() as s:
        retrievals = recent_retrievals(s)
        exports = audit_events(s, AuditQuery(action="consumer_export", limit=50))
    body = (
        f"<h2>{e(t('retrievals'))}</h2>"
        + table(["#", t("when"), t("subject"), "KOS", t("study"), t("state"), t("size")],
                [[str(r.id), e(when(r.updated_at)), e(r.subject), f"<code>{e(r.kos_uid)}</code>",
                  f"<code>{e(r.study_instance_uid)}</code>", state_span(t, r.state),
                  e(f"{r.bytes / 1e6:.1f} MB")] for r in retrievals],
                t("no_rows"), "retrievals")
        + f"<h2>{e(t('exports'))}</h2>"
        + table([t("when"), t("subject"), t("outcome"), t("detail"), t("study")],
                [[e(when(r.recorded_at)), e(r.subject),
                  f"<span class={'ok' if r.outcome == 'allowed' else 'bad'}>{e(t(r.outcome))}"
                  "</span>", e(r.reason), f"<code>{e(r.study_instance_uid)}</code>"]
                 for r in exports], t("no_rows"), "exports"))
    viewed(request, staff, "consumer")
    return render(request, staff, t("consumer"), body, "consumer")


# -- static -------------------------------------------------------------------------------

@router.get("/console/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise HTTPException(404, "no such file")
    return FileResponse(STATIC / name, media_type=STATIC_FILES[name],
                        headers={"Cache-Control": "max-age=300"})
