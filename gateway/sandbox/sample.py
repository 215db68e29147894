"""The sandbox's sample exam: exam G of ANS's DRIM-M test data (a fictitious patient with a
test INS), as images and as the RIS's report.

* The images: pydicom's own ``CT_small.dcm`` (a real 128x128 CT slice shipped with pydicom)
  made into :data:`INSTANCES` instances of one series with exam G's identifiers: the INS in
  PatientID with its issuer and OID (R2), the accession number with its issuer (R4's
  referenceIdList), the Study Instance UID of the report.
* The report: exam G's ORU^R01 (``samples/``, see PROVENANCE.md) with its CDA put back in
  OBX-5 and the ANS placeholders filled.
"""

from __future__ import annotations

import base64
import re
from datetime import date
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

SAMPLES = Path(__file__).with_name("samples")
ORU = SAMPLES / "CR_G1_MAJ-ORU.abridged.hl7"
CDA = SAMPLES / "CR_G1_MAJ.abridged.xml"

INS = "279035121518989"
INS_OID = "1.2.250.1.213.1.4.10"
INS_ISSUER = "ASIP-SANTE-INS-NIR"
STUDY_UID = "1.2.250.1.213.4.5.2.1.108"
ACCESSION = "ACN108"
ACCESSION_ISSUER = "1.2.250.1.925.994044.27"  # the CDA's inFulfillmentOf/order root
INSTANCES = 3

#: The appel contextuel of the sample patient, as a clinician's software (LPS) posts it to
#: the Consumer's ``/consumer/context`` (docs/consumer.md): the INS traits, consent, and the
#: consumer centre's own identifiers of the patient.
APPEL_CONTEXTUEL = {
    "Patient.identifier.value": INS,
    "Patient.identifier.system": f"urn:oid:{INS_OID}",
    "Patient.name.family": "PAT-TROIS",
    "Patient.name.given": "DOMINIQUE",
    "Patient.gender": "female",
    "Patient.birthDate": "1979-03-28",
    "Address.district": "63220",
    "InformationEtConsentement": "true",
    "PatientID": "IPP-SANDBOX-1",
    "PatientIDIssuer": "CENTRE CONSOMMATEUR&1.2.250.1.999.2.2&ISO",
}


def _template() -> Dataset:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        raise RuntimeError("pydicom's test file CT_small.dcm is missing")
    return dcmread(path)


def write_study(folder: Path) -> list[Path]:
    """The sample study's instances, written as Part 10 files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    today = date.today().strftime("%Y%m%d")
    paths = []
    for n in range(1, INSTANCES + 1):
        ds = _template()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = STUDY_UID
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = generate_uid()
        ds.InstanceNumber = n
        ds.SeriesNumber = 1
        ds.StudyID = "1"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
        ds.StudyDescription = "SCANNER SANDBOX"
        ds.SeriesDescription = "SERIE 1"
        ds.PatientName = "PAT-TROIS^DOMINIQUE"
        ds.PatientBirthDate = "19790328"
        ds.PatientSex = "F"
        ds.PatientID = INS
        ds.IssuerOfPatientID = INS_ISSUER
        qualifier = Dataset()
        qualifier.UniversalEntityID = INS_OID
        qualifier.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifier]
        ds.AccessionNumber = ACCESSION
        issuer = Dataset()
        issuer.UniversalEntityID = ACCESSION_ISSUER
        issuer.UniversalEntityIDType = "ISO"
        ds.IssuerOfAccessionNumberSequence = [issuer]
        ds.InstitutionName = "CENTRE IMAGERIE SANDBOX"
        path = folder / f"CT{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def report_message(control_id: str) -> str:
    """Exam G's ORU^R01, whole (its CDA in OBX-5) and filled, segments ended by CR."""
    text = ORU.read_text("utf-8")
    payload = base64.b64encode(CDA.read_bytes()).decode()
    text, n = re.subn(r"<<BASE64 PAYLOAD ELIDED BY drim-m-samples:[^>]*>>", payload, text)
    if n != 1:
        raise RuntimeError(f"{ORU.name}: no elided CDA marker")
    for name, value in (("applicationSupplier", "RIS_SANDBOX"),
                        ("facilitySupplier", "CENTRE_SANDBOX"),
                        ("applicationReceiver", "DRIMBOX"), ("facilityReceiver", "DRIMBOX"),
                        ("idMessage", control_id)):
        text = text.replace("{{" + name + "}}", value)
    return "\r".join(line for line in re.split(r"\r\n|\r|\n", text) if line.strip()) + "\r"
