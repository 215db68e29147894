"""Whom a consumer DRIMbox may talk to (R11): the ANS whitelist as domain types. Pure, no I/O.

A :class:`Whitelist` is what :mod:`adapters.whitelist` builds once the signed ANS list has been
verified. :meth:`Whitelist.is_trusted` answers, for a KOS Retrieve URL, whether its host is a
DRIMbox (``db…``) on the list, with the reason when it is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


def normalise_host(host: str) -> str:
    """Host names compare case-insensitively and without a trailing dot."""
    return host.strip().rstrip(".").lower()


def normalise_dn(dn: str) -> str:
    """A certificate DN as written in the list (``CN=…,OU=…,O=…,ST=…,C=FR``): attribute types
    in upper case, no blanks around ``=`` and ``,``. Values are kept as they are."""
    parts = [p.strip() for p in dn.split(",") if p.strip()]
    out = []
    for part in parts:
        key, sep, value = part.partition("=")
        out.append(f"{key.strip().upper()}{sep}{value.strip()}" if sep else part)
    return ",".join(out)


def same_dn(a: str, b: str) -> bool:
    """Whether two subject DNs name the same subject: the same attributes and values, in any
    order (the list writes ``CN=…,OU=…,O=…,ST=…,C=FR``; a certificate's RFC 4514 string is
    in the order of its RDNs)."""
    return sorted(normalise_dn(a).split(",")) == sorted(normalise_dn(b).split(","))


@dataclass(frozen=True, slots=True)
class TrustedSource:
    """One ``Domaine`` of the list: a DRIMbox operator."""

    identifier: str
    drimbox_host: str
    """``db``: the DRIMbox's host name, the only host a Retrieve URL may name."""
    viewer_host: str = ""
    """``vi``: the host of its viewer (empty when the list gives none)."""
    name: str = ""
    """``Denomination``: who runs it."""
    certificate_dn: str = ""
    """``DNCertificatOperateur``: the subject DN of its TLS certificate."""
    support_contact: str = ""
    updated: str = ""
    """``DateMAJ``: when it was added to the list, as written."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :meth:`Whitelist.is_trusted`; truthy when trusted."""

    trusted: bool
    reason: str
    source: TrustedSource | None = None

    def __bool__(self) -> bool:
        return self.trusted


@dataclass(frozen=True, slots=True)
class Whitelist:
    """A verified ANS whitelist."""

    generated_at: str
    """``DateDeGeneration`` as written (ISO 8601, UTC)."""
    sources: tuple[TrustedSource, ...]
    format_version: str = ""
    signer: str = ""
    """Subject DN of the certificate that signed it (empty for an unsigned development list)."""
    signed_at: str = ""
    """The XAdES ``SigningTime`` (as claimed by the signer)."""

    def _by_host(self, host: str, attr: str) -> TrustedSource | None:
        for source in self.sources:
            value = getattr(source, attr)
            if value and normalise_host(value) == host:
                return source
        return None

    def is_trusted(self, retrieve_url: str) -> Decision:
        """Whether a KOS Retrieve URL points at a DRIMbox on the list (R11). Only ``https``
        URLs can be trusted (R12); the port and path do not matter, the host must be a ``db``
        entry exactly (no sub-domain, no IP address unless listed as such)."""
        try:
            parts = urlsplit(retrieve_url.strip())
            host = parts.hostname or ""
        except ValueError:
            return Decision(False, f"{retrieve_url!r} is not a URL")
        if not host:
            return Decision(False, f"{retrieve_url!r} is not an absolute URL (no host)")
        if parts.scheme.lower() != "https":
            return Decision(False, f"{retrieve_url!r} is not https (R12)")
        host = normalise_host(host)
        source = self._by_host(host, "drimbox_host")
        if source is not None:
            return Decision(True, f"{host} is DRIMbox {source.identifier} ({source.name}) "
                                  f"on the whitelist of {self.generated_at}", source)
        viewer = self._by_host(host, "viewer_host")
        if viewer is not None:
            return Decision(False, f"{host} is the viewer host of {viewer.identifier} "
                                   f"({viewer.name}), not a DRIMbox: images are retrieved "
                                   f"from {viewer.drimbox_host}", viewer)
        return Decision(False, f"{host} is not on the whitelist of {self.generated_at}")

    def is_trusted_viewer(self, url: str) -> Decision:
        """Whether a URL's host is a viewer (``vi``) host on the list."""
        host = normalise_host(urlsplit(url.strip()).hostname or "")
        source = self._by_host(host, "viewer_host") if host else None
        if source is None:
            return Decision(False, f"{host or url!r} is not a viewer host on the whitelist")
        return Decision(True, f"{host} is the viewer of {source.identifier} ({source.name})",
                        source)

    def is_trusted_certificate(self, subject_dn: str) -> Decision:
        """Whether a peer's TLS certificate subject DN is an operator DN on the list."""
        for source in self.sources:
            if source.certificate_dn and same_dn(source.certificate_dn, subject_dn):
                return Decision(True, f"certificate of {source.identifier} ({source.name})",
                                source)
        return Decision(False, f"certificate {subject_dn!r} is not on the whitelist")
