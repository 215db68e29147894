"""WADO-URI (PS3.18 9), the XML answers (PS3.19 Native DICOM Model) of WADO-RS metadata and
QIDO-RS, and HTTP details (405 with every allowed method, HEAD, ``includefield`` of a private
tag, empty values among several), against one real ``drimbox serve`` (SQLite: the index
does not matter here) loaded over C-STORE (dcmtk storescu).

Clients: httpx, a browser-like Accept header, dicomweb-client for the WADO-RS side (it has
no WADO-URI support: its ``wado_url_prefix`` only prefixes WADO-RS paths). XML is parsed with
lxml and compared field by field with the JSON answer of the same resource.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import Gateway, module_gateway
from dicom_factory import TEST_ROOT, make_instance
from dicomweb_client.api import DICOMwebClient
from lxml import etree
from peers import storescu
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLELossless,
    generate_uid,
)
from sqlalchemy import create_engine, select

from dicomweb.dicom_json import element
from gateway.imaging import charsets
from gateway.index.models import AuditEvent

EXPLICIT = str(ExplicitVRLittleEndian)
NS = {"n": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
XML_ACCEPT = 'multipart/related; type="application/dicom+xml"'
COMMENT = "Côté gauche, contrôle à 3 mois"
BROWSER = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
           "image/apng,*/*;q=0.8")


@dataclass
class Loaded:
    gw: Gateway
    study: str
    series: dict[str, str] = field(default_factory=dict)
    sop: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def web(self) -> str:
        return self.gw.url + "/dicom-web"

    def uri(self, kind: str, **params: str) -> dict[str, str]:
        return {"requestType": "WADO", "studyUID": self.study,
                "seriesUID": self.series[kind], "objectUID": self.sop[kind], **params}

    def wado(self, kind: str, headers: dict[str, str] | None = None, method: str = "GET",
             **params: str) -> httpx.Response:
        return self.gw.http.request(method, self.gw.url + "/wado", params=self.uri(kind, **params),
                                    headers=headers or {}, timeout=30)

    def pixels(self, kind: str) -> np.ndarray:
        return dcmread(self.files[self.sop[kind]]).pixel_array


def _multiframe(study: str, series: str) -> Dataset:
    ds = make_instance(sop_class="1.2.840.10008.5.1.4.1.1.7", study_uid=study,
                       series_uid=series, series_number=3, rows=16, cols=16, seed=5)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
    frames = np.full((3, 16, 16), 2000, np.uint16)
    for k in range(3):
        frames[k, 4 * k:4 * k + 4, :] = 0  # a dark band, lower in each frame
    ds.NumberOfFrames = 3
    ds.FrameIncrementPointer = 0x00181063
    ds.PixelData = frames.tobytes()
    return ds


def _load(folder: Path, gw: Gateway) -> Loaded:
    folder.mkdir()
    loaded = Loaded(gw, generate_uid(TEST_ROOT))
    ct, mf, pdf = (generate_uid(TEST_ROOT) for _ in range(3))
    loaded.series = {"ct": ct, "implicit": ct, "multiframe": mf, "pdf": pdf}
    a = make_instance(study_uid=loaded.study, series_uid=ct, rows=32, cols=48, seed=1)
    # Empty values among several (PS3.18 F.2: null in JSON), a private block.
    a.ImageType = "ORIGINAL\\\\AXIAL"
    a.OtherPatientNames = "DUPONT^J\\\\MARTIN^PAUL"
    a.ImagePositionPatient = "0\\\\1"
    a.add_new(0x00090010, "LO", "DRIMBOX TEST")
    a.add_new(0x00091010, "LO", "private value")
    a.ReferencedImageSequence = [Dataset()]
    a.ReferencedImageSequence[0].ReferencedSOPClassUID = CTImageStorage
    a.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid(TEST_ROOT)
    b = make_instance(study_uid=loaded.study, series_uid=ct, instance_number=2,
                      transfer_syntax=str(ImplicitVRLittleEndian), seed=2)
    b.ImageComments = COMMENT  # Latin-1 (ISO_IR 100) as stored
    c = _multiframe(loaded.study, mf)
    d = make_instance(sop_class=EncapsulatedPDFStorage, study_uid=loaded.study,
                      series_uid=pdf, series_number=4)
    for kind, ds in (("ct", a), ("implicit", b), ("multiframe", c), ("pdf", d)):
        path = folder / f"{kind}.dcm"
        ds.save_as(path, enforce_file_format=True)
        loaded.sop[kind] = str(ds.SOPInstanceUID)
        loaded.files[str(ds.SOPInstanceUID)] = path
    storescu(list(loaded.files.values()), gw.dicom_port)
    return loaded


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    tmp = tmp_path_factory.mktemp("wado-uri")
    with module_gateway("sqlite", tmp) as gw:
        yield _load(tmp / "in", gw)


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(content type, body) of each part, split by the standard library."""
    ctype = response.headers["content-type"]
    raw = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + response.content
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    assert msg.is_multipart(), ctype
    return [(p["Content-Type"], p.get_payload(decode=True)) for p in msg.iter_parts()]


