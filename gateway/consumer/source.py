"""What the consumer's retrieval needs of a Source DRIMbox (R17), in domain terms: a reader
of a series' RetrieveURL and the two ways it can fail. The WADO-RS client
(:class:`adapters.source.wado.SourceClient`) implements it and raises these errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol


class SourceError(Exception):
    """A retrieve that did not complete; ``message`` is for the clinician (French)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class SourceRefused(SourceError):
    """The Source read the request and refused it (4xx): retrying would not help."""


class SourceUntrusted(SourceRefused):
    """The Source's TLS certificate is not the one the ANS whitelist names for its host (R11):
    the connection was closed before anything (the practitioner's token) was sent."""


class SourceUnavailable(SourceError):
    """The Source is down, failing (5xx) or cut the answer: worth another attempt."""


class SourceReader(Protocol):
    def retrieve(self, url: str, token: str, kos_uid: str,
                 on_part: Callable[[dict[str, str], Iterator[bytes]], None],
                 certificate_dn: str = "") -> int:
        """GET ``url`` with the practitioner's ``token`` for ``kos_uid``; each part of the
        multipart answer goes to ``on_part(headers, chunks)``. Returns the number of parts;
        raises :class:`SourceError`. With ``certificate_dn`` (the whitelist's
        ``DNCertificatOperateur`` of the host), a Source whose TLS certificate has another
        subject is refused (:class:`SourceUntrusted`) before the request is sent."""
        ...

    def close(self) -> None: ...
