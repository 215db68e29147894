"""Odd but readable DICOM files through every route: never a 5xx.

Every file of the DICOM test data that ships inside the installed packages (pydicom's
``data/test_files``, DICOMDIR trees included, and pynetdicom's ``tests/dicom_files``; the
pydicom-data downloads are not used) goes through STOW-RS into one gateway, as is: 1-bit
data, YBR (native and JPEG), palette colour, multi-frame with functional groups, signed data,
big endian, deflated, JPEG / JPEG-LS / JPEG 2000 / RLE, implicit VR bytes under an explicit
syntax, truncated datasets, non-DICOM files. Then variants of well-formed files: each Type 1
attribute of the Image Pixel module removed in turn, Bits Allocated 12, values no decoder
takes; and the refused files given what the ingest asked for (a missing UID, a Part 10
header), so that their pixel data is read back too. Each stored instance then goes through
every retrieve route: WADO-RS instance (as stored and in Explicit VR Little Endian), study /
series / instance metadata, frame 1 (as stored and decoded), rendered (instance and frame),
thumbnail (instance, series, study) and every BulkDataURI its metadata holds.

What must hold: no 5xx (nor a cut stream) anywhere; a 4xx names its problem (the 422s of
docs/dicomweb.md, "Odd images"); a 200 is right (frame 1 as pydicom reads it from the
original file, the rendered image at the frame's size); a refused file is refused with a
STOW 409 and a precise Failure Reason (PS3.18 10.5.3, the C-STORE status of the same
rejection), never a processing failure; over C-STORE (dcmtk storescu, the refused files that
have a Part 10 header, and the variants) every answer is a success or a precise refusal.

Files are sent one at a time, and each stored instance is read back through every route
before the next file is sent: several of pydicom's files share their SOP Instance UID (the
same MR slice in every transfer syntax), and ``duplicate_policy = replace`` swaps them.
The summary (stored / refused, 2xx / 4xx per route, answers checked) is in every assertion
message and printed at the end (``-s``); ``ODD_FILES_TRACE=<file>`` writes every answer and
the CPU spent. About 20 s of CPU (gateway and test), sequential, SQLite only: this is about
files, not the index.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import os
import re
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import Gateway, module_gateway
from dicom_factory import TEST_ROOT
from peers import storescu
from PIL import Image
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.pixels import pack_bits, pixel_array
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

STUDIES = "/dicom-web/studies"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_ELE = 'multipart/related; type="application/dicom"'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
OCTETS = 'multipart/related; type="application/octet-stream"'
FRAME_AS_STORED = "multipart/related; type=*/*; transfer-syntax=*"
# A 4xx whose body says nothing more than its status phrase names nothing.
_BARE = re.compile(r'^\{"detail":"(Not Found|Bad Request|Not Acceptable|Unprocessable Entity)"\}$')
# Failure Reasons a refusal may carry (gateway.ingest.dimse.STATUS_FOR_REJECTION): anything
# but a processing failure (0x0110) or out of resources (0xA7xx).
# Refusals a repaired copy gets past: not a Part 10 file, a missing UID, meta and dataset
# disagreeing (a truncated dataset or an image without pixel data stays refused).
_REPAIRABLE = {0xC000, 0xC001, 0xC003}
_PRECISE_REFUSALS = {0xC000, 0xC001, 0xC002, 0xC003, 0xA900, 0xC004, 0xC005, 0xC006, 0x0111}


def _package_dir(module: str) -> Path | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return Path(mod.__file__).parent


def odd_files() -> list[Path]:
    """Every file of the packaged DICOM test data (non-DICOM neighbours included: a README,
    JSON, a gzip must be refused as cleanly as a broken dataset)."""
    roots = [(_package_dir("pydicom"), "data/test_files"),
             (_package_dir("pynetdicom"), "tests/dicom_files")]
    out = []
    for pkg, sub in roots:
        if pkg is not None and (pkg / sub).is_dir():
            out += sorted(p for p in (pkg / sub).rglob("*")
                          if p.is_file() and p.suffix not in (".py", ".pyc"))
    return out


# -- odd variants of well-formed files ---------------------------------------------------------

_TYPE1 = ("PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
          "BitsAllocated", "BitsStored", "Rows", "Columns")
# What each variant changes: keyword -> None (removed) or a value (set).
_ODD_VALUES: dict[str, dict[str, object]] = {
    "bits-allocated-12": {"BitsAllocated": 12, "BitsStored": 12, "HighBit": 11},
    "photometric-unknown": {"PhotometricInterpretation": "FOO"},
    "bits-stored-over-allocated": {"BitsStored": 20, "HighBit": 19},
    "pixel-representation-2": {"PixelRepresentation": 2},
    "rescale-slope-garbage": {"RescaleSlope": "x1", "RescaleIntercept": "0"},
    "window-garbage": {"WindowCenter": "abc", "WindowWidth": "0"},
    "frames-garbage": {"NumberOfFrames": "abc"},
    "frames-zero": {"NumberOfFrames": "0"},
    "samples-3-monochrome": {"SamplesPerPixel": 3},
}


def _save_variant(base: Path, folder: Path, name: str, changes: dict[str, object]) -> Path:
    ds = dcmread(base)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        elif isinstance(value, str):  # as raw bytes: pydicom would refuse a bad DS or IS
            tag = tag_for_keyword(keyword)
            raw = value.encode() + (b" " if len(value) % 2 else b"")
            ds[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(raw), raw, 0,
                                     False, True)
        else:
            setattr(ds, keyword, value)
    entropy = [name]
    ds.StudyInstanceUID = generate_uid(TEST_ROOT, entropy + ["study"])
    ds.SeriesInstanceUID = generate_uid(TEST_ROOT, entropy + ["series"])
    ds.SOPInstanceUID = generate_uid(TEST_ROOT, entropy + ["sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def odd_variants(folder: Path) -> list[Path]:
    """Well-formed test files made odd: each Type 1 attribute of the Image Pixel module
    removed in turn (native signed grey, RLE, native RGB), values no decoder
    takes, a palette without its LUT; each its own study."""
    import pydicom.data

    folder.mkdir()
    out = []
    removed_from = ("CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_small_odd.dcm")
    for base in removed_from:
        src = Path(pydicom.data.get_testdata_file(base))
        keywords = _TYPE1 + (("PlanarConfiguration",) if "rgb" in base else ())
        for keyword in keywords:
            out.append(_save_variant(src, folder, f"{src.stem}-no-{keyword}", {keyword: None}))
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    for name, changes in _ODD_VALUES.items():
        out.append(_save_variant(ct, folder, f"CT_small-{name}", changes))
    palette = Path(pydicom.data.get_testdata_file("examples_palette.dcm"))
    out.append(_save_variant(palette, folder, "palette-without-lut", {
        "RedPaletteColorLookupTableDescriptor": None, "RedPaletteColorLookupTableData": None}))
    return out


def repaired(path: Path, folder: Path) -> Path | None:
    """A refused file given what the ingest asked for (a missing Study / Series / SOP
    Instance UID, File Meta Information agreeing with its dataset, a Part 10 header around a
    bare dataset), so that its pixel data gets through the retrieve routes too; ``None``
    for what is not a storable instance (a DICOMDIR, a text file, a truncated dataset)."""
    try:
        ds = dcmread(path, force=True)
    except Exception:  # noqa: BLE001 - not DICOM at all
        return None
    if "DirectoryRecordSequence" in ds or "SOPClassUID" not in ds or len(ds) < 5:
        return None
    implicit, little = ds.original_encoding
    if implicit is None:
        return None
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ts = meta.get("TransferSyntaxUID") or (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            setattr(ds, keyword, generate_uid(TEST_ROOT, [path.name, keyword]))
    meta.MediaStorageSOPClassUID = ds.SOPClassUID or SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta
    out = folder / f"repaired-{path.parent.name}-{path.name}"
    try:
        ds.save_as(out, enforce_file_format=True)
    except Exception:  # noqa: BLE001 - a dataset pydicom cannot write back
        return None
    return out


# -- what a correct answer is ---------------------------------------------------------------


def _parts(r: httpx.Response) -> list[bytes]:
    raw = (f"Content-Type: {r.headers['content-type']}\r\nMIME-Version: 1.0\r\n\r\n".encode()
           + r.content)
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    return [p.get_payload(decode=True) for p in msg.iter_parts()]


def _decoded_frame(ds: Dataset) -> bytes:
    """Frame 1 as pydicom decodes it from the original file, native little endian."""
    arr = pixel_array(ds, index=0)
    if int(ds.BitsAllocated) == 1:
        return pack_bits(arr)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _stored_frame(ds: Dataset) -> bytes | None:
    """Frame 1 as stored in the original file (None where "as stored" means decoded)."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_encapsulated:
        frames = int(ds.get("NumberOfFrames") or 1)
        return get_frame(ds.PixelData, 0, number_of_frames=frames)
    if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        from pydicom.pixels.utils import get_expected_length

        frames = int(ds.get("NumberOfFrames") or 1)
        length = get_expected_length(ds, "bytes") // frames  # not for unaligned 1-bit frames
        return bytes(ds.PixelData[:length])
    return None


