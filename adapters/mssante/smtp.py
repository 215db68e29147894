"""SMTP submission to the centre's MSSanté operator (``smtplib``), the
:class:`~gateway.mssante.transport.MailTransport` of the MSSanté outbox.

One connection per message: ``EHLO``, ``STARTTLS`` (required: a server that does not offer it
is never sent to in clear, R12), the TLS handshake presenting the applicative mailbox's
certificate (``mssante_client_cert``, the operator authenticates the sender by it) and
checking the server's against ``mssante_ca_bundle`` and its host name, ``EHLO`` again, then
``MAIL FROM`` / ``RCPT TO`` / ``DATA``. With DSN offered and a delivery receipt asked
(``ACK_RECEPTION``), ``RCPT TO ... NOTIFY=SUCCESS,FAILURE``.

Errors follow :mod:`gateway.mssante.transport`: a 4xx reply, a connection or TLS failure, a
timeout → :class:`~gateway.mssante.transport.MailUnavailable` (retried); a 5xx reply →
:class:`~gateway.mssante.transport.MailRefused`. Once ``DATA`` is answered 250 the message is
sent, whatever happens at ``QUIT``.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from pathlib import Path

from gateway.mssante.transport import MailRefused, MailUnavailable


def client_context(ca_bundle: Path | None, client_cert: Path | None,
                   client_key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return ctx


def _reply(code: int, text: bytes | str) -> str:
    return f"{code} {text.decode('utf-8', 'replace') if isinstance(text, bytes) else text}"


class SmtpTransport:
    def __init__(self, host: str, port: int, context: ssl.SSLContext, *,
                 timeout: float = 60.0, local_hostname: str | None = None) -> None:
        self.host = host
        self.port = port
        self.context = context
        self.timeout = timeout
        self.local_hostname = local_hostname

    @classmethod
    def from_settings(cls, settings) -> SmtpTransport:  # noqa: ANN001 - gateway.config.Settings
        """Reads the certificate and key now: an unreadable one is a ``ValueError`` naming the
        setting (start-up stops), not a failure at the first message."""
        try:
            ctx = client_context(settings.mssante_ca_bundle, settings.mssante_client_cert,
                                 settings.mssante_client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"mssante_client_cert / mssante_client_key / mssante_ca_bundle: "
                             f"{exc}") from exc
        return cls(settings.mssante_smtp_host, settings.mssante_smtp_port, ctx,
                   timeout=settings.mssante_timeout)

    def close(self) -> None:
        pass

    def send(self, sender: str, recipients: list[str], message: bytes, *,
             delivery_receipt: bool = False) -> str:
        where = f"{self.host}:{self.port}"
        try:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout,
                                local_hostname=self.local_hostname)
        except (OSError, smtplib.SMTPException) as exc:
            raise MailUnavailable(f"SMTP {where}: cannot connect: {exc}") from exc
        try:
            return self._session(smtp, sender, recipients, message, delivery_receipt, where)
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

    def _session(self, smtp: smtplib.SMTP, sender: str, recipients: list[str], message: bytes,
                 delivery_receipt: bool, where: str) -> str:
        try:
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise MailUnavailable(f"SMTP {where} does not offer STARTTLS: nothing is sent "
                                      "in clear")
            code, text = smtp.starttls(context=self.context)
            if code != 220:
                raise MailUnavailable(f"SMTP {where}: STARTTLS answered {_reply(code, text)}")
            smtp.ehlo()
            rcpt_options = (["NOTIFY=SUCCESS,FAILURE"]
                            if delivery_receipt and smtp.has_extn("dsn") else [])
            code, text = smtp.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, text, sender)
            for rcpt in recipients:
                code, text = smtp.rcpt(rcpt, rcpt_options)
                if code not in (250, 251):
                    raise smtplib.SMTPRecipientsRefused({rcpt: (code, text)})
            code, text = smtp.data(message)
            if code != 250:
                raise smtplib.SMTPDataError(code, text)
            return _reply(code, text)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            raise self._answer(code, text, where, "RCPT TO") from exc
        except smtplib.SMTPResponseException as exc:
            raise self._answer(exc.smtp_code, exc.smtp_error, where, "") from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise MailUnavailable(f"SMTP {where}: TLS failed: {exc}") from exc
        except (OSError, socket.timeout, smtplib.SMTPException) as exc:
            raise MailUnavailable(f"SMTP {where}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _answer(code: int, text: bytes | str, where: str, step: str) -> Exception:
        said = _reply(code, text)
        if 500 <= code < 600:
            return MailRefused(str(code), f"SMTP {where} {step + ': ' if step else ''}{said}")
        return MailUnavailable(f"SMTP {where} {step + ': ' if step else ''}{said}")
