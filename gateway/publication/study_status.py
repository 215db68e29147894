"""A study's state as the operator sees it: what was received, its
CR, its publication and history, and the R18 viewer link. ``drimbox study show UID --json``
prints it and ``GET /admin/studies/{uid}`` answers it: one function, the same data.

``publishable`` is the publication's own verdict, not a guess: :func:`publication_refusal`
builds what a publication would send now (the facts with the INS rule of R19, the KOS, the
XDS-I.b DocumentEntry with the CR in force or the configuration) and keeps only the first
refusal. So a study the publication refuses (no accession number, no issuer for it, a
setting missing) is never shown publishable."""

from __future__ import annotations

from dataclasses import asdict
from urllib.parse import quote

from gateway.config import Settings
from gateway.index import mssante
from gateway.index.facts import NotPublishable, study_facts, study_state
from gateway.index.reports import current_report, study_reports
from gateway.index.store import InstanceIndex
from gateway.manifest.manifests import manifest_from_facts, policy
from gateway.manifest.manifests import publication_context as configured_context
from gateway.manifest.xds_metadata import kos_document_entry
from gateway.publication.outbox import redact
from gateway.publication.report_trigger import stored_report_context
from gateway.publication.workflow import publication_status


def viewer_link(settings: Settings, study_uid: str, id_cda: str) -> str:
    """The R18 link (``viewer_link_template``) for a study and the idCDA of its CR."""
    return settings.viewer_link_template.format(
        public_url=settings.effective_public_url.rstrip("/"),
        study_uid=quote(study_uid, safe=""), id_cda=quote(id_cda, safe=""))


def publication_refusal(index: InstanceIndex, settings: Settings, study_uid: str) -> str:
    """Why a publication of the study would be refused now, '' when it would not: the
    publication's own steps, nothing recorded (module docstring)."""
    try:
        facts = study_facts(index, study_uid, policy(settings))
        built = manifest_from_facts(facts, settings)
        with index.read() as s:
            report = current_report(s, study_uid)
        context = (stored_report_context(report, settings) if report is not None
                   else configured_context(settings))
        kos_document_entry(facts, built.kos_bytes, str(built.kos.SOPInstanceUID),
                           built.created, context)
    except (NotPublishable, ValueError) as exc:  # ValueError: metadata, KOS or CDA errors
        return str(exc)
    return ""


#: History events that are problems an operator should see (``problems`` of ``study show``).
PROBLEM_EVENTS = ("annuaire_problem", "mssante_problem", "mssante_refused")


def study_status(index: InstanceIndex, settings: Settings, study_uid: str) -> dict:
    """JSON-ready state of one study; raises :class:`~gateway.index.facts.UnknownStudy`."""
    state = study_state(index, study_uid, policy(settings))
    refusal = publication_refusal(index, settings, study_uid)
    publication = publication_status(index, study_uid)
    with index.read() as s:
        messages = study_reports(s, study_uid)
        current = current_report(s, study_uid)
        mails = mssante.list_rows(s, study_uid=study_uid)
    report = None
    if current is not None:
        report = {"id_cda": current.id_cda, "message_type": current.message_type,
                  "replaces_id_cda": current.replaces_id_cda,
                  "received_at": current.received_at,
                  "confidentiality": current.confidentiality}
    return asdict(state) | {
        "publishable": not refusal,
        "reason": refusal,
        "stable": state.stable,
        "report": report,
        "report_messages": [
            {"kind": m.kind, "message_type": m.message_type, "id_cda": m.id_cda,
             "received_at": m.received_at} for m in messages],
        "viewer_link": viewer_link(settings, study_uid, current.id_cda) if current else None,
        "publication": asdict(publication),
        "problems": [e.detail for e in publication.history if e.event in PROBLEM_EVENTS],
        # No patient identity in the output: a patient's address is often the INS.
        "mssante": [{k: (redact(v) if k == "address" else v) for k, v in asdict(m).items()
                     if k != "body"} for m in mails],
    }
