"""Unit tests of gateway/imaging/rendering.py: window math, MONOCHROME1, viewport, frames, colour."""

from __future__ import annotations

import io

import numpy as np
import pytest
from dicom_factory import make_instance
from PIL import Image
from pydicom.uid import EncapsulatedPDFStorage, SecondaryCaptureImageStorage

from gateway.imaging.rendering import (
    JPEG,
    PNG,
    FrameOutOfRange,
    NotAnImage,
    RenderOptions,
    Viewport,
    Window,
    apply_window,
    crop,
    dataset_window,
    encode,
    fit,
    invert,
    min_max_window,
    render,
    render_frame,
)


def test_linear_window_follows_ps3_3() -> None:
    w = Window(40, 400)
    # Bounds: x <= c - 0.5 - (w-1)/2 = -160 is black, x > c - 0.5 + (w-1)/2 = 239 is white.
    x = np.array([-1000, -160, -159.5, 39.5, 239, 239.01, 3000])
    y = apply_window(x, w)
    assert y[0] == 0 and y[1] == 0
    assert y[2] == round((((-159.5 - 39.5) / 399) + 0.5) * 255)
    assert y[3] == 128  # centre: 127.5 rounded
    assert y[4] == 255 and y[5] == 255 and y[6] == 255
    ramp = apply_window(np.linspace(-300, 300, 601), w)
    assert np.all(np.diff(ramp.astype(int)) >= 0)


def test_linear_exact_and_sigmoid() -> None:
    exact = apply_window(np.array([0, 0.01, 100, 200, 200.01]), Window(100, 200, "linear-exact"))
    assert exact.tolist() == [0, 0, 128, 255, 255]
    sig = apply_window(np.array([-1e6, 100, 1e6]), Window(100, 50, "sigmoid"))
    assert sig.tolist() == [0, 128, 255]
    a, b = apply_window(np.array([90, 110]), Window(100, 50, "sigmoid"))
    assert int(a) + int(b) == 255  # symmetric about the centre


@pytest.mark.parametrize("args", [(40, 0), (40, 0.5, "linear"), (40, -3), (40, 10, "gamma"),
                                  (float("nan"), 10)])
def test_bad_windows_are_refused(args) -> None:
    with pytest.raises(ValueError):
        Window(*args)


def test_min_max_window_spans_the_frame() -> None:
    values = np.array([[100, 200], [300, 1100]])
    out = apply_window(values, min_max_window(values))
    assert out.min() == 0 and out.max() == 255
    flat = apply_window(np.full((2, 2), 7), min_max_window(np.full((2, 2), 7)))
    assert flat.shape == (2, 2)


def test_fit_and_crop() -> None:
    assert fit((512, 256), (128, 128)) == (128, 64)
    assert fit((64, 64), (128, 128)) == (128, 128)
    assert fit((256, 512), (100, 300)) == (100, 200)
    assert fit((1, 1000), (10, 10)) == (1, 10)
    img = np.arange(20).reshape(4, 5)
    assert crop(img, (1, 1, 2, 2)).tolist() == [[6, 7], [11, 12]]
    assert crop(img, (3, 1, -2, 2)).tolist() == [[7, 6], [12, 11]]  # negative width flips
    with pytest.raises(ValueError):
        crop(img, (10, 10, 2, 2))
    with pytest.raises(ValueError):
        Viewport(0, 10)


def ct(pixels: np.ndarray, **attrs):
    ds = make_instance(rows=pixels.shape[0], cols=pixels.shape[1])
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_modality_lut_then_window() -> None:
    # Stored 1064 with intercept -1024 is 40 HU: the centre of a 40/400 window.
    ds = ct(np.array([[0, 1064], [4095, 824]]), WindowCenter=40, WindowWidth=400)
    out = render_frame(ds, 0, RenderOptions())
    assert out[0, 0] == 0 and out[1, 0] == 255
    assert abs(int(out[0, 1]) - 128) <= 1
    # A request window overrides the dataset's: -200 HU (stored 824) centred.
    out = render_frame(ds, 0, RenderOptions(window=Window(-200, 100)))
    assert abs(int(out[1, 1]) - 128) <= 1 and out[0, 1] == 255


