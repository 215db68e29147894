"""Prometheus metrics of the gateway (served at ``/metrics``)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
)

INSTANCES_RECEIVED = Counter(
    "drimbox_instances_received_total",
    "Instances kept (stored, replaced or already present), by how they came in",
    ["source"],
)
BYTES_RECEIVED = Counter(
    "drimbox_bytes_received_total", "Dataset bytes of kept instances", ["source"]
)
STORE_FAILURES = Counter(
    "drimbox_store_failures_total", "Refused C-STORE requests by DICOM status", ["status"]
)
QUERY_RETRIEVE = Counter(
    "drimbox_dicom_query_retrieve_total",
    "C-FIND, C-MOVE and C-GET requests answered, by operation and final DICOM status",
    ["operation", "status"],
)
INSTANCES_SENT = Counter(
    "drimbox_instances_sent_total",
    "C-STORE sub-operations of C-MOVE and C-GET, by operation and outcome "
    "(completed, warning, failed)",
    ["operation", "outcome"],
)
ASSOCIATIONS = Counter("drimbox_associations_total", "DICOM associations accepted")
ASSOCIATIONS_REJECTED = Counter(
    "drimbox_associations_rejected_total", "DICOM associations rejected or aborted"
)
DICOM_CONNECTIONS_CLOSED = Counter(
    "drimbox_dicom_connections_closed_total",
    "DICOM connections closed before their A-ASSOCIATE-RQ was read, by reason: "
    "pending_per_address (too many from one address still negotiating), artim (request "
    "not complete within artim_timeout), tls (DICOM TLS handshake failed)",
    ["reason"],
)
DICOM_ASSOCIATIONS_REFUSED = Counter(
    "drimbox_dicom_associations_refused_total",
    "DICOM associations rejected (A-ASSOCIATE-RJ, local limit exceeded) by the limit they were "
    "over: max_associations, max_associations_per_ae, artim_timeout",
    ["limit"],
)
ASSOCIATIONS_ACTIVE = Gauge(
    "drimbox_associations_active",
    "DICOM associations now open",
    multiprocess_mode="livesum",  # with DICOM worker processes: the sum over live ones
)
STOW_FAILURES = Counter(
    "drimbox_stow_failures_total", "STOW-RS instances refused, by DICOM failure reason", ["status"]
)

OUTBOX_ROWS = Gauge(
    "drimbox_outbox_rows",
    "Publication outbox rows by state (pending, sending, done, refused, superseded)",
    ["state"],
    multiprocess_mode="mostrecent",  # only the serving process's outbox worker sets it
)

MSSANTE_MESSAGES = Gauge(
    "drimbox_mssante_messages",
    "MSSanté outbox messages by state (pending, sending, sent, refused)",
    ["state"],
    multiprocess_mode="mostrecent",  # only the serving process's MSSanté worker sets it
)


def exposition() -> tuple[bytes, str]:
    """The ``/metrics`` body and content type. With DICOM worker processes
    (``PROMETHEUS_MULTIPROC_DIR`` set, see :mod:`gateway.ingest.workers`) the values of every
    process, summed; otherwise this process's registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
