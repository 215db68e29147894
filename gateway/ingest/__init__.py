"""Ingest: how an instance enters the gateway and is kept.

Owns the one ingest path (:mod:`.ingestor`: C-STORE, STOW-RS and ``drimbox import`` all go
through it; an instance is acknowledged only once on disk, fsync'ed, and in the index), the
checks a dataset passes first (:mod:`.header`, :mod:`.part10`, :mod:`.uids`,
:mod:`.completeness`), the file store (:mod:`.storage`, :mod:`.processes`), IOCM rejection notes
(:mod:`.iocm`), the store check and the importer, and the DIMSE face: the pynetdicom SCP
(:mod:`.dimse`), its connection guard (:mod:`.dimse_guard`) and worker processes
(:mod:`.workers`).

May import: the domain (:mod:`gateway.identity`, :mod:`gateway.manifest`), the index,
configuration and metrics; IOCM notes hand over to :mod:`gateway.publication`. The faces here
(DIMSE, import) may also import :mod:`gateway.runtime`. Never :mod:`dicomweb`.
"""
