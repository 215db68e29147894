"""Absolute URLs the server emits (RetrieveURL, BulkDataURI, viewer configuration).

They are built from the configured public base URL, or from the ``Forwarded`` /
``X-Forwarded-*`` headers of a trusted reverse proxy (``trusted_proxies``), never from the
request's Host header. The URLs themselves are built by :class:`gateway.imaging.locations.DicomWebURLs` (every path
segment a validated UID). Routes take
:data:`URLsDep` (or :data:`PublicURLDep`) to get the builder for the request at hand.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request

from gateway.imaging.locations import DicomWebURLs

# -- the effective public base of a request ------------------------------------------------

_HOST = re.compile(
    r"^(?:[A-Za-z0-9][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9-]{1,63})*\.?|\[[0-9A-Fa-f:.]+\])"
    r"(?::\d{1,5})?$"
)
_PREFIX = re.compile(r"^(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")
_FORWARDED_PAIR = re.compile(
    r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*([;,]|$)"""
)


def _last_forwarded_element(value: str) -> dict[str, str]:
    """The last element of an RFC 7239 ``Forwarded`` header (the one our proxy added)."""
    elements: list[dict[str, str]] = [{}]
    pos = 0
    while pos < len(value):
        m = _FORWARDED_PAIR.match(value, pos)
        if not m or m.end() == pos:
            return {}  # malformed: ignore the whole header
        name, raw, sep = m.group(1).lower(), m.group(2), m.group(3)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elements[-1][name] = raw
        if sep == ",":
            elements.append({})
        pos = m.end()
    return elements[-1]


def _last(value: str | None) -> str | None:
    """The last value of a comma-separated ``X-Forwarded-*`` header (our proxy's)."""
    if value is None:
        return None
    last = value.split(",")[-1].strip()
    return last or None


def is_trusted_proxy(peer: str | None, trusted: list[str]) -> bool:
    if not peer or not trusted:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in trusted)


def effective_public_url(
    public_url: str, peer: str | None, headers: Mapping[str, str], trusted_proxies: list[str]
) -> str:
    """The base of every URI we emit in answer to one request.

    ``public_url`` (the configured ``DRIMBOX_PUBLIC_URL``) unless the TCP peer is one of
    ``trusted_proxies``: then each part the proxy forwards replaces that part of it, the
    scheme (``Forwarded: proto=`` or ``X-Forwarded-Proto``), the host and port
    (``Forwarded: host=`` or ``X-Forwarded-Host``) and the path (``X-Forwarded-Prefix``).
    ``Forwarded`` wins over the ``X-Forwarded-*`` headers; with several proxies the last
    value (added by the proxy that talks to us) counts. A malformed value is ignored. The
    ``Host`` header is never used.
    """
    base = urlsplit(public_url)
    scheme, netloc, path = base.scheme, base.netloc, base.path.rstrip("/")
    if not is_trusted_proxy(peer, trusted_proxies):
        return f"{scheme}://{netloc}{path}"
    fwd = _last_forwarded_element(headers.get("forwarded", ""))
    proto = fwd.get("proto") or _last(headers.get("x-forwarded-proto"))
    host = fwd.get("host") or _last(headers.get("x-forwarded-host"))
    prefix = _last(headers.get("x-forwarded-prefix"))
    if proto is not None and proto.lower() in ("http", "https"):
        scheme = proto.lower()
    if host is not None and _HOST.match(host):
        netloc = host
    if prefix is not None and _PREFIX.match(prefix):
        path = prefix.rstrip("/")
    return f"{scheme}://{netloc}{path}"


def request_public_url(request: Request) -> str:
    """FastAPI dependency: the effective public base URL of this request."""
    settings = request.app.state.runtime.settings
    peer = request.client.host if request.client else None
    return effective_public_url(
        settings.effective_public_url, peer, request.headers, settings.trusted_proxies
    )


def request_urls(public_url: Annotated[str, Depends(request_public_url)]) -> DicomWebURLs:
    return DicomWebURLs(public_url)


#: The effective public base URL (no trailing slash) of the request.
PublicURLDep = Annotated[str, Depends(request_public_url)]
#: URL builder rooted at the request's effective ``<public URL>/dicom-web``.
URLsDep = Annotated[DicomWebURLs, Depends(request_urls)]


# -- the client's address, for the audit trail ------------------------------------------------


def client_address(request: Request) -> str:
    """The address of whoever made the request: the TCP peer, or, when the peer is one of
    ``trusted_proxies``, the last ``Forwarded: for=`` (else ``X-Forwarded-For``) value that
    proxy added. A malformed forwarded value is ignored (the proxy's own address is kept)."""
    peer = request.client.host if request.client else ""
    settings = request.app.state.runtime.settings
    if not is_trusted_proxy(peer, settings.trusted_proxies):
        return peer
    forwarded = _last_forwarded_element(request.headers.get("forwarded", "")).get("for")
    candidate = forwarded or _last(request.headers.get("x-forwarded-for"))
    if candidate:
        candidate = candidate.strip()
        if candidate.startswith("["):  # RFC 7239: "[2001:db8::1]:4711"
            candidate = candidate[1:].split("]", 1)[0]
        elif candidate.count(":") == 1:  # "192.0.2.43:47011"
            candidate = candidate.split(":", 1)[0]
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            pass
    return peer
