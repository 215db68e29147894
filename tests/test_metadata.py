"""WADO-RS Retrieve Metadata through a real HTTP client against ``drimbox serve``.

Studies arrive through dcmtk ``storescu``; each test runs on both index back-ends.
"""

from __future__ import annotations

import gzip
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicom_factory import make_instance, write_corpus
from dicomweb_data import StudyFiles, write_study
from peers import storescu
from pydicom import dcmread

log = logging.getLogger(__name__)

PUBLIC = "https://images.chu-exemple.fr/drimbox"


def expected_json(path: Path) -> dict[str, Any]:
    """pydicom's own DICOM JSON of the stored file, every binary value marked ``BULK``."""
    return dcmread(path).to_json_dict(
        bulk_data_threshold=0, bulk_data_element_handler=lambda _e: "BULK"
    )


def assert_same(actual: dict, expected: dict, bulk_prefix: str) -> None:
    """Equal, except that each ``BULK`` must be the BulkDataURI at its attribute path."""
    assert set(actual) == set(expected)
    for key, exp in expected.items():
        act = actual[key]
        if exp.get("BulkDataURI") == "BULK":
            assert act == {"vr": exp["vr"], "BulkDataURI": f"{bulk_prefix}/{key}"}, key
        elif exp["vr"] == "SQ":
            assert len(act["Value"]) == len(exp["Value"]), key
            for i, (a, e) in enumerate(zip(act["Value"], exp["Value"], strict=True)):
                assert_same(a, e, f"{bulk_prefix}/{key}/{i}")
        else:
            assert act == exp, key


def instance_url(study: str, series: str, sop: str, base: str = PUBLIC) -> str:
    return f"{base}/dicom-web/studies/{study}/series/{series}/instances/{sop}"


def check_array(doc: list[dict], data: StudyFiles, sops: set[str]) -> None:
    got = {d["00080018"]["Value"][0]: d for d in doc}
    assert set(got) == sops
    for sop, d in got.items():
        series = d["0020000E"]["Value"][0]
        assert_same(d, expected_json(data.by_sop[sop]),
                    instance_url(data.study_uid, series, sop) + "/bulkdata")


@pytest.fixture
def loaded(gateway_factory, tmp_path: Path):
    gw = gateway_factory(DRIMBOX_PUBLIC_URL=PUBLIC).start()
    data = write_study(tmp_path / "study")
    storescu(data.files, gw.dicom_port)
    return gw, data


def get(gw, path: str, **headers: str) -> httpx.Response:
    # A Host header of another site: URIs must still come from the configured public URL.
    headers.setdefault("Host", "attacker.example.com")
    headers.setdefault("Accept-Encoding", "identity")
    return httpx.get(f"{gw.url}/dicom-web{path}", headers=headers, timeout=30)


