"""The DMP adapter: IHE XDS.b over SOAP 1.2 / MTOM with a VIHF, and a DMP simulator.

=============  ==========================================================================
ns.py          namespaces, ebRIM classification / identification scheme UUIDs, actions
ebrim.py       domain metadata → ITI-41 ProvideAndRegisterDocumentSetRequest (R4, R5, R8)
dsg.py         the IHE DSG / XAdES "Signature01" document over the submission (R5)
vihf.py        the VIHF 3.0 SAML 2.0 assertion, signed (R6)
soap.py        SOAP 1.2 envelope, WS-Addressing, wsse:Security, MTOM/XOP both ways
query.py       ITI-18 stored queries, ITI-43 / ITI-57 requests, and their responses
patients.py    TD0.2, the consumer's DMP access check (HL7v3 PRPA_IN201307UV02; answer modelled)
errors.py      typed errors: transient (retry) vs refusal (do not retry)
client.py      DmpClient over httpx with mutual TLS (R7)
checks.py      the strict structural / R4 checks the simulator applies
simulator.py   the DMP simulator (``drimbox dmp-sim``): endpoints, validation, faults
sim_store.py   the simulator's SQLite registry and repository
=============  ==========================================================================

The FHIR transport (PDSm / IHE MHD ITI-65/67, ``dmp_transport = "mhd"``) is :mod:`adapters.mhd`;
the simulator's ``/fhir`` face is :mod:`adapters.mhd.recipient`, over the same store.
"""
