"""dicomweb/accept.py: Accept parsing and transfer-syntax selection (pure, no server)."""

from __future__ import annotations

import pytest

from dicomweb.accept import (
    ANY,
    DEFAULT,
    EXPLICIT_LE,
    IMPLICIT_LE,
    instance_offers,
    json_or_xml,
    parse_accept,
    pixel_media_type,
    pixel_offers,
    select,
)

JLS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_SV1 = "1.2.840.10008.1.2.4.70"
RLE = "1.2.840.10008.1.2.5"
MR = 'multipart/related; type="application/dicom"'


def everything(source: str, target: str) -> bool:
    return True


def lossless_encoders(source: str, target: str) -> bool:
    return source == target or target in {EXPLICIT_LE, RLE, JLS, J2K_LOSSLESS}


def test_q_ordering_is_stable_and_boundary_ignored() -> None:
    header = (
        f"{MR};transfer-syntax={JPEG_BASELINE};q=0.5;boundary=**,"
        f"{MR};transfer-syntax={JPEG_SV1};q=0.9;boundary=**,"
        f"{MR};transfer-syntax={JLS};q=0.5,"
    )
    ranges = parse_accept([header])
    assert [r.transfer_syntax for r in ranges] == [JPEG_SV1, JPEG_BASELINE, JLS]
    assert [r.q for r in ranges] == [0.9, 0.5, 0.5]
    assert all("boundary" not in r.params for r in ranges)
    assert ranges[0].part_type == "application/dicom"


def test_several_header_lines_are_one_list() -> None:
    ranges = parse_accept([f"{MR};transfer-syntax={JLS};q=0.4", f"{MR};transfer-syntax={RLE}"])
    assert [r.transfer_syntax for r in ranges] == [RLE, JLS]


def test_q_zero_means_not_acceptable_and_bad_q_is_ignored() -> None:
    ranges = parse_accept([
        f"{MR};transfer-syntax={JPEG_BASELINE};q=0",
        f"{MR};transfer-syntax={JPEG_SV1};q=0.0",
        f"{MR};transfer-syntax={JLS};q=1.5",
        f"{MR};transfer-syntax={RLE};q=abc",
        f"{MR};transfer-syntax={EXPLICIT_LE};q=1.0",
    ])
    assert [r.transfer_syntax for r in ranges] == [EXPLICIT_LE]


def test_quoted_parameters_and_case() -> None:
    (r,) = parse_accept(['Multipart/Related; TYPE="application/dicom"; Transfer-Syntax="*"'])
    assert r.media_type == "multipart/related"
    assert r.part_type == "application/dicom"
    assert r.transfer_syntax == ANY


def test_no_header_is_any_and_garbage_is_ignored() -> None:
    assert [r.media_type for r in parse_accept(None)] == ["*/*"]
    assert [r.media_type for r in parse_accept([])] == ["*/*"]
    assert parse_accept(["nonsense, */json"]) == []


def test_drim_m_parameters_without_media_type() -> None:
    """ANS sample OK_Instances_v2: ``Accept: transfer-syntax=...;q=...;boundary=...``."""
    ranges = parse_accept([f"transfer-syntax={JPEG_BASELINE};q=0.9;boundary=myboundary",
                           f"transfer-syntax={EXPLICIT_LE};q=0.4;boundary=myboundary"])
    assert [(r.media_type, r.part_type, r.transfer_syntax) for r in ranges] == [
        ("multipart/related", "application/dicom", JPEG_BASELINE),
        ("multipart/related", "application/dicom", EXPLICIT_LE),
    ]


def test_instance_offers_default_and_wildcards() -> None:
    offers = instance_offers(parse_accept(["*/*"]))
    assert [o.transfer_syntax for o in offers] == [DEFAULT]
    offers = instance_offers(parse_accept(["multipart/related"]))
    assert [o.transfer_syntax for o in offers] == [DEFAULT]
    assert instance_offers(parse_accept(["application/octet-stream"])) == []
    assert instance_offers(parse_accept(['multipart/related; type="application/octet-stream"'])) == []
    # Implicit VR Little Endian shall not be used with web services: never offered back.
    assert instance_offers(parse_accept([f"{MR}; transfer-syntax={IMPLICIT_LE}"])) == []


