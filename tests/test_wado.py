"""WADO-RS retrieve against a real ``drimbox serve``, on both back-ends.

Studies are loaded over real C-STORE (dcmtk storescu, each file sent in its own transfer
syntax), then read back with dicomweb-client (an independent WADO-RS client) and with httpx
for Accept edge cases. Multipart bodies are split with the standard library's MIME parser,
not with our writer. What comes back is compared with what was sent: byte for byte when sent
as stored, pixel for pixel after a lossless transcode.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jpeg_ls
import numpy as np
import pytest
from conftest import BACKENDS, Gateway, _pg_database
from dicom_factory import TEST_ROOT, dataset_bytes, make_instance
from dicomweb_client.api import DICOMwebClient
from peers import storescu
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
    generate_uid,
)
from samples import SAMPLES as ALL_SAMPLES

EXPLICIT = str(ExplicitVRLittleEndian)
DEFLATED = str(DeflatedExplicitVRLittleEndian)
JLS = str(JPEGLSLossless)
RLE = str(RLELossless)
J2K = "1.2.840.10008.1.2.4.91"
MR = 'multipart/related; type="application/dicom"'
SAMPLES = ALL_SAMPLES / "wado-rs"


# -- data ------------------------------------------------------------------------------------


@dataclass
class Loaded:
    study: str
    series: dict[str, str] = field(default_factory=dict)
    """kind ("explicit", "implicit", "rle", "jls", "pdf", "multiframe") → series UID"""
    instances: dict[str, list[str]] = field(default_factory=dict)
    """kind → SOP Instance UIDs"""
    files: dict[str, Path] = field(default_factory=dict)
    """SOP Instance UID → file sent"""
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    """SOP Instance UID → decoded pixels of what was sent"""

    def kind_of(self, sop: str) -> str:
        return next(k for k, v in self.instances.items() if sop in v)


def _multiframe_jls(study: str, series: str, n: int) -> Dataset:
    ds = make_instance(sop_class="1.2.840.10008.5.1.4.1.1.7", study_uid=study,
                       series_uid=series, series_number=6, instance_number=1, seed=99)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 4096, size=(n, ds.Rows, ds.Columns)).astype(np.uint16)
    ds.NumberOfFrames = n
    ds.PixelData = frames.tobytes()
    ds.compress(JPEGLSLossless, frames, generate_instance_uid=False)
    return ds


def load_study(folder: Path, port: int) -> Loaded:
    """One study, six series: Explicit VR LE, Implicit VR LE, RLE, JPEG-LS lossless,
    an encapsulated PDF and a 3-frame JPEG-LS image; sent over C-STORE as stored."""
    folder.mkdir(parents=True, exist_ok=True)
    loaded = Loaded(generate_uid(TEST_ROOT))
    datasets: list[tuple[str, Dataset]] = []
    plan = [("explicit", EXPLICIT, 3), ("implicit", str(ImplicitVRLittleEndian), 1),
            ("rle", RLE, 2), ("jls", JLS, 2), ("deflated", DEFLATED, 1)]
    for number, (kind, ts, count) in enumerate(plan, start=1):
        se = loaded.series[kind] = generate_uid(TEST_ROOT)
        for i in range(count):
            ds = make_instance(transfer_syntax=ts if ts != JLS else EXPLICIT,
                               study_uid=loaded.study, series_uid=se, series_number=number,
                               instance_number=i + 1, seed=10 * number + i)
            if ts == JLS:
                ds.compress(JPEGLSLossless, generate_instance_uid=False)
            datasets.append((kind, ds))
    se = loaded.series["pdf"] = generate_uid(TEST_ROOT)
    datasets.append(("pdf", make_instance(sop_class=EncapsulatedPDFStorage, series_number=5,
                                          study_uid=loaded.study, series_uid=se)))
    se = loaded.series["multiframe"] = generate_uid(TEST_ROOT)
    datasets.append(("multiframe", _multiframe_jls(loaded.study, se, 3)))
    for k, (kind, ds) in enumerate(datasets):
        path = folder / f"IM{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sop = str(ds.SOPInstanceUID)
        loaded.instances.setdefault(kind, []).append(sop)
        loaded.files[sop] = path
        if "PixelData" in ds:
            loaded.pixels[sop] = dcmread(path).pixel_array
    storescu(list(loaded.files.values()), port)
    return loaded


@pytest.fixture(scope="module", params=BACKENDS)
def served(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[tuple[Gateway, Loaded]]:
    """One gateway per back-end with one loaded study, shared by the read-only tests."""
    tmp = tmp_path_factory.mktemp(f"wado-{request.param}")
    databases = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'index.sqlite'}"
    else:
        databases = _pg_database()
        url = next(databases)
    gw = Gateway(tmp / "data", url).start()
    try:
        yield gw, load_study(tmp / "study", gw.dicom_port)
    finally:
        gw.stop()
        if databases is not None:
            databases.close()  # drops the database


@pytest.fixture
def gateway_ro(served) -> Gateway:
    return served[0]


@pytest.fixture
def study(served) -> Loaded:
    return served[1]


def web(gateway) -> str:
    return f"{gateway.url}/dicom-web"


def client(gateway) -> DICOMwebClient:
    return DICOMwebClient(url=web(gateway))


# -- multipart reading (standard library, independent of dicomweb/multipart.py) --------------


@dataclass
class Part:
    content_type: str
    params: dict[str, str]
    body: bytes


def split(response: httpx.Response) -> list[Part]:
    ctype = response.headers["content-type"]
    raw = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + response.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert msg.is_multipart(), ctype
    assert response.content.endswith(b"--\r\n")  # closing delimiter present
    return [
        Part(p.get_content_type(), dict(p["Content-Type"].params), p.get_payload(decode=True))
        for p in msg.iter_parts()
    ]


def media_params(value: str) -> tuple[str, dict[str, str]]:
    msg = email.parser.Parser(policy=email.policy.HTTP).parsestr(f"Content-Type: {value}\n\n")
    return msg.get_content_type(), dict(msg["Content-Type"].params)


def get(gateway, path: str, accept: str | list[str] | None = None) -> httpx.Response:
    headers = []
    for a in [accept] if isinstance(accept, str) else accept or []:
        headers.append(("Accept", a))
    return gateway.http.get(f"{web(gateway)}{path}", headers=headers)


def check_instance_part(loaded: Loaded, part: Part, as_stored_expected: bool | None = None):
    """The part is a Part 10 file of a loaded instance, in the transfer syntax it states;
    byte-identical dataset when in the stored syntax, pixel-equal otherwise."""
    assert part.content_type == "application/dicom"
    ts = part.params["transfer-syntax"]
    ds = dcmread(io.BytesIO(part.body))
    sop = str(ds.SOPInstanceUID)
    assert ds.file_meta.TransferSyntaxUID == ts
    sent = loaded.files[sop]
    sent_ts = str(dcmread(sent, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if ts == sent_ts:
        tmp = io.BytesIO(part.body)
        assert _dataset_bytes_of(tmp.getvalue()) == dataset_bytes(sent)
    if as_stored_expected is not None:
        assert (ts == sent_ts) is as_stored_expected, (sop, ts, sent_ts)
    if sop in loaded.pixels:
        assert np.array_equal(ds.pixel_array, loaded.pixels[sop]), sop
    return sop, ts


def _dataset_bytes_of(data: bytes) -> bytes:
    assert data[128:132] == b"DICM"
    group_len = int.from_bytes(data[140:144], "little")
    return data[144 + group_len :]


# -- instances -------------------------------------------------------------------------------


def test_dicomweb_client_retrieves_study_series_instance_as_stored(gateway_ro, study) -> None:
    dw = client(gateway_ro)
    got = dw.retrieve_study(study.study, media_types=(("application/dicom", "*"),))
    assert sorted(str(d.SOPInstanceUID) for d in got) == sorted(study.files)
    for ds in got:
        sop = str(ds.SOPInstanceUID)
        sent = dcmread(study.files[sop])
        expected_ts = sent.file_meta.TransferSyntaxUID
        if expected_ts == ImplicitVRLittleEndian:
            expected_ts = ExplicitVRLittleEndian  # never Implicit VR on the web (PS3.18 8.7.3)
        assert ds.file_meta.TransferSyntaxUID == expected_ts
        if sop in study.pixels:
            assert np.array_equal(ds.pixel_array, study.pixels[sop])
        else:
            assert ds.EncapsulatedDocument == sent.EncapsulatedDocument

    # stable order: series number, then instance number
    order = [study.kind_of(str(d.SOPInstanceUID)) for d in got]
    assert order == ["explicit"] * 3 + ["implicit"] + ["rle"] * 2 + ["jls"] * 2 + [
        "deflated", "pdf", "multiframe"]

    series = dw.retrieve_series(study.study, study.series["rle"],
                                media_types=(("application/dicom", "*"),))
    assert [str(d.SOPInstanceUID) for d in series] == study.instances["rle"]
    assert all(d.file_meta.TransferSyntaxUID == RLE for d in series)
    # dicomweb-client's default (no transfer-syntax): Explicit VR Little Endian, decoded
    series = dw.retrieve_series(study.study, study.series["rle"])
    assert [d.file_meta.TransferSyntaxUID for d in series] == [EXPLICIT] * 2
    for ds in series:
        assert np.array_equal(ds.pixel_array, study.pixels[str(ds.SOPInstanceUID)])

    sop = study.instances["jls"][1]
    one = dw.retrieve_instance(study.study, study.series["jls"], sop)
    assert one.file_meta.TransferSyntaxUID == JLS
    assert np.array_equal(one.pixel_array, study.pixels[sop])


def test_as_stored_is_byte_identical(gateway_ro, study) -> None:
    r = get(gateway_ro, f"/studies/{study.study}", f"{MR}; transfer-syntax=*")
    assert r.status_code == 200, r.text
    ctype, params = media_params(r.headers["content-type"])
    assert (ctype, params["type"]) == ("multipart/related", "application/dicom")
    parts = split(r)
    assert len(parts) == len(study.files)
    for part in parts:
        sop, ts = check_instance_part(study, part)
        if study.kind_of(sop) != "implicit":
            stored = dcmread(study.files[sop], stop_before_pixels=True).file_meta.TransferSyntaxUID
            assert ts == stored
            assert _dataset_bytes_of(part.body) == dataset_bytes(study.files[sop])
        else:
            assert ts == EXPLICIT


def test_default_transfer_syntax_is_explicit_vr_little_endian(gateway_ro, study) -> None:
    """No transfer-syntax parameter: Explicit VR Little Endian (PS3.18 Table 8.7.3-2), also for
    */* and a missing Accept; lossless-compressed instances are decoded."""
    for accept in (MR, "*/*", None, "multipart/related"):
        r = get(gateway_ro, f"/studies/{study.study}", accept)
        assert r.status_code == 200, (accept, r.text)
        assert media_params(r.headers["content-type"])[1]["transfer-syntax"] == EXPLICIT
        parts = split(r)
        assert len(parts) == len(study.files)
        for part in parts:
            _, ts = check_instance_part(study, part)
            assert ts == EXPLICIT


