"""Fetch the whitelist document: a local file, or an ``https://`` URL (never plain http).

The signature, not the transport, is what makes the list trustworthy; https still keeps a
network attacker from replaying an old list or blocking updates unnoticed.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
from cryptography import x509

#: The TEST list is ~20 KB; a list a thousand times larger is not a whitelist.
MAX_BYTES = 16 * 1024 * 1024


class WhitelistUnavailable(Exception):
    """The list could not be fetched (file missing, network, HTTP status); ``str`` says why."""


def is_url(source: str) -> bool:
    return "://" in source


def fetch(source: str, *, ca_bundle: Path | None = None, timeout: float = 30.0,
          allow_http: bool = False) -> bytes:
    """The raw bytes at ``source`` (a path or an https URL; http too with ``allow_http``,
    for CRLs, which are signed and published over http by IGC-Santé)."""
    if not is_url(source):
        path = Path(source)
        try:
            if path.stat().st_size > MAX_BYTES:
                raise WhitelistUnavailable(f"{source}: larger than {MAX_BYTES} bytes")
            return path.read_bytes()
        except OSError as exc:
            raise WhitelistUnavailable(f"{source}: {exc.strerror or exc}") from None
    if not source.lower().startswith("https://") and not (
            allow_http and source.lower().startswith("http://")):
        raise WhitelistUnavailable(f"{source}: only https:// URLs are accepted")
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with httpx.Client(verify=ctx, timeout=timeout, follow_redirects=False) as client:
            with client.stream("GET", source, headers={"Accept": "application/xml, text/xml"}) \
                    as response:
                if response.status_code != 200:
                    raise WhitelistUnavailable(f"{source}: HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise WhitelistUnavailable(f"{source}: larger than {MAX_BYTES} bytes")
                return bytes(body)
    except httpx.HTTPError as exc:
        raise WhitelistUnavailable(f"{source}: {type(exc).__name__}: {exc}") from None


def fetch_crls(sources: list[str], *, ca_bundle: Path | None = None,
               timeout: float = 30.0) -> list[x509.CertificateRevocationList]:
    """Each CRL (DER or PEM, a path or an http(s) URL); :class:`WhitelistUnavailable` if one
    cannot be fetched or read."""
    out = []
    for source in sources:
        data = fetch(source, ca_bundle=ca_bundle, timeout=timeout, allow_http=True)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                out.append(x509.load_pem_x509_crl(data))
            else:
                out.append(x509.load_der_x509_crl(data))
        except ValueError as exc:
            raise WhitelistUnavailable(f"{source}: not a CRL ({exc})") from None
    return out
