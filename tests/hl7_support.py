"""The official HL7 v2 / CDA samples made sendable, and helpers to talk MLLP to a gateway.

The ANS samples carry ``{{applicationSupplier}}``-style placeholders (MSH-3..6, MSH-7,
MSH-10) that a test harness fills, and the ``*.abridged.hl7`` copies have their base64 CDA
replaced by a marker (drim-m-samples/README.md); :func:`with_cda` puts a CDA back.
"""

from __future__ import annotations

import base64
import itertools
import re
from pathlib import Path

from dicom_factory import make_instance
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from samples import SAMPLES

from gateway.reports.mllp import ack_summary, send_message

HL7 = SAMPLES / "hl7v2"
CDA_G1_MAJ = SAMPLES / "cda" / "referencement" / "Examen_G" / "CR_G1_MAJ.abridged.xml"
CDA_POC_2023 = SAMPLES / "cda" / "drimbox-poc" / "IMG_CR_IMG_2023.11_CDA-R2-Niveau-1.xml"
POC_ORU = SAMPLES / "drimbox-poc-test-resources" / "patient1.hl7"
POC_CDA = SAMPLES / "drimbox-poc-test-resources" / "DOC00002.xml"

#: Values read by eye from the samples.
INS = "279035121518989"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
STUDY_G = "1.2.250.1.213.4.5.2.1.108"
ACCESSION_G = "ACN108"

_ids = itertools.count(1)


def fill(text: str, control_id: str | None = None) -> tuple[str, str]:
    """Fill the placeholders; return the message and its MSH-10."""
    control_id = control_id or f"T{next(_ids):05d}{id(text) % 100000:05d}"
    text = (text.replace("{{applicationSupplier}}", "RIS_TEST")
            .replace("{{facilitySupplier}}", "CENTRE_TEST")
            .replace("{{applicationReceiver}}", "DRIMBOX")
            .replace("{{facilityReceiver}}", "DRIMBOX")
            .replace("{{idMessage}}", control_id))
    if "{{" not in text:  # samples with a fixed MSH-10 (the OMI ones) keep their own
        m = re.search(r"^MSH(\|[^|\r\n]*){9}", text)
        control_id = m.group(0).rsplit("|", 1)[1] if m else control_id
    return text, control_id


def with_cda(text: str, cda: bytes) -> str:
    b64 = base64.b64encode(cda).decode()
    out, n = re.subn(r"<<BASE64 PAYLOAD ELIDED BY drim-m-samples:[^>]*>>", b64, text)
    assert n == 1, "no elided payload marker"
    return out


def sample(rel: str) -> str:
    return (HL7 / rel).read_text("utf-8")


def send(port: int, text: str, timeout: float = 300) -> dict[str, str]:
    """Send over a real MLLP socket; MSA/ERR fields of the ACK, plus the raw ACK."""
    text = "\r".join(line for line in re.split(r"\r\n|\r|\n", text) if line.strip()) + "\r"
    ack = send_message(text, "127.0.0.1", port, timeout=timeout)
    return {**ack_summary(ack), "raw": ack}


def study_g_images(folder: Path, *, patient_id: str = INS, ins_oid: str | None = INS_TEST_OID,
                   accession: str = ACCESSION_G, study_uid: str = STUDY_G, n: int = 3) -> list[Path]:
    """Instances of exam G (study ...108, accession ACN108) with the INS as the samples do."""
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid("1.2.826.0.1.3680043.10.1257.")
    paths = []
    for i in range(n):
        ds: Dataset = make_instance(study_uid=study_uid, series_uid=series, patient_id=patient_id,
                                    ins_oid=ins_oid, accession=accession, instance_number=i + 1,
                                    transfer_syntax=ExplicitVRLittleEndian, seed=i)
        path = folder / f"G{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
