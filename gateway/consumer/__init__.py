"""The consumer DRIMbox (*DRIMbox Consommatrice*, SPEC 1.3 flow B; R13-R17).

Owns the consumer's domain: the patient context an appel contextuel (R13) or the search form
gives (:mod:`gateway.consumer.context`: the parameters, their rules, the strict INS traits of
R14) and where it is kept (:mod:`gateway.consumer.contexts`: server-side, pending until the
practitioner's PSC session claims it), and whom it trusts (:mod:`gateway.consumer.trust`:
the ANS whitelist's entries, R11). The DMP search (R16), the retrieval from Sources and the
export (R17) hang off a context's id in later steps.

May import: :mod:`gateway.identity.ins` (the INS rules), :mod:`gateway.access.sessions` (the session key),
:mod:`gateway.index` (its tables), the standard library. Never the HTTP face (``dicomweb``)
nor the adapters: they import this package, not the reverse.
"""
