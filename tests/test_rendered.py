"""WADO-RS rendered and thumbnail resources through real HTTP against ``drimbox serve``.

Studies arrive through dcmtk ``storescu``; each test runs on both index back-ends.
"""

from __future__ import annotations

import email
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import BACKENDS, Gateway, module_gateway
from dicom_factory import make_instance
from dicomweb_data import StudyFiles, write_study
from peers import storescu
from PIL import Image
from pydicom import dcmread
from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage

PUBLIC = "https://images.chu-exemple.fr/drimbox"


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Gateway, StudyFiles]]:
    """One gateway per back-end with the study and a multi-frame image, shared by the tests:
    they only read."""
    tmp_path = tmp_path_factory.mktemp(f"rendered-{request.param}")
    with module_gateway(request.param, tmp_path, DRIMBOX_PUBLIC_URL=PUBLIC) as gw:
        yield gw, _load(gw, tmp_path)


def _load(gw: Gateway, tmp_path: Path) -> StudyFiles:
    data = write_study(tmp_path / "study")
    # A three-frame grayscale image (frames 0, 2000, 4000) in its own series.
    mf = make_instance(sop_class=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                       study_uid=data.study_uid, series_number=5, rows=8, cols=10)
    mf.NumberOfFrames = 3
    mf.PixelData = np.stack([np.full((8, 10), v, np.uint16) for v in (0, 2000, 4000)]).tobytes()
    mf.FrameIncrementPointer = 0x00181063
    mf.FrameTime = 40
    mf.WindowCenter = 2000
    mf.WindowWidth = 4000
    path = tmp_path / "study" / "MF.dcm"
    mf.save_as(path, enforce_file_format=True)
    data.files.append(path)
    data.by_sop[str(mf.SOPInstanceUID)] = path
    storescu(data.files, gw.dicom_port)
    return data


def one(data: StudyFiles, series: str) -> tuple[str, Path]:
    path = data.series_of(series)[0]
    return str(dcmread(path).SOPInstanceUID), path


def get(gw, path: str, params: dict | None = None, **headers: str) -> httpx.Response:
    return gw.http.get(f"/dicom-web{path}", params=params, headers=headers, timeout=30)


def image(r: httpx.Response) -> Image.Image:
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(r.content))
    img.load()
    return img


def parts(r: httpx.Response) -> list[email.message.Message]:
    assert r.status_code == 200, r.text
    raw = f"Content-Type: {r.headers['content-type']}\r\n\r\n".encode() + r.content
    msg = email.message_from_bytes(raw)
    assert msg.is_multipart()
    return list(msg.get_payload())


def test_instance_rendered_jpeg_png_and_window(loaded) -> None:
    gw, data = loaded
    st, se = data.study_uid, data.ct_series
    sop, path = one(data, se)
    base = f"/studies/{st}/series/{se}/instances/{sop}"
    stored = dcmread(path).pixel_array.astype(float)
    hu = stored * float(dcmread(path).RescaleSlope) + float(dcmread(path).RescaleIntercept)

    jpeg = get(gw, f"{base}/rendered")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert image(jpeg).format == "JPEG" and image(jpeg).size == (64, 64)
    png = get(gw, f"{base}/rendered", Accept="image/png")
    assert png.headers["content-type"] == "image/png" and image(png).size == (64, 64)
    # The accept query parameter wins over the header (PS3.18 8.3.3.1).
    assert get(gw, f"{base}/rendered", {"accept": "image/png"},
               Accept="image/jpeg").headers["content-type"] == "image/png"

    # Dataset window (40/400 HU) by default; our own linear-exact window on request.
    default = np.asarray(image(png)).astype(int)
    c, w = 500.0, 1000.0
    asked = np.asarray(image(get(gw, f"{base}/rendered", {"window": f"{c},{w},linear-exact"},
                                 Accept="image/png"))).astype(int)
    expected = np.clip(np.rint(((hu - c) / w + 0.5) * 255), 0, 255)
    expected[hu <= c - w / 2] = 0
    expected[hu > c + w / 2] = 255
    assert np.abs(asked - expected).max() <= 1
    assert not np.array_equal(asked, default)
    # The pixels of the dataset's window: everything above 240 HU is white.
    assert (default[hu > 240] == 255).all() and (default[hu <= -160] == 0).all()
    # A window far below every value gives white, far above gives black.
    assert (np.asarray(image(get(gw, f"{base}/rendered", {"window": "-5000,10"},
                                 Accept="image/png"))) == 255).all()
    assert (np.asarray(image(get(gw, f"{base}/rendered", {"window": "9000,10"},
                                 Accept="image/png"))) == 0).all()

    # quality changes the JPEG; viewport scales keeping the aspect ratio.
    low = get(gw, f"{base}/rendered", {"quality": "5"})
    assert len(low.content) < len(jpeg.content)
    assert image(get(gw, f"{base}/rendered", {"viewport": "32,16"})).size == (16, 16)

    # ETag and 304.
    etag = jpeg.headers["etag"]
    assert get(gw, f"{base}/rendered", **{"If-None-Match": etag}).status_code == 304
    assert get(gw, f"{base}/rendered", {"quality": "5"},
               **{"If-None-Match": etag}).status_code == 200


