"""The WADO-RS client of a Source DRIMbox (R17; SPEC 1.3 step 6): :mod:`adapters.source.wado`."""
