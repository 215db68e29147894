"""Publication: the study's manifest reaches the DMP, is replaced or withdrawn (R4-R8).

Owns the publication workflow (:mod:`.workflow`: decide, queue in the outbox in the index's
transaction), the outbox worker (:mod:`.outbox`), the seam to the shared record
(:mod:`.transport`: domain types; the XDS.b and MHD adapters implement it), reports driving
the publication (:mod:`.report_trigger`, R1) and a study's state for the operator
(:mod:`.study_status`).

May import: :mod:`gateway.manifest`, :mod:`gateway.reports` (its domain types), the index,
configuration. Never a face nor an adapter: the adapters import :mod:`.transport`.
"""
