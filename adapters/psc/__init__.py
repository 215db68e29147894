"""Pro Santé Connect (PSC, OpenID Connect): the relying-party client (issue #6) and a
standards-conformant simulator for development and tests (``drimbox psc-sim``)."""