@pytest.mark.parametrize(
    ("target", "source_kind"),
    [(JLS, "rle"), (JLS, "explicit"), (str(JPEG2000Lossless), "jls"), (RLE, "implicit"),
     (J2K, "rle")],
)
def test_lossless_transcoding_is_pixel_equal(gateway_ro, study, target, source_kind) -> None:
    r = get(gateway_ro, f"/studies/{study.study}/series/{study.series[source_kind]}",
            f"{MR}; transfer-syntax={target}")
    assert r.status_code == 200, r.text
    parts = split(r)
    assert [p.params["transfer-syntax"] for p in parts] == [target] * len(parts)
    sops = [check_instance_part(study, p, as_stored_expected=False)[0] for p in parts]
    assert sops == study.instances[source_kind]


def test_q_values_pick_as_stored_then_best_producible(gateway_ro, study) -> None:
    accept = (f"{MR}; transfer-syntax=1.2.840.10008.1.2.4.70; q=0.9, "
              f"{MR}; transfer-syntax={JLS}; q=0.8, {MR}; transfer-syntax={RLE}; q=0.3")
    r = get(gateway_ro, f"/studies/{study.study}", accept)
    assert r.status_code == 200, r.text
    assert "transfer-syntax" not in media_params(r.headers["content-type"])[1]  # mixed
    by_kind: dict[str, set[str]] = {}
    for part in split(r):
        sop, ts = check_instance_part(study, part)
        by_kind.setdefault(study.kind_of(sop), set()).add(ts)
    # RLE accepted (q=0.3): as stored; JPEG-LS accepted: as stored; the rest → JPEG-LS (0.8),
    # since JPEG lossless SV1 (q=0.9) cannot be encoded here.
    assert by_kind == {"explicit": {JLS}, "implicit": {JLS}, "rle": {RLE}, "jls": {JLS},
                       "deflated": {JLS}, "pdf": {JLS}, "multiframe": {JLS}}