def test_dataset_window_first_value_and_function() -> None:
    ds = ct(np.zeros((2, 2)), WindowCenter=[40, 300], WindowWidth=[400, 1500],
            VOILUTFunction="SIGMOID")
    assert dataset_window(ds) == Window(40, 400, "sigmoid")
    assert dataset_window(ct(np.zeros((2, 2)))) is None


def test_monochrome1_is_inverted() -> None:
    ramp = np.tile(np.linspace(0, 4095, 16), (4, 1))
    m2 = render_frame(ct(ramp, RescaleIntercept=0), 0, RenderOptions())
    m1 = render_frame(ct(ramp, RescaleIntercept=0, PhotometricInterpretation="MONOCHROME1"), 0,
                      RenderOptions())
    assert m2[0, 0] == 0 and m2[0, -1] == 255
    assert m1.tolist() == invert(m2).tolist()


def test_frames_colour_and_non_images() -> None:
    frames = np.stack([np.full((4, 6), v, np.uint16) for v in (0, 2000, 4000)])
    ds = ct(frames[0], RescaleIntercept=0, WindowCenter=2000, WindowWidth=4000)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    assert [int(render_frame(ds, i, RenderOptions())[0, 0]) for i in range(3)] == [0, 128, 255]
    with pytest.raises(FrameOutOfRange):
        render_frame(ds, 3, RenderOptions())

    rgb = make_instance(sop_class=SecondaryCaptureImageStorage, rows=4, cols=4)
    rgb.SamplesPerPixel = 3
    rgb.PhotometricInterpretation = "RGB"
    rgb.PlanarConfiguration = 0
    rgb.BitsAllocated = rgb.BitsStored = 8
    rgb.HighBit = 7
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[..., 0] = 200
    rgb.PixelData = pixels.tobytes()
    out = render_frame(rgb, 0, RenderOptions())
    assert out.shape == (4, 4, 3) and out[0, 0].tolist() == [200, 0, 0]

    with pytest.raises(NotAnImage):
        render_frame(make_instance(sop_class=EncapsulatedPDFStorage), 0, RenderOptions())


def test_encode_and_viewport() -> None:
    ds = ct(np.tile(np.arange(0, 4000, 40), (50, 1)), RescaleIntercept=0)  # 100 x 50
    png = render(ds, 0, RenderOptions(media_type=PNG, viewport=Viewport(40, 40)))
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (40, 20) and img.mode == "L"
    jpeg = render(ds, 0, RenderOptions(media_type=JPEG, quality=50))
    assert Image.open(io.BytesIO(jpeg)).size == (100, 50)
    exact = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode(exact, PNG)))), exact)
    small = render(ds, 0, RenderOptions(quality=5))
    assert len(small) < len(render(ds, 0, RenderOptions(quality=95)))


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80",
                                    "1.2.840.10008.1.2.5"])
def test_compressed_syntaxes_render_like_uncompressed(syntax: str) -> None:
    """JPEG 2000 (pylibjpeg-openjpeg), JPEG-LS (pyjpegls) and RLE decode to the same image."""
    pixels = np.random.default_rng(3).integers(0, 4096, (32, 48)).astype(np.uint16)
    plain = ct(pixels, WindowCenter=2000, WindowWidth=4000)
    packed = ct(pixels, WindowCenter=2000, WindowWidth=4000)
    packed.compress(syntax, pixels, generate_instance_uid=False)
    assert packed.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(render_frame(packed, 0, RenderOptions()),
                          render_frame(plain, 0, RenderOptions()))


def test_jpeg_baseline_decodes_through_the_plugins() -> None:
    """JPEG Baseline (pylibjpeg-libjpeg): the rendered pixels are the JPEG's own pixels."""
    from pydicom.encaps import encapsulate

    source = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))  # 64 x 16 ramp
    buf = io.BytesIO()
    Image.fromarray(source).save(buf, format="JPEG", quality=90)
    ds = make_instance(sop_class=SecondaryCaptureImageStorage, rows=16, cols=64)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue()))).astype(int)
    got = render_frame(ds, 0, RenderOptions(window=Window(127.5, 256, "linear-exact")))
    assert np.abs(got.astype(int) - expected).max() <= 2