def image(response: httpx.Response, media_type: str) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    img = Image.open(io.BytesIO(response.content))
    img.load()
    return img


# -- WADO-URI: application/dicom ------------------------------------------------------------


def test_wado_uri_dicom_is_the_instance_wado_rs_sends(loaded: Loaded) -> None:
    r = loaded.wado("ct", contentType="application/dicom")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    assert int(r.headers["content-length"]) == len(r.content)
    client = DICOMwebClient(url=loaded.web)
    rs = client.retrieve_instance(loaded.study, loaded.series["ct"], loaded.sop["ct"])
    ds = dcmread(io.BytesIO(r.content))
    assert ds.SOPInstanceUID == rs.SOPInstanceUID == loaded.sop["ct"]
    assert ds.PixelData == rs.PixelData == dcmread(loaded.files[loaded.sop["ct"]]).PixelData
    assert ds[0x00091010].value == "private value"


def test_wado_uri_transfer_syntax(loaded: Loaded) -> None:
    # Default (PS3.18 8.7.3): Explicit VR Little Endian, here from Implicit VR LE storage.
    r = loaded.wado("implicit", contentType="application/dicom")
    assert r.headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    ds = dcmread(io.BytesIO(r.content))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(ds.pixel_array, loaded.pixels("implicit"))
    # A lossless transcode on request.
    r = loaded.wado("ct", contentType="application/dicom", transferSyntax=str(RLELossless))
    assert r.status_code == 200, r.text
    ds = dcmread(io.BytesIO(r.content))
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(ds.pixel_array, loaded.pixels("ct"))
    # The Accept header alone selects DICOM too.
    r = loaded.wado("ct", headers={"Accept": "application/dicom"})
    assert r.headers["content-type"].startswith("application/dicom;")


def test_wado_uri_charset(loaded: Loaded) -> None:
    """PS3.18 8.3.3.2: an instance in none of the charsets asked is re-encoded in UTF-8 when
    UTF-8 is acceptable; one in an acceptable charset is sent as stored."""
    r = loaded.wado("implicit", contentType="application/dicom", charset="utf-8")
    assert r.status_code == 200, r.text
    ds = dcmread(io.BytesIO(r.content))
    assert ds.SpecificCharacterSet == "ISO_IR 192" and ds.ImageComments == COMMENT
    assert COMMENT.encode("utf-8") in r.content
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT
    assert np.array_equal(ds.pixel_array, loaded.pixels("implicit"))
    for charset in ("iso-8859-1", "utf-8;q=0.5, ISO-8859-1", "*"):
        r = loaded.wado("implicit", contentType="application/dicom", charset=charset)
        ds = dcmread(io.BytesIO(r.content))
        assert ds.SpecificCharacterSet == "ISO_IR 100", charset
        assert COMMENT.encode("latin-1") in r.content and ds.ImageComments == COMMENT


@pytest.mark.parametrize(("params", "status", "says"), [
    ({"transferSyntax": str(ImplicitVRLittleEndian)}, 400, "not used by web services"),
    ({"transferSyntax": "1.2.x"}, 400, "not a UID"),
    ({"transferSyntax": "1.2.840.10008.1.2.4.50"}, 406, "can send"),  # never made lossy
    ({"frameNumber": "1"}, 400, "frameNumber"),
    ({"anonymize": "yes"}, 400, "does not de-identify"),
])
def test_wado_uri_dicom_refusals(loaded: Loaded, params: dict, status: int, says: str) -> None:
    r = loaded.wado("ct", contentType="application/dicom", **params)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


# -- WADO-URI: rendered ---------------------------------------------------------------------


def test_wado_uri_browser_gets_a_jpeg(loaded: Loaded) -> None:
    """PS3.18 9.3: no contentType and a wildcard Accept: image/jpeg (Retrieve Rendered)."""
    img = image(loaded.wado("ct", headers={"Accept": BROWSER}), "image/jpeg")
    assert img.format == "JPEG" and img.size == (48, 32)
    assert image(loaded.wado("ct"), "image/jpeg").size == (48, 32)  # httpx: Accept */*