def test_monochrome1_renders_inverted(loaded) -> None:
    gw, data = loaded
    sop, _ = one(data, data.cr_series)  # ramp 0..4095 left to right, MONOCHROME1
    img = np.asarray(image(get(gw, f"/studies/{data.study_uid}/series/{data.cr_series}"
                                   f"/instances/{sop}/rendered", Accept="image/png"))).astype(int)
    assert img.shape == (40, 80)
    assert img[:, 0].min() >= 250 and img[:, -1].max() <= 5
    assert np.all(np.diff(img[0]) <= 0)


def test_frames_and_multipart(loaded) -> None:
    gw, data = loaded
    st = data.study_uid
    mf_path = data.files[-1]
    ds = dcmread(mf_path)
    base = f"/studies/{st}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    values = [int(np.asarray(image(get(gw, f"{base}/frames/{n}/rendered",
                                       Accept="image/png")))[0, 0]) for n in (1, 2, 3)]
    assert values == [0, 128, 255]  # the dataset's 2000/4000 window
    r = get(gw, f"{base}/frames/1,3/rendered", Accept="image/png")
    assert r.headers["content-type"].startswith('multipart/related; type="image/png"')
    got = parts(r)
    assert [p["Content-Location"] for p in got] == [
        f"{PUBLIC}/dicom-web{base}/frames/1/rendered", f"{PUBLIC}/dicom-web{base}/frames/3/rendered"]
    assert [np.asarray(Image.open(io.BytesIO(p.get_payload(decode=True))))[0, 0]
            for p in got] == [0, 255]
    assert get(gw, f"{base}/frames/4/rendered").status_code == 404
    assert get(gw, f"{base}/frames/1,4/rendered").status_code == 404
    assert get(gw, f"{base}/frames/0/rendered").status_code == 400
    assert get(gw, f"{base}/frames/1;2/rendered").status_code == 400
    assert get(gw, f"{base}/frames/x/thumbnail").status_code == 400
    assert image(get(gw, f"{base}/frames/2/thumbnail")).size == (128, 102)

    # Series: one part per image instance; study: every image instance, never the PDF.
    ct = parts(get(gw, f"/studies/{st}/series/{data.ct_series}/rendered"))
    assert len(ct) == 5 and all(p.get_content_type() == "image/jpeg" for p in ct)
    assert all(p["Content-Location"].startswith(PUBLIC + "/dicom-web/") for p in ct)
    assert len(parts(get(gw, f"/studies/{st}/rendered"))) == len(data.files) - 1


def test_thumbnails(loaded) -> None:
    gw, data = loaded
    st = data.study_uid
    cr_sop, _ = one(data, data.cr_series)
    assert image(get(gw, f"/studies/{st}/series/{data.cr_series}/instances/{cr_sop}"
                         "/thumbnail")).size == (128, 64)
    assert image(get(gw, f"/studies/{st}/series/{data.cr_series}/instances/{cr_sop}/thumbnail",
                     {"viewport": "64,64"})).size == (64, 32)
    series = get(gw, f"/studies/{st}/series/{data.ct_series}/thumbnail")
    assert image(series).size == (128, 128) and series.headers["content-type"] == "image/jpeg"
    study = get(gw, f"/studies/{st}/thumbnail", Accept="image/png")
    assert image(study).format == "PNG" and image(study).size == (128, 128)
    # The study's representative is the middle instance of its first image series (CT #3).
    middle = next(p for p in data.series_of(data.ct_series)
                  if dcmread(p).InstanceNumber == 3)
    mid_sop = str(dcmread(middle).SOPInstanceUID)
    same = get(gw, f"/studies/{st}/series/{data.ct_series}/instances/{mid_sop}/thumbnail",
               Accept="image/png")
    assert same.content == study.content


