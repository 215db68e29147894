"""Synthetic but standard-conformant DICOM test data (pydicom + numpy).

:func:`make_instance` builds one instance of a few storage SOP classes (CT, MR, CR, secondary
capture, encapsulated PDF) in a chosen transfer syntax; :func:`write_study_folder` writes a
whole mixed corpus of Part 10 files and returns their paths. RLE and deflate are really
encoded (pydicom's own encoders), so "compressed" means compressed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

TEST_ROOT = "1.2.826.0.1.3680043.10.1257."  # test UID prefix for generated data
INS_NIR_OID = "1.2.250.1.213.1.4.8"


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information (what C-STORE carries)."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path} is not a Part 10 file")
    # Group length (0002,0000) UL is the first element after the preamble.
    group_len = int.from_bytes(data[140:144], "little")
    return data[144 + group_len :]


def make_instance(
    *,
    sop_class: str = CTImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "248092700000000",
    patient_name: str = "DUPONT^JEAN",
    issuer: str = "ASIP-SANTE-INS-NIR",
    ins_oid: str | None = None,
    accession: str = "ACC0001",
    modality: str | None = None,
    instance_number: int = 1,
    series_number: int = 1,
    rows: int = 64,
    cols: int = 64,
    seed: int = 0,
) -> Dataset:
    """One instance with the modules its IOD needs for ``dciodvfy`` to stay quiet."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    sop_uid = sop_uid or generate_uid(TEST_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyDate = "20261120"
    ds.StudyTime = "101500"
    ds.ContentDate = "20261120"
    ds.ContentTime = "101501"
    ds.AccessionNumber = accession
    ds.Modality = modality or {
        CTImageStorage: "CT",
        MRImageStorage: "MR",
        ComputedRadiographyImageStorage: "CR",
        SecondaryCaptureImageStorage: "OT",
        EncapsulatedPDFStorage: "DOC",
    }.get(sop_class, "OT")
    ds.Manufacturer = "DRIMBOX TEST"
    ds.ReferringPhysicianName = "MARTIN^CLAIRE"
    ds.StudyDescription = "TEST STUDY"
    ds.SeriesDescription = f"SERIES {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    if ins_oid:
        # The INS as the DRIM-M samples carry it (R3): issuer qualifiers with the INS OID.
        qualifier = Dataset()
        qualifier.UniversalEntityID = ins_oid
        qualifier.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifier]
    ds.PatientBirthDate = "19480101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = UID(study_uid or generate_uid(TEST_ROOT))
    ds.SeriesInstanceUID = UID(series_uid or generate_uid(TEST_ROOT))
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number

    if sop_class == EncapsulatedPDFStorage:
        ds.ConversionType = "WSD"
        ds.AcquisitionDateTime = "20261120101500"
        ds.BurnedInAnnotation = "YES"
        ds.DocumentTitle = "Compte rendu"
        ds.ConceptNameCodeSequence = []
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        pdf = b"%PDF-1.4\n% test document\n%%EOF\n"
        ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
        ds.EncapsulatedDocumentLength = len(pdf)
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if sop_class == CTImageStorage else "OTHER"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PatientOrientation = ""
        if sop_class in (CTImageStorage, MRImageStorage):
            ds.PatientPosition = "HFS"
            ds.FrameOfReferenceUID = generate_uid(TEST_ROOT)
            ds.PositionReferenceIndicator = ""
            ds.ImagePositionPatient = [0, 0, instance_number]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [0.5, 0.5]
            ds.SliceThickness = 1
        if sop_class == CTImageStorage:
            ds.KVP = 120
            ds.AcquisitionNumber = 1
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
        if sop_class == MRImageStorage:
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.EchoTime = 10
            ds.RepetitionTime = 500
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = 1.5
        if sop_class == SecondaryCaptureImageStorage:
            ds.ConversionType = "WSD"
        if sop_class == ComputedRadiographyImageStorage:
            ds.BodyPartExamined = "CHEST"
            ds.ViewPosition = "PA"
        ds.BodyPartExamined = ds.get("BodyPartExamined", "HEAD")
        pixels = (rng.integers(0, 4096, size=(rows, cols))).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        if transfer_syntax == RLELossless:
            ds.compress(RLELossless, pixels, encoding_plugin="pydicom", generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


MIX: list[tuple[str, str]] = [
    (CTImageStorage, ExplicitVRLittleEndian),
    (CTImageStorage, ImplicitVRLittleEndian),
    (MRImageStorage, RLELossless),
    (ComputedRadiographyImageStorage, DeflatedExplicitVRLittleEndian),
    (SecondaryCaptureImageStorage, ExplicitVRLittleEndian),
    (EncapsulatedPDFStorage, ExplicitVRLittleEndian),
]


def iter_corpus(n: int, studies: int = 2, seed: int = 0) -> Iterator[Dataset]:
    """``n`` instances spread over ``studies`` studies, one series per (SOP class, TS) pair."""
    study_uids = [generate_uid(TEST_ROOT) for _ in range(studies)]
    series: dict[tuple[int, int], str] = {}
    for i in range(n):
        st = i % studies
        kind = (i // studies) % len(MIX)
        sop_class, ts = MIX[kind]
        se = series.setdefault((st, kind), generate_uid(TEST_ROOT))
        yield make_instance(
            sop_class=sop_class,
            transfer_syntax=ts,
            study_uid=study_uids[st],
            series_uid=se,
            patient_id=f"P{st:04d}",
            accession=f"ACC{st:04d}",
            instance_number=i + 1,
            series_number=kind + 1,
            seed=seed + i,
        )


def write_corpus(folder: Path, n: int, studies: int = 2, seed: int = 0) -> list[Path]:
    """Write ``n`` Part 10 files to ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(iter_corpus(n, studies, seed)):
        path = folder / f"IM{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