def test_not_acceptable(gateway_ro, study) -> None:
    path = f"/studies/{study.study}"
    for accept in (
        f"{MR}; transfer-syntax=1.2.840.10008.1.2.4.50",  # lossy: never made from lossless
        f"{MR}; transfer-syntax={ImplicitVRLittleEndian}",  # not for web services
        f"{MR}; transfer-syntax={JLS}; q=0",
        "application/octet-stream",
        "application/json",
        'multipart/related; type="image/jpeg"',
    ):
        r = get(gateway_ro, path, accept)
        assert r.status_code == 406, (accept, r.status_code)
        assert "can send" in r.json()["detail"]


def test_bad_uid_and_not_found(gateway_ro, study) -> None:
    s, se = study.study, study.series["explicit"]
    sop = study.instances["explicit"][0]
    r = get(gateway_ro, "/studies/1.2.x3", MR)
    assert r.status_code == 400 and "'1.2.x3'" in r.json()["detail"]
    r = get(gateway_ro, f"/studies/{s}/series/{se}/instances/1..2", MR)
    assert r.status_code == 400 and "instance UID '1..2'" in r.json()["detail"]
    assert get(gateway_ro, "/studies/1.2.3.999", MR).status_code == 404
    assert get(gateway_ro, f"/studies/{s}/series/1.2.3.999", MR).status_code == 404
    assert get(gateway_ro, f"/studies/{s}/series/{study.series['rle']}/instances/{sop}",
               MR).status_code == 404  # instance exists, but not in that series
    other = load_study(Path(study.files[sop]).parent.parent / "other", gateway_ro.dicom_port)
    assert get(gateway_ro, f"/studies/{other.study}/series/{se}", MR).status_code == 404
    assert get(gateway_ro, "/studies/..%2F..%2Fetc", MR).status_code in (400, 404)