def test_non_image_instances(loaded) -> None:
    gw, data = loaded
    st, pdf_series = data.study_uid, data.pdf_series
    sop, path = one(data, pdf_series)
    base = f"/studies/{st}/series/{pdf_series}/instances/{sop}"
    doc = get(gw, f"{base}/rendered")
    assert doc.status_code == 200 and doc.headers["content-type"] == "application/pdf"
    ds = dcmread(path)
    assert doc.content == bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength]
    assert get(gw, f"{base}/rendered", Accept="image/jpeg").status_code == 406
    assert get(gw, f"{base}/thumbnail").status_code == 406
    assert get(gw, f"{base}/frames/1/rendered").status_code == 406
    assert get(gw, f"/studies/{st}/series/{pdf_series}/rendered").status_code == 406
    assert get(gw, f"/studies/{st}/series/{pdf_series}/thumbnail").status_code == 406


def test_errors(loaded) -> None:
    gw, data = loaded
    st, se = data.study_uid, data.ct_series
    sop, _ = one(data, se)
    base = f"/studies/{st}/series/{se}/instances/{sop}"
    r = get(gw, f"/studies/{st}/series/{se}/instances/1.2.a/rendered")
    assert r.status_code == 400 and "instance UID '1.2.a'" in r.text
    r = get(gw, f"/studies/{st}/series/x/thumbnail")
    assert r.status_code == 400 and "series UID 'x'" in r.text
    assert get(gw, "/studies/1.2.3/rendered").status_code == 404
    assert get(gw, "/studies/1.2.3/thumbnail").status_code == 404
    assert get(gw, f"/studies/{st}/series/1.2.3/thumbnail").status_code == 404
    assert get(gw, f"/studies/{st}/series/{se}/instances/1.2.3/rendered").status_code == 404
    assert get(gw, f"/studies/{st}/series/{data.mr_series}/instances/{sop}/rendered"
               ).status_code == 404
    for bad in ({"quality": "0"}, {"quality": "high"}, {"window": "a,b"}, {"window": "40"},
                {"window": "40,0"}, {"window": "40,400,cubic"}, {"viewport": "0,10"},
                {"viewport": "10"}, {"viewport": "10,10,500,500,10,10"}):
        r = get(gw, f"{base}/rendered", bad)
        assert r.status_code == 400, (bad, r.status_code, r.text)
    assert get(gw, f"{base}/rendered", Accept="image/gif").status_code == 406
    # Unsupported parameters are ignored, as PS3.18 asks.
    assert get(gw, f"{base}/rendered", {"annotation": "patient"}).status_code == 200