def test_wado_uri_rendering_parameters(loaded: Loaded) -> None:
    png = image(loaded.wado("ct", contentType="image/png"), "image/png")
    assert png.format == "PNG" and png.size == (48, 32)
    assert image(loaded.wado("ct", contentType="image/png", rows="16"), "image/png").size \
        == (24, 16)
    assert image(loaded.wado("ct", contentType="image/png", rows="96", columns="96"),
                 "image/png").size == (96, 64)
    assert image(loaded.wado("ct", contentType="image/png", region="0,0,0.5,0.5"),
                 "image/png").size == (24, 16)
    assert image(loaded.wado("ct", contentType="image/gif"), "image/gif").format == "GIF"
    # A window of our own changes the picture; a list with q values picks the best offered.
    windowed = image(loaded.wado("ct", contentType="image/webp, image/png;q=0.5",
                                 windowCenter="-2000", windowWidth="100"), "image/png")
    assert np.asarray(windowed).min() == 255  # everything above the window: white
    assert not np.array_equal(np.asarray(windowed), np.asarray(png))
    # Frames: each its own picture.
    frames = [np.asarray(image(loaded.wado("multiframe", contentType="image/png",
                                           frameNumber=str(n)), "image/png")) for n in (1, 2)]
    assert not np.array_equal(*frames)
    assert np.array_equal(frames[0], np.asarray(
        image(loaded.wado("multiframe", contentType="image/png"), "image/png")))


@pytest.mark.parametrize(("kind", "params", "status", "says"), [
    ("multiframe", {"frameNumber": "4"}, 404, "3 frame"),
    ("ct", {"frameNumber": "0"}, 400, "frameNumber"),
    ("ct", {"windowCenter": "40"}, 400, "go together"),
    ("ct", {"rows": "0"}, 400, "rows"),
    ("ct", {"region": "0.5,0,0.2,1"}, 400, "region"),
    ("ct", {"transferSyntax": EXPLICIT}, 400, "transferSyntax"),
    ("ct", {"contentType": "application/pdf"}, 406, "image/jpeg"),
    ("pdf", {"contentType": "image/jpeg"}, 406, "application/pdf"),
    ("ct", {"anonymize": "no"}, 400, "anonymize"),
])
def test_wado_uri_rendered_refusals(loaded: Loaded, kind: str, params: dict, status: int,
                                    says: str) -> None:
    r = loaded.wado(kind, **params)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


def test_wado_uri_encapsulated_document(loaded: Loaded) -> None:
    r = loaded.wado("pdf", headers={"Accept": BROWSER})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.content.startswith(b"%PDF-1.4") and r.content.endswith(b"%%EOF\n")


def test_wado_uri_request_errors(loaded: Loaded) -> None:
    http, url = loaded.gw.http, loaded.gw.url + "/wado"
    full = loaded.uri("ct")
    for missing in ("requestType", "studyUID", "seriesUID", "objectUID"):
        r = http.get(url, params={k: v for k, v in full.items() if k != missing})
        assert r.status_code == 400 and missing in r.json()["detail"], (missing, r.text)
    assert http.get(url, params={**full, "requestType": "WADO-RS"}).status_code == 400
    r = http.get(url, params={**full, "objectUID": "1.2.abc"})
    assert r.status_code == 400 and "objectUID" in r.json()["detail"]
    assert http.get(url, params={**full, "objectUID": "1.2.3.4"}).status_code == 404
    # An instance named with the wrong series is not found either.
    assert http.get(url, params={**full, "seriesUID": loaded.series["pdf"]}).status_code == 404


def test_wado_uri_is_audited_as_a_retrieve(loaded: Loaded) -> None:
    assert loaded.wado("multiframe", contentType="application/dicom").status_code == 200
    engine = create_engine(loaded.gw.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(AuditEvent.__table__).order_by(AuditEvent.id.desc())
                               .limit(1)).one()
    finally:
        engine.dispose()
    assert (row.action, row.outcome, row.study_instance_uid) == ("wado", "allowed", loaded.study)
    assert loaded.sop["multiframe"] in row.sop_instance_uids


# -- HTTP methods ---------------------------------------------------------------------------