# -- frames and bulk data --------------------------------------------------------------------


def test_frames_with_dicomweb_client(gateway_ro, study) -> None:
    dw = client(gateway_ro)
    sop = study.instances["multiframe"][0]
    se = study.series["multiframe"]
    ref = study.pixels[sop]
    # as stored: JPEG-LS bitstreams, decodable to the frames sent
    frames = dw.retrieve_instance_frames(study.study, se, sop, [3, 1],
                                         media_types=(("image/jls", JLS),))
    assert len(frames) == 2
    for data, index in zip(frames, [2, 0], strict=True):
        assert data[:2] == b"\xff\xd8"  # a JPEG-LS code stream (SOI), not a DICOM item
        arr = jpeg_ls.decode_from_buffer(data)  # CharLS, independent of the server's path
        assert np.array_equal(np.frombuffer(arr, "<u2").reshape(64, 64), ref[index])
    # decoded: application/octet-stream, little endian native
    raw = dw.retrieve_instance_frames(study.study, se, sop, [2],
                                      media_types=(("application/octet-stream", EXPLICIT),))
    assert np.array_equal(np.frombuffer(raw[0], "<u2").reshape(64, 64), ref[1])
    # a native single-frame instance
    for kind in ("explicit", "implicit", "deflated", "rle"):
        sop2 = study.instances[kind][-1]
        raw = dw.retrieve_instance_frames(study.study, study.series[kind], sop2, [1])
        assert np.array_equal(np.frombuffer(raw[0], "<u2").reshape(64, 64), study.pixels[sop2])


def test_frames_content_types_and_errors(gateway_ro, study) -> None:
    s, se = study.study, study.series["multiframe"]
    sop = study.instances["multiframe"][0]
    base = f"/studies/{s}/series/{se}/instances/{sop}/frames"
    r = get(gateway_ro, f"{base}/1,2", 'multipart/related; type="application/octet-stream"; '
                                     "transfer-syntax=*")
    assert r.status_code == 200
    assert media_params(r.headers["content-type"])[1]["type"] == "image/jls"
    parts = split(r)
    assert [(p.content_type, p.params["transfer-syntax"]) for p in parts] == [("image/jls", JLS)] * 2
    r = get(gateway_ro, f"{base}/2", "*/*")
    (part,) = split(r)
    assert part.content_type == "application/octet-stream"
    assert np.array_equal(np.frombuffer(part.body, "<u2").reshape(64, 64), study.pixels[sop][1])
    for bad in ("0", "a", "1,,2", "-1", "1;2"):
        assert get(gateway_ro, f"{base}/{bad}", "*/*").status_code == 400, bad
    r = get(gateway_ro, f"{base}/4", "*/*")
    assert r.status_code == 404 and "3 frames" in r.json()["detail"]
    pdf = study.instances["pdf"][0]
    assert get(gateway_ro, f"/studies/{s}/series/{study.series['pdf']}/instances/{pdf}/frames/1",
               "*/*").status_code == 404
    assert get(gateway_ro, f"{base}/1", 'multipart/related; type="image/jp2"').status_code == 406


