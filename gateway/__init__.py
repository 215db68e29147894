"""DRIMbox gateway core, one package per capability.

``ingest`` (DICOM in: the SCP, the ingest path, the file store), ``index`` (the database),
``imaging`` (what DICOMweb serves), ``identity`` (the INS), ``manifest`` (KOS, XDS-I.b, FHIR),
``publication`` (to the DMP), ``reports`` (the RIS's CR), ``access`` (policy, sessions,
audit), ``consumer`` (the Consommatrice role); at the top, ``config``, ``cli``, ``server``,
``runtime`` and ``metrics``. Imports go one way: faces -> wiring -> workflows -> index and
storage -> domain (``tests/test_layering.py``).
"""

__version__ = "0.1.0"