@dataclass
class Tally:
    stored: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    refused_paths: dict[str, Path] = field(default_factory=dict)
    routes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    server_errors: list[str] = field(default_factory=list)
    vague: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    checked: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    imprecise_refusals: list[str] = field(default_factory=list)
    dimse: Counter = field(default_factory=Counter)
    dimse_failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.stored)} stored, {len(self.refused)} refused "
                 f"({', '.join(f'0x{s:04X}' for s in sorted(set(self.refused.values())))})"]
        for route, c in sorted(self.routes.items()):
            lines.append(f"  {route:<22} " + " ".join(f"{k}:{v}" for k, v in sorted(c.items())))
        lines.append("  answers checked against pydicom: "
                     + " ".join(f"{k}:{v}" for k, v in sorted(self.checked.items())))
        if self.dimse:
            lines.append("  C-STORE " + ", ".join(f"{k}: {v}" for k, v in sorted(self.dimse.items())))
        return "\n".join(lines)


def _multipart(body: bytes) -> tuple[bytes, str]:
    boundary = f"odd-{uuid.uuid4().hex}"
    data = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body
            + f"\r\n--{boundary}--\r\n".encode())
    return data, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _bulk_uris(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if "BulkDataURI" in node:
            yield node["BulkDataURI"]
        for v in node.values():
            yield from _bulk_uris(v)
    elif isinstance(node, list):
        for v in node:
            yield from _bulk_uris(v)


class Runner:
    def __init__(self, gw: Gateway, tally: Tally) -> None:
        self.gw, self.tally = gw, tally
        self.http = gw.http

    def check(self, route: str, what: str, r: httpx.Response) -> httpx.Response:
        body = r.content  # streamed multipart bodies are read whole here
        kind = f"{r.status_code // 100}xx"
        if os.environ.get("ODD_FILES_TRACE"):
            with open(os.environ["ODD_FILES_TRACE"], "a") as f:
                f.write(f"{r.status_code} {route} | {what} | {body[:160]!r}\n")
        self.tally.routes[route][kind if r.status_code < 400 else str(r.status_code)] += 1
        if r.status_code >= 500:
            self.tally.server_errors.append(f"{route} {what}: {r.status_code} {body[:300]!r}")
        elif 400 <= r.status_code < 500 and (not body or _BARE.match(body.decode(errors="replace"))):
            self.tally.vague.append(f"{route} {what}: {r.status_code} {body[:200]!r}")
        return r

    def get(self, route: str, what: str, url: str, accept: str | None = None,
            **params: str) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        started = time.perf_counter()
        try:
            r = self.http.get(url, headers=headers, params=params or None)
            self.tally.seconds[route] += time.perf_counter() - started
        except httpx.TransportError as exc:  # a stream cut after the status line, a reset
            self.tally.routes[route]["cut"] += 1
            if os.environ.get("ODD_FILES_TRACE"):
                with open(os.environ["ODD_FILES_TRACE"], "a") as f:
                    f.write(f"599 {route} | {what} | {exc}\n")
            self.tally.server_errors.append(f"{route} {what}: {type(exc).__name__} ({exc})")
            return httpx.Response(599)
        return self.check(route, what, r)

    def stow(self, path: Path) -> list[tuple[str, str, str]]:
        body, ctype = _multipart(path.read_bytes())
        started = time.perf_counter()
        r = self.http.post(STUDIES, content=body, timeout=120,
                           headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
        self.tally.seconds["STOW"] += time.perf_counter() - started
        name = f"{path.parent.name}/{path.name}"
        self.check("STOW", name, r)
        if r.status_code == 409:
            reasons = [i["00081197"]["Value"][0] for i in r.json()["00081198"]["Value"]]
            self.tally.refused[name] = reasons[0]
            self.tally.refused_paths[name] = path
            if not set(reasons) <= _PRECISE_REFUSALS:
                self.tally.imprecise_refusals.append(f"{name}: {reasons}")
            return []
        if r.status_code != 200:
            return []
        out = []
        for item in r.json()["00081199"]["Value"]:
            url = item["00081190"]["Value"][0]
            m = re.search(r"/studies/([^/]+)/series/([^/]+)/instances/([^/]+)$", url)
            assert m, url
            out.append(m.groups())
        self.tally.stored.append(name)
        return out

    def dimse(self, tmp: Path) -> None:
        """The refused files that carry a Part 10 header naming a storage SOP class, and the
        odd variants, over C-STORE with dcmtk storescu (one association, each file in its own
        transfer syntax): each is stored or refused with a precise status."""
        files = []
        for path in [*self.tally.refused_paths.values(), *sorted((tmp / "variants").iterdir())]:
            try:
                meta = dcmread(path, stop_before_pixels=True).file_meta
                sop_class, _ = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
            except Exception:  # noqa: BLE001 - no usable header: storescu cannot propose it
                continue
            if sop_class.startswith("1.2.840.10008.5.1.4.1.1."):
                files.append(path)
        proc = storescu(files, self.gw.dicom_port, workdir=tmp, extra=["-nh", "-v"],
                        check=False)
        (tmp / "storescu.log").write_text(proc.stderr + proc.stdout)
        log = proc.stderr + proc.stdout
        statuses = re.findall(r"Received Store Response \(([^)]*)\)", log)
        for status in statuses:
            self.tally.dimse[status] += 1
            # 0xCxxx (a dataset the SCP cannot understand, each with its reason) and 0xA9xx
            # (dataset does not match the SOP class) are precise; a processing failure
            # (0x0110), out of resources (0xA7xx) or anything else is not.
            if status not in ("Success", "Error: CannotUnderstand",
                              "Error: DataSetDoesNotMatchSOPClass"):
                self.tally.dimse_failures.append(status)
        sent = log.count("Sending Store Request")  # storescu skips files it cannot read
        if len(statuses) != sent:
            self.tally.dimse_failures.append(
                f"{sent} requests sent, {len(statuses)} responses:\n{log[-3000:]}")

    def verify(self, what: str, original: Path, stored: httpx.Response,
               decoded: httpx.Response, png: httpx.Response) -> None:
        """A 200 must be right: frame 1 as pydicom reads the original file, the rendered
        image at the size of the frame."""
        ds = dcmread(original)
        native = ds.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian,
                                                     ImplicitVRLittleEndian)
        if decoded.status_code == 200:
            try:  # native little endian needs no decoding: the frame as stored
                expected = _stored_frame(ds) if native else _decoded_frame(ds)
            except Exception as exc:  # noqa: BLE001
                expected = None
                if not native:
                    self.tally.wrong.append(f"{what}: frame decoded by the gateway, pydicom "
                                            f"cannot ({exc})")
            if expected is not None:
                if _parts(decoded) != [expected]:
                    self.tally.wrong.append(f"{what}: decoded frame 1 differs from pydicom's")
                self.tally.checked["frame decoded"] += 1
        if stored.status_code == 200 and int(ds.get("BitsAllocated") or 0) != 1:
            try:
                expected = _stored_frame(ds)
            except (AttributeError, KeyError, TypeError, ValueError):
                expected = None  # pydicom needs the attribute the variant removed
            if expected is not None:
                if _parts(stored) != [expected]:
                    self.tally.wrong.append(f"{what}: frame 1 as stored differs from the file's")
                self.tally.checked["frame as stored"] += 1
        if png.status_code == 200:
            size = Image.open(io.BytesIO(png.content)).size
            if size != (int(ds.Columns), int(ds.Rows)):
                self.tally.wrong.append(f"{what}: rendered {size}, the frame is "
                                        f"{ds.Columns}x{ds.Rows}")
            self.tally.checked["rendered size"] += 1

    def retrieve(self, name: str, original: Path, study: str, series: str, sop: str) -> None:
        st, se = f"{STUDIES}/{study}", f"{STUDIES}/{study}/series/{series}"
        inst = f"{se}/instances/{sop}"
        what = name
        self.get("instance as stored", what, inst, DICOM_ANY)
        self.get("instance EVRLE", what, inst, f"{DICOM_ELE}; transfer-syntax={EXPLICIT_LE}")
        self.get("metadata study", what, f"{st}/metadata")
        self.get("metadata series", what, f"{se}/metadata")
        meta = self.get("metadata instance", what, f"{inst}/metadata")
        stored = self.get("frame 1 as stored", what, f"{inst}/frames/1", FRAME_AS_STORED)
        decoded = self.get("frame 1 decoded", what, f"{inst}/frames/1", OCTETS)
        self.get("rendered", what, f"{inst}/rendered", "image/jpeg")
        png = self.get("frame 1 rendered", what, f"{inst}/frames/1/rendered", "image/png")
        self.verify(what, original, stored, decoded, png)
        self.get("thumbnail", what, f"{inst}/thumbnail", "image/jpeg")
        self.get("series thumbnail", what, f"{se}/thumbnail", "image/jpeg")
        self.get("study thumbnail", what, f"{st}/thumbnail", "image/jpeg")
        if meta.status_code == 200:
            for uri in sorted(set(_bulk_uris(meta.json()))):
                path = uri[uri.index("/dicom-web/"):]
                self.get("bulkdata", f"{what} {path.rsplit('/bulkdata/', 1)[-1]}", path,
                         "multipart/related; type=*/*; transfer-syntax=*")


def _phase(gw: Gateway, what: str) -> None:
    if os.environ.get("ODD_FILES_TRACE"):
        ticks = os.sysconf("SC_CLK_TCK")
        fields = Path(f"/proc/{gw.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        times = os.times()
        print(f"{what}: gateway CPU {(int(fields[11]) + int(fields[12])) / ticks:.1f} s, "
              f"test CPU {times.user + times.system:.1f} s, "
              f"children {times.children_user + times.children_system:.1f} s")


@pytest.fixture(scope="module")
def tally(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tally]:
    tmp = tmp_path_factory.mktemp("odd-files")
    result = Tally()
    variants = odd_variants(tmp / "variants")
    (tmp / "repaired").mkdir()
    with module_gateway("sqlite", tmp) as gw:
        runner = Runner(gw, result)
        for path in [*odd_files(), *variants]:
            for study, series, sop in runner.stow(path):
                runner.retrieve(path.name, path, study, series, sop)
        _phase(gw, "stored and read back")
        for name in sorted(result.refused):
            if result.refused[name] not in _REPAIRABLE:
                continue
            fixed = repaired(result.refused_paths[name], tmp / "repaired")
            for study, series, sop in runner.stow(fixed) if fixed else ():
                runner.retrieve(fixed.name, fixed, study, series, sop)
        _phase(gw, "repaired")
        runner.dimse(tmp)
        _phase(gw, "C-STORE")
        if os.environ.get("ODD_FILES_TRACE"):
            print({k: round(v, 1) for k, v in result.seconds.most_common()})
        yield result
    print("\n" + result.summary())


def test_packaged_test_data_is_there() -> None:
    files = odd_files()
    assert len(files) > 150, f"only {len(files)} packaged test files found"


def test_no_server_error_on_any_route(tally: Tally) -> None:
    assert not tally.server_errors, "\n".join(tally.server_errors) + "\n" + tally.summary()


def test_client_errors_name_their_problem(tally: Tally) -> None:
    assert not tally.vague, "\n".join(tally.vague) + "\n" + tally.summary()


def test_answers_are_right(tally: Tally) -> None:
    assert not tally.wrong, "\n".join(tally.wrong) + "\n" + tally.summary()


def test_c_store_refusals_are_precise(tally: Tally) -> None:
    assert tally.dimse and not tally.dimse_failures, "\n".join(tally.dimse_failures)


def test_refusals_are_precise(tally: Tally) -> None:
    assert not tally.imprecise_refusals, "\n".join(tally.imprecise_refusals)
    # Most files get in (and through every route), the broken ones do not.
    assert len(tally.stored) > 120 and len(tally.refused) > 50, tally.summary()
    assert min(tally.checked.values(), default=0) > 80, tally.summary()