def test_bulkdata(gateway_ro, study) -> None:
    s = study.study
    # native pixel data: one application/octet-stream part, the whole value
    se, sop = study.series["explicit"], study.instances["explicit"][0]
    for path in ("bulkdata", "bulkdata/7FE00010", "bulkdata/7fe00010"):
        r = get(gateway_ro, f"/studies/{s}/series/{se}/instances/{sop}/{path}",
                'multipart/related; type="application/octet-stream"')
        assert r.status_code == 200, r.text
        (part,) = split(r)
        assert part.content_type == "application/octet-stream"
        assert part.body == study.pixels[sop].astype("<u2").tobytes()
    # encapsulated: a part per frame, as stored when accepted
    se, sop = study.series["multiframe"], study.instances["multiframe"][0]
    r = get(gateway_ro, f"/studies/{s}/series/{se}/instances/{sop}/bulkdata/7FE00010",
            'multipart/related; type="image/jls"')
    assert [p.content_type for p in split(r)] == ["image/jls"] * 3
    # another element: the PDF document
    se, sop = study.series["pdf"], study.instances["pdf"][0]
    r = get(gateway_ro, f"/studies/{s}/series/{se}/instances/{sop}/bulkdata/00420011",
            'multipart/related; type="application/octet-stream"')
    (part,) = split(r)
    assert part.body == dcmread(study.files[sop]).EncapsulatedDocument
    base = f"/studies/{s}/series/{se}/instances/{sop}/bulkdata"
    assert get(gateway_ro, f"{base}/00420011/0", "*/*").status_code == 400
    assert get(gateway_ro, f"{base}/ZZZZ0011", "*/*").status_code == 400
    assert get(gateway_ro, f"{base}/00091001", "*/*").status_code == 404
    assert get(gateway_ro, f"{base}/00420011", "application/dicom").status_code == 406


def test_as_stored_pixel_data_of_native_instances(gateway_ro, study) -> None:
    """``transfer-syntax=*`` on frames and pixel bulk data of a native instance: the pixel
    values as stored, native little endian, labelled Explicit VR Little Endian, whatever the
    dataset's syntax (Implicit VR Little Endian is not for web services, PS3.18 8.7.3; Deflate
    compresses the dataset, not the pixels). A deflated instance's frame used to be cut out of
    the compressed file at the offset it has in the inflated stream."""
    s = study.study
    any_octets = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    for kind in ("explicit", "implicit", "deflated"):
        sop = study.instances[kind][0]
        base = f"/studies/{s}/series/{study.series[kind]}/instances/{sop}"
        expected = study.pixels[sop].astype("<u2").tobytes()
        for path in (f"{base}/frames/1", f"{base}/bulkdata", f"{base}/bulkdata/7FE00010"):
            for accept_header in (any_octets, "*/*"):
                r = get(gateway_ro, path, accept_header)
                assert r.status_code == 200, (kind, path, r.text)
                (part,) = split(r)
                assert (part.content_type, part.params["transfer-syntax"]) == (
                    "application/octet-stream", EXPLICIT), (kind, path, accept_header)
                assert part.body == expected, (kind, path, accept_header)


# -- the ANS validator's request samples -----------------------------------------------------


def _sample_files() -> list[Path]:
    files = sorted(p for p in SAMPLES.rglob("*.txt") if "/studies/" in p.read_text())
    assert len(files) >= 15, f"ANS WADO-RS samples missing under {SAMPLES}"
    return files


def _read_sample(path: Path) -> tuple[str, list[str]]:
    lines = path.read_text().splitlines()
    request_line = lines[0]
    url = request_line.split()[1]
    accept = [ln.split(":", 1)[1].strip() for ln in lines[1:] if ln.lower().startswith("accept:")]
    return url, accept


