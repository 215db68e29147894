"""The consumer's side of the DMP (R16, R17): the practitioner's VIHF and the DMP bound to it,
as the consumer's workflows see it (:class:`gateway.consumer.search.DmpSearch`).

:func:`vihf_context` builds the VIHF (SPEC 3.4) of the session's practitioner acting for the
activity (structure) they chose, about one patient; :class:`ConsumerDmp` makes every call of
:class:`~adapters.dmp.client.DmpClient` with it and translates the adapter's failures into the
domain's :class:`~gateway.consumer.search.DmpProblem`.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.dmp.client import DmpClient
from adapters.dmp.errors import (
    DmpError,
    DmpRefusedError,
    DmpSecurityError,
    DmpTlsError,
    DmpTransientError,
)
from adapters.dmp.vihf import Role, VihfContext
from gateway.access.sessions import Activity, SessionInfo
from gateway.consumer.retrieve import KosUnreadable
from gateway.consumer.search import AccessCheck, DmpProblem
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import Code, PublishedEntry, xds_patient_id

SCHEME_PROFESSION = "1.2.250.1.71.1.2.7"
SCHEME_SPECIALTY = "1.2.250.1.71.4.2.5"


@dataclass(frozen=True, slots=True)
class Lps:
    """The software's DMP identity (settings ``dmp_lps_*``) and the VIHF authentication mode."""

    lps_id: str
    lps_name: str
    lps_version: str
    lps_homologation_id: str
    authentication_mode: str = "INDIRECTE"

    @classmethod
    def from_settings(cls, settings) -> Lps:  # noqa: ANN001 - gateway.config.Settings
        return cls(settings.dmp_lps_id, settings.dmp_lps_name, settings.dmp_lps_version,
                   settings.dmp_lps_homologation_id, settings.dmp_authentication_mode)


def vihf_context(subject_name_id: str, activity: Activity, patient: Ins, lps: Lps) -> VihfContext:
    """The consumer's VIHF (SPEC 3.4): this practitioner, acting for ``activity``, about
    ``patient``. Raises ``ValueError`` naming what the activity lacks (a session opened before
    the activity kept its structure details, or a userinfo without them)."""
    missing = [n for n, v in (("structure", activity.structure_id), ("sector", activity.sector),
                              ("profession", activity.profession)) if not v]
    if missing:
        raise ValueError("the activity has no " + ", ".join(missing))
    roles = [Role(activity.profession, SCHEME_PROFESSION)]
    if activity.specialty and activity.profession in ("10", "21"):
        roles.append(Role(activity.specialty, SCHEME_SPECIALTY))
    return VihfContext(
        subject_id=subject_name_id, subject_name=activity.name or subject_name_id,
        structure_id=activity.structure_id, activity_sector=activity.sector, roles=tuple(roles),
        patient_id=xds_patient_id(patient), lps_id=lps.lps_id, lps_name=lps.lps_name,
        lps_version=lps.lps_version, lps_homologation_id=lps.lps_homologation_id,
        authentication_mode=lps.authentication_mode)


def practitioner_vihf(settings, info: SessionInfo, patient: Ins) -> VihfContext:  # noqa: ANN001
    """The VIHF of the session's practitioner acting under the activity chosen, about
    ``patient``: every consumer DMP call (TD0.2, ITI-18, ITI-43) uses it. ``ValueError`` when
    no activity is chosen or it lacks what a VIHF needs."""
    activity = next((a for a in info.activities if a.id == info.activity), None)
    if activity is None:
        raise ValueError("no activity chosen")
    return vihf_context(info.subject, activity, patient, Lps.from_settings(settings))


class ConsumerDmp:
    """The DMP for one practitioner's VIHF: TD0.2 and ITI-18 as
    :class:`gateway.consumer.search.DmpSearch` wants them."""

    def __init__(self, client: DmpClient, vihf: VihfContext) -> None:
        self.client, self.vihf = client, vihf

    def check_access(self, patient: Ins) -> AccessCheck:
        with _as_problem():
            access = self.client.check_access(patient, self.vihf)
        return AccessCheck(access.status, access.detail)

    def find_documents(self, patient: Ins, *, statuses: tuple[str, ...], creation_from: str,
                       creation_to: str, event_codes: tuple[tuple[Code, ...], ...],
                       reference_ids: list[str] | None) -> list[PublishedEntry]:
        with _as_problem():
            return self.client.find_documents(
                patient, self.vihf, statuses=statuses, creation_from=creation_from,
                creation_to=creation_to, event_codes=event_codes, reference_ids=reference_ids)


class _as_problem:  # noqa: N801 - used as a context manager
    """The adapter's failures in the domain's terms (codes only, no identity)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:  # noqa: ANN001
        if exc is None or not isinstance(exc, DmpError):
            return False
        if isinstance(exc, DmpSecurityError):
            raise DmpProblem("dmp_security", ",".join(exc.codes)) from exc
        if isinstance(exc, DmpRefusedError):
            raise DmpProblem("dmp_refused", ",".join(exc.codes)) from exc
        if isinstance(exc, DmpTlsError):
            raise DmpProblem("dmp_unreachable", "tls") from exc
        if isinstance(exc, DmpTransientError):
            raise DmpProblem("dmp_unreachable", type(exc).__name__) from exc
        raise DmpProblem("dmp_refused", type(exc).__name__) from exc


def fetch_kos(dmp, vihf: VihfContext, unique_id: str, patient_ins: str) -> bytes:  # noqa: ANN001
    """ITI-18 GetDocuments by uniqueId, then ITI-43 (``dmp``: a ``DmpClient``). The entry must
    be an Approved KOS of ``patient_ins``: :class:`KosUnreadable` otherwise."""
    entries = [e for e in dmp.get_documents(vihf, unique_ids=[unique_id])
               if e.unique_id == unique_id]
    entries = [e for e in entries if e.status == "Approved"] or entries
    if not entries:
        raise KosUnreadable("ce document n'existe pas (ou plus) dans le DMP")
    entry = entries[0]
    if entry.status != "Approved":
        raise KosUnreadable("ce document n'est plus en vigueur dans le DMP")
    if entry.patient_id.split("^", 1)[0] != patient_ins:
        raise KosUnreadable("ce document n'est pas celui du patient en cours")
    if entry.mime_type != "application/dicom":
        raise KosUnreadable("ce document n'est pas un KOS d'imagerie")
    return dmp.retrieve_document(entry.repository_unique_id, unique_id, vihf)
