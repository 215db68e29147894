"""Rendering a frame of a stored image to JPEG or PNG (WADO-RS rendered and thumbnail).

The pipeline follows PS3.4 N.2 for what a rendered resource needs (PS3.18 8.3.5):

1. decode the frame with pydicom (compressed syntaxes through the pylibjpeg / pyjpegls
   plugins; YBR colour comes out as RGB);
2. grayscale: Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence), then the VOI
   window — the request's ``window`` if given, else the dataset's first Window Center/Width
   (with its VOI LUT Function), else its VOI LUT Sequence, else the frame's min/max — to
   8 bits; MONOCHROME1 is inverted so that the image always displays as it should;
   colour: RGB as decoded (PALETTE COLOR through its LUT), scaled to 8 bits;
3. viewport: an optional source region (``sx, sy, sw, sh``; negative sizes flip), then the
   image scaled to fit ``vw x vh`` keeping its aspect ratio;
4. encode with Pillow.

Work is bounded (:class:`Limits`): a stored frame of more than ``max_source_pixels`` is
refused before it is decoded (:class:`TooLarge`); the output is never larger than
``max_size`` on a side (the HTTP face refuses a bigger viewport; an image bigger than that
with no viewport is scaled down to fit); a frame much larger than the output is reduced by
block averaging right after decoding; the modality and VOI steps run over strips of rows, so
that their floating-point intermediates stay small whatever the frame size.

An image whose Image Pixel module is incomplete or unusable, whose code stream the decoders
refuse, or whose rescale or palette attributes are malformed raises
:class:`~gateway.imaging.pixel_description.UnreadablePixels` naming why, never a decoder's
own exception.

Everything here is a pure function of a dataset and :class:`RenderOptions`; the HTTP face
parses query parameters into these types.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, pixel_array

from gateway.imaging.pixel_description import UnreadablePixels, decoding_failed, describe

JPEG = "image/jpeg"
PNG = "image/png"
IMAGE_TYPES = (JPEG, PNG)

WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")
_DICOM_FUNCTIONS = {"LINEAR": "linear", "LINEAR_EXACT": "linear-exact", "SIGMOID": "sigmoid"}

#: Pixel-carrying attributes; an instance with none of them is not an image.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


class NotAnImage(ValueError):
    """The instance has no pixel data (a report, a PDF, a presentation state...)."""


class FrameOutOfRange(ValueError):
    """A frame number past the instance's Number of Frames."""


class TooLarge(ValueError):
    """The stored frame has more pixels than :attr:`Limits.max_source_pixels`."""


class RegionOutside(ValueError):
    """The viewport's source region does not meet the image."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one rendering may cost (the HTTP face fills these in from the settings)."""

    max_size: int = 4096
    """Largest output width and height."""
    max_source_pixels: int = 1 << 25
    """Largest stored frame (Rows x Columns) decoded to render it."""


#: Pixels per strip of rows in the modality / VOI steps (float64: ~8 MiB per intermediate).
_STRIP_PIXELS = 1 << 20


@dataclass(frozen=True, slots=True)
class Window:
    center: float
    width: float
    function: str = "linear"

    def __post_init__(self) -> None:
        if self.function not in WINDOW_FUNCTIONS:
            raise ValueError(f"window function {self.function!r} is not one of "
                             f"{', '.join(WINDOW_FUNCTIONS)}")
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError("window center and width must be finite numbers")
        if self.width <= 0 or (self.function == "linear" and self.width < 1):
            raise ValueError("window width must be > 0 (>= 1 for the linear function)")


@dataclass(frozen=True, slots=True)
class Viewport:
    width: int
    height: int
    region: tuple[int, int, int, int] | None = None
    """``(sx, sy, sw, sh)`` in source pixels; a negative ``sw``/``sh`` flips."""

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError("viewport width and height must be positive")
        if self.region is not None and (self.region[2] == 0 or self.region[3] == 0):
            raise ValueError("viewport region width and height must not be zero")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    media_type: str = JPEG
    quality: int = 90
    window: Window | None = None
    viewport: Viewport | None = None