def test_dicomweb_client_reads_rendered(loaded) -> None:
    from dicomweb_client.api import DICOMwebClient

    gw, data = loaded
    client = DICOMwebClient(url=f"{gw.url}/dicom-web")
    sop, _ = one(data, data.mr_series)  # RLE Lossless: decoded server-side
    png = client.retrieve_instance_rendered(data.study_uid, data.mr_series, sop,
                                            media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    jpeg = client.retrieve_instance_frames_rendered(data.study_uid, data.mr_series, sop, [1],
                                                    media_types=("image/jpeg",),
                                                    params={"viewport": "16,16"})
    assert Image.open(io.BytesIO(jpeg)).size == (16, 16)


# -- work limits: output size, source size, frame lists, absurd parameters ----------------


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def _reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (``clear_refs`` 5, Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def test_oversized_viewport_is_400_in_bounded_memory(loaded) -> None:
    """A viewport of 100000 x 100000 once made the server allocate the image it asked for
    (gigabytes, growing until the process died). Every rendering route now refuses a viewport
    beyond ``render_max_size`` (4096 by default) before any pixel is touched."""
    gw, data = loaded
    st, se = data.study_uid, data.ct_series
    sop, _ = one(data, se)
    mf = dcmread(data.files[-1], stop_before_pixels=True)
    base = f"/studies/{st}/series/{se}/instances/{sop}"
    mf_base = f"/studies/{st}/series/{mf.SeriesInstanceUID}/instances/{mf.SOPInstanceUID}"
    image(get(gw, f"{base}/rendered"))  # warm up: imports, first decode
    pid = gw.proc.pid
    before = _status_kib(pid, "VmRSS")
    _reset_peak(pid)
    for path in (f"{base}/rendered", f"{base}/thumbnail", f"{base}/frames/1/rendered",
                 f"{mf_base}/frames/1,2/rendered", f"{mf_base}/frames/2/thumbnail",
                 f"/studies/{st}/series/{se}/rendered", f"/studies/{st}/series/{se}/thumbnail",
                 f"/studies/{st}/rendered", f"/studies/{st}/thumbnail"):
        r = gw.http.get(f"/dicom-web{path}", params={"viewport": "100000,100000"},
                        timeout=20)
        assert r.status_code == 400, (path, r.status_code, r.text[:200])
        assert ("viewport 100000x100000 exceeds the limit 4096x4096 "
                "(DRIMBOX_RENDER_MAX_SIZE)") in r.json()["detail"], path
    growth_mib = (_status_kib(pid, "VmHWM") - before) / 1024
    assert growth_mib < 100, f"server peak RSS grew by {growth_mib:.0f} MiB"
    # At the limit it still renders (a 64 x 64 image fitted to 4096 x 4096).
    assert image(get(gw, f"{base}/rendered", {"viewport": "4096,4096"})).size == (4096, 4096)
    assert get(gw, f"{base}/rendered", {"viewport": "4097,16"}).status_code == 400


def test_absurd_rendering_parameters_are_400(loaded) -> None:
    gw, data = loaded
    st, se = data.study_uid, data.ct_series
    sop, _ = one(data, se)
    base = f"/studies/{st}/series/{se}/instances/{sop}"
    huge = "9" * 5000  # more digits than int() reads
    for bad in ({"quality": huge}, {"quality": "\u00b2"}, {"quality": "-5"},
                {"viewport": f"{huge},10"}, {"viewport": "nan,10"}, {"viewport": "1e400,10"},
                {"viewport": "inf,inf"}, {"viewport": f"10,10,0,0,{huge},5"},
                {"window": f"{huge},10"}, {"window": "nan,nan"}, {"window": f"40,{huge}"}):
        r = get(gw, f"{base}/rendered", bad)
        assert r.status_code == 400, (bad, r.status_code, r.text[:200])
        r = get(gw, f"{base}/thumbnail", bad)
        assert r.status_code in (200, 400), (bad, r.status_code)  # thumbnails ignore some
    r = get(gw, f"{base}/frames/{huge}/rendered")
    assert r.status_code == 400, r.text[:200]
    r = get(gw, f"{base}/frames/{huge}/thumbnail")
    assert r.status_code == 400, r.text[:200]
    for frames in ("\u00b2", "1,\u0661", "\uff11"):  # digits of other scripts: not frame numbers
        for suffix in ("/rendered", ""):
            r = get(gw, f"{base}/frames/{frames}{suffix}")
            assert r.status_code == 400, (frames, suffix, r.status_code, r.text[:200])


def test_frame_list_is_capped_not_multiplied(loaded) -> None:
    """A frame list repeating one frame thousands of times made one request render (or send)
    that frame thousands of times. Repeats are kept (PS3.18: frames in the order asked) but
    the list is capped by ``max_frames_per_request`` (1000 by default)."""
    gw, data = loaded
    ds = dcmread(data.files[-1], stop_before_pixels=True)
    base = f"/studies/{data.study_uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    many = ",".join(["1"] * 5000)
    for suffix in ("/rendered", ""):
        r = get(gw, f"{base}/frames/{many}{suffix}")
        assert r.status_code == 400, (suffix, r.status_code)
        assert r.json()["detail"] == ("5000 frames requested, more than the limit 1000 "
                                      "(DRIMBOX_MAX_FRAMES_PER_REQUEST)")
    ok = ",".join(["2", "1"] * 500)  # exactly the limit: served, in the order asked
    got = parts(get(gw, f"{base}/frames/{ok}/rendered", Accept="image/png"))
    assert len(got) == 1000
    assert [p["Content-Location"].rsplit("/", 2)[1] for p in got[:3]] == ["2", "1", "2"]


@pytest.fixture
def limited(gateway_factory, tmp_path: Path):
    """A gateway with small limits: renderings of at most 48 x 48, frames of at most 4096
    pixels decoded, frame lists of at most 3."""
    gw = gateway_factory(DRIMBOX_RENDER_MAX_SIZE="48", DRIMBOX_RENDER_MAX_SOURCE_PIXELS="4096",
                         DRIMBOX_MAX_FRAMES_PER_REQUEST="3").start()
    folder = tmp_path / "limited"
    folder.mkdir()
    fits = make_instance(rows=64, cols=64, instance_number=1)
    over = make_instance(rows=65, cols=64, instance_number=2, study_uid=str(fits.StudyInstanceUID),
                         series_uid=str(fits.SeriesInstanceUID))
    mf = make_instance(sop_class=MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                       study_uid=str(fits.StudyInstanceUID), series_number=2, rows=8, cols=10)
    mf.NumberOfFrames = 3
    mf.PixelData = np.stack([np.full((8, 10), v, np.uint16) for v in (0, 2000, 4000)]).tobytes()
    mf.FrameIncrementPointer = 0x00181063
    mf.FrameTime = 40
    files = []
    for name, ds in (("fits", fits), ("over", over), ("mf", mf)):
        files.append(folder / f"{name}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    storescu(files, gw.dicom_port)
    urls = {name: f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                  f"/instances/{ds.SOPInstanceUID}" for name, ds in
            (("fits", fits), ("over", over), ("mf", mf))}
    return gw, urls


def test_render_limits_at_and_just_above(limited) -> None:
    gw, urls = limited
    fits = urls["fits"]
    # Output size: at the limit renders, one pixel more is 400 naming the setting.
    assert image(get(gw, f"{fits}/rendered", {"viewport": "48,48"})).size == (48, 48)
    assert image(get(gw, f"{fits}/thumbnail", {"viewport": "48,20"})).size == (20, 20)
    for path in (f"{fits}/rendered", f"{fits}/thumbnail", f"{fits}/frames/1/rendered"):
        r = get(gw, path, {"viewport": "49,48"})
        assert r.status_code == 400, path
        assert r.json()["detail"] == ("viewport 49x48 exceeds the limit 48x48 "
                                      "(DRIMBOX_RENDER_MAX_SIZE)")
    # No viewport: an image bigger than the limit is scaled down to fit it.
    assert image(get(gw, f"{fits}/rendered")).size == (48, 48)
    # Source size: 64 x 64 = 4096 pixels is decoded; 64 x 65 is refused before decoding.
    r = get(gw, f"{urls['over']}/rendered")
    assert r.status_code == 400
    assert "64x65 pixels" in r.text and "DRIMBOX_RENDER_MAX_SOURCE_PIXELS" in r.text
    assert get(gw, f"{urls['over']}/thumbnail").status_code == 400
    assert get(gw, f"{urls['over']}/frames/1/rendered").status_code == 400
    # ... but the instance is still served as DICOM.
    assert httpx.get(f"{gw.url}/dicom-web{urls['over']}", timeout=30).status_code == 200
    # Frame lists: three frames (repeats included) are served, four are 400.
    mf = urls["mf"]
    assert len(parts(get(gw, f"{mf}/frames/3,3,3/rendered"))) == 3
    r = get(gw, f"{mf}/frames/1,1,1,1/rendered")
    assert r.status_code == 400 and "more than the limit 3" in r.text
    assert httpx.get(f"{gw.url}/dicom-web{mf}/frames/2,2,2", timeout=30).status_code == 200
    r = httpx.get(f"{gw.url}/dicom-web{mf}/frames/2,2,2,2", timeout=30)
    assert r.status_code == 400 and "DRIMBOX_MAX_FRAMES_PER_REQUEST" in r.text


def test_large_frame_renders_in_bounded_memory(gateway, tmp_path: Path) -> None:
    """A 4096 x 4096 16-bit frame (32 MiB stored) rendered whole and as a thumbnail: the
    server's peak RSS grows by a small multiple of the stored frame, not by the eight bytes a
    pixel of floating-point intermediates the whole-frame pipeline used to allocate (it
    grew by some 600 MiB; now about 130, the stored file, its decoded frame and the image)."""
    ds = make_instance(rows=4096, cols=4096)
    ds.PixelData = (np.arange(4096 * 4096, dtype=np.uint32) % 4096).astype(np.uint16).tobytes()
    for keyword in ("WindowCenter", "WindowWidth"):  # the frame's own range: two passes
        if keyword in ds:
            delattr(ds, keyword)
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    storescu([path], gateway.dicom_port)
    base = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/" \
           f"{ds.SOPInstanceUID}"
    image(get(gateway, f"{base}/thumbnail", {"viewport": "16,16"}))  # warm up
    pid = gateway.proc.pid
    before = _status_kib(pid, "VmRSS")
    _reset_peak(pid)
    assert image(get(gateway, f"{base}/thumbnail")).size == (128, 128)
    assert image(get(gateway, f"{base}/rendered")).size == (4096, 4096)
    growth_mib = (_status_kib(pid, "VmHWM") - before) / 1024
    assert growth_mib < 256, f"server peak RSS grew by {growth_mib:.0f} MiB"
