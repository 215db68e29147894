"""A small mixed study for the DICOMweb tests, written as Part 10 files.

One study, four series: CT (5 instances, explicit VR; one with an Icon Image Sequence whose
Pixel Data is binary *inside a sequence*), MR in RLE Lossless (2), CR MONOCHROME1 (1),
encapsulated PDF (1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dicom_factory import TEST_ROOT, make_instance
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    MRImageStorage,
    RLELossless,
    generate_uid,
)


@dataclass
class StudyFiles:
    study_uid: str
    ct_series: str
    mr_series: str
    cr_series: str
    pdf_series: str
    files: list[Path]
    by_sop: dict[str, Path]

    def series_of(self, series_uid: str) -> list[Path]:
        from pydicom import dcmread

        return [f for f in self.files
                if dcmread(f, stop_before_pixels=True).SeriesInstanceUID == series_uid]


def icon_item() -> Dataset:
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = 8
    icon.Columns = 8
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = bytes(range(64))
    return icon


def write_study(folder: Path, ct_count: int = 5, seed: int = 0) -> StudyFiles:
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid(TEST_ROOT)
    ct, mr, cr, pdf = (generate_uid(TEST_ROOT) for _ in range(4))
    datasets: list[Dataset] = []
    for i in range(ct_count):
        ds = make_instance(sop_class=CTImageStorage, study_uid=study, series_uid=ct,
                           instance_number=i + 1, series_number=1, seed=seed + i)
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        if i == 1:
            ds.IconImageSequence = [icon_item()]
        datasets.append(ds)
    for i in range(2):
        datasets.append(make_instance(sop_class=MRImageStorage, transfer_syntax=RLELossless,
                                      study_uid=study, series_uid=mr, instance_number=i + 1,
                                      series_number=2, seed=seed + 100 + i))
    crs = make_instance(sop_class=ComputedRadiographyImageStorage, study_uid=study,
                        series_uid=cr, series_number=3, rows=40, cols=80, seed=seed + 200)
    crs.PhotometricInterpretation = "MONOCHROME1"
    ramp = np.tile(np.linspace(0, 4095, 80).astype(np.uint16), (40, 1))
    crs.PixelData = ramp.tobytes()
    datasets.append(crs)
    datasets.append(make_instance(sop_class=EncapsulatedPDFStorage, study_uid=study,
                                  series_uid=pdf, series_number=4))
    files = []
    by_sop = {}
    for n, ds in enumerate(datasets):
        path = folder / f"IM{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        by_sop[str(ds.SOPInstanceUID)] = path
    return StudyFiles(study, ct, mr, cr, pdf, files, by_sop)
