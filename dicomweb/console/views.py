"""The console's page bodies, rendered from what the gateway's own functions answer (the same
ones the CLI and the admin endpoints call): :func:`~gateway.publication.study_status.study_status`,
:mod:`gateway.index.outbox`, :mod:`gateway.index.study_search`, :mod:`gateway.index.activity`,
:class:`~gateway.access.share_links.ShareLinks`. Functions here take plain data and return
escaped HTML; the routes (:mod:`dicomweb.console.pages`) fetch and wrap them.
"""

from __future__ import annotations

from urllib.parse import quote

from dicomweb.console.i18n import Words
from dicomweb.console.layout import da, e, person_name, state_span, table, when
from gateway.access.share_links import ShareLinkInfo
from gateway.index.activity import DayCounts, ErrorLine
from gateway.index.outbox import STATES, OutboxRow
from gateway.index.study_search import StudyRow


def study_href(uid: str) -> str:
    return f"/console/studies/{quote(uid, safe='')}"


def study_link(uid: str) -> str:
    return f"<a class=uid href='{e(study_href(uid))}'>{e(uid)}</a>"


def hidden(name: str, value: str) -> str:
    return f"<input type=hidden name={name} value='{e(value)}'>"


def action_form(path: str, csrf: str, label: str, *, fields: str = "", danger: bool = False,
                button_id: str = "", aria: str = "") -> str:
    """A POST form to an action; the action answers a confirmation page first."""
    bid = f" id='{e(button_id)}'" if button_id else ""
    al = f" aria-label='{e(aria)}'" if aria else ""
    cls = " class=danger" if danger else ""
    return (f"<form method=post action='{e(path)}' class=inline>{hidden('csrf', csrf)}{fields}"
            f"<button type=submit{bid}{al}{cls}>{e(label)}</button></form>")


# -- home -------------------------------------------------------------------------------------

def health(t: Words, index_ok: bool, dmp: bool, psc: bool) -> str:
    def line(ok: bool, good: str, bad: str, name: str = "") -> str:
        head = f"{e(name)} : " if name else ""
        return (f"<li>{head}<span class={'ok' if ok else 'bad'}>"
                f"{e(good if ok else bad)}</span></li>")
    return ("<ul>" + line(index_ok, t("index_ok"), t("index_down"))
            + line(dmp, t("configured"), t("not_configured"), t("dmp"))
            + line(psc, t("configured"), t("not_configured"), t("psc")) + "</ul>")


def listeners(t: Words, rows: list[tuple[str, str, int, str]], source: bool,
              consumer: bool) -> str:
    names = {"dicom": "DICOM", "http": "HTTP", "hl7": "HL7 MLLP"}
    body = table([t("listener"), t("address"), t("tls")],
                 [[e(names.get(n, n)), f"<code>{e(h)}:{p}</code>", e(mode)]
                  for n, h, p, mode in rows], "", "listeners")
    def role(on: bool) -> str:
        return f"<span class={'ok' if on else 'note'}>{e(t('on' if on else 'off'))}</span>"

    return (body + f"<p id=roles>{e(t('role_source'))} : {role(source)} · "
            f"{e(t('role_consumer'))} : {role(consumer)}</p>")


def day_counts(t: Words, c: DayCounts) -> str:
    items = [("studies_received", c.studies_received),
             ("instances_received", c.instances_received),
             ("publications_done", c.publications_done),
             ("publications_refused", c.publications_refused),
             ("accesses_allowed", c.accesses_allowed), ("accesses_denied", c.accesses_denied)]
    return "<dl class=facts>" + "".join(
        f"<dt>{e(t(k))}</dt><dd data-count='{k}'>{v}</dd>" for k, v in items) + "</dl>"


def outbox_counts(t: Words, counts: dict[str, int]) -> str:
    return "<dl class=facts id=outbox-counts>" + "".join(
        f"<dt>{state_span(t, s)}</dt><dd data-count='{s}'>"
        f"<a href='/console/outbox?state={s}'>{counts.get(s, 0)}</a></dd>"
        for s in STATES) + "</dl>"


def errors(t: Words, lines: list[ErrorLine]) -> str:
    return table([t("when"), t("study"), t("what"), t("detail")],
                 [[e(when(x.at)), study_link(x.study_instance_uid),
                   e(t(x.what)) + (f" (#{x.outbox_id})" if x.outbox_id else ""), e(x.detail)]
                  for x in lines], t("no_errors"), "last-errors")


# -- studies ----------------------------------------------------------------------------------

def study_rows(t: Words, rows: list[StudyRow]) -> str:
    return table(
        [t("patient"), t("ins"), t("date"), t("description"), t("accession"), t("modality"),
         t("series_instances"), t("stable"), t("study")],
        [[e(person_name(r.patient_name)), f"<code>{e(r.ins_matricule or r.patient_id)}</code>",
          e(da(r.study_date)), e(r.study_description), e(r.accession_number),
          e(", ".join(r.modalities)), f"{r.series_count} / {r.instance_count}",
          e(t("yes") if r.stable else t("no")),
          f"<a href='{e(study_href(r.study_instance_uid))}' "
          f"aria-label='{e(t('open'))} {e(r.study_instance_uid)}'>{e(t('open'))}</a>"]
         for r in rows], t("no_study"), "studies",
        [f"data-study='{e(r.study_instance_uid)}'" for r in rows])


def outbox_rows(t: Words, rows: list[OutboxRow], csrf: str, can_act: bool) -> str:
    def answer(r: OutboxRow) -> str:
        if r.state == "refused":
            return f"<strong class=bad>{e(r.error_code)}</strong> {e(r.error_text)}"
        if r.state == "done":
            return f"<code>{e(r.entry_uuid)}</code>"
        return e(r.last_error)

    def act(r: OutboxRow) -> str:
        if not can_act or r.state not in ("refused", "pending"):
            return ""
        return action_form(f"/console/outbox/{r.id}/retry", csrf, t("retry"),
                           button_id=f"retry-{r.id}", aria=f"{t('retry')} #{r.id}")

    return table(
        ["#", t("study"), t("kind"), t("state"), t("attempts"), t("created"),
         t("next_attempt"), t("dmp_answer"), t("actions")],
        [[str(r.id), study_link(r.study_instance_uid), e(r.kind), state_span(t, r.state),
          str(r.attempts), e(when(r.created_at)),
          e(when(r.done_at if r.state in ("done", "refused") else r.next_attempt_at)),
          answer(r), act(r)] for r in rows],
        t("no_rows"), "outbox-rows", [f"data-row='{r.id}' data-state='{e(r.state)}'"
                                      for r in rows])


def share_rows(t: Words, links: list[ShareLinkInfo], now, csrf: str,  # noqa: ANN001
               can_act: bool) -> str:
    def act(link: ShareLinkInfo) -> str:
        if not can_act or link.status(now) in ("revoked", "expired"):
            return ""
        return action_form(f"/console/shares/{quote(link.id, safe='')}/revoke", csrf,
                           t("revoke"), danger=True, button_id=f"revoke-{link.id}",
                           aria=f"{t('revoke')} {link.id}")

    return table(
        ["id", t("study"), t("created"), t("created_by"), t("expires"), t("status"),
         t("actions")],
        [[f"<code>{e(link.id)}</code>", study_link(link.study_uid), e(when(link.created_at)),
          e(link.created_by), e(when(link.expires_at)), state_span(t, link.status(now)),
          act(link)] for link in links],
        t("no_links"), "share-links",
        [f"data-link='{e(link.id)}' data-status='{e(link.status(now))}'" for link in links])