# -- pure steps ---------------------------------------------------------------------------


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """VOI windowing to 0..255 (PS3.3 C.11.2.1.2 for linear, linear exact and sigmoid)."""
    x = values.astype(np.float64, copy=False)
    c, w = window.center, window.width
    if window.function == "sigmoid":
        y = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700.0, 700.0)))
    elif window.function == "linear-exact":
        y = np.clip(((x - c) / w + 0.5) * 255.0, 0.0, 255.0)
        y = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, y))
    else:
        low = c - 0.5 - (w - 1) / 2
        high = c - 0.5 + (w - 1) / 2
        span = max(w - 1, 1e-9)
        y = ((x - (c - 0.5)) / span + 0.5) * 255.0
        y = np.where(x <= low, 0.0, np.where(x > high, 255.0, y))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def min_max_window(values: np.ndarray) -> Window:
    """The window that maps the frame's own range onto 0..255."""
    return _range_window(float(np.min(values)), float(np.max(values)))


def _range_window(lo: float, hi: float) -> Window:
    if hi <= lo:
        return Window(lo, 1.0, "linear-exact")
    return Window((lo + hi) / 2, hi - lo, "linear-exact")


def invert(image8: np.ndarray) -> np.ndarray:
    """MONOCHROME1: minimum is white."""
    return (255 - image8).astype(np.uint8)


def fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` (w, h) scaled to fit in ``box`` (w, h), aspect ratio kept, at least 1x1."""
    w, h = size
    scale = min(box[0] / w, box[1] / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def crop(image: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """The source region ``(sx, sy, sw, sh)``; negative sizes flip that axis."""
    sx, sy, sw, sh = region
    rows, cols = image.shape[:2]
    x0, x1 = sorted((sx, sx + sw))
    y0, y1 = sorted((sy, sy + sh))
    x0, x1 = max(0, x0), min(cols, x1)
    y0, y1 = max(0, y0), min(rows, y1)
    if x1 <= x0 or y1 <= y0:
        raise RegionOutside("viewport region lies outside the image")
    out = image[y0:y1, x0:x1]
    if sw < 0:
        out = out[:, ::-1]
    if sh < 0:
        out = out[::-1]
    return out


# -- dataset-aware steps -------------------------------------------------------------------


def is_image(ds: Dataset) -> bool:
    return any(tag in ds for tag in _PIXEL_TAGS)


def number_of_frames(ds: Dataset) -> int:
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n = 1
    return max(1, n)


def _frame_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """A functional group item for the frame (per-frame first, then shared)."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index),
                      ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and len(seq) > i and sequence in seq[i] and seq[i][sequence].value:
            return seq[i][sequence].value[0]
    return None


def _first(value: object) -> object:
    """The first value of a multi-valued attribute (the value itself when single)."""
    if isinstance(value, str | bytes):
        return value
    try:
        return value[0]  # type: ignore[index]
    except (TypeError, IndexError):
        return value


def dataset_window(ds: Dataset, index: int = 0) -> Window | None:
    """The first window of the dataset (or of the frame's VOI functional group)."""
    src: Dataset = _frame_group(ds, index, "FrameVOILUTSequence") or ds
    if "WindowCenter" not in src or "WindowWidth" not in src:
        return None
    center, width = _first(src.WindowCenter), _first(src.WindowWidth)
    function = _DICOM_FUNCTIONS.get(str(src.get("VOILUTFunction", "LINEAR")).upper(), "linear")
    try:
        return Window(float(center), float(width), function)
    except (TypeError, ValueError):
        return None


def _number(ds: Dataset, keyword: str, tag: str, default: float) -> float:
    """A DS value as a float, ``default`` when absent or empty; a value that is not a
    number is named (PS3.5 6.2: DS is a decimal string)."""
    raw = ds.get(keyword)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        shown = str(raw)[:40]
        name = re.sub(r"(?<!^)(?=[A-Z])", " ", keyword)
        raise UnreadablePixels(f"{name} ({tag}) is {shown!r}, not a number")
    return value


def _modality(arr: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    group = _frame_group(ds, index, "PixelValueTransformationSequence")
    if group is not None and "RescaleSlope" in group:
        slope = _number(group, "RescaleSlope", "0028,1053", 1.0)
        intercept = _number(group, "RescaleIntercept", "0028,1052", 0.0)
        return arr.astype(np.float64) * slope + intercept
    if "ModalityLUTSequence" not in ds and "RescaleSlope" in ds:
        slope = _number(ds, "RescaleSlope", "0028,1053", 1.0)
        intercept = _number(ds, "RescaleIntercept", "0028,1052", 0.0)
        if slope == 1.0 and intercept == 0.0:
            return arr
        return arr.astype(np.float64) * slope + intercept
    return apply_modality_lut(arr, ds)


def _to_8bit_color(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored", 8) or 8)
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        bits = 16
    return np.clip(arr.astype(np.uint32) >> max(0, bits - 8), 0, 255).astype(np.uint8)


def _dimensions(ds: Dataset) -> tuple[int, int]:
    """``(columns, rows)`` as the dataset states them (0 when absent or malformed)."""
    try:
        return int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)
    except (TypeError, ValueError):
        return 0, 0


def _output_size(size: tuple[int, int], options: RenderOptions, limits: Limits
                 ) -> tuple[int, int]:
    """The size the whole frame ``size`` (w, h) is rendered at (no source region)."""
    vp = options.viewport
    if vp is not None:
        return fit(size, (min(vp.width, limits.max_size), min(vp.height, limits.max_size)))
    if size[0] > limits.max_size or size[1] > limits.max_size:
        return fit(size, (limits.max_size, limits.max_size))
    return size


def reduce(arr: np.ndarray, k: int, *, average: bool = True) -> np.ndarray:
    """``arr`` (H, W[, C]) shrunk by ``k`` on both axes: each k x k block becomes its mean
    (rounded, same dtype) or, with ``average=False`` (palette indexes), its first pixel."""
    if k < 2:
        return arr
    if not average:
        return arr[::k, ::k]
    h, w = arr.shape[0] // k * k, arr.shape[1] // k * k
    blocks = arr[:h, :w].reshape(h // k, k, w // k, k, *arr.shape[2:])  # a view
    mean = blocks.mean(axis=(1, 3))
    if np.issubdtype(arr.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(arr.dtype)


def _map_rows(arr: np.ndarray, step_fn) -> np.ndarray:
    """``step_fn`` (rows of ``arr`` → 8-bit rows) applied strip by strip into one array."""
    step = max(1, _STRIP_PIXELS // max(1, arr.shape[1] if arr.ndim > 1 else 1))
    first = step_fn(arr[:step])
    out = np.empty((arr.shape[0], *first.shape[1:]), np.uint8)
    out[: first.shape[0]] = first
    for s in range(step, arr.shape[0], step):
        out[s : s + step] = step_fn(arr[s : s + step])
    return out


def _grayscale(arr: np.ndarray, ds: Dataset, index: int, options: RenderOptions
               ) -> np.ndarray:
    window = options.window or dataset_window(ds, index)
    voi_lut = window is None and "VOILUTSequence" in ds

    def values(rows: np.ndarray) -> np.ndarray:
        v = _modality(rows, ds, index)
        return apply_voi(v, ds, index=0) if voi_lut else v

    if window is None:  # the frame's own range, one strip at a time
        step = max(1, _STRIP_PIXELS // max(1, arr.shape[1]))
        lo, hi = math.inf, -math.inf
        for s in range(0, arr.shape[0], step):
            v = values(arr[s : s + step])
            lo, hi = min(lo, float(np.min(v))), max(hi, float(np.max(v)))
        window = _range_window(lo, hi)
    return _map_rows(arr, lambda rows: apply_window(values(rows), window))


def render_frame(ds: Dataset, index: int, options: RenderOptions,
                 limits: Limits = Limits()) -> np.ndarray:  # noqa: B008 - frozen
    """Frame ``index`` (0-based) of ``ds`` as 8-bit grayscale (H, W) or RGB (H, W, 3)."""
    if not is_image(ds):
        raise NotAnImage("the instance has no pixel data")
    frames = number_of_frames(ds)
    if not 0 <= index < frames:
        raise FrameOutOfRange(f"frame {index + 1} requested, the instance has {frames}")
    cols, rows = _dimensions(ds)
    if cols * rows > limits.max_source_pixels:
        raise TooLarge(f"the frame is {cols}x{rows} pixels, more than the "
                       f"{limits.max_source_pixels} pixels rendered here")
    described = describe(ds, decode=True)
    ts = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    try:
        arr = pixel_array(ds, index=index) if frames > 1 else pixel_array(ds)
    except Exception as exc:  # noqa: BLE001 - whatever the decoder says, named
        raise decoding_failed(exc, ts) from None
    try:
        return _render_array(ds, arr, index, described.photometric, described.samples,
                             options, limits)
    except (RegionOutside, UnreadablePixels):
        raise
    except (ArithmeticError, AttributeError, IndexError, KeyError, TypeError,
            ValueError) as exc:
        # a malformed LUT, window or rescale value of the dataset: named, not a server error
        raise UnreadablePixels(
            f"the pixel data cannot be rendered: {type(exc).__name__}: {exc}") from None


def _render_array(ds: Dataset, arr: np.ndarray, index: int, photometric: str, samples: int,
                  options: RenderOptions, limits: Limits) -> np.ndarray:
    vp = options.viewport
    target = None
    if vp is None or vp.region is None:  # shrink early what will be shrunk anyway
        target = _output_size((arr.shape[1], arr.shape[0]), options, limits)
        arr = reduce(arr, min(arr.shape[1] // target[0], arr.shape[0] // target[1]),
                     average=photometric != "PALETTE COLOR")

    if photometric == "PALETTE COLOR":
        for colour, tag in (("Red", "1101"), ("Green", "1102"), ("Blue", "1103")):
            if f"{colour}PaletteColorLookupTableDescriptor" not in ds:
                raise UnreadablePixels(f"{colour} Palette Color Lookup Table Descriptor "
                                       f"(0028,{tag}) is missing (PALETTE COLOR)")
        image = _map_rows(arr, lambda r: _to_8bit_color(apply_color_lut(r, ds), ds))
    elif samples > 1 or arr.ndim == 3:
        image = _map_rows(arr, lambda r: _to_8bit_color(r, ds))
    else:
        image = _grayscale(arr, ds, index, options)
        if photometric == "MONOCHROME1":
            image = invert(image)

    if target is None:  # a source region: cropped, then fitted to the viewport
        image = crop(image, vp.region)
        target = fit((image.shape[1], image.shape[0]),
                     (min(vp.width, limits.max_size), min(vp.height, limits.max_size)))
    size = target
    if size != (image.shape[1], image.shape[0]):
        pil = Image.fromarray(np.ascontiguousarray(image))
        image = np.asarray(pil.resize(size, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(image)


def encode(image: np.ndarray, media_type: str = JPEG, quality: int = 90) -> bytes:
    """JPEG (baseline, ``quality`` 1-100) or PNG bytes of an 8-bit image."""
    pil = Image.fromarray(image)
    buf = io.BytesIO()
    if media_type == PNG:
        pil.save(buf, format="PNG")
    elif media_type == JPEG:
        pil.save(buf, format="JPEG", quality=max(1, min(100, quality)))
    else:
        raise ValueError(f"cannot encode {media_type}")
    return buf.getvalue()


def render(ds: Dataset, index: int, options: RenderOptions,
           limits: Limits = Limits()) -> bytes:  # noqa: B008 - frozen
    return encode(render_frame(ds, index, options, limits), options.media_type,
                  options.quality)


def encapsulated_document(ds: Dataset) -> tuple[str, bytes] | None:
    """``(MIME type, bytes)`` of an encapsulated document (PDF, CDA...), else ``None``."""
    if "EncapsulatedDocument" not in ds:
        return None
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None and 0 <= int(length) <= len(data):
        data = data[: int(length)]
    mime = str(ds.get("MIMETypeOfEncapsulatedDocument", "") or "application/octet-stream")
    return mime.strip().lower(), data
