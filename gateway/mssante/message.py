"""An MSSanté message carrying a CR and its study: RFC 5322, MIME ``multipart/mixed``.

What MSSanté clients expect of a document exchange (the IHE XDM profile over secure mail):

* a ``text/plain`` part (UTF-8, quoted-printable) telling the recipient what is attached, never
  the patient's INS in the subject;
* the archive as an ``application/zip`` attachment named ``IHE_XDM.ZIP``
  (``Content-Disposition: attachment; filename="IHE_XDM.ZIP"``, base64);
* ``Message-ID`` fixed by the outbox before the first attempt (the same at every retry),
  ``Date``, ``From`` (the centre's applicative mailbox), ``To``;
* ``Disposition-Notification-To`` (a read receipt) when the CR asks for ``ACK_LECTURE_MSS``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

XDM_FILENAME = "IHE_XDM.ZIP"


def new_message_id(sender: str) -> str:
    """A fresh ``Message-ID`` in the sender's domain: ``<uuid@domain>``."""
    domain = sender.rpartition("@")[2] or "drimbox.invalid"
    return f"<{uuid.uuid4().hex}@{domain}>"


def build_message(*, sender: str, recipient: str, message_id: str, subject: str, body: str,
                  attachment: bytes, read_receipt: bool = False,
                  date: datetime | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg["Date"] = format_datetime(date or datetime.now(UTC))
    if read_receipt:
        msg["Disposition-Notification-To"] = sender
    msg.set_content(body, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_attachment(attachment, maintype="application", subtype="zip",
                       filename=XDM_FILENAME)
    return msg


def wire_bytes(msg: EmailMessage) -> bytes:
    """The message as SMTP carries it: every line ends with CRLF (``smtplib`` sends bytes as
    they are; a bare LF would make one long line of the whole message)."""
    return msg.as_bytes(policy=SMTP)
