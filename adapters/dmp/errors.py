"""Typed DMP errors. The split matters to the publication outbox (R8):

* :class:`DmpTransientError` — the DMP may or may not have acted (connection refused or reset,
  TLS failure, timeout, HTTP 5xx, a SOAP ``Receiver`` fault, an unreadable answer). Retry later,
  after a query by uniqueId to learn whether the first try was stored.
* :class:`DmpRefusedError` — the DMP read the request and said no (RegistryResponse
  ``Failure``, a WS-Security or ``Sender`` SOAP fault, HTTP 4xx). Retrying the same message
  cannot help; each :class:`XdsError` carries the XDS error code and its codeContext.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class XdsError:
    code: str
    context: str
    location: str = ""
    severity: str = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"

    @property
    def is_warning(self) -> bool:
        return self.severity.endswith(":Warning")


class DmpError(Exception):
    """Any failure of a DMP transaction."""


class DmpTransientError(DmpError):
    """Retry later: the outcome is unknown or the DMP is unavailable."""


class DmpTlsError(DmpTransientError):
    """The TLS handshake failed (certificate refused or not trusted). Transient for the outbox
    (a renewed certificate fixes it) but worth an alert of its own."""


class DmpRefusedError(DmpError):
    """The DMP refused the request; ``errors`` lists the XDS errors (code, codeContext)."""

    def __init__(self, errors: list[XdsError], message: str = "") -> None:
        self.errors = errors
        text = message or "; ".join(f"{e.code}: {e.context}" for e in errors)
        super().__init__(text)

    @property
    def codes(self) -> list[str]:
        return [e.code for e in self.errors]


class DmpSecurityError(DmpRefusedError):
    """A WS-Security SOAP fault: the VIHF is missing, malformed or its signature is wrong."""


class DmpProtocolError(DmpTransientError):
    """The answer is not the SOAP/MTOM message the transaction expects."""
