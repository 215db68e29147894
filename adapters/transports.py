"""The shared record's transport the settings choose (``dmp_transport``), for the outbox worker
(:mod:`gateway.publication.outbox`): ``xds`` → :class:`adapters.dmp.transport.XdsTransport` (IHE XDS.b, the
DMP today); ``mhd`` → the FHIR PDSm / IHE MHD transport (``adapters/mhd``)."""

from __future__ import annotations

from gateway.config import Settings
from gateway.publication.transport import DocumentTransport


def publication_transport(settings: Settings) -> DocumentTransport:
    """Raises ``ValueError`` naming what the configuration lacks."""
    if settings.dmp_transport == "xds":
        from adapters.dmp.transport import XdsTransport

        return XdsTransport.from_settings(settings)
    from adapters.mhd.transport import MhdTransport

    return MhdTransport.from_settings(settings)
