"""Reports: the radiology report (CR) from the RIS (R1, R2, R18).

Owns the report workflow (:mod:`.workflow`: pure, with its ports), reading CDA
(:mod:`.cda`) and HL7 v2 (:mod:`.hl7_reader`), the MLLP listener and its ACKs (:mod:`.mllp`,
a face) and the wiring of the workflow with the PACS from settings (:mod:`.wiring`).

The workflow and the readers are pure domain; :mod:`.wiring` may import the index and the PACS
adapter; :mod:`.mllp` is a face.
"""
