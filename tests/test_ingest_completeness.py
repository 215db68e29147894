"""A dataset that is not whole is refused on every ingest path, and never replaces a stored copy.

:mod:`gateway.ingest.completeness` walks the element headers of every dataset before the ingest path
looks at the store or the index: C-STORE answers 0xC004 (truncated or corrupt), 0xC005 (an
image storage SOP class without Pixel Data) or 0xC006 (explicit VR bytes on an implicit VR
presentation context) with an Error Comment; STOW-RS answers 409 with the same code as the
part's Failure Reason (0008,1197). ``drimbox import`` shares the same check
(``tests/test_import.py``).

The requests come from a real pynetdicom SCU and a real HTTP client against ``drimbox serve``;
the stored copy is compared byte for byte and through WADO-RS before and after.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import hashlib
import io
import random
import signal
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import Gateway
from dicom_factory import make_instance, to_bytes
from dimse_client import encode_dataset, raw_c_store, snapshot
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.association import Association

from gateway.ingest.completeness import (
    PixelDataMissing,
    Truncated,
    WrongVREncoding,
    check_complete,
)
from gateway.ingest.ingestor import file_meta_bytes
from gateway.ingest.part10 import split_part10 as dataset_offset_of

STUDIES = "/dicom-web/studies"
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: 0xCxxx "Error: Cannot understand"


# -- helpers --------------------------------------------------------------------------------


def associate(port: int, sop_class: str, transfer_syntax: str) -> Association:
    """An association with one presentation context: ``sop_class`` in ``transfer_syntax``."""
    ae = AE(ae_title="CUTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="DRIMBOX")
    assert assoc.is_established
    (cx,) = assoc.accepted_contexts
    assert cx.transfer_syntax[0] == transfer_syntax
    return assoc


def c_store(assoc: Association, sop_class: str, sop_instance: str, data: bytes):
    return raw_c_store(assoc, context=sop_class, sop_class=sop_class, sop_instance=sop_instance,
                       data=data)


def split_part10(file_bytes: bytes) -> tuple[bytes, bytes]:
    """(preamble + meta, dataset) of a Part 10 file written with a group length."""
    assert file_bytes[128:132] == b"DICM"
    end = 144 + int.from_bytes(file_bytes[140:144], "little")
    return file_bytes[:end], file_bytes[end:]


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = f"cut-{uuid.uuid4().hex}"
    body = b""
    for p in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(gateway: Gateway, parts: list[bytes]) -> httpx.Response:
    body, ctype = multipart(parts)
    return httpx.post(f"{gateway.url}{STUDIES}", content=body, timeout=120,
                      headers={"Content-Type": ctype, "Accept": "application/dicom+json"})


def failure_reasons(response: httpx.Response) -> list[int]:
    failed = response.json().get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in failed]


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    ctype = response.headers["content-type"]
    raw = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + response.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert msg.is_multipart(), ctype
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.iter_parts()]


def wado_instance(gateway: Gateway, study: str, series: str, sop: str) -> bytes:
    """The instance's Part 10 file as stored, through WADO-RS (PS3.18 10.4)."""
    r = httpx.get(f"{gateway.url}{STUDIES}/{study}/series/{series}/instances/{sop}",
                  headers={"Accept": 'multipart/related; type="application/dicom"; '
                                     "transfer-syntax=*"}, timeout=60)
    assert r.status_code == 200, r.text
    ((ctype, body),) = multipart_parts(r)
    assert ctype == "application/dicom"
    return body


def pixel_data_offset(dataset: bytes) -> int:
    """Where the (last, top-level) Pixel Data element starts in an encoded dataset."""
    pos = dataset.rfind(PIXEL_DATA_TAG + b"O")  # explicit VR: OB / OW
    if pos < 0:
        pos = dataset.rfind(PIXEL_DATA_TAG)
    assert pos > 0
    return pos


def ct_pair() -> tuple[Dataset, bytes]:
    """A CT instance (64 x 64, 16 bits: 8192 bytes of Pixel Data, the last element) and its
    explicit VR little endian encoding."""
    ds = make_instance(sop_class=CTImageStorage, seed=7)
    data = encode_dataset(ds)
    assert data[-8192 - 12 : -8192 - 8] == PIXEL_DATA_TAG
    return ds, data


def cut_into_pixel_data(data: bytes) -> bytes:
    """The dataset cut 500 bytes into its Pixel Data value."""
    return data[: len(data) - 8192 + 500]


