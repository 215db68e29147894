"""Incremental reader of ``multipart/*`` request bodies (RFC 2046 5.1, RFC 2387).

:class:`MultipartReader` is a push parser: give it the body chunk by chunk as it arrives and
it yields events (a part's headers, pieces of its content, its end) without ever holding
more than one chunk plus a boundary's length. STOW-RS uses it to spool each part to disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# Unquoted values are read up to the next ';', '/' included: clients send
# ``type=application/dicom`` although '/' is not a token character.
_PARAM = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s"]+)', re.ASCII)
_MEDIA_TYPE = re.compile(rf"\s*({_TOKEN}/{_TOKEN})", re.ASCII)
# RFC 2046: 1-70 characters, the last not a space. Longer ones are accepted (up to 200):
# Orthanc's DICOMweb plugin sends 73-character boundaries.
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,199}[0-9A-Za-z'()+_,\-./:=?]$")


class MultipartError(ValueError):
    """The body is not well-formed multipart."""


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/related; type="application/dicom"; boundary=x'`` ->
    ``('multipart/related', {'type': 'application/dicom', 'boundary': 'x'})``. Names are
    lower-cased; raises :class:`ValueError` on a malformed value."""
    m = _MEDIA_TYPE.match(value)
    if not m:
        raise ValueError(f"malformed media type {value[:100]!r}")
    params: dict[str, str] = {}
    pos = m.end()
    while pos < len(value.rstrip()):
        p = _PARAM.match(value, pos)
        if not p:
            raise ValueError(f"malformed media type parameters in {value[:100]!r}")
        raw = p.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[p.group(1).lower()] = raw
        pos = p.end()
    return m.group(1).lower(), params


def check_boundary(boundary: str) -> str:
    if not _BOUNDARY.match(boundary):
        raise MultipartError(f"invalid multipart boundary {boundary[:80]!r}")
    return boundary


@dataclass(frozen=True, slots=True)
class PartStart:
    headers: dict[str, str]
    """Header names in lower case."""


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


class MultipartReader:
    """Push parser for one multipart body with a known boundary."""

    def __init__(self, boundary: str, max_header_size: int = 16384) -> None:
        check_boundary(boundary)
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._keep = len(self._delimiter) - 1
        self._max_header_size = max_header_size
        # A leading CRLF lets the first boundary, at the very start of the body, match the
        # same delimiter as the others.
        self._buf = bytearray(b"\r\n")
        self._state = "preamble"
        self.parts = 0

    @property
    def complete(self) -> bool:
        return self._state == "epilogue"

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """Add body bytes; yield the events they complete."""
        if self._state == "epilogue":
            return
        self._buf += chunk
        while True:
            if self._state == "preamble":
                i = self._buf.find(self._delimiter)
                if i < 0:
                    del self._buf[: max(0, len(self._buf) - self._keep)]
                    return
                del self._buf[: i + len(self._delimiter)]
                self._state = "after-delimiter"
            elif self._state == "after-delimiter":
                if len(self._buf) < 2:
                    return
                if self._buf.startswith(b"--"):
                    self._state = "epilogue"
                    self._buf.clear()
                    return
                eol = self._buf.find(b"\r\n")
                if eol < 0:
                    if len(self._buf) > 1024:
                        raise MultipartError("garbage after a boundary delimiter")
                    return
                if self._buf[:eol].strip(b" \t"):
                    raise MultipartError("garbage after a boundary delimiter")
                del self._buf[: eol + 2]
                self._state = "headers"
            elif self._state == "headers":
                if self._buf.startswith(b"\r\n"):
                    headers_end, raw = 2, b""
                else:
                    i = self._buf.find(b"\r\n\r\n")
                    if i < 0:
                        if len(self._buf) > self._max_header_size:
                            raise MultipartError("part headers too large")
                        return
                    headers_end, raw = i + 4, bytes(self._buf[:i])
                if headers_end - 4 > self._max_header_size:
                    raise MultipartError("part headers too large")
                del self._buf[:headers_end]
                self._state = "body"
                self.parts += 1
                yield PartStart(_parse_headers(raw))
            elif self._state == "body":
                i = self._buf.find(self._delimiter)
                if i < 0:
                    n = len(self._buf) - self._keep
                    if n > 0:
                        data = bytes(self._buf[:n])
                        del self._buf[:n]
                        yield PartData(data)
                    return
                if i:
                    yield PartData(bytes(self._buf[:i]))
                del self._buf[: i + len(self._delimiter)]
                self._state = "after-delimiter"
                yield PartEnd()
            else:  # pragma: no cover - epilogue handled above
                return

    def close(self) -> None:
        """The body has ended: raise :class:`MultipartError` unless it was complete."""
        if self._state != "epilogue":
            raise MultipartError("body ended before the closing boundary delimiter")


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = None
    if not raw:
        return headers
    for line in raw.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and last is not None:  # obsolete line folding
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not re.fullmatch(_TOKEN, name.strip(), re.ASCII):
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers
