"""Request-side checks shared by the metadata and rendered routes: UIDs, Accept, caching,
integer parameters.

UIDs in a path are checked before anything else (400 naming the bad one); they must pass
:func:`gateway.ingest.uids.is_safe_uid`, the rule every stored UID passed at ingest, so a UID we
refuse here can never name a stored resource. Integer query parameters go through
:func:`int_param` (the rule of :mod:`gateway.imaging.integers`, which QIDO-RS uses too): anything but
ASCII digits within explicit bounds is a 400 naming the parameter, never a 500 from
``int()`` or from the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException

from gateway.imaging.integers import BadInteger, parse_int
from gateway.ingest.uids import is_safe_uid


def check_uids(**uids: str) -> None:
    """400 naming the first argument that is not a UID (``study=..., series=...``)."""
    for name, value in uids.items():
        if not is_safe_uid(value):
            shown = value if len(value) <= 80 else value[:80] + "..."
            raise HTTPException(400, f"{name} UID {shown!r} is not a valid UID")


def int_param(name: str, raw: str | None, minimum: int, maximum: int,
              default: int | None = None) -> int | None:
    """The integer query parameter ``name`` (``default`` when absent); 400 naming it when it is
    not ASCII digits within ``minimum``..``maximum``."""
    if raw is None:
        return default
    try:
        return parse_int(name, raw, minimum, maximum)
    except BadInteger as exc:
        raise HTTPException(400, exc.message) from None


@dataclass(frozen=True, slots=True)
class MediaRange:
    type: str
    """``type/subtype`` in lower case, possibly with ``*``."""
    params: dict[str, str]
    q: float


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, highest q first (ties keep header order).
    An absent or empty header is ``*/*``."""
    if not header or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for p in pieces[1:]:
            if "=" not in p:
                continue
            k, v = (x.strip() for x in p.split("=", 1))
            v = v.strip('"')
            if k.lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
            else:
                params[k.lower()] = v
        ranges.append(MediaRange(pieces[0].lower(), params, q))
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)


def media_matches(range_type: str, media_type: str) -> bool:
    if range_type == "*/*" or range_type == media_type:
        return True
    major, _, minor = range_type.partition("/")
    return minor == "*" and media_type.startswith(major + "/")


def accepts_gzip(header: str | None) -> bool:
    """True when Accept-Encoding allows gzip (explicitly or through ``*``)."""
    if not header:
        return False
    star = None
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        coding = pieces[0].lower()
        q = 1.0
        for p in pieces[1:]:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            star = q > 0
    return bool(star)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2) of If-None-Match against our opaque tag."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        c = candidate.strip()
        if c == "*":
            return True
        c = c.removeprefix("W/")
        if c.strip('"') == etag:
            return True
    return False
