"""The directory of health professionals (the ANS *Annuaire Santé*) as the gateway needs it.

Owns the domain types of a professional and a structure found in the directory, the port a
directory client implements (:class:`~gateway.directory.professionals.ProfessionalDirectory`,
implemented by :mod:`adapters.annuaire`) and the pure rule that completes a publication's
author from the directory (:func:`~gateway.directory.professionals.complete_author`). Domain:
it imports only the domain.
"""
