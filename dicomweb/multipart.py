"""A streaming ``multipart/related`` writer (RFC 2387, RFC 2046 5.1; PS3.18 8.6.1.2).

:func:`stream` turns an iterable of :class:`Part` (content type, optional extra headers, an
iterable of body chunks) into the chunks of one multipart body: nothing is buffered beyond
the chunk in hand, so a response of any size is written in constant memory. Framing::

    --BOUNDARY CRLF
    Content-Type: ... CRLF
    [Content-Length: ... CRLF]
    CRLF
    <body> CRLF
    --BOUNDARY CRLF
    ...
    <body> CRLF
    --BOUNDARY-- CRLF

The boundary is random (a UUID's 32 hex digits), never found in a DICOM part by chance.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 20
"""Bytes read from a file at a time."""


def new_boundary() -> str:
    return uuid.uuid4().hex


@dataclass
class Part:
    content_type: str
    body: Iterable[bytes]
    headers: dict[str, str] = field(default_factory=dict)


def content_type(part_type: str, boundary: str, **params: str) -> str:
    """``multipart/related; type="..."; boundary=...`` plus extra parameters."""
    extra = "".join(f"; {k.replace('_', '-')}={v}" for k, v in params.items())
    return f'multipart/related; type="{part_type}"; boundary={boundary}{extra}'


def stream(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The chunks of the multipart body holding ``parts`` in order."""
    delimiter = f"--{boundary}\r\n".encode("ascii")
    for part in parts:
        head = [f"Content-Type: {part.content_type}"]
        head += [f"{name}: {value}" for name, value in part.headers.items()]
        yield delimiter + ("\r\n".join(head) + "\r\n\r\n").encode("ascii")
        for chunk in part.body:
            if chunk:
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def file_chunks(path: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    """A file's bytes, ``chunk`` at a time; the file is open only while it is read."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield block
