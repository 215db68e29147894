"""STOW-RS (PS3.18 10.5) against a real ``drimbox serve`` child process,
with httpx (multipart bodies built here, sent in odd-sized chunks) and with the
``dicomweb-client`` library. Each test runs on both index back-ends."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from dicom_factory import dataset_bytes, make_instance, to_bytes, write_corpus
from pydicom import dcmread
from pydicom.uid import generate_uid

from gateway.index.engine import create_index_engine
from gateway.index.store import InstanceIndex

STUDIES = "/dicom-web/studies"
CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


def multipart(parts: list[bytes], boundary: str | None = None,
              part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = boundary or f"drimbox-{uuid.uuid4().hex}"
    body = b"preamble to ignore\r\n"
    for p in parts:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n"
    body += f"--{boundary}--\r\nepilogue to ignore".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def chunked(body: bytes, size: int = 997) -> Iterator[bytes]:
    """Odd-sized chunks, so boundaries and part headers straddle reads."""
    for i in range(0, len(body), size):
        yield body[i : i + size]


def post(gateway, body, content_type: str, path: str = STUDIES, **headers) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", content=body, timeout=60,
                      headers={"Content-Type": content_type,
                               "Accept": "application/dicom+json", **headers})


def index_of(gateway) -> InstanceIndex:
    return InstanceIndex(create_index_engine(gateway.database_url))


def seq(body: dict, tag: str) -> list[dict]:
    return body.get(tag, {}).get("Value", [])


def value(item: dict, tag: str):
    return item[tag]["Value"][0]


def staging_is_empty(gateway) -> bool:
    return not any((gateway.data_dir / "staging").iterdir())


def test_stow_httpx_stores_byte_identical_and_indexes(gateway, tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "c", 24, studies=1)  # CT, MR RLE, CR deflate, SC, PDF
    body, ctype = multipart([f.read_bytes() for f in files])
    r = post(gateway, chunked(body), ctype)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    res = r.json()
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert res["00081190"] == {"vr": "UR", "Value": [f"{gateway.url}/dicom-web/studies/{study}"]}
    assert "00081198" not in res
    refs = seq(res, "00081199")
    assert len(refs) == len(files)

    rows = {r.sop_instance_uid: r for r in index_of(gateway).all_instances()}
    assert len(rows) == len(files)
    for f, ref in zip(files, refs, strict=True):
        ds = dcmread(f, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID)
        assert value(ref, "00081155") == uid
        assert value(ref, "00081150") == str(ds.SOPClassUID)
        assert value(ref, "00081190") == (
            f"{gateway.url}/dicom-web/studies/{study}/series/{ds.SeriesInstanceUID}"
            f"/instances/{uid}"
        )
        sent = hashlib.sha256(dataset_bytes(f)).hexdigest()
        row = rows[uid]
        assert row.sha256 == sent
        assert row.transfer_syntax_uid == str(ds.file_meta.TransferSyntaxUID)
        path = gateway.data_dir / "storage" / row.storage_key
        assert dataset_bytes(path) == dataset_bytes(f)  # byte-identical dataset
        assert dcmread(path, stop_before_pixels=True).file_meta.SourceApplicationEntityTitle == (
            "stow"
        )
    assert staging_is_empty(gateway)
    assert f'drimbox_instances_received_total{{source="stow"}} {len(files)}.0' in (
        gateway.metrics()
    )

    # Sent again: still 200, nothing stored twice.
    r = post(gateway, body, ctype)
    assert r.status_code == 200
    assert len(index_of(gateway).all_instances()) == len(files)
    assert len(list((gateway.data_dir / "storage").rglob("*.dcm"))) == len(files)


def test_stow_with_dicomweb_client(gateway, tmp_path: Path) -> None:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=f"{gateway.url}/dicom-web")
    study = generate_uid()
    series = generate_uid()
    datasets = [make_instance(study_uid=study, series_uid=series, instance_number=i, seed=i)
                for i in range(1, 4)]
    sent = {str(ds.SOPInstanceUID): hashlib.sha256(dataset_bytes_of(ds)).hexdigest()
            for ds in datasets}
    result = client.store_instances(datasets)
    assert result.RetrieveURL == f"{gateway.url}/dicom-web/studies/{study}"
    assert {str(i.ReferencedSOPInstanceUID) for i in result.ReferencedSOPSequence} == set(sent)
    assert "FailedSOPSequence" not in result

    other = make_instance(study_uid=study, series_uid=series, instance_number=9, seed=9)
    result = client.store_instances([other], study_instance_uid=study)
    assert [str(i.ReferencedSOPInstanceUID) for i in result.ReferencedSOPSequence] == [
        str(other.SOPInstanceUID)
    ]
    rows = index_of(gateway).all_instances()
    assert {r.sop_instance_uid for r in rows} == set(sent) | {str(other.SOPInstanceUID)}
    for r in rows:
        if r.sop_instance_uid in sent:
            assert r.sha256 == sent[r.sop_instance_uid]
            assert r.study_instance_uid == study


def dataset_bytes_of(ds) -> bytes:
    data = to_bytes(ds)
    group_len = int.from_bytes(data[140:144], "little")
    return data[144 + group_len :]


def _without(ds, keyword: str) -> bytes:
    delattr(ds, keyword)
    return to_bytes(ds)


def test_some_parts_fail_202(gateway) -> None:
    good = make_instance()
    body, ctype = multipart([to_bytes(good), b"this is not DICOM at all"])
    r = post(gateway, body, ctype)
    assert r.status_code == 202, r.text
    res = r.json()
    assert [value(i, "00081155") for i in seq(res, "00081199")] == [str(good.SOPInstanceUID)]
    failed = seq(res, "00081198")
    assert len(failed) == 1
    assert failed[0]["00081197"] == {"vr": "US", "Value": [0xC000]}
    assert failed[0]["00081155"] == {"vr": "UI"}  # unknown: present without a value
    assert [r.sop_instance_uid for r in index_of(gateway).all_instances()] == [
        str(good.SOPInstanceUID)
    ]
    assert 'drimbox_stow_failures_total{status="0xC000"} 1.0' in gateway.metrics()
    assert staging_is_empty(gateway)


def test_none_stored_409_with_dicom_status_per_part(gateway) -> None:
    no_study = make_instance()
    missing = _without(no_study, "StudyInstanceUID")
    bad_uid = make_instance(series_uid="1.2.3..4")  # empty component: malformed
    mismatch = make_instance()
    mismatch_bytes = to_bytes(mismatch).replace(
        str(mismatch.file_meta.MediaStorageSOPInstanceUID).encode(), b"9" * len(
            str(mismatch.SOPInstanceUID)), 1)  # meta names another instance
    # The meta information says secondary capture, the dataset says CT.
    sc = to_bytes(make_instance()).replace(CT.encode() + b"\x00", SC.encode() + b"\x00", 1)
    body, ctype = multipart([missing, to_bytes(bad_uid), mismatch_bytes, sc])
    r = post(gateway, body, ctype)
    assert r.status_code == 409, r.text
    res = r.json()
    assert "00081199" not in res and "00081190" not in res
    reasons = [value(i, "00081197") for i in seq(res, "00081198")]
    assert reasons == [0xC001, 0xC002, 0xC003, 0xA900]
    assert value(seq(res, "00081198")[0], "00081155") == str(no_study.SOPInstanceUID)
    assert index_of(gateway).all_instances() == []


def test_part_of_another_study_than_the_url_is_refused(gateway) -> None:
    study = generate_uid()
    ours = make_instance(study_uid=study)
    theirs = make_instance()
    body, ctype = multipart([to_bytes(ours), to_bytes(theirs)])
    r = post(gateway, body, ctype, path=f"{STUDIES}/{study}")
    assert r.status_code == 202, r.text
    res = r.json()
    assert value(res, "00081190") == f"{gateway.url}/dicom-web/studies/{study}"
    assert [value(i, "00081155") for i in seq(res, "00081199")] == [str(ours.SOPInstanceUID)]
    failed = seq(res, "00081198")
    assert [value(i, "00081155") for i in failed] == [str(theirs.SOPInstanceUID)]
    assert value(failed[0], "00081197") == 0xA900
    assert [r.sop_instance_uid for r in index_of(gateway).all_instances()] == [
        str(ours.SOPInstanceUID)
    ]
    # Only the other study: nothing stored.
    body, ctype = multipart([to_bytes(theirs)])
    assert post(gateway, body, ctype, path=f"{STUDIES}/{study}").status_code == 409


WRONG_MEDIA_TYPES = [
    "application/dicom",
    'multipart/related; type="application/dicom+json"; boundary=x',
    'multipart/related; type="application/dicom+xml"; boundary=x',
    "multipart/form-data; boundary=x",
    "",
]


def test_wrong_media_type_415(gateway) -> None:
    body, _ = multipart([to_bytes(make_instance())], boundary="x")
    for content_type in WRONG_MEDIA_TYPES:
        r = post(gateway, body, content_type)
        assert r.status_code == 415, (content_type, r.text)
    assert index_of(gateway).all_instances() == []


def test_malformed_requests_400(gateway) -> None:
    good = to_bytes(make_instance())
    body, ctype = multipart([good], boundary="b1")
    no_boundary = 'multipart/related; type="application/dicom"'
    assert post(gateway, body, no_boundary).status_code == 400
    # Body cut before the closing delimiter.
    truncated = body[: body.index(b"--b1--")]
    assert post(gateway, truncated, ctype).status_code == 400
    # A part whose header block is garbage.
    garbage = b"--b1\r\nthis is no header\r\n\r\nxx\r\n--b1--\r\n"
    assert post(gateway, garbage, ctype).status_code == 400
    # No part at all.
    assert post(gateway, b"--b1--\r\n", ctype).status_code == 400
    # A study in the URL that is not a UID.
    assert post(gateway, body, ctype, path=f"{STUDIES}/not-a-uid").status_code == 400
    # A response format we do not produce.
    assert post(gateway, body, ctype, Accept="application/dicom+xml").status_code == 406
    assert index_of(gateway).all_instances() == []
    assert staging_is_empty(gateway)


def test_part_of_another_media_type_fails_alone(gateway) -> None:
    good = make_instance()
    boundary = "bb"
    body = (b"--bb\r\nContent-Type: application/dicom\r\n\r\n" + to_bytes(good)
            + b"\r\n--bb\r\nContent-Type: text/plain\r\n\r\nhello\r\n--bb--\r\n")
    r = post(gateway, body, f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert r.status_code == 202
    assert value(seq(r.json(), "00081198")[0], "00081197") == 0xC000


def test_duplicate_with_other_content_refused_under_refuse_policy(gateway_factory) -> None:
    gw = gateway_factory(DRIMBOX_DUPLICATE_POLICY="refuse").start()
    first = make_instance(seed=1)
    changed = make_instance(seed=2, sop_uid=str(first.SOPInstanceUID),
                            study_uid=str(first.StudyInstanceUID),
                            series_uid=str(first.SeriesInstanceUID))
    assert post(gw, *multipart([to_bytes(first)])).status_code == 200
    r = post(gw, *multipart([to_bytes(changed)]))
    assert r.status_code == 409
    assert value(seq(r.json(), "00081198")[0], "00081197") == 0x0111


def test_retrieve_urls_follow_public_url_and_trusted_proxy_only(gateway_factory) -> None:
    inst = make_instance()
    study = str(inst.StudyInstanceUID)
    spoof = {"Host": "evil.example", "X-Forwarded-Host": "evil.example",
             "X-Forwarded-Proto": "http", "Forwarded": "host=evil.example"}

    gw = gateway_factory(DRIMBOX_PUBLIC_URL="https://drimbox.chu.example/img").start()
    r = post(gw, *multipart([to_bytes(inst)]), **spoof)
    assert value(r.json(), "00081190") == (
        f"https://drimbox.chu.example/img/dicom-web/studies/{study}"
    )
    gw.stop()

    gw = gateway_factory(DRIMBOX_PUBLIC_URL="https://drimbox.chu.example/img",
                         DRIMBOX_TRUSTED_PROXIES='["127.0.0.1"]').start()
    r = post(gw, *multipart([to_bytes(inst)]), **{
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "proxy.example:8443",
        "X-Forwarded-Prefix": "/drimbox"})
    assert r.status_code == 200
    assert value(r.json(), "00081190") == (
        f"https://proxy.example:8443/drimbox/dicom-web/studies/{study}"
    )
    assert value(seq(r.json(), "00081199")[0], "00081190").startswith(
        "https://proxy.example:8443/drimbox/dicom-web/studies/"
    )


def test_a_part_over_the_size_limit_is_413_and_the_earlier_parts_stay(gateway_factory,
                                                                       tmp_path: Path) -> None:
    """stow_max_part_bytes: a part larger than it stops the request at once (413 naming the
    setting), nothing of it stays in staging, the parts before it are stored."""
    gw = gateway_factory(DRIMBOX_STOW_MAX_PART_BYTES="200000").start()
    small = to_bytes(make_instance(rows=64, cols=64))
    big = to_bytes(make_instance(rows=512, cols=512))  # 512 KB of pixels
    assert len(small) < 200_000 < len(big)
    body, ctype = multipart([small, big, small])
    r = post(gw, chunked(body, 65536), ctype)
    assert r.status_code == 413, r.text
    assert "stow_max_part_bytes (200000 bytes)" in r.text and "1 instance(s)" in r.text
    assert len(index_of(gw).all_instances()) == 1
    assert staging_is_empty(gw)

