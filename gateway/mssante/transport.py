"""The seam between the MSSanté outbox and the operator's mail server (an SMTP adapter,
:mod:`adapters.mssante.smtp`).

Error contract, which the outbox's retries depend on:

* :class:`MailUnavailable` — the server did not take the message and may take it later
  (connection refused or cut, TLS failure, timeout, SMTP 4xx such as ``451``): retried with
  backoff, the same message (same ``Message-ID``).
* :class:`MailRefused` — the server refused it for good (SMTP 5xx: unknown mailbox, policy):
  not retried; ``code`` and ``text`` are shown.
"""

from __future__ import annotations

from typing import Protocol


class MailUnavailable(Exception):
    """Not taken this time; try again later."""


class MailRefused(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


class MailTransport(Protocol):
    def send(self, sender: str, recipients: list[str], message: bytes, *,
             delivery_receipt: bool = False) -> str:
        """Submit ``message`` (RFC 5322 bytes); return the server's final reply (``250 ...``).
        ``delivery_receipt``: ask for a delivery status notification (DSN ``NOTIFY=SUCCESS``)
        when the server offers DSN (the CR's ``ACK_RECEPTION``)."""

    def close(self) -> None: ...