def _expected(sample: str, kind: str) -> str:
    """What the sample's Accept asks of an instance stored as ``kind`` (hand-computed from
    the sample: as stored when listed with q > 0, else the best-q syntax we can encode)."""
    if kind in ("explicit", "implicit", "pdf"):
        return EXPLICIT  # 1.2.840.10008.1.2.1 is listed with q > 0 in every sample
    if kind in ("jls", "multiframe"):
        return JLS  # likewise JPEG-LS lossless
    # RLE and Deflate are in no sample: transcode. Lossy .50/.51 are never made, .70 has no encoder here.
    return {
        "QParameterMinMax": EXPLICIT if "Validateur" in sample else JLS,  # q=1.0 / q=1.0
        "SwitchHeaders": J2K, "Instances_v1": J2K, "Instances_v2": J2K,  # .91 first at q=0.5
    }.get(sample.split("/")[-1].removeprefix("OK_").removesuffix(".txt"), JLS)


@pytest.mark.parametrize("sample", _sample_files(), ids=lambda p: "/".join(p.parts[-2:]))
def test_ans_validator_samples(gateway_ro, study, sample: Path) -> None:
    url, accept = _read_sample(sample)
    assert accept, "every sample carries an Accept header"
    m = re.search(r"/studies/[^/]+(/series/[^/]+)?(/instances/[^/]+)?(/frames/(\S+))?$", url)
    assert m, url
    level = ("frames" if m.group(3) else "instance" if m.group(2) else
             "series" if m.group(1) else "study")
    key = "test-a-blanc/" + str(sample.relative_to(SAMPLES / "test-a-blanc")) if (
        "test-a-blanc" in str(sample)) else "Validateur/" + sample.name
    targets: list[tuple[str, str]] = []  # (path, kind)
    if level == "study":
        targets.append((f"/studies/{study.study}", "*"))
    for kind in ("explicit", "implicit", "rle", "jls", "deflated", "multiframe"):
        se = study.series[kind]
        sop = study.instances[kind][0]
        if level == "series":
            targets.append((f"/studies/{study.study}/series/{se}", kind))
        elif level == "instance":
            targets.append((f"/studies/{study.study}/series/{se}/instances/{sop}", kind))
        elif level == "frames" and kind == "multiframe":
            frames = f"/studies/{study.study}/series/{se}/instances/{sop}/frames/{m.group(4)}"
            targets.append((frames, kind))
    for path, kind in targets:
        r = get(gateway_ro, path, accept)
        assert r.status_code == 200, (path, r.status_code, r.text)
        ctype, params = media_params(r.headers["content-type"])
        assert ctype == "multipart/related"
        parts = split(r)
        assert parts
        if level == "frames":  # as stored, in the bitstream's own media type
            assert params["type"] == "image/jls"
            assert {(p.content_type, p.params["transfer-syntax"]) for p in parts} == {
                ("image/jls", JLS)}
            continue
        assert params["type"] == "application/dicom"
        for part in parts:
            sop, ts = check_instance_part(study, part)
            assert ts == _expected(key, study.kind_of(sop) if kind == "*" else kind), (
                key, kind, ts)


