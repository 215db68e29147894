"""The Image Pixel module checks (PS3.3 C.7.6.3) and what serves pixels does with an image
that fails them: a named :class:`UnreadablePixels` (the HTTP face's 422), never a decoder's
stray exception (a 500). Pure functions on datasets and small files; no gateway."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits

from gateway.imaging import pixels
from gateway.imaging.pixel_description import (
    UnreadablePixels,
    bit_slice,
    decoding_failed,
    describe,
    frame_count,
)
from gateway.imaging.rendering import RenderOptions, render
from gateway.imaging.transcode import SourceUnreadable, transcode


def image(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 4, 6, 1, 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in attrs.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(("keyword", "message"), [
    ("PixelRepresentation", "Pixel Representation (0028,0103) is missing"),
    ("SamplesPerPixel", "Samples per Pixel (0028,0002) is missing"),
    ("PhotometricInterpretation", "Photometric Interpretation (0028,0004) is missing"),
    ("BitsAllocated", "Bits Allocated (0028,0100) is missing"),
    ("BitsStored", "Bits Stored (0028,0101) is missing"),
    ("Rows", "Rows (0028,0010) is missing"),
])
def test_a_missing_type_1_attribute_is_named(keyword: str, message: str) -> None:
    with pytest.raises(UnreadablePixels) as caught:
        describe(image(**{keyword: None}), decode=True)
    assert str(caught.value) == message


def test_a_layout_needs_only_what_sizes_a_frame() -> None:
    """An uncompressed frame cut out as stored needs Rows, Columns, Samples per Pixel and
    Bits Allocated; Pixel Representation or Photometric Interpretation missing is fine."""
    d = describe(image(PixelRepresentation=None, PhotometricInterpretation=None,
                       BitsStored=None), decode=False)
    assert d.frame_bits == 4 * 6 * 16
    with pytest.raises(UnreadablePixels, match=r"Bits Allocated \(0028,0100\) is missing"):
        describe(image(BitsAllocated=None), decode=False)


def test_values_no_decoder_takes_are_named() -> None:
    with pytest.raises(UnreadablePixels, match=r"Bits Allocated \(0028,0100\) is 12, not 1 or"):
        describe(image(BitsAllocated=12), decode=False)
    with pytest.raises(UnreadablePixels, match=r"Bits Stored \(0028,0101\) is 20"):
        describe(image(BitsStored=20), decode=True)
    with pytest.raises(UnreadablePixels, match=r"Pixel Representation \(0028,0103\) is 2"):
        describe(image(PixelRepresentation=2), decode=True)
    with pytest.raises(UnreadablePixels, match=r"Photometric Interpretation .* is 'FOO'"):
        describe(image(PhotometricInterpretation="FOO"), decode=True)
    with pytest.raises(UnreadablePixels, match=r"Planar Configuration \(0028,0006\) is missing"):
        describe(image(SamplesPerPixel=3, PhotometricInterpretation="RGB", BitsAllocated=8,
                       BitsStored=8, PixelRepresentation=0), decode=True)


def test_number_of_frames() -> None:
    assert frame_count(image()) == 1
    assert frame_count(image(NumberOfFrames=3)) == 3
    with pytest.raises(UnreadablePixels, match=r"Number of Frames \(0028,0008\) is 0"):
        frame_count(image(NumberOfFrames=0))


def test_ybr_full_422_frames_hold_two_samples_per_pixel() -> None:
    """PS3.3 C.7.6.3.1.2: uncompressed YBR_FULL_422 is Y Y Cb Cr per pair of pixels."""
    ds = image(SamplesPerPixel=3, PhotometricInterpretation="YBR_FULL_422", BitsAllocated=8,
               BitsStored=8, PlanarConfiguration=0, PixelRepresentation=0)
    assert describe(ds, decode=True).frame_bits == 4 * 6 * 2 * 8


def test_bit_slice_cuts_frames_that_do_not_start_on_a_byte() -> None:
    """Three 1-bit frames of 3x3 pixels: frame 2 starts at bit 9 of the packed value."""
    frames = np.array([np.eye(3, dtype=np.uint8), np.ones((3, 3), np.uint8),
                       np.fliplr(np.eye(3, dtype=np.uint8))])
    packed = pack_bits(frames)
    for i, frame in enumerate(frames):
        assert bit_slice(packed, 9 * i, 9) == pack_bits(frame)
    with pytest.raises(UnreadablePixels):
        bit_slice(packed, 27, 9)


def test_a_one_bit_multi_frame_file_gives_each_frame(tmp_path: Path) -> None:
    frames = (np.arange(3 * 3 * 3).reshape(3, 3, 3) % 2).astype(np.uint8)
    ds = dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 3
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit, ds.PixelRepresentation, ds.NumberOfFrames = 0, 0, 3
    ds.PixelData = pack_bits(frames)
    ds["PixelData"].VR = "OB"
    path = tmp_path / "one-bit.dcm"
    ds.save_as(path, enforce_file_format=True)
    info = pixels.frame_info(path)
    assert not info.problem and info.frame_bits == 9
    for n in (1, 2, 3):
        assert pixels.read_frame(path, info, n, pixels.EXPLICIT_LE) == pack_bits(frames[n - 1])


def test_rendering_an_image_without_pixel_representation_names_it() -> None:
    """The frame rendered of a file valid but for its Pixel Representation was a 500."""
    ds = dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    del ds.PixelRepresentation
    with pytest.raises(UnreadablePixels, match=r"Pixel Representation \(0028,0103\) is missing"):
        render(ds, 0, RenderOptions())


def test_a_rescale_slope_that_is_not_a_number_is_named() -> None:
    ds = dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds["RescaleSlope"]._value = "x1"  # what a bad DS value reads as
    with pytest.raises(UnreadablePixels, match=r"Rescale Slope \(0028,1053\) is 'x1'"):
        render(ds, 0, RenderOptions())


def test_a_decoder_failure_is_one_line_naming_the_syntax() -> None:
    exc = RuntimeError("Unable to decode:\n  pylibjpeg: bad marker\n  pillow: no 12-bit")
    said = str(decoding_failed(exc, "1.2.840.10008.1.2.4.51"))
    assert said == ("the pixel data (JPEG Extended (Process 2 and 4)) cannot be decoded: "
                    "Unable to decode: pylibjpeg: bad marker pillow: no 12-bit")


def test_transcoding_implicit_vr_bytes_labelled_explicit() -> None:
    """pydicom (and the ingest) read a dataset in implicit VR under an explicit syntax; its
    elements come without a VR and must take their dictionary's to be written again."""
    path = pydicom.data.get_testdata_file("SC_rgb_jpeg.dcm")
    out = dcmread(io.BytesIO(transcode(Path(path), "1.2.840.10008.1.2.1")))
    assert out.ImageType == ["DERIVED", "SECONDARY", "OTHER"]
    assert out.pixel_array.shape == (256, 256, 3)


def test_transcoding_what_cannot_be_decoded_says_why() -> None:
    ds = dcmread(pydicom.data.get_testdata_file("MR_small_RLE.dcm"))
    del ds.BitsStored
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    with pytest.raises(SourceUnreadable, match=r"Bits Stored \(0028,0101\) is missing"):
        transcode(buf, "1.2.840.10008.1.2.1")
