"""MSSanté delivery of reports (the CR flags ``DESTMSSANTEPS`` / ``DESTMSSANTEPAT``, SPEC.md 1.2).

Owns the message itself (:mod:`.message`: MIME multipart/mixed with a text body and the
study's XDM archive ``IHE_XDM.ZIP``), the transport seam an SMTP adapter implements
(:mod:`.transport`, domain) and the workflow (:mod:`.delivery`): which messages a report asks
for, queued in the MSSanté outbox of the index, and the worker that sends them with retries,
exactly once per ``Message-ID``. The SMTP client is :mod:`adapters.mssante.smtp`.
"""
