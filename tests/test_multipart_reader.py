"""The incremental multipart reader and the Part 10 splitter used by STOW-RS (unit tests)."""

from __future__ import annotations

import pytest
from dicom_factory import make_instance, to_bytes

from dicomweb.multipart_reader import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    parse_media_type,
)
from gateway.ingest.part10 import Part10Error, split_part10


def dataset_bytes_from(data: bytes) -> bytes:
    group_len = int.from_bytes(data[140:144], "little")
    return data[144 + group_len :]


BODY = (
    b"ignored preamble\r\n--sep\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--sep\r\n"
    b"\r\nsecond part\r\nwith --sep inside\r\n\r\n--sep  \r\nX-A: 1\r\n  folded\r\n\r\n"
    b"\r\n--sep--\r\nepilogue --sep\r\n"
)


def read_all(body: bytes, chunk: int) -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader("sep")
    parts: list[tuple[dict[str, str], bytes]] = []
    for i in range(0, len(body), chunk):
        for ev in reader.feed(body[i : i + chunk]):
            if isinstance(ev, PartStart):
                parts.append((ev.headers, b""))
            elif isinstance(ev, PartData):
                parts[-1] = (parts[-1][0], parts[-1][1] + ev.data)
            else:
                assert isinstance(ev, PartEnd)
    reader.close()
    return parts


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 11, 64, 10_000])
def test_parts_whatever_the_chunking(chunk: int) -> None:
    assert read_all(BODY, chunk) == [
        ({"content-type": "application/dicom"}, b"first"),
        ({}, b"second part\r\nwith --sep inside\r\n"),
        ({"x-a": "1 folded"}, b""),
    ]


def test_body_starting_with_the_boundary() -> None:
    assert read_all(b"--sep\r\n\r\nx\r\n--sep--", 3) == [({}, b"x")]


@pytest.mark.parametrize(
    "body",
    [
        b"--sep\r\n\r\nno closing delimiter",
        b"--sep\r\nnot a header line\r\n\r\nx\r\n--sep--",
        b"--sepgarbage\r\n\r\nx\r\n--sep--",
        b"no boundary at all",
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MultipartError):
        read_all(body, 4)


def test_header_size_is_bounded() -> None:
    reader = MultipartReader("sep", max_header_size=100)
    with pytest.raises(MultipartError):
        list(reader.feed(b"--sep\r\nX: " + b"a" * 200))


def test_boundary_and_media_type_parsing() -> None:
    assert parse_media_type('Multipart/Related; type="application/dicom";boundary="a b"') == (
        "multipart/related", {"type": "application/dicom", "boundary": "a b"})
    assert parse_media_type("multipart/related; type=application/dicom; boundary=x") == (
        "multipart/related", {"type": "application/dicom", "boundary": "x"})
    with pytest.raises(ValueError):
        parse_media_type("multipart/related; type")
    MultipartReader("x" * 73)  # longer than RFC 2046 allows, as Orthanc sends them
    for bad in ("", "x" * 201, "ends with space ", "bad\r\n"):
        with pytest.raises(MultipartError):
            MultipartReader(bad)


def test_split_part10_standard_and_lenient_forms() -> None:
    ds = make_instance()
    data = to_bytes(ds)
    part = split_part10(data)
    assert data[part.dataset_offset :] == dataset_bytes_from(data)
    assert part.sop_instance_uid == str(ds.SOPInstanceUID)
    assert part.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    # Without the preamble, and without preamble and prefix (pydicom's dcmwrite default).
    for lenient in (data[128:], data[132:]):
        p = split_part10(lenient)
        assert lenient[p.dataset_offset :] == dataset_bytes_from(data)
    for bad in (b"", b"x" * 200, data[:140], b"\x00" * 128 + b"DICM" + b"\x08\x00\x05\x00CS"):
        with pytest.raises(Part10Error):
            split_part10(bad)
