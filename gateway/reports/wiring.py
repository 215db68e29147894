"""Wiring of issue #7: the report workflow (with the PACS when configured) and its MLLP
listener, built from the settings. ``drimbox serve`` starts the listener when ``hl7_port`` is
set; the publication outbox attaches to ``workflow.report_ready_hooks`` /
``workflow.withdrawal_hooks``."""

from __future__ import annotations

from adapters.pacs.query_retrieve import PacsClient
from gateway.config import Settings
from gateway.index.reports import SqlReportStore
from gateway.index.store import InstanceIndex
from gateway.reports.mllp import Hl7Listener, MessageProcessor
from gateway.reports.workflow import ReportWorkflow


def build_report_workflow(settings: Settings, index: InstanceIndex) -> ReportWorkflow:
    pacs = None
    if settings.pacs_ae_title and settings.pacs_host and settings.pacs_port:
        pacs = PacsClient(our_ae_title=settings.ae_title, pacs_ae_title=settings.pacs_ae_title,
                          host=settings.pacs_host, port=settings.pacs_port,
                          move_timeout=settings.pacs_retrieve_timeout)
    return ReportWorkflow(SqlReportStore(index), pacs,
                          retrieve_timeout=settings.pacs_retrieve_timeout)


def build_hl7_listener(settings: Settings, workflow: ReportWorkflow) -> Hl7Listener | None:
    if not settings.hl7_port:
        return None
    processor = MessageProcessor(workflow, application=settings.hl7_application,
                                 facility=settings.structure_id)
    return Hl7Listener(processor, settings.effective_hl7_host, settings.hl7_port,
                       max_message_bytes=settings.hl7_max_message_bytes)
