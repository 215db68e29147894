"""gateway/imaging/transcode.py: lossless re-encoding keeps pixels, UIDs and attributes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import make_instance
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from gateway.imaging.transcode import PRODUCIBLE, TranscodeError, can_produce, transcode

TARGETS = [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless,
           JPEG2000Lossless, JPEG2000]


def test_lossless_encoders_are_installed() -> None:
    """The wheels in pyproject.toml give these; a missing one would silently shrink WADO."""
    assert set(PRODUCIBLE) == {str(t) for t in TARGETS}
    assert not can_produce(str(ExplicitVRLittleEndian), str(JPEGBaseline8Bit))  # never lossy
    assert can_produce(str(JPEGBaseline8Bit), str(JPEGBaseline8Bit))  # as stored


@pytest.mark.parametrize("source", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian, RLELossless])
@pytest.mark.parametrize("target", TARGETS)
def test_pixel_equal_and_same_uids(tmp_path: Path, source, target) -> None:
    ds = make_instance(transfer_syntax=str(source) if source != ExplicitVRBigEndian else
                       str(ExplicitVRLittleEndian), seed=5)
    ds.file_meta.TransferSyntaxUID = source
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    original = dcmread(path)
    out = dcmread(io.BytesIO(transcode(path, str(target))))
    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert out.PatientName == original.PatientName
    assert np.array_equal(out.pixel_array, original.pixel_array)


def test_dataset_without_pixel_data_is_relabelled(tmp_path: Path) -> None:
    ds = make_instance(sop_class=EncapsulatedPDFStorage)
    path = tmp_path / "pdf.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = dcmread(io.BytesIO(transcode(path, str(JPEGLSLossless))))
    assert out.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert out.EncapsulatedDocument == ds.EncapsulatedDocument


def test_failure_is_a_transcode_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.dcm"
    ds = make_instance(seed=1)
    ds.PixelData = b"\x00" * 10  # far too short for 64 x 64 x 16 bits
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(TranscodeError):
        transcode(path, str(JPEGLSLossless))
