"""The priors on the consumer page (R16): the filter form and the list of the patient's imaging
exams found in the DMP (:mod:`gateway.consumer.search`), an HTML fragment under the identity
banner of ``GET /consumer``.

The filters are GET parameters of ``/consumer`` (modality, SNOMED CT region code, creation date
range, accession number and its issuer): they name no one. Each row links to
``/consumer/studies/{document_unique_id}`` (the KOS's retrieval and view, another module).
Every search is audited (action ``dmp_search``): ``allowed`` with the number of priors and
the filters used, ``denied`` with why nothing was listed (no consent, bad filters, no DMP,
access refused, DMP unreachable, DMP refusal with its XDS/SOAP codes). A DMP failure is a
message on the page, never an error page.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import quote

from fastapi import FastAPI, Request

from adapters.dmp.client import DmpClient
from adapters.dmp.consumer import ConsumerDmp, practitioner_vihf
from dicomweb.urls import client_address, request_public_url
from gateway.access.audit import ALLOWED, DENIED, AccessRecord, record_access
from gateway.access.principal import Principal
from gateway.access.sessions import SessionInfo
from gateway.consumer import search as srch
from gateway.consumer.context import PatientContext
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import MODALITY_NAMES

log = logging.getLogger("drimbox.consumer")

ACTION_SEARCH = "dmp_search"
STUDIES_PATH = "/consumer/studies"

PROBLEMS_FR = {
    "no_consent": "Le patient n'a pas consenti : le DMP n'a pas été interrogé.",
    "no_dmp": "Ce patient n'a pas de DMP.",
    "dmp_closed": "Le DMP de ce patient est fermé.",
    "access_refused": "L'accès au DMP de ce patient vous est refusé (opposition du patient).",
    "dmp_unreachable": "Le DMP est injoignable pour le moment ; réessayez plus tard.",
    "dmp_refused": "Le DMP a refusé la recherche",
    "dmp_security": "Le DMP a refusé l'authentification de la DRIMbox (VIHF)",
    "dmp_not_configured": "Le DMP n'est pas configuré sur cette DRIMbox.",
    "no_activity": "Votre activité ne permet pas d'interroger le DMP (structure, secteur ou "
                   "profession inconnus) : reconnectez-vous.",
    "bad_filters": "Filtres incorrects : la recherche n'a pas été faite.",
    "search_failed": "La recherche dans le DMP a échoué (erreur interne, consignée).",
}

PRIORS_CSS = (
    "#priors table{border-collapse:collapse}#priors th,#priors td{border:1px solid #ccc;"
    "padding:.2em .5em;text-align:left}#filters label{margin-right:1em}"
    "#dmp-problem{color:#8a1c1c;font-weight:bold}"
)


def install_dmp(app: FastAPI) -> None:
    """The DMP client of the consumer's searches (None when the DMP is not configured or is
    reached over the FHIR transport, which has no TD0.2)."""
    settings = app.state.runtime.settings
    client = None
    if settings.dmp_configured and settings.dmp_transport == "xds":
        try:
            client = DmpClient.from_settings(settings)
        except (ValueError, OSError):
            client = None
    app.state.consumer_dmp = client


def _audit(request: Request, principal: Principal, outcome: str, reason: str, ins: str) -> None:
    record_access(request.app.state.runtime.index, AccessRecord(
        principal, ACTION_SEARCH, outcome, reason[:255], patient_ins=ins,
        client_address=client_address(request)))


def _filter_form(base: str, values: dict[str, str], problems: dict[str, str]) -> str:
    def err(name: str) -> str:
        return (f" <span class=filter-error data-filter='{name}'>"
                f"{html.escape(problems[name])}</span>" if name in problems else "")

    def text(name: str, label: str, extra: str = "") -> str:
        return (f"<label>{html.escape(label)} <input name='{name}' "
                f"value='{html.escape(values.get(name, ''))}' {extra}></label>{err(name)}")

    current = values.get(srch.MODALITY, "").upper()
    options = "<option value=''>(toutes)</option>" + "".join(
        f"<option value='{m}'{' selected' if m == current else ''}>{m} - "
        f"{html.escape(n)}</option>" for m, n in sorted(MODALITY_NAMES.items()))
    return (
        f"<form id=filters method=get action='{base}/consumer'>"
        f"<label>Modalité <select name='{srch.MODALITY}'>{options}</select></label>"
        f"{err(srch.MODALITY)}"
        + text(srch.REGION, "Région anatomique (code SNOMED CT)", "maxlength=18")
        + text(srch.DATE_FROM, "Du", "type=date") + text(srch.DATE_TO, "au", "type=date")
        + text(srch.ACCESSION, "N° d'accession", "maxlength=16")
        + text(srch.ACCESSION_ISSUER, "Émetteur (OID)", "maxlength=64")
        + "<button id=filter-submit>Filtrer</button></form>")


def _table(base: str, priors: list[srch.Prior]) -> str:
    rows = "".join(
        f"<tr class=prior data-document='{html.escape(p.document_unique_id)}'>"
        f"<td data-field=date>{html.escape(p.date_label)}</td>"
        f"<td data-field=modality>{html.escape(', '.join(p.modalities))}</td>"
        f"<td data-field=region>{html.escape(', '.join(p.regions))}</td>"
        f"<td data-field=description>{html.escape(p.description)}</td>"
        f"<td data-field=author>{html.escape(p.author)}</td>"
        f"<td data-field=centre>{html.escape(p.centre)}</td>"
        f"<td><a href='{base}{STUDIES_PATH}/{quote(p.document_unique_id, safe='')}'>"
        "Ouvrir</a></td></tr>"
        for p in priors)
    return ("<table id=priors-list><thead><tr><th>Date</th><th>Modalité</th><th>Région</th>"
            "<th>Description</th><th>Auteur</th><th>Centre producteur</th><th></th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def priors_section(request: Request, info: SessionInfo, patient: PatientContext,
                   principal: Principal) -> str:
    """The ``<section id=priors>``: filters, then the list or a message; one audit row."""
    base = request_public_url(request)
    values = {k: request.query_params.get(k, "") for k in srch.FILTER_FIELDS}
    problems: dict[str, str] = {}
    filters = srch.Filters()
    outcome: srch.SearchOutcome
    try:
        filters = srch.parse_filters(values)
    except srch.FilterError as exc:
        problems = exc.problems
        outcome = srch.SearchOutcome("bad_filters", ",".join(sorted(problems)))
    else:
        try:
            outcome = _search(request, info, patient, filters)
        except Exception:  # noqa: BLE001 - the page must say it, not answer 500
            log.exception("DMP search failed")
            outcome = srch.SearchOutcome("search_failed")
    if outcome.searched:
        _audit(request, principal, ALLOWED,
               f"found={outcome.total}" + (f" {filters.summary()}" if not filters.empty else ""),
               patient.ins)
    else:
        _audit(request, principal, DENIED,
               outcome.problem + (f": {outcome.detail}" if outcome.detail else ""), patient.ins)
    body = ""
    if patient.consent:
        body += _filter_form(base, values, problems)
    if not outcome.searched:
        message = PROBLEMS_FR.get(outcome.problem, outcome.problem)
        if outcome.detail and outcome.problem in ("dmp_refused", "dmp_security"):
            message += f" (code : {outcome.detail})."
        elif outcome.problem in ("dmp_refused", "dmp_security"):
            message += "."
        body += (f"<p id=dmp-problem role=alert data-problem='{outcome.problem}'>"
                 f"{html.escape(message)}</p>")
    elif not outcome.priors:
        body += ("<p id=no-priors>" + ("Aucun examen ne correspond aux filtres."
                                       if not filters.empty else
                                       "Aucun examen d'imagerie dans le DMP de ce patient.")
                 + "</p>")
    else:
        more = (f"<p id=priors-truncated>{len(outcome.priors)} examens affichés sur "
                f"{outcome.total}.</p>" if outcome.total > len(outcome.priors) else "")
        body += _table(base, outcome.priors) + more
    return f"<section id=priors><h2>Examens antérieurs (DMP)</h2>{body}</section>"


def _search(request: Request, info: SessionInfo, patient: PatientContext,
            filters: srch.Filters) -> srch.SearchOutcome:
    if not patient.consent:
        return srch.SearchOutcome("no_consent")
    dmp = getattr(request.app.state, "consumer_dmp", None)
    if dmp is None:
        return srch.SearchOutcome("dmp_not_configured")
    settings = request.app.state.runtime.settings
    try:
        ins = Ins(patient.ins, patient.ins_oid)
    except ValueError:
        return srch.SearchOutcome("dmp_refused", "bad_ins")
    try:
        vihf = practitioner_vihf(settings, info, ins)
    except ValueError as exc:
        return srch.SearchOutcome("no_activity", str(exc)[:100])
    return srch.search(ConsumerDmp(dmp, vihf), ins, patient.consent, filters,
                       settings.consumer_search_max_results)
