"""Pro Santé Connect (PSC, OpenID Connect): the relying-party client and a
standards-conformant simulator for development and tests (``drimbox psc-sim``)."""