def test_head_answers_the_headers_of_get(loaded: Loaded) -> None:
    http = loaded.gw.http
    for url, params in [
        (loaded.gw.url + "/wado", loaded.uri("ct")),
        (loaded.gw.url + "/wado", loaded.uri("ct", contentType="application/dicom")),
        (f"{loaded.web}/studies/{loaded.study}/series/{loaded.series['ct']}/metadata", None),
        (f"{loaded.web}/studies/{loaded.study}/series/{loaded.series['ct']}/instances/"
         f"{loaded.sop['ct']}/rendered", None),
    ]:
        get, head = http.get(url, params=params), http.head(url, params=params)
        assert head.status_code == get.status_code == 200, url
        assert head.content == b""
        for name in ("content-type", "content-length", "etag"):
            assert head.headers.get(name) == get.headers.get(name), (url, name)
    # A streamed multipart answer: the same type (its boundary aside), no body.
    url = f"{loaded.web}/studies/{loaded.study}"
    head = http.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    assert http.head(f"{loaded.web}/studies/1.2.3.4").status_code == 404


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", "/dicom-web/studies", "GET, HEAD, POST"),
    ("PUT", "/dicom-web/studies/1.2.3", "GET, HEAD, POST"),
    ("POST", "/dicom-web/studies/1.2.3/metadata", "GET, HEAD"),
    ("POST", "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/frames/1", "GET, HEAD"),
    ("DELETE", "/wado", "GET, HEAD"),
])
def test_405_lists_every_allowed_method(loaded: Loaded, method: str, path: str,
                                        allow: str) -> None:
    r = loaded.gw.http.request(method, loaded.gw.url + path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow


# -- XML (PS3.19 Native DICOM Model) --------------------------------------------------------


def _xml_value(attr: etree._Element) -> dict:
    """A DicomAttribute read back into the DICOM JSON form (for a field-by-field check)."""
    out: dict = {"vr": attr.get("vr")}
    bulk = attr.find("n:BulkData", NS)
    if bulk is not None:
        out["BulkDataURI"] = bulk.get("uri")
        return out
    values: list = []
    for child in attr:
        number = int(child.get("number"))
        assert number == len(values) + 1  # numbered from 1, none skipped
        tag = etree.QName(child).localname
        if tag == "Item":
            values.append(_xml_dataset(child))
        elif tag == "PersonName":
            groups = {}
            for group in child:
                names = {etree.QName(c).localname: c.text for c in group}
                parts = [names.get(n, "") for n in
                         ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")]
                groups[etree.QName(group).localname] = "^".join(parts).rstrip("^")
            values.append(groups or None)
        else:
            assert tag == "Value"
            values.append(child.text)
    if values:
        out["Value"] = values
    return out


def _xml_dataset(element: etree._Element) -> dict:
    return {a.get("tag"): _xml_value(a) for a in element.findall("n:DicomAttribute", NS)}


def _same(json_ds: dict, xml_ds: dict) -> None:
    assert list(xml_ds) == sorted(json_ds)
    for tag, j in json_ds.items():
        x = xml_ds[tag]
        assert x["vr"] == j["vr"], tag
        if "BulkDataURI" in j:
            assert x["BulkDataURI"] == j["BulkDataURI"], tag
            continue
        jv, xv = j.get("Value", []), x.get("Value", [])
        assert len(jv) == len(xv), tag
        for a, b in zip(jv, xv, strict=True):
            if j["vr"] == "SQ":
                _same(a, b)
            elif a is None or isinstance(a, str):
                assert b == a, tag
            elif isinstance(a, dict):
                assert b == a, tag
            else:
                assert float(b) == float(a), tag


def _documents(response: httpx.Response) -> list[etree._Element]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom+xml"')
    out = []
    for ctype, body in parts(response):
        assert ctype.split(";")[0] == "application/dicom+xml"
        root = etree.fromstring(body)
        assert root.tag == f"{{{NS['n']}}}NativeDicomModel"
        out.append(root)
    return out


def test_xml_metadata_says_what_json_says(loaded: Loaded) -> None:
    url = f"{loaded.web}/studies/{loaded.study}/metadata"
    as_json = loaded.gw.http.get(url, headers={"Accept": "application/dicom+json"}).json()
    docs = _documents(loaded.gw.http.get(url, headers={"Accept": XML_ACCEPT}))
    assert len(docs) == len(as_json) == 4
    for j, doc in zip(as_json, docs, strict=True):
        _same(j, _xml_dataset(doc))
    ct = next(d for d in docs if d.find("n:DicomAttribute[@tag='00091010']", NS) is not None)
    private = ct.find("n:DicomAttribute[@tag='00091010']", NS)
    assert private.get("privateCreator") == "DRIMBOX TEST" and private.get("keyword") is None
    assert ct.find("n:DicomAttribute[@tag='00100010']", NS).get("keyword") == "PatientName"
    pixel = ct.find("n:DicomAttribute[@tag='7FE00010']/n:BulkData", NS).get("uri")
    assert pixel.endswith(f"/instances/{loaded.sop['ct']}/bulkdata/7FE00010")
    # The empty second value keeps its place.
    image_type = ct.find("n:DicomAttribute[@tag='00080008']", NS)
    assert [(v.get("number"), v.text) for v in image_type] == [
        ("1", "ORIGINAL"), ("2", None), ("3", "AXIAL")]
    # The higher q wins; neither JSON nor multipart XML: 406.
    r = loaded.gw.http.get(url, headers={"Accept": f"application/dicom+json;q=0.5, {XML_ACCEPT}"})
    assert r.headers["content-type"].startswith("multipart/related")
    assert loaded.gw.http.get(url, headers={"Accept": "application/dicom+xml"}).status_code == 406


def test_xml_search_results_say_what_json_says(loaded: Loaded) -> None:
    http = loaded.gw.http
    for path in ("/studies", f"/studies/{loaded.study}/series",
                 f"/studies/{loaded.study}/instances"):
        params = {"StudyInstanceUID": loaded.study} if path == "/studies" else {}
        params["includefield"] = "all"
        as_json = http.get(loaded.web + path, params=params).json()
        docs = _documents(http.get(loaded.web + path, params=params,
                                   headers={"Accept": XML_ACCEPT}))
        assert len(docs) == len(as_json) > 0
        for j, doc in zip(as_json, docs, strict=True):
            _same(j, _xml_dataset(doc))
    r = http.get(loaded.web + "/studies", params={"StudyInstanceUID": "1.2.3.4"},
                 headers={"Accept": XML_ACCEPT})
    assert r.status_code == 204 and r.content == b""
    r = http.get(loaded.web + "/studies", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406 and "dicom+xml" in r.json()["error"]


# -- QIDO-RS includefield, empty values ----------------------------------------------------


def test_includefield_private_tag_is_absent_not_refused(loaded: Loaded) -> None:
    for value in ("00091010", "0009xx10", "00091010,StudyDescription"):
        r = loaded.gw.http.get(f"{loaded.web}/studies/{loaded.study}/instances",
                               params={"includefield": value})
        assert r.status_code == 200, (value, r.text)
        assert all("00091010" not in item for item in r.json())
    r = loaded.gw.http.get(f"{loaded.web}/studies", params={"includefield": "0008xx10"})
    assert r.status_code == 400  # an even group has no private block


def test_empty_values_among_several_are_null(loaded: Loaded) -> None:
    url = (f"{loaded.web}/studies/{loaded.study}/series/{loaded.series['ct']}/instances/"
           f"{loaded.sop['ct']}/metadata")
    (ds,) = loaded.gw.http.get(url).json()
    assert ds["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}
    assert ds["00101001"] == {"vr": "PN", "Value": [{"Alphabetic": "DUPONT^J"}, None,
                                                    {"Alphabetic": "MARTIN^PAUL"}]}
    assert ds["00200032"] == {"vr": "DS", "Value": [0.0, None, 1.0]}
    assert ds["00091010"] == {"vr": "LO", "Value": ["private value"]}


def test_dicom_json_rows_with_empty_values() -> None:
    assert element("CS", "CT\\\\MR") == {"vr": "CS", "Value": ["CT", None, "MR"]}
    assert element("IS", "1\\\\3") == {"vr": "IS", "Value": [1, None, 3]}
    assert element("DS", "1\\x") == {"vr": "DS"}  # not a number: empty, never invalid JSON
    assert element("PN", "A^B\\") == {"vr": "PN", "Value": [{"Alphabetic": "A^B"}, None]}


def test_charset_choice() -> None:
    assert charsets.parse("ISO-8859-1;q=0.2, utf-8, koi8-r;q=0") == ["utf-8", "iso-8859-1"]
    assert charsets.stored_charset(None) == "us-ascii"
    assert charsets.stored_charset(["", "ISO 2022 IR 87"]) is None  # no single IANA name
    assert not charsets.needs_utf8(["iso-8859-1"], "us-ascii")  # ASCII is in every one
    assert charsets.needs_utf8(["utf-8"], "iso-8859-1")
    assert not charsets.needs_utf8(["iso-8859-2"], "iso-8859-1")  # as stored, not converted