# -- memory ----------------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="session")
def big_study(tmp_path_factory) -> tuple[str, list[Path]]:
    """500 instances of 256 KiB pixel data each (~128 MiB), written once per session."""
    folder = tmp_path_factory.mktemp("big")
    study_uid, series_uid = generate_uid(TEST_ROOT), generate_uid(TEST_ROOT)
    ds = make_instance(study_uid=study_uid, series_uid=series_uid, rows=512, cols=256)
    pixels = bytearray(np.random.default_rng(1).integers(0, 4096, 512 * 256 * 4, np.uint16)
                       .tobytes())
    files = []
    for i in range(500):
        sop = generate_uid(TEST_ROOT)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
        ds.InstanceNumber = i + 1
        start = (i * 7919) % (len(pixels) // 2 - 512 * 256 * 2)
        ds.PixelData = bytes(pixels[start : start + 512 * 256 * 2])
        path = folder / f"B{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study_uid, files


def test_whole_study_retrieve_streams_in_constant_memory(gateway, big_study) -> None:
    study_uid, files = big_study
    storescu(files, gateway.dicom_port)
    pid = gateway.proc.pid
    total_sent = sum(f.stat().st_size for f in files)
    assert total_sent > 500 * 256 * 1024

    # warm up (imports, first connections), then measure
    first = get(gateway, f"/studies/{study_uid}/series/"
                f"{dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID}/instances/"
                f"{dcmread(files[0], stop_before_pixels=True).SOPInstanceUID}", MR)
    assert first.status_code == 200
    before = _rss_kib(pid)
    peak = before
    received = 0
    delimiters = 0
    tail = b""
    with httpx.stream("GET", f"{web(gateway)}/studies/{study_uid}",
                      headers={"Accept": f"{MR}; transfer-syntax=*"}, timeout=120) as r:
        assert r.status_code == 200
        boundary = media_params(r.headers["content-type"])[1]["boundary"].encode()
        marker = b"--" + boundary + b"\r\n"
        last_sample = time.monotonic()
        for chunk in r.iter_raw(1 << 16):
            received += len(chunk)
            window = tail + chunk
            delimiters += window.count(marker) - tail.count(marker)
            tail = window[-(len(marker) - 1):]
            if time.monotonic() - last_sample > 0.05:
                peak = max(peak, _rss_kib(pid))
                last_sample = time.monotonic()
    peak = max(peak, _rss_kib(pid))
    assert delimiters == 500
    assert received > total_sent  # every file, plus multipart framing
    growth_mib = (peak - before) / 1024
    assert growth_mib < 50, f"server RSS grew by {growth_mib:.1f} MiB while streaming " \
                            f"{received / 2**20:.0f} MiB"


# -- a stored instance that cannot be decoded ------------------------------------------------


def _keep_unchecked(gateway: Gateway, ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store ``ds`` as a version without the ingest completeness check did (it is refused
    now, see tests/test_ingest_completeness.py): an Ingestor on the gateway's data directory
    and index, next to the running ``serve`` like ``drimbox import``, check left out."""
    from gateway.index.engine import create_index_engine
    from gateway.index.store import InstanceIndex
    from gateway.ingest import ingestor as ingest
    from gateway.ingest.storage import FileStore

    monkeypatch.setattr(ingest, "check_complete", lambda *args: None)
    index = InstanceIndex(create_index_engine(gateway.database_url))
    try:
        store = FileStore(gateway.data_dir)
        store.prepare(clear_staging=False)
        data = dataset_bytes_of(ds)
        result = ingest.Ingestor(store, index).ingest(ingest.Incoming(
            dataset=data, transfer_syntax_uid=ExplicitVRLittleEndian, source="OLDSCU"))
        assert result.outcome is ingest.Outcome.STORED
    finally:
        index.engine.dispose()


def dataset_bytes_of(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return _dataset_bytes_of(buf.getvalue())


def test_transcoding_failure_is_never_a_silent_short_answer(
    gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway stores what it receives without decoding it; an instance whose pixel data
    is truncated (kept by an earlier version: ingest refuses it now) can only fail when a
    consumer asks for another transfer syntax."""
    study_uid, series_uid = generate_uid(TEST_ROOT), generate_uid(TEST_ROOT)
    good = make_instance(study_uid=study_uid, series_uid=series_uid, instance_number=1)
    bad = make_instance(study_uid=study_uid, series_uid=series_uid, instance_number=2)
    bad.PixelData = b"\x00" * 10  # 64 x 64 x 16 bits announced
    folder = tmp_path / "broken"
    folder.mkdir()
    good.save_as(folder / "good.dcm", enforce_file_format=True)
    storescu([folder / "good.dcm"], gateway.dicom_port)
    _keep_unchecked(gateway, bad, monkeypatch)
    jls = f"{MR}; transfer-syntax={JLS}"
    series = f"/studies/{study_uid}/series/{series_uid}"

    # as stored: fine
    assert len(split(get(gateway, series, f"{MR}; transfer-syntax=*"))) == 2
    # one instance: a real error status before any body, naming the instance and why
    r = get(gateway, f"{series}/instances/{bad.SOPInstanceUID}", jls)
    assert r.status_code == 422
    assert str(bad.SOPInstanceUID) in r.json()["detail"]
    assert "Pixel Data (7FE0,0010) holds 10 bytes" in r.json()["detail"]
    # the series: the first part went out with 200, so the stream is cut, not closed
    with pytest.raises(httpx.RemoteProtocolError):
        get(gateway, series, jls)
    assert gateway.proc.poll() is None  # and the server carries on
    assert get(gateway, f"{series}/instances/{good.SOPInstanceUID}", jls).status_code == 200
