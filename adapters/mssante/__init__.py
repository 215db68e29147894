"""MSSanté: the SMTP client of the centre's operator (:mod:`.smtp`), the
:class:`~gateway.mssante.transport.MailTransport` of the MSSanté outbox."""
