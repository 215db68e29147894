"""The patient identity banner (R14; INS/va1.36, spec 4.6.2), an HTML fragment any page of
the consumer (and later the viewer) can show.

Shown by default: birth name, first birth first name, birth date, sex, birthplace (INSEE
code). On demand (a ``<details>`` element): the INS matricule, its OID and register, every
birth first name, the used name and used first name (the appel contextuel carries neither:
shown as not transmitted), and the local IPP with its issuer. Values come only from the
patient context (:class:`gateway.consumer.context.PatientContext`): nothing from the images'
patient module overrides them. Every value is HTML-escaped; each carries ``data-trait`` so
that a page (or a test) can find it.
"""

from __future__ import annotations

import html

from fastapi.responses import HTMLResponse

from gateway.consumer.context import PatientContext

NOT_TRANSMITTED = "non transmis"


def _row(trait: str, label: str, value: str) -> str:
    return (f"<div class=trait><dt>{html.escape(label)}</dt>"
            f"<dd data-trait='{trait}'>{html.escape(value)}</dd></div>")


def identity_banner(patient: PatientContext) -> str:
    """The banner of one patient (a ``<section id=identity-banner>``)."""
    shown = "".join([
        _row("birth-name", "Nom de naissance", patient.birth_name),
        _row("first-given-name", "Premier prénom de naissance", patient.first_given_name),
        _row("birth-date", "Date de naissance", patient.birth_date_label),
        _row("gender", "Sexe", patient.gender_label),
        _row("birthplace", "Lieu de naissance (code INSEE)", patient.birthplace),
    ])
    more = "".join([
        _row("ins", "Matricule INS", patient.ins),
        _row("ins-oid", "OID du matricule INS",
             f"{patient.ins_oid} ({patient.ins_kind})" if patient.ins_kind else patient.ins_oid),
        _row("birth-given-names", "Prénoms de naissance", patient.birth_given_names),
        _row("used-name", "Nom utilisé", NOT_TRANSMITTED),
        _row("used-given-name", "Prénom utilisé", NOT_TRANSMITTED),
        _row("ipp", "IPP (identifiant local)", patient.patient_id),
        _row("ipp-issuer", "Émetteur de l'IPP", patient.patient_id_issuer),
    ])
    return ("<section id=identity-banner aria-label='Identité du patient (traits stricts INS)'>"
            f"<dl class=strict-traits>{shown}</dl>"
            "<details id=identity-more><summary>Autres traits d'identité</summary>"
            f"<dl>{more}</dl></details></section>")


BANNER_CSS = (
    "#identity-banner{border:2px solid #1d4e89;padding:.5em 1em;margin:0 0 1em}"
    "#identity-banner dl{display:flex;flex-wrap:wrap;gap:.5em 2em;margin:.25em 0}"
    "#identity-banner dt{font-size:.8em;color:#555}#identity-banner dd{margin:0;"
    "font-weight:bold}"
)


#: Headers of every consumer page: never cached, never framed by another site, no referrer.
PAGE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}


def render_page(title: str, body: str, status: int = 200, css: str = "") -> HTMLResponse:
    """A consumer page: ``title`` (escaped) over ``body`` (already escaped HTML), with the
    banner's style and ``css``, under :data:`PAGE_HEADERS`."""
    return HTMLResponse(
        "<!doctype html><html lang=fr><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<style>{BANNER_CSS}{css}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>", status,
        headers=PAGE_HEADERS)
