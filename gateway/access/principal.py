"""Who is asking: the domain's view of a caller, whatever proved it (R10, R15, R22).

The HTTP face builds a :class:`Principal` from a PSC bearer token (consumer DRIMbox), a viewer
session opened by a PSC login, a local staff account, or a patient share link; the access
policy (:mod:`gateway.access.policy`) and the audit trail (:mod:`gateway.access.audit`) speak only this type.
No token and no full identity is kept here: ``subject`` is the PSC SubjectNameID (RPPS-based,
what the DMP's VIHF carries), a local user name, or a share-link id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PrincipalKind = Literal["practitioner", "staff", "share", "anonymous", "system", "dicom"]


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    subject: str
    """SubjectNameID (practitioner), user name (staff), share-link id (share), "anonymous",
    or the gateway's own task (system: e.g. the whitelist refresher), or a DICOM peer's calling
    AE title (dicom: a C-FIND, C-MOVE or C-GET, :mod:`gateway.access.dicom_peers`; a Storage
    Commitment request, :mod:`gateway.ingest.storage_commitment`)."""
    roles: frozenset[str] = field(default_factory=frozenset)
    """Local roles granted by configuration (staff, or practitioners listed as centre staff)."""
    activity: str | None = None
    """The practitioner's chosen activity (``SubjectRefPro.exercices[].activities[]`` id)."""
    study_uid: str | None = None
    """The only study a share link (or a viewer link, R18) opens; None when not so limited."""
    via: str = ""
    """How the principal was proven, for the audit: bearer-jwt, bearer-introspection, session,
    share-link, loopback."""

    @property
    def is_anonymous(self) -> bool:
        return self.kind == "anonymous"


ANONYMOUS = Principal(kind="anonymous", subject="anonymous", via="loopback")
