"""dicomweb/multipart.py framing, read back with the standard library's MIME parser."""

from __future__ import annotations

import email.parser
import email.policy

from dicomweb.multipart import Part, content_type, new_boundary, stream


def _parse(body: bytes, ctype: str):
    raw = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    return email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)


def test_framing_round_trips_binary_parts() -> None:
    boundary = new_boundary()
    bodies = [b"", b"\r\n--" + boundary.encode()[:-1] + b"\r\n", bytes(range(256)) * 300]
    parts = [
        Part("application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
             [b[i : i + 1000] for i in range(0, len(b), 1000)], {"Content-Length": str(len(b))})
        for b in bodies
    ]
    body = b"".join(stream(parts, boundary))
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert body.endswith(f"\r\n--{boundary}--\r\n".encode())
    msg = _parse(body, content_type("application/dicom", boundary))
    assert msg.is_multipart()
    got = list(msg.iter_parts())
    assert [p.get_payload(decode=True) for p in got] == bodies
    assert got[0].get_content_type() == "application/dicom"
    assert got[0].get_param("transfer-syntax") == "1.2.840.10008.1.2.1"
    assert [p["Content-Length"] for p in got] == [str(len(b)) for b in bodies]


def test_stream_is_lazy() -> None:
    """Parts and their bodies are pulled one at a time (what keeps memory constant)."""
    pulled: list[int] = []

    def parts():
        for i in range(3):
            pulled.append(i)
            yield Part("application/octet-stream", iter([b"x" * 10]))

    gen = stream(parts(), "b")
    next(gen)
    assert pulled == [0]
    rest = b"".join(gen)
    assert pulled == [0, 1, 2]
    assert rest.endswith(b"--b--\r\n")


def test_content_type_parameters() -> None:
    assert content_type("application/dicom", "abc", transfer_syntax="1.2.840.10008.1.2.1") == (
        'multipart/related; type="application/dicom"; boundary=abc; '
        "transfer-syntax=1.2.840.10008.1.2.1")
