"""A loopback MSSanté-like SMTP server (aiosmtpd): STARTTLS required before ``MAIL``, a client
certificate issued by the test CA required in the handshake, and a mailbox that can refuse the
first attempts (``451``) or every one (``550``)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from peers import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer_subject: str
    """The client certificate's subject (from the TLS session), '' when none."""

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class Mailbox:
    """The aiosmtpd handler: ``refusals`` DATA commands are answered ``refusal`` first."""

    refusals: int = 0
    refusal: str = "451 4.3.0 Temporary failure, please try again later"
    received: list[Received] = field(default_factory=list)
    data_commands: int = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001, N802
        self.data_commands += 1
        if self.refusals > 0:
            self.refusals -= 1
            return self.refusal
        peer = ""
        ssl_object = session.ssl.get("ssl_object") if isinstance(session.ssl, dict) else None
        if ssl_object is not None:
            cert = ssl_object.getpeercert() or {}
            peer = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content or envelope.content, peer))
        return "250 2.0.0 Ok: queued"


@dataclass
class SmtpServer:
    host: str
    port: int
    mailbox: Mailbox


def server_context(ca_cert, server_cert, server_key) -> ssl.SSLContext:  # noqa: ANN001
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_cert))
    ctx.load_cert_chain(str(server_cert), str(server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED  # the sender is authenticated by its certificate
    return ctx


@contextmanager
def smtp_server(pki, mailbox: Mailbox | None = None) -> Iterator[SmtpServer]:  # noqa: ANN001
    mailbox = mailbox or Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port,
                            tls_context=server_context(pki.ca_cert, pki.server_cert,
                                                       pki.server_key),
                            require_starttls=True, server_hostname="mx.test.mssante.fr")
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, mailbox)
    finally:
        controller.stop()