@pytest.mark.parametrize(
    ("stored", "accept", "expected"),
    [
        # as stored when accepted, even below a higher-q syntax (no decode, no re-encode)
        (JLS, f"{MR};transfer-syntax={JPEG_SV1};q=0.9,{MR};transfer-syntax={JLS};q=0.8", JLS),
        # otherwise the highest q the server can produce
        (RLE, (f"{MR};transfer-syntax={JPEG_SV1};q=0.9,{MR};transfer-syntax={JLS};q=0.8,"
               f"{MR};transfer-syntax={EXPLICIT_LE};q=0.4"), JLS),
        # transfer-syntax=* : as stored
        (RLE, f"{MR};transfer-syntax=*", RLE),
        # ...but never Implicit VR Little Endian on the web
        (IMPLICIT_LE, f"{MR};transfer-syntax=*", EXPLICIT_LE),
        # no parameter: Explicit VR Little Endian ...
        (JLS, MR, EXPLICIT_LE),
        (IMPLICIT_LE, "*/*", EXPLICIT_LE),
        # ... except lossy pixel data, sent as stored (PS3.18 8.7.3)
        (JPEG_BASELINE, MR, JPEG_BASELINE),
        # lossy target: only as stored, never made
        (EXPLICIT_LE, f"{MR};transfer-syntax={JPEG_BASELINE}", None),
        (JPEG_BASELINE, f"{MR};transfer-syntax={JPEG_BASELINE}", JPEG_BASELINE),
        # q=0 excludes even the stored syntax
        (JLS, f"{MR};transfer-syntax={JLS};q=0,{MR};transfer-syntax={RLE};q=0.1", RLE),
    ],
)
def test_select(stored: str, accept: str, expected: str | None) -> None:
    offers = instance_offers(parse_accept([accept]))
    assert select(stored, offers, lossless_encoders) == expected


def test_select_ties_follow_header_order() -> None:
    offers = instance_offers(parse_accept([
        f"{MR};transfer-syntax={RLE};q=0.5,{MR};transfer-syntax={JLS};q=0.5"]))
    assert select(EXPLICIT_LE + ".99", offers, everything) == RLE


def test_pixel_offers() -> None:
    offers = pixel_offers(parse_accept(['multipart/related; type="application/octet-stream"']))
    assert [o.transfer_syntax for o in offers] == [EXPLICIT_LE]
    offers = pixel_offers(parse_accept(['multipart/related; type="image/jls"']))
    assert [o.transfer_syntax for o in offers] == [JLS]
    offers = pixel_offers(parse_accept(
        ['multipart/related; type="application/octet-stream"; transfer-syntax=*']))
    assert [o.transfer_syntax for o in offers] == [ANY]
    offers = pixel_offers(parse_accept(['multipart/related; type="image/jp2"; transfer-syntax=*']))
    assert [o.transfer_syntax for o in offers] == [J2K_LOSSLESS, J2K]
    # a transfer syntax that does not belong to the media type is ignored
    assert pixel_offers(parse_accept([f'multipart/related; type="image/jls"; transfer-syntax={RLE}'])) == []
    # DRIM-M OK_Frames: type="application/dicom" with transfer syntaxes
    offers = pixel_offers(parse_accept([f"{MR};transfer-syntax={JLS};q=0.5"]))
    assert [o.transfer_syntax for o in offers] == [JLS]
    assert select(JLS, offers, lambda s, t: s == t) == JLS


def test_pixel_media_types() -> None:
    assert pixel_media_type(EXPLICIT_LE) == "application/octet-stream"
    assert pixel_media_type(JLS) == "image/jls"
    assert pixel_media_type(J2K) == "image/jp2"
    assert pixel_media_type(JPEG_SV1) == "image/jpeg"
    assert pixel_media_type(RLE) == "image/dicom-rle"


@pytest.mark.parametrize(("header", "chosen"), [
    (None, "json"),
    ("*/*", "json"),
    ("application/json", "json"),
    ('multipart/related; type="application/dicom+xml"', "xml"),
    ('multipart/related;type=application/dicom+xml, application/dicom+json', "xml"),
    ('application/dicom+json;q=0.5, multipart/related; type="application/dicom+xml"', "xml"),
    ('multipart/related; type="application/dicom+xml";q=0.4, */*;q=0.5', "json"),
    ("application/dicom+xml", None),  # single part: not a representation of these resources
    ('multipart/related; type="application/dicom"', None),
    ("text/html", None),
])
def test_json_or_xml(header: str | None, chosen: str | None) -> None:
    assert json_or_xml(parse_accept([header] if header else None)) == chosen
