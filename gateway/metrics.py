"""Prometheus metrics of the gateway (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
ASSOCIATIONS = Counter("drimbox_associations_total", "DICOM associations accepted")
ASSOCIATIONS_REJECTED = Counter(
    "drimbox_associations_rejected_total", "DICOM associations rejected or aborted"
)
ASSOCIATIONS_ACTIVE = Gauge("drimbox_associations_active", "DICOM associations now open")
STOW_FAILURES = Counter(
    "drimbox_stow_failures_total", "STOW-RS instances refused, by DICOM failure reason", ["status"]
)