def test_metadata_is_the_stored_datasets_with_public_bulkdata_uris(loaded) -> None:
    gw, data = loaded
    st = data.study_uid

    r = get(gw, f"/studies/{st}/metadata", Accept="application/dicom+json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    doc = r.json()
    check_array(doc, data, set(data.by_sop))
    # Series by Series Number, instances by Instance Number.
    numbers = [(d["00200011"]["Value"][0], d["00200013"]["Value"][0]) for d in doc]
    assert numbers == sorted(numbers)

    # Pixel Data and the PDF are URIs; the icon's pixels inside the sequence too.
    ct = [d for d in doc if d["0020000E"]["Value"][0] == data.ct_series]
    icon = ct[1]["00880200"]["Value"][0]["7FE00010"]
    assert icon["BulkDataURI"].endswith("/bulkdata/00880200/0/7FE00010")
    assert all(d["7FE00010"]["BulkDataURI"].startswith(PUBLIC + "/dicom-web/")
               for d in doc if "7FE00010" in d)
    pdf = next(d for d in doc if d["0020000E"]["Value"][0] == data.pdf_series)
    assert pdf["00420011"]["BulkDataURI"].endswith("/bulkdata/00420011")
    assert "InlineBinary" not in r.text and "attacker" not in r.text

    r = get(gw, f"/studies/{st}/series/{data.ct_series}/metadata")
    assert r.status_code == 200
    ct_sops = {str(dcmread(f).SOPInstanceUID) for f in data.series_of(data.ct_series)}
    check_array(r.json(), data, ct_sops)
    assert [d["00200013"]["Value"][0] for d in r.json()] == [1, 2, 3, 4, 5]

    sop = next(iter(ct_sops))
    r = get(gw, f"/studies/{st}/series/{data.ct_series}/instances/{sop}/metadata")
    assert r.status_code == 200
    assert len(r.json()) == 1
    check_array(r.json(), data, {sop})


def _raw(gw, path: str, **headers: str) -> tuple[httpx.Response, bytes]:
    with httpx.Client(timeout=30) as client, client.stream(
        "GET", f"{gw.url}/dicom-web{path}", headers=headers
    ) as r:
        return r, b"".join(r.iter_raw())


def test_gzip_etag_304_and_invalidation(loaded, tmp_path: Path) -> None:
    gw, data = loaded
    st, se = data.study_uid, data.ct_series
    for path in (f"/studies/{st}/metadata", f"/studies/{st}/series/{se}/metadata"):
        plain = get(gw, path)
        assert "content-encoding" not in plain.headers
        r, raw = _raw(gw, path, **{"Accept-Encoding": "gzip, deflate"})
        assert r.headers["content-encoding"] == "gzip"
        assert raw[:2] == b"\x1f\x8b"
        assert gzip.decompress(raw) == plain.content
        assert r.headers["etag"] == plain.headers["etag"]
        etag = plain.headers["etag"]
        assert etag.startswith('W/"')
        again = get(gw, path, **{"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert get(gw, path, **{"If-None-Match": 'W/"other"'}).status_code == 200

    # The cache is on disk, one gzip file per series plus the study's.
    files = sorted(p.name for p in (gw.data_dir / "metadata" / st).iterdir())
    assert len([f for f in files if f.startswith("study_")]) == 1
    assert len([f for f in files if f.startswith(se + "_")]) == 1

    study_etag = get(gw, f"/studies/{st}/metadata").headers["etag"]
    series_etag = get(gw, f"/studies/{st}/series/{se}/metadata").headers["etag"]
    other_etag = get(gw, f"/studies/{st}/series/{data.mr_series}/metadata").headers["etag"]

    # A new instance in the CT series: new content, new tags, the old tag no longer matches.
    new = make_instance(study_uid=st, series_uid=se, instance_number=6, seed=77)
    new_path = tmp_path / "new.dcm"
    new.save_as(new_path, enforce_file_format=True)
    storescu([new_path], gw.dicom_port)
    r = get(gw, f"/studies/{st}/series/{se}/metadata", **{"If-None-Match": series_etag})
    assert r.status_code == 200
    assert r.headers["etag"] != series_etag
    assert [d["00200013"]["Value"][0] for d in r.json()] == [1, 2, 3, 4, 5, 6]
    assert len(get(gw, f"/studies/{st}/metadata").json()) == len(data.files) + 1
    assert get(gw, f"/studies/{st}/metadata").headers["etag"] != study_etag
    # The untouched series keeps its tag.
    assert get(gw, f"/studies/{st}/series/{data.mr_series}/metadata").headers["etag"] == other_etag

    # The PACS corrects that instance (same SOP Instance UID, other content): replaced.
    new.SeriesDescription = "CORRECTED"
    new.save_as(new_path, enforce_file_format=True)
    before = get(gw, f"/studies/{st}/series/{se}/metadata").headers["etag"]
    storescu([new_path], gw.dicom_port)
    r = get(gw, f"/studies/{st}/series/{se}/metadata")
    assert r.headers["etag"] != before
    descriptions = [d["0008103E"]["Value"][0] for d in r.json()]
    assert descriptions.count("CORRECTED") == 1 and len(descriptions) == 6
    # Only the current version of the series stays on disk.
    assert len(list((gw.data_dir / "metadata" / st).glob(se + "_*.json.gz"))) == 1


def test_warmer_prepares_files_before_any_request(loaded) -> None:
    """After ingest, the series and study files appear without any HTTP request."""
    gw, data = loaded
    folder = gw.data_dir / "metadata" / data.study_uid
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        names = [p.name for p in folder.glob("*.json.gz")] if folder.is_dir() else []
        if len(names) == 5:  # four series and the study
            break
        time.sleep(0.1)
    assert sorted(n.split("_")[0] for n in names) == sorted(
        [data.ct_series, data.mr_series, data.cr_series, data.pdf_series, "study"])
    # And the request serves exactly that file.
    study_file = next(folder.glob("study_*.json.gz"))
    r, raw = _raw(gw, f"/studies/{data.study_uid}/metadata", **{"Accept-Encoding": "gzip"})
    assert raw == study_file.read_bytes()
    assert r.headers["etag"] == f'W/"{study_file.name[6:-8]}"'


def test_dicomweb_client_reads_metadata(loaded) -> None:
    from dicomweb_client.api import DICOMwebClient

    gw, data = loaded
    client = DICOMwebClient(url=f"{gw.url}/dicom-web")
    study = client.retrieve_study_metadata(data.study_uid)
    check_array(study, data, set(data.by_sop))
    series = client.retrieve_series_metadata(data.study_uid, data.mr_series)
    assert len(series) == 2
    sop = series[0]["00080018"]["Value"][0]
    inst = client.retrieve_instance_metadata(data.study_uid, data.mr_series, sop)
    assert inst == series[0]


def test_metadata_errors(loaded) -> None:
    gw, data = loaded
    st, se = data.study_uid, data.ct_series
    r = get(gw, "/studies/1.2.x/metadata")
    assert r.status_code == 400 and "study UID '1.2.x'" in r.text
    r = get(gw, f"/studies/{st}/series/..%2F..%2Fetc/metadata")
    assert r.status_code in (400, 404)
    r = get(gw, f"/studies/{st}/series/{se}/instances/1..2/metadata")
    assert r.status_code == 400 and "instance UID" in r.text
    assert get(gw, f"/studies/{'1' * 65}/metadata").status_code == 400
    assert get(gw, "/studies/1.2.3.4/metadata").status_code == 404
    assert get(gw, f"/studies/{st}/series/1.2.3.4/metadata").status_code == 404
    assert get(gw, f"/studies/{st}/series/{se}/instances/1.2.3.4/metadata").status_code == 404
    # A series that exists, asked for under another study.
    assert get(gw, f"/studies/1.2.3.4/series/{se}/metadata").status_code == 404
    # An instance of the MR series asked for under the CT series.
    mr_sop = str(dcmread(data.series_of(data.mr_series)[0]).SOPInstanceUID)
    assert get(gw, f"/studies/{st}/series/{se}/instances/{mr_sop}/metadata").status_code == 404
    r = get(gw, f"/studies/{st}/metadata", Accept="application/dicom+xml")
    assert r.status_code == 406
    assert get(gw, f"/studies/{st}/metadata", Accept="application/json").status_code == 200


def test_study_metadata_time_500_instances(gateway_factory, tmp_path: Path) -> None:
    """Rough timing (logged, not asserted): 500-instance study, cold and warm."""
    gw = gateway_factory().start()
    files = write_corpus(tmp_path / "big", 500, studies=1)
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(files, gw.dicom_port)
    url = f"{gw.url}/dicom-web/studies/{study}/metadata"
    timings = []
    for _ in range(4):
        t0 = time.perf_counter()
        r = httpx.get(url, timeout=60)  # httpx asks for gzip, like browsers
        timings.append(time.perf_counter() - t0)
        assert r.status_code == 200 and len(r.json()) == 500
    t0 = time.perf_counter()
    r = httpx.get(url, headers={"Accept-Encoding": "identity"}, timeout=60)
    plain = time.perf_counter() - t0
    assert len(r.json()) == 500
    message = (f"study metadata, 500 instances, {gw.database_url.split(':')[0]}: first "
               f"{timings[0]:.3f} s (warmer may have finished), then "
               f"{', '.join(f'{t:.3f}' for t in timings[1:])} s gzip; {plain:.3f} s identity; "
               f"{len(r.content)} bytes")
    log.warning(message)
    print(message)
