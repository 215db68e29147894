"""The ANS *Annuaire Santé* (health professionals' directory) through its FHIR API.

:mod:`.client` is the gateway's client (the :class:`~gateway.directory.professionals.ProfessionalDirectory`
port: Practitioner, PractitionerRole and Organization by RPPS / ADELI / FINESS, with the
``ESANTE-API-KEY`` header and a cache); :mod:`.simulator` is ``drimbox annuaire-sim``, which
answers FHIR R4 searchset Bundles of the API's shape from a JSON fixture (:file:`fixture.json`).
"""

from adapters.annuaire.client import AnnuaireClient

__all__ = ["AnnuaireClient"]
