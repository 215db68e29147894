"""Wiring of the report workflow (with the PACS when configured), built from the settings. The
publication outbox attaches to ``workflow.report_ready_hooks`` / ``workflow.withdrawal_hooks``;
the MLLP listener that feeds it is built by :func:`gateway.reports.mllp.build_hl7_listener`."""

from __future__ import annotations

from adapters.pacs.query_retrieve import PacsClient
from gateway.config import Settings
from gateway.index.reports import SqlReportStore
from gateway.index.store import InstanceIndex
from gateway.reports.workflow import ReportWorkflow


def build_report_workflow(settings: Settings, index: InstanceIndex) -> ReportWorkflow:
    pacs = None
    if settings.pacs_ae_title and settings.pacs_host and settings.pacs_port:
        pacs = PacsClient(our_ae_title=settings.ae_title, pacs_ae_title=settings.pacs_ae_title,
                          host=settings.pacs_host, port=settings.pacs_port,
                          move_timeout=settings.pacs_retrieve_timeout)
    return ReportWorkflow(SqlReportStore(index), pacs,
                          retrieve_timeout=settings.pacs_retrieve_timeout)
