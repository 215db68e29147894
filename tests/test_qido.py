"""QIDO-RS end to end: studies loaded through a real dcmtk ``storescu``
into a ``drimbox serve`` child process, searched over HTTP with httpx and with the
``dicomweb-client`` library. Every test runs on both index back-ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import BACKENDS, module_gateway
from dicom_factory import make_instance
from dicomweb_client.api import DICOMwebClient
from peers import storescu
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, MRImageStorage

PUBLIC_URL = "https://drimbox.example.fr/imagerie"
INS_OID = "1.2.250.1.213.1.4.8"
ROOT = "1.2.826.0.1.3680043.10.1257.3."
JSON = "application/dicom+json"


def uid(*parts: int) -> str:
    return ROOT + ".".join(map(str, parts))


@dataclass
class Loaded:
    url: str  # http://127.0.0.1:port/dicom-web
    http: httpx.Client

    def get(self, path: str, params: object = None, **kw: object) -> httpx.Response:
        return self.http.get(self.url + path, params=params, timeout=30, **kw)

    def json(self, path: str, params: object = None) -> list[dict]:
        r = self.get(path, params)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == JSON
        return r.json()


# Four studies, newest first: S3 (2026-12-31), S1 (2026-01-15), S2 (2025-06-10), S4 (no date).
S1, S2, S3, S4 = uid(1), uid(2), uid(3), uid(4)
STUDIES = [
    # study, date, time, patient id, issuer, name, accession, [(series, modality, n instances)]
    (S1, "20260115", "093000", "1234567890123", INS_OID, "DUPONT^JEAN", "ACC_1%",
     [(uid(1, 1), MRImageStorage, "MR", 1), (uid(1, 2), CTImageStorage, "CT", 2)]),
    (S2, "20250610", "101500", "1234567890123", "ASIP-SANTE-INS-NIR", "DUPONT^JEAN", "ACCX1",
     [(uid(2, 1), ComputedRadiographyImageStorage, "CR", 1)]),
    (S3, "20261231", "235959", "P3", "", "LEFÈVRE^ÉLODIE", "ACC10",
     [(uid(3, 1), CTImageStorage, "CT", 1)]),
    (S4, "", "", "P4", "", "DURAND^PAUL", "acc_1x",
     [(uid(4, 1), CTImageStorage, "CT", 1)]),
]


def _write(folder: Path) -> list[Path]:
    folder.mkdir()
    files = []
    for st, (study, day, time, pid, issuer, name, acc, series_list) in enumerate(STUDIES):
        for se, (series, sop_class, modality, count) in enumerate(series_list):
            for i in range(count):
                ds = make_instance(
                    sop_class=sop_class, study_uid=study, series_uid=series,
                    sop_uid=uid(st + 1, se + 1, i + 1), patient_id=pid, issuer=issuer,
                    patient_name=name, accession=acc, modality=modality,
                    series_number=se + 1, instance_number=i + 1, rows=32, cols=48,
                )
                ds.StudyDate, ds.StudyTime = day, time
                path = folder / f"{st}-{se}-{i}.dcm"
                ds.save_as(path, enforce_file_format=True)
                files.append(path)
    return files


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Loaded]:
    """One gateway per back-end loaded with the four studies, shared by the tests: they only
    search."""
    tmp = tmp_path_factory.mktemp(f"qido-{request.param}")
    with module_gateway(request.param, tmp, DRIMBOX_PUBLIC_URL=PUBLIC_URL) as gw:
        storescu(_write(tmp / "in"), gw.dicom_port)
        yield Loaded(gw.url + "/dicom-web", gw.http)


def tag(ds: dict, t: str) -> list | None:
    return ds.get(t, {}).get("Value")


def study_uids(results: list[dict]) -> list[str]:
    return [tag(r, "0020000D")[0] for r in results]


def test_studies_default_attributes_and_json_encodings(loaded: Loaded) -> None:
    studies = loaded.json("/studies")
    assert study_uids(studies) == [S3, S1, S2, S4]  # newest first, no date last
    s1 = studies[1]
    assert s1["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DUPONT^JEAN"}]}
    assert s1["00201206"] == {"vr": "IS", "Value": [2]}  # numbers, not strings
    assert s1["00201208"] == {"vr": "IS", "Value": [3]}
    assert s1["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert s1["00080020"] == {"vr": "DA", "Value": ["20260115"]}
    assert s1["00080030"] == {"vr": "TM", "Value": ["093000"]}
    assert s1["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert s1["00100020"] == {"vr": "LO", "Value": ["1234567890123"]}
    assert s1["00100021"] == {"vr": "LO", "Value": [INS_OID]}
    assert s1["00081190"] == {"vr": "UR", "Value": [f"{PUBLIC_URL}/dicom-web/studies/{S1}"]}
    for t in ("00080050", "00080090", "00100030", "00100040", "00200010"):
        assert t in s1
    assert list(s1) == sorted(s1)
    assert studies[3]["00080020"] == {"vr": "DA"}  # empty: no Value
    # Non-ASCII names come back in UTF-8 with the character set that says so.
    s3 = studies[0]
    assert s3["00100010"]["Value"] == [{"Alphabetic": "LEFÈVRE^ÉLODIE"}]
    assert s3["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}


def test_retrieve_url_ignores_the_host_header(loaded: Loaded) -> None:
    r = loaded.get("/studies", {"StudyInstanceUID": S2},
                   headers={"Host": "evil.example:666", "X-Forwarded-Host": "evil.example"})
    assert r.status_code == 200
    assert tag(r.json()[0], "00081190") == [f"{PUBLIC_URL}/dicom-web/studies/{S2}"]
    series = loaded.json(f"/studies/{S2}/series")
    assert tag(series[0], "00081190") == [f"{PUBLIC_URL}/dicom-web/studies/{S2}/series/{uid(2, 1)}"]
    inst = loaded.json(f"/studies/{S2}/series/{uid(2, 1)}/instances")
    assert tag(inst[0], "00081190") == [
        f"{PUBLIC_URL}/dicom-web/studies/{S2}/series/{uid(2, 1)}/instances/{uid(2, 1, 1)}"]


def test_matching_keys(loaded: Loaded) -> None:
    def find(**params: str) -> list[str]:
        return study_uids(loaded.json("/studies", params))

    # The DRIM-M consumer's query: the INS and its issuer OID, matched literally.
    assert find(PatientID="1234567890123", IssuerOfPatientID=INS_OID) == [S1]
    assert find(PatientID="1234567890123", IssuerOfPatientID="ASIP-SANTE-INS-NIR") == [S2]
    assert find(**{"00100020": "1234567890123"}) == [S1, S2]  # tag instead of keyword
    assert find(StudyDate="20260101-20261231") == [S3, S1]
    assert find(StudyDate="-20260115") == [S1, S2]
    assert find(StudyDate="20260116-") == [S3]
    assert find(AccessionNumber="ACC_1*") == [S1]  # '_' is literal: not ACCX1, not acc_1x
    assert find(AccessionNumber="ACC?1") == [S2]
    assert find(StudyInstanceUID=f"{S4},{S2}") == [S2, S4]
    assert find(StudyInstanceUID=f"{S3}\\{S1}") == [S3, S1]
    assert find(PatientName="DUPONT") == []
    assert find(PatientName="dup", fuzzymatching="true") == [S1, S2]
    assert find(PatientName="PAU", fuzzymatching="true") == [S4]
    assert find(ModalitiesInStudy="MR") == [S1]
    assert find(PatientID="") == [S3, S1, S2, S4]  # universal matching
    assert loaded.json("/studies", {"PatientID": "nobody"}) == []  # 200 with []


def test_series_and_instances_routes(loaded: Loaded) -> None:
    series = loaded.json(f"/studies/{S1}/series")
    assert [tag(s, "0020000E")[0] for s in series] == [uid(1, 1), uid(1, 2)]  # SeriesNumber
    assert [tag(s, "00201209") for s in series] == [[1], [2]]
    assert [tag(s, "00080060") for s in series] == [["MR"], ["CT"]]
    assert "00100020" not in series[0]  # study attributes only when the study is not fixed
    all_series = loaded.json("/series", {"Modality": "CT", "PatientID": "1234567890123"})
    assert [tag(s, "0020000E")[0] for s in all_series] == [uid(1, 2)]
    assert tag(all_series[0], "00100020") == ["1234567890123"]
    assert tag(all_series[0], "00400244") is None and "00400244" in all_series[0]

    instances = loaded.json(f"/studies/{S1}/series/{uid(1, 2)}/instances")
    assert [tag(i, "00080018")[0] for i in instances] == [uid(1, 2, 1), uid(1, 2, 2)]
    first = instances[0]
    assert first["00280010"] == {"vr": "US", "Value": [32]}
    assert first["00280011"] == {"vr": "US", "Value": [48]}
    assert first["00280100"] == {"vr": "US", "Value": [16]}
    assert first["00200013"] == {"vr": "IS", "Value": [1]}
    assert tag(first, "00080016") == [CTImageStorage]
    in_study = loaded.json(f"/studies/{S1}/instances", {"Modality": "MR"})
    assert [tag(i, "00080018")[0] for i in in_study] == [uid(1, 1, 1)]
    everywhere = loaded.json("/instances", {"SOPClassUID": ComputedRadiographyImageStorage})
    assert [tag(i, "00080018")[0] for i in everywhere] == [uid(2, 1, 1)]
    assert tag(everywhere[0], "00100010") == [{"Alphabetic": "DUPONT^JEAN"}]
    assert loaded.json(f"/studies/{uid(9)}/series") == []  # unknown study: 200 []


def test_includefield(loaded: Loaded) -> None:
    one = loaded.json(f"/studies/{S1}/series", {"includefield": "00180015"})
    assert tag(one[0], "00180015") == ["HEAD"]
    several = loaded.json(f"/studies/{S1}/series", [
        ("includefield", "BodyPartExamined,PatientID"), ("includefield", "StudyDescription")])
    assert tag(several[0], "00100020") == ["1234567890123"]
    assert tag(several[0], "00081030") == ["TEST STUDY"]
    everything = loaded.json("/studies", {"includefield": "all", "limit": "1"})
    assert "00081030" in everything[0]
    quiet = loaded.json("/studies", {"includefield": "SliceThickness", "limit": "1"})
    assert "00180050" not in quiet[0]  # not indexed: absent, no file read


def test_paging_is_stable_and_bounded(loaded: Loaded) -> None:
    whole = [tag(i, "00080018")[0] for i in loaded.json("/instances")]
    assert len(whole) == 6
    paged = []
    for offset in range(0, 8, 2):
        page = loaded.json("/instances", {"limit": "2", "offset": str(offset)})
        paged += [tag(i, "00080018")[0] for i in page]
    assert paged == whole
    r = loaded.get("/studies", {"limit": "100000"})
    assert r.status_code == 200 and len(r.json()) == 4
    assert "warning" not in r.headers  # capped at 1000, but nothing was left out


BAD_REQUESTS = [
    ("/studies", {"Foo": "1"}, "Foo"),
    ("/studies", {"StudyDate": "2026-01-01"}, "StudyDate"),
    ("/studies", {"StudyDate": "20261231-20260101"}, "StudyDate"),
    ("/studies", {"StudyInstanceUID": "1.2.x"}, "StudyInstanceUID"),
    ("/studies", {"limit": "ten"}, "limit"),
    ("/studies", {"offset": "-3"}, "offset"),
    ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching"),
    ("/studies", {"SliceThickness": "1"}, "SliceThickness"),
    ("/studies", {"includefield": "NoSuchAttribute"}, "includefield"),
    ("/studies/1.2.x/series", {}, "StudyInstanceUID"),
    (f"/studies/{S1}/series/1..2/instances", {}, "SeriesInstanceUID"),
    (f"/studies/{S1}/series", {"StudyInstanceUID": S1}, "StudyInstanceUID"),
]


def test_bad_requests_name_the_parameter(loaded: Loaded) -> None:
    """Unknown or malformed parameters: 400, a JSON body naming the parameter."""
    for path, params, parameter in BAD_REQUESTS:
        r = loaded.get(path, params)
        assert r.status_code == 400, (path, params, r.text)
        body = r.json()
        assert body["parameter"] == parameter, (path, params, body)
        assert parameter in body["error"], (path, params, body)


INT64_MAX = 2**63 - 1
INT32 = (-(2**31), 2**31 - 1)
# Every integer query parameter of QIDO-RS: (path, parameter, minimum, maximum).
INTEGER_PARAMETERS = [
    ("/studies", "offset", 0, INT64_MAX),
    ("/studies", "limit", 1, INT64_MAX),
    ("/instances", "offset", 0, INT64_MAX),
    ("/series", "SeriesNumber", *INT32),
    ("/series", "00200011", *INT32),  # the same key by tag
    ("/instances", "InstanceNumber", *INT32),
    ("/instances", "NumberOfFrames", *INT32),
    ("/instances", "Rows", 0, 65535),
    ("/instances", "Columns", 0, 65535),
    ("/instances", "BitsAllocated", 0, 65535),
]


def test_integer_parameters_are_bounded(loaded: Loaded) -> None:
    """An integer out of range (beyond 64 bits included: it used to reach SQL and answer 500),
    negative, or not plain ASCII digits is 400 naming the parameter and its range; the bounds
    themselves are accepted."""
    for path, parameter, low, high in INTEGER_PARAMETERS:
        for bad in (str(high + 1), str(low - 1), "9" * 30, "-" + "9" * 30, "ten", "1.5",
                    "1_0", "\u00b2", "\u0661", "0x10", "1e3"):
            r = loaded.get(path, {parameter: bad})
            assert r.status_code == 400, (path, parameter, bad, r.text)
            body = r.json()
            assert body["parameter"] == parameter, (parameter, bad, body)
            assert body["error"].startswith(parameter), body
            assert f" must be an integer between {low} and {high}, not " in body["error"], body
        for good in (str(low), str(high), f" {low} "):
            r = loaded.get(path, {parameter: good})
            assert r.status_code == 200, (path, parameter, good, r.text)
    # In-range values still select what they should.
    assert study_uids(loaded.json("/studies", {"offset": "1", "limit": "2"})) == [S1, S2]
    assert study_uids(loaded.json("/studies", {"limit": str(INT64_MAX)})) == [S3, S1, S2, S4]
    assert loaded.json("/studies", {"offset": str(INT64_MAX)}) == []
    assert [tag(s, "0020000E")[0] for s in loaded.json(f"/studies/{S1}/series",
                                                        {"SeriesNumber": "2"})] == [uid(1, 2)]
    assert len(loaded.json("/instances", {"Rows": "32", "Columns": "48"})) == 6
    assert loaded.json("/instances", {"Rows": "65535"}) == []


def test_head_and_accept(loaded: Loaded) -> None:
    head = httpx.head(loaded.url + "/studies", timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == JSON
    assert loaded.get("/studies", headers={"Accept": "application/json"}).status_code == 200
    refused = loaded.get("/studies", headers={"Accept": "application/dicom+xml"})
    assert refused.status_code == 406 and "error" in refused.json()


def test_dicomweb_client(loaded: Loaded) -> None:
    """The reference Python client finds, filters, includes and pages against us."""
    client = DICOMwebClient(url=loaded.url)
    studies = client.search_for_studies(search_filters={"PatientID": "1234567890123",
                                                        "IssuerOfPatientID": INS_OID})
    assert study_uids(studies) == [S1]
    fuzzy = client.search_for_studies(search_filters={"PatientName": "jean"},
                                      fuzzymatching=True, fields=["StudyDescription"])
    assert study_uids(fuzzy) == [S1, S2]
    assert tag(fuzzy[0], "00081030") == ["TEST STUDY"]
    dated = client.search_for_studies(search_filters={"StudyDate": "20250101-20260131"})
    assert study_uids(dated) == [S1, S2]
    wildcard = client.search_for_studies(search_filters={"AccessionNumber": "ACC1*"})
    assert study_uids(wildcard) == [S3]
    page = client.search_for_studies(limit=2, offset=1)
    assert study_uids(page) == [S1, S2]
    everything = client.search_for_studies(limit=1, get_remaining=True)
    assert study_uids(everything) == [S3, S1, S2, S4]
    series = client.search_for_series(study_instance_uid=S1,
                                      search_filters={"Modality": "CT"})
    assert [tag(s, "0020000E")[0] for s in series] == [uid(1, 2)]
    instances = client.search_for_instances(study_instance_uid=S1,
                                            series_instance_uid=uid(1, 2), limit=1, offset=1)
    assert [tag(i, "00080018")[0] for i in instances] == [uid(1, 2, 2)]
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []
