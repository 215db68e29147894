"""Identity: the patient's INS and local identifiers (R3, R19).

Owns the INS rules (:mod:`.ins`: key, OIDs, qualification) and the codecs that read and write
them in each format the gateway meets (:mod:`.codecs`: DICOM, HL7 v2, CDA, XDS).

Pure domain: imports nothing of the gateway but itself.
"""