def huge_pixel_data_claim(data: bytes) -> bytes:
    """Pixel Data that declares 0x7FFFFFF0 bytes with 200 sent."""
    head = data[: len(data) - 8192 - 4]
    return head + (0x7FFFFFF0).to_bytes(4, "little") + data[-8192:][:200]


def _assert_unchanged(gateway: Gateway, before, ds: Dataset, data: bytes) -> None:
    after = snapshot(gateway.data_dir, gateway.database_url)
    assert after.storage == before.storage
    assert after.rows == before.rows
    assert after.staging == []
    (row,) = after.rows
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    got = wado_instance(gateway, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                        str(ds.SOPInstanceUID))
    assert split_part10(got)[1] == data
    # Frames are whole (they were a few hundred bytes once a cut copy had replaced the good one).
    r = httpx.get(f"{gateway.url}{STUDIES}/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                  f"/instances/{ds.SOPInstanceUID}/frames/1", headers={"Accept": "*/*"},
                  timeout=60)
    assert r.status_code == 200
    ((_, frame),) = multipart_parts(r)
    assert frame == ds.PixelData


# -- the shared check itself ----------------------------------------------------------------


REAL_IMAGES = [
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_rle_2frame.dcm", "SC_ybr_full_422_uncompressed.dcm",
    "JPEG2000.dcm", "examples_jpeg2k.dcm", "image_dfl.dcm", "liver_1frame.dcm",
]
#: Instances without Pixel Data, or whose Pixel Data is optional (RT Dose).
REAL_OTHERS = ["test-SR.dcm", "waveform_ecg.dcm", "rtplan.dcm", "rtdose.dcm", "reportsi.dcm"]


def _real(name: str) -> tuple[bytes, str]:
    data = Path(get_testdata_file(name)).read_bytes()
    ts = str(dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return data[dataset_offset_of(data).dataset_offset :], ts


@pytest.mark.parametrize("name", REAL_IMAGES + REAL_OTHERS)
def test_real_files_are_complete(name: str) -> None:
    """Whole files of many writers pass: no false refusal."""
    dataset, ts = _real(name)
    check_complete(dataset, ts)
    check_complete(memoryview(dataset), ts)


@pytest.mark.parametrize("name", REAL_IMAGES)
def test_cuts_of_real_images_are_refused(name: str) -> None:
    """Cut anywhere before the end of its Pixel Data (a cut at an element boundary leaves a
    well-formed dataset, but without whole Pixel Data), an image is refused."""
    dataset, ts = _real(name)
    rng = random.Random(name)
    end = len(dataset)
    if dataset.rfind(b"\xfc\xff\xfc\xff") > 0:  # Data Set Trailing Padding after the pixels
        end = dataset.rfind(b"\xfc\xff\xfc\xff")
    if ts == DeflatedExplicitVRLittleEndian:  # bytes after the end of the stream: pad, junk
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflater.decompress(dataset)
        end = len(dataset) - len(inflater.unused_data)
    for cut in {end - 1, end - 2, *rng.sample(range(1, end - 2), 30)}:
        with pytest.raises((Truncated, PixelDataMissing)):
            check_complete(dataset[:cut], ts)


def test_pixel_data_shorter_than_its_description() -> None:
    ds = make_instance(rows=64, cols=64)
    ds.PixelData = ds.PixelData[:100]  # a consistent element, too short for 64 x 64 x 16 bits
    with pytest.raises(Truncated, match="Pixel Data holds 100 bytes of the 8192"):
        check_complete(encode_dataset(ds), ExplicitVRLittleEndian)
    ds.PixelData = ds.PixelData + bytes(8092)
    check_complete(encode_dataset(ds), ExplicitVRLittleEndian)
    ds.NumberOfFrames = 2
    with pytest.raises(Truncated, match="8192 bytes of the 16384"):
        check_complete(encode_dataset(ds), ExplicitVRLittleEndian)


def test_encapsulated_pixel_data_must_be_whole() -> None:
    _meta, dataset = split_part10(to_bytes(make_instance(transfer_syntax=RLELossless)))
    check_complete(dataset, RLELossless)
    with pytest.raises(Truncated, match=r"encapsulated \(7FE0,0010\) is not terminated"):
        check_complete(dataset[:-8], RLELossless)  # only the delimiter lost
    pos = pixel_data_offset(dataset)
    items = dataset[pos + 12 :]
    bot = items[:12]
    assert bot == b"\xfe\xff\x00\xe0\x04\x00\x00\x00" + bytes(4)  # one frame, offset 0
    # No fragment at all: the Basic Offset Table then the delimiter.
    empty = dataset[: pos + 12] + bot + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    with pytest.raises(Truncated, match="no fragment"):
        check_complete(empty, RLELossless)
    # A Basic Offset Table of two frames for a one-frame image.
    two = dataset[: pos + 12] + b"\xfe\xff\x00\xe0\x08\x00\x00\x00" + bytes(8) + items[12:]
    with pytest.raises(Truncated, match="Basic Offset Table of 8 bytes for 1 frames"):
        check_complete(two, RLELossless)
    # The same bytes with a defined length: not encapsulated in an encapsulated syntax.
    defined = dataset[: pos + 8] + len(items).to_bytes(4, "little") + items
    with pytest.raises(Truncated, match="not encapsulated"):
        check_complete(defined, RLELossless)
    # Encapsulated pixel data in a native transfer syntax.
    with pytest.raises(Truncated, match="encapsulated but the transfer syntax"):
        check_complete(dataset, ExplicitVRLittleEndian)


def test_image_classes_need_pixel_data_other_classes_do_not() -> None:
    ct = make_instance(sop_class=CTImageStorage)
    del ct.PixelData
    with pytest.raises(PixelDataMissing, match="no Pixel Data .* CT Image Storage"):
        check_complete(encode_dataset(ct), ExplicitVRLittleEndian)
    ct.PixelDataProviderURL = "https://jpip.example/ct"  # JPIP referenced pixel data
    check_complete(encode_dataset(ct), "1.2.840.10008.1.2.4.94")
    check_complete(encode_dataset(make_instance(sop_class=EncapsulatedPDFStorage)),
                   ExplicitVRLittleEndian)


def test_explicit_vr_bytes_labelled_implicit_are_named() -> None:
    ds = make_instance()
    with pytest.raises(WrongVREncoding, match="explicit VR data sent as implicit VR"):
        check_complete(encode_dataset(ds, ExplicitVRLittleEndian), ImplicitVRLittleEndian)
    check_complete(encode_dataset(ds, ImplicitVRLittleEndian), ImplicitVRLittleEndian)


# -- C-STORE and STOW-RS against a gateway ---------------------------------------------------


def test_cstore_of_a_cut_copy_is_refused_and_keeps_the_stored_one(gateway: Gateway) -> None:
    """The default duplicate policy (replace) once swapped a good stored copy for a cut one and
    answered success. Now: 0xC004 with an Error Comment naming the element, the stored file,
    its index row, WADO-RS and the frames unchanged."""
    ds, data = ct_pair()
    sop = str(ds.SOPInstanceUID)
    assoc = associate(gateway.dicom_port, CTImageStorage, ExplicitVRLittleEndian)
    try:
        assert c_store(assoc, CTImageStorage, sop, data).Status == 0x0000
        before = snapshot(gateway.data_dir, gateway.database_url)
        for bad in (cut_into_pixel_data(data), huge_pixel_data_claim(data)):
            rsp = c_store(assoc, CTImageStorage, sop, bad)
            assert rsp.Status == 0xC004, f"0x{rsp.Status:04X}"
            assert rsp.ErrorComment.startswith("element (7FE0,0010) declares")
        # A consistent Pixel Data element too short for Rows x Columns x Bits Allocated.
        short = copy.deepcopy(ds)
        short.PixelData = ds.PixelData[:600]
        rsp = c_store(assoc, CTImageStorage, sop, encode_dataset(short))
        assert rsp.Status == 0xC004
        assert rsp.ErrorComment.startswith("Pixel Data holds 600 bytes of the 8192")
        # The whole dataset again: success, nothing changes.
        assert c_store(assoc, CTImageStorage, sop, data).Status == 0x0000
    finally:
        assoc.release()
    _assert_unchanged(gateway, before, ds, data)


def test_stow_of_a_cut_copy_is_refused_and_keeps_the_stored_one(gateway: Gateway) -> None:
    """The same through STOW-RS: 409, Failure Reason 0xC004 for each cut part."""
    ds, data = ct_pair()
    good_file = to_bytes(ds)
    meta, dataset = split_part10(good_file)
    assert dataset == data
    r = stow(gateway, [good_file])
    assert r.status_code == 200, r.text
    before = snapshot(gateway.data_dir, gateway.database_url)
    r = stow(gateway, [meta + cut_into_pixel_data(data), meta + huge_pixel_data_claim(data)])
    assert r.status_code == 409, r.text
    assert failure_reasons(r) == [0xC004, 0xC004]
    assert "00081199" not in r.json()
    assert 'drimbox_stow_failures_total{status="0xC004"} 2.0' in gateway.metrics()
    _assert_unchanged(gateway, before, ds, data)


def test_image_without_pixel_data_is_refused(gateway: Gateway) -> None:
    ct = make_instance(sop_class=CTImageStorage)
    del ct.PixelData
    assoc = associate(gateway.dicom_port, CTImageStorage, ExplicitVRLittleEndian)
    try:
        rsp = c_store(assoc, CTImageStorage, str(ct.SOPInstanceUID), encode_dataset(ct))
    finally:
        assoc.release()
    assert rsp.Status == 0xC005, f"0x{rsp.Status:04X}"
    assert rsp.ErrorComment == "no Pixel Data (7FE0,0010) in an instance of CT Image Storage"
    r = stow(gateway, [to_bytes(ct)])
    assert r.status_code == 409, r.text
    assert failure_reasons(r) == [0xC005]
    pdf = make_instance(sop_class=EncapsulatedPDFStorage)  # no pixel data, none needed
    assert stow(gateway, [to_bytes(pdf)]).status_code == 200
    after = snapshot(gateway.data_dir, gateway.database_url)
    assert [row.sop_instance_uid for row in after.rows] == [str(pdf.SOPInstanceUID)]


def test_explicit_vr_on_an_implicit_context_is_refused(gateway: Gateway) -> None:
    """Explicit VR bytes on an Implicit VR Little Endian presentation context were stored
    labelled implicit (unreadable afterwards): 0xC006, and 409 for the same through STOW."""
    ds = make_instance(sop_class=CTImageStorage)
    explicit = encode_dataset(ds, ExplicitVRLittleEndian)
    assoc = associate(gateway.dicom_port, CTImageStorage, ImplicitVRLittleEndian)
    try:
        rsp = c_store(assoc, CTImageStorage, str(ds.SOPInstanceUID), explicit)
        assert rsp.Status == 0xC006, f"0x{rsp.Status:04X}"
        assert rsp.ErrorComment.startswith("explicit VR data sent as implicit VR")
        # The same instance in implicit VR on the same context is kept.
        implicit = encode_dataset(ds, ImplicitVRLittleEndian)
        assert c_store(assoc, CTImageStorage, str(ds.SOPInstanceUID), implicit).Status == 0
    finally:
        assoc.release()
    other = make_instance(sop_class=CTImageStorage)
    meta = file_meta_bytes(CTImageStorage, str(other.SOPInstanceUID), ImplicitVRLittleEndian, "")
    r = stow(gateway, [meta + encode_dataset(other, ExplicitVRLittleEndian)])
    assert r.status_code == 409, r.text
    assert failure_reasons(r) == [0xC006]
    (row,) = snapshot(gateway.data_dir, gateway.database_url).rows
    assert row.transfer_syntax_uid == ImplicitVRLittleEndian
    assert row.sop_instance_uid == str(ds.SOPInstanceUID)


# -- fuzz: truncations of real files over C-STORE and STOW-RS, one gateway ----------------------


@dataclass
class RealFile:
    name: str
    part10: bytes
    meta: bytes
    dataset: bytes
    ts: str
    sop_class: str
    study: str
    series: str
    sop: str

    @property
    def content_end(self) -> int:
        """End of the meaningful content: the start of Data Set Trailing Padding, if any (a cut
        exactly there loses nothing and is a whole dataset)."""
        pad = self.dataset.rfind(b"\xfc\xff\xfc\xff")
        return pad if pad > pixel_data_offset(self.dataset) else len(self.dataset)


def _real_file(name: str, uid_suffix: bytes = b"") -> RealFile:
    data = Path(get_testdata_file(name)).read_bytes()
    if uid_suffix:
        # MR_small* share their UIDs: give this copy others of the same length.
        uid = str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID).encode()
        data = data.replace(uid, uid[: -len(uid_suffix)] + uid_suffix)
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    offset = dataset_offset_of(data).dataset_offset
    return RealFile(name, data, data[:offset], data[offset:],
                    str(ds.file_meta.TransferSyntaxUID), str(ds.SOPClassUID),
                    str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))


FUZZ_FILES = [
    ("CT_small.dcm", b""),  # native, explicit VR little endian, trailing padding
    ("MR_small_implicit.dcm", b"91"),  # native, implicit VR little endian
    ("MR_small_RLE.dcm", b""),  # RLE lossless
    ("MR_small_jpeg_ls_lossless.dcm", b"92"),  # JPEG-LS lossless
    ("SC_rgb_rle_2frame.dcm", b""),  # RLE, 2 frames, RGB
]
CUTS_PER_FILE = 14  # x 5 files: 70 truncations per path


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("cut-fuzz")
    gw = Gateway(root / "data", f"sqlite:///{root / 'index.sqlite'}")
    try:
        yield gw.start()
    finally:
        if gw.proc is not None:
            gw.stop(signal.SIGKILL)


def _cuts(f: RealFile, rng: random.Random) -> list[int]:
    end = f.content_end
    pixels = pixel_data_offset(f.dataset)
    chosen = {pixels, pixels + 1, pixels + 13, (pixels + end) // 2, end - 1, end - 2}
    if end < len(f.dataset):
        chosen.add(end + 9)  # inside the trailing padding element
    chosen |= set(rng.sample(range(1, end), CUTS_PER_FILE - len(chosen)))
    return sorted(c for c in chosen if 0 < c < len(f.dataset) and c != end)


def test_fuzz_truncations_never_stored_never_replace(fuzz_gateway: Gateway) -> None:
    """Real files (native explicit/implicit, RLE, JPEG-LS, multi-frame): each is stored whole,
    then cut at 14 offsets (fixed seed; header, Pixel Data element header, fragments, the last
    bytes) and every cut sent by C-STORE and again by STOW-RS. Every cut is refused with a
    0xCxxx status (C-STORE, with an Error Comment) / 409 and 0xCxxx Failure Reasons (STOW-RS),
    every whole file is accepted, and the stored copies keep their bytes (files, index rows,
    WADO-RS)."""
    gateway = fuzz_gateway
    rng = random.Random(20261204)
    files = [_real_file(name, suffix) for name, suffix in FUZZ_FILES]
    assert len({f.sop for f in files}) == len(files)
    statuses: dict[int, int] = {}
    for f in files:
        assoc = associate(gateway.dicom_port, f.sop_class, f.ts)
        try:
            assert c_store(assoc, f.sop_class, f.sop, f.dataset).Status == 0x0000, f.name
        finally:
            assoc.release()
    before = snapshot(gateway.data_dir, gateway.database_url)
    assert len(before.rows) == len(files)

    for f in files:
        cuts = _cuts(f, rng)
        assert len(cuts) >= CUTS_PER_FILE - 2
        assoc = associate(gateway.dicom_port, f.sop_class, f.ts)
        try:
            for cut in cuts:
                rsp = c_store(assoc, f.sop_class, f.sop, f.dataset[:cut])
                assert rsp.Status & 0xF000 == CANNOT_UNDERSTAND, (f.name, cut, hex(rsp.Status))
                assert rsp.ErrorComment, (f.name, cut)
                statuses[rsp.Status] = statuses.get(rsp.Status, 0) + 1
            assert c_store(assoc, f.sop_class, f.sop, f.dataset).Status == 0x0000
        finally:
            assoc.release()
        r = stow(gateway, [f.meta + f.dataset[:cut] for cut in cuts])
        assert r.status_code == 409, (f.name, r.text)
        reasons = failure_reasons(r)
        assert len(reasons) == len(cuts)
        assert all(code & 0xF000 == CANNOT_UNDERSTAND for code in reasons), (f.name, reasons)
        assert stow(gateway, [f.part10]).status_code == 200, f.name

    # The cut in the middle of the Pixel Data was named as such on every path.
    assert statuses.get(0xC004, 0) >= len(files)
    after = snapshot(gateway.data_dir, gateway.database_url)
    assert after.storage == before.storage
    assert after.rows == before.rows
    assert after.staging == []
    for f in files:
        body = wado_instance(gateway, f.study, f.series, f.sop)
        got = dcmread(io.BytesIO(body))
        assert got.PixelData == dcmread(io.BytesIO(f.part10)).PixelData, f.name
        if f.ts != ImplicitVRLittleEndian:  # served as stored (implicit VR: as explicit)
            assert got.file_meta.TransferSyntaxUID == f.ts
            assert body[len(body) - len(f.dataset) :] == f.dataset, f.name
