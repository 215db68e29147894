"""IHE MHD (FHIR R4) as profiled by the ANS PDSm guide: the DMP's FHIR transport.

``resources`` maps XDS metadata to and from DocumentReference / SubmissionSet List,
``bundle`` builds the ITI-65 transaction, ``transport`` is :class:`MhdTransport` (the
:class:`gateway.publication.transport.DocumentTransport` over FHIR), ``recipient`` is the
``/fhir`` face of ``drimbox dmp-sim``.
"""
