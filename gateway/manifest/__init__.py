"""Manifests: what a published study is described by (R3, R4).

Owns the KOS (:mod:`.kos`), its XDS-I.b metadata (:mod:`.xds_metadata`), the FHIR twin
(:mod:`.fhir_twin`), the facts they are built from (:mod:`.facts`), the building of all three
from the index (:mod:`.manifests`) and study stability (:mod:`.stability`).

The first four are pure domain (they import only :mod:`gateway.identity` and
:mod:`gateway.imaging.locations`); :mod:`.manifests` and :mod:`.stability` read the index.
"""
