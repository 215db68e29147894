"""The console's HTML: the page shell (skip link, navigation, ``lang``), and small helpers.
Everything from the index or the request goes through :func:`e` (``html.escape``): a patient
name with markup shows as text.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from urllib.parse import urlencode

from fastapi.responses import HTMLResponse

from dicomweb.console.i18n import Words

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # No inline script; the QR code is a data: image.
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "script-src 'self'; frame-ancestors 'none'; form-action 'self'"),
}


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(value: datetime | None) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def da(value: str) -> str:
    """A DICOM DA as ``YYYY-MM-DD`` (other values as they are)."""
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def person_name(value: str) -> str:
    return " ".join(p for p in value.split("^") if p)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str,
          table_id: str = "", row_attrs: Sequence[str] | None = None) -> str:
    """``headers`` are plain text (escaped here); cells are HTML already escaped."""
    body = []
    for n, row in enumerate(rows):
        attrs = f" {row_attrs[n]}" if row_attrs else ""
        body.append(f"<tr{attrs}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    if not body:
        return f"<p class=note>{e(empty)}</p>"
    tid = f" id={e(table_id)}" if table_id else ""
    head = "".join(f"<th scope=col>{e(h)}</th>" for h in headers)
    return (f"<div class=scroll><table{tid}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def state_span(t: Words, state: str) -> str:
    return f"<span class='state-{e(state)}' data-state='{e(state)}'>{e(t(state))}</span>"


def link(path: str, **query: str) -> str:
    q = {k: v for k, v in query.items() if v}
    return path + ("?" + urlencode(q) if q else "")


NAV = (("home", "/"), ("studies", "/console/studies"), ("outbox", "/console/outbox"),
       ("audit", "/console/audit"), ("shares", "/console/shares"),
       ("consumer", "/console/consumer"))


def page(t: Words, title: str, body: str, *, current: str, who: str, nav: Sequence[str],
         status: int = 200, live_view: str = "", live_query: str = "",
         logout: bool = False) -> HTMLResponse:
    items = "".join(
        f"<li><a href='{href}'{' aria-current=page' if key == current else ''}>"
        f"{e(t(key))}</a></li>" for key, href in NAV if key in nav)
    other = "en" if t.lang == "fr" else "fr"
    switch = (f"<a href='?lang={other}' lang={other} hreflang={other}>"
              f"{'English' if other == 'en' else 'Français'}</a>")
    out = f" · <a href='/auth/logout'>{e(t('logout'))}</a>" if logout else ""
    live = (f" data-live-view='{e(live_view)}' data-live-query='{e(live_query)}'"
            if live_view else "")
    return HTMLResponse(
        f"<!doctype html><html lang={t.lang}><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{e(title)} · {e(t('console'))}</title>"
        "<link rel=stylesheet href='/console/static/console.css'>"
        "<script src='/console/static/console.js' defer></script></head>"
        f"<body{live}><a class=skip href='#main'>{e(t('skip'))}</a>"
        f"<header><a class=brand href='/'>{e(t('console'))}</a>"
        f"<nav aria-label='{e(t('nav'))}'><ul>{items}</ul></nav>"
        f"<div class=who>{e(who)}{out} · {switch}</div></header>"
        f"<main id=main tabindex=-1><h1>{e(title)}</h1>{body}</main></body></html>",
        status, headers=HEADERS)
