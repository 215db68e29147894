"""The consumer DRIMbox (*DRIMbox Consommatrice*, SPEC 1.3 flow B; R13-R17).

Owns the consumer's domain: the patient context an appel contextuel (R13) or the search form
gives (:mod:`gateway.consumer.context`: the parameters, their rules, the strict INS traits of
R14) and where it is kept (:mod:`gateway.consumer.contexts`: server-side, pending until the
practitioner's PSC session claims it), and whom it trusts (:mod:`gateway.consumer.trust`:
the ANS whitelist's entries, R11), the DMP search of the patient's priors
(:mod:`gateway.consumer.search`, R16), the retrieval of a prior from its Source into a bounded
cache (:mod:`gateway.consumer.retrieve`, :mod:`gateway.consumer.source`,
:mod:`gateway.consumer.cache`, R17) and its export into the centre's PACS
(:mod:`gateway.consumer.export`, R17).

May import: :mod:`gateway.identity`, :mod:`gateway.access` (sessions, audit),
:mod:`gateway.manifest`, :mod:`gateway.index`. Never the HTTP face (``dicomweb``) nor the
adapters: the DMP and Source adapters implement the ports defined here (``DmpSearch``,
``SourceReader``) and import this package, not the reverse.
"""
