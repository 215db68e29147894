"""The patient's prior imaging exams, found in the DMP (R16; SPEC 1.3 flow B step 4).

For the patient of the consumer context and the practitioner of the PSC session, acting for
the activity (structure) they chose:

1. the VIHF (:func:`vihf_context`): ``NameID`` = the practitioner's SubjectNameID, ``subject-id``
   their name of exercise, ``Identifiant_Structure`` / ``Secteur_Activite`` from the chosen
   activity, the role = profession (1.2.250.1.71.1.2.7) plus, for doctors (10) and pharmacists
   (21), the savoir-faire (1.2.250.1.71.4.2.5), ``resource-id`` = the context's INS; the LPS
   identifiers and ``Authentification_Mode`` from the settings (``dmp_lps_*``,
   ``dmp_authentication_mode``);
2. TD0.2, the access check (:meth:`adapters.dmp.client.DmpClient.check_access`): no search when
   the patient has no DMP, a closed one, or refused this professional;
3. ITI-18 FindDocuments by INS, ``Approved`` only, with the filters (:class:`Filters`):
   modality and anatomical region as ``$XDSDocumentEntryEventCodeList`` (one Slot each, so both
   must match), creation date range, and the accession number as
   ``$XDSDocumentEntryReferenceIdList`` (FindDocumentsByReferenceId) when its issuer is known;
   without an issuer the accession is matched on the returned entries' referenceIdList.
   Only imaging KOS are kept (classCode 31 / typeCode IMG-KOS / ``application/dicom``).

Nothing is searched when the patient did not consent (``InformationEtConsentement = false``):
:func:`search` refuses before any DMP call. Failures come back as a :class:`SearchOutcome`
with a ``problem`` code (``dmp_unreachable``, ``dmp_refused``, ``dmp_security``,
``no_dmp``, ...) for the page and the audit trail; never an exception.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from adapters.dmp.errors import (
    DmpError,
    DmpRefusedError,
    DmpSecurityError,
    DmpTlsError,
    DmpTransientError,
)
from adapters.dmp.patients import CLOSED, NO_DMP, REFUSED, DmpAccess
from adapters.dmp.vihf import Role, VihfContext
from gateway.identity.ins import Ins
from gateway.access.sessions import Activity, SessionInfo
from gateway.manifest.xds_metadata import (
    MODALITY_NAMES,
    SCHEME_MODALITY,
    Code,
    PublishedEntry,
    ReferenceId,
    xds_patient_id,
)

SCHEME_REGION = "1.2.250.1.213.1.1.5.695"
SCHEME_PROFESSION = "1.2.250.1.71.1.2.7"
SCHEME_SPECIALTY = "1.2.250.1.71.4.2.5"
KOS_CLASS, KOS_TYPE, KOS_MIME = "31", "IMG-KOS", "application/dicom"
ACCESSION_SCHEME = "urn:ihe:iti:xds:2013:accession"

#: Filter fields (GET parameters of the consumer page; they name no one).
MODALITY, REGION, DATE_FROM, DATE_TO, ACCESSION, ACCESSION_ISSUER = (
    "modality", "region", "from", "to", "accession", "accession_issuer")
FILTER_FIELDS = (MODALITY, REGION, DATE_FROM, DATE_TO, ACCESSION, ACCESSION_ISSUER)

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_SNOMED = re.compile(r"[1-9][0-9]{5,17}")
_ACCESSION = re.compile(r"[^\\\x00-\x1f]{1,16}")  # DICOM SH, as the KOS carries it


class FilterError(ValueError):
    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Filters:
    modality: str = ""
    region: str = ""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    accession: str = ""
    accession_issuer: str = ""

    @property
    def empty(self) -> bool:
        return self == Filters()

    def summary(self) -> str:
        """For the audit trail: which filters, never a patient trait."""
        parts = [f"{k}={v}" for k, v in (
            (MODALITY, self.modality), (REGION, self.region),
            (DATE_FROM, self.date_from.isoformat() if self.date_from else ""),
            (DATE_TO, self.date_to.isoformat() if self.date_to else ""),
            (ACCESSION, "yes" if self.accession else "")) if v]
        return ",".join(parts)


def parse_filters(params: Mapping[str, str]) -> Filters:
    """The filters of the page's GET parameters; :class:`FilterError` names each bad field.
    Unknown parameters are ignored (a page URL may carry others)."""
    problems: dict[str, str] = {}

    def get(name: str) -> str:
        return (params.get(name) or "").strip()

    modality = get(MODALITY).upper()
    if modality and modality not in MODALITY_NAMES:
        problems[MODALITY] = "modalité inconnue"
    region = get(REGION)
    if region and not _SNOMED.fullmatch(region):
        problems[REGION] = "code SNOMED CT attendu (chiffres)"
    dates: dict[str, dt.date | None] = {}
    for name in (DATE_FROM, DATE_TO):
        value = get(name)
        dates[name] = None
        if value:
            try:
                dates[name] = dt.date.fromisoformat(value)
            except ValueError:
                problems[name] = "date AAAA-MM-JJ attendue"
    if dates[DATE_FROM] and dates[DATE_TO] and dates[DATE_FROM] > dates[DATE_TO]:
        problems[DATE_TO] = "antérieure à la date de début"
    accession, issuer = get(ACCESSION), get(ACCESSION_ISSUER)
    if accession and not _ACCESSION.fullmatch(accession):
        problems[ACCESSION] = "16 caractères au plus"
    if issuer and not _OID.fullmatch(issuer):
        problems[ACCESSION_ISSUER] = "OID attendu"
    if issuer and not accession:
        problems[ACCESSION] = "requis avec son émetteur"
    if problems:
        raise FilterError(problems)
    return Filters(modality, region, dates[DATE_FROM], dates[DATE_TO], accession, issuer)


@dataclass(frozen=True, slots=True)
class Prior:
    """One prior exam (an imaging KOS of the DMP), as the page lists it."""

    document_unique_id: str
    repository_unique_id: str
    date: str
    """``YYYYMMDD[hhmmss]``: the exam's service start, else the KOS creation time."""
    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    description: str
    author: str
    centre: str
    masked_to_patient: bool = False

    @property
    def date_label(self) -> str:
        d = self.date
        if len(d) < 8:
            return d
        label = f"{d[6:8]}/{d[4:6]}/{d[0:4]}"
        return label + (f" {d[8:10]}:{d[10:12]}" if len(d) >= 12 else "")


@dataclass(frozen=True)
class SearchOutcome:
    problem: str = ""
    """'' when the search ran; else why it did not (``no_consent``, ``no_dmp``,
    ``dmp_closed``, ``access_refused``, ``dmp_unreachable``, ``dmp_refused``,
    ``dmp_security``, ``no_activity``, ``dmp_not_configured``)."""
    detail: str = ""
    """Error codes for the audit trail (no identity)."""
    priors: list[Prior] = field(default_factory=list)
    total: int = 0
    """How many matched before ``max_results`` cut the list."""

    @property
    def searched(self) -> bool:
        return not self.problem


class DmpSearch(Protocol):
    """What :func:`search` needs of :class:`adapters.dmp.client.DmpClient`."""

    def check_access(self, patient: Ins, vihf: VihfContext) -> DmpAccess: ...

    def find_documents(self, patient: str | Ins, vihf: VihfContext,
                       statuses: tuple[str, ...] = ..., creation_from: str = ...,
                       creation_to: str = ..., service_start_from: str = ...,
                       service_stop_to: str = ..., event_codes=...,  # noqa: ANN001
                       reference_ids: list[str] | None = ...) -> list[PublishedEntry]: ...


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


def _dtm(day: dt.date, end: bool = False) -> str:
    """An XDS DTM bound: ``From`` is inclusive, ``To`` exclusive (ITI TF-2a 3.18.4.1.2.3.6)."""
    return (day + dt.timedelta(days=1) if end else day).strftime("%Y%m%d")


def _is_kos(e: PublishedEntry) -> bool:
    return (e.mime_type == KOS_MIME and (e.class_code is None or e.class_code.code == KOS_CLASS)
            and (e.type_code is None or e.type_code.code == KOS_TYPE))


def _xcn_name(xcn: str) -> str:
    parts = xcn.split("^")
    name = " ".join(p for p in (parts[2] if len(parts) > 2 else "",
                                parts[1] if len(parts) > 1 else "") if p)
    return name or parts[0]


def _xon_name(xon: str) -> str:
    return xon.split("^")[0]


def prior_of(e: PublishedEntry) -> Prior:
    """What the page shows of a DocumentEntry."""
    modalities = tuple(c.code for c in e.event_codes if c.scheme == SCHEME_MODALITY)
    regions = tuple(c.display or c.code for c in e.event_codes if c.scheme == SCHEME_REGION)
    acts = [c.display or c.code for c in e.event_codes
            if c.scheme not in (SCHEME_MODALITY, SCHEME_REGION)]
    comments = e.comments if e.comments and e.comments.upper() != "KOS" else ""
    description = " - ".join(acts) or comments or e.title
    author = ", ".join(_xcn_name(a) for a in e.author_persons if a)
    if not author and e.legal_authenticator:
        author = _xcn_name(e.legal_authenticator)
    centre = ", ".join(_xon_name(i) for i in e.author_institutions if _xon_name(i))
    return Prior(
        document_unique_id=e.unique_id, repository_unique_id=e.repository_unique_id,
        date=(e.service_start or e.creation_time)[:14], modalities=modalities, regions=regions,
        description=description, author=author, centre=centre,
        masked_to_patient=any(c.code == "INVISIBLE_PATIENT" for c in e.confidentiality_codes))


def _accession_matches(e: PublishedEntry, accession: str) -> bool:
    return any(r.split("^")[0] == accession and r.endswith("^" + ACCESSION_SCHEME)
               for r in e.reference_ids)


def search(dmp: DmpSearch, vihf: VihfContext, patient: Ins, consent: bool, filters: Filters,
           max_results: int = 200) -> SearchOutcome:
    """TD0.2 then ITI-18 (R16). Never raises for a DMP failure: the outcome says what went
    wrong."""
    if not consent:
        return SearchOutcome("no_consent")
    try:
        access = dmp.check_access(patient, vihf)
        if not access.allowed:
            return SearchOutcome({NO_DMP: "no_dmp", CLOSED: "dmp_closed",
                                  REFUSED: "access_refused"}.get(access.status, "access_refused"),
                                 access.detail)
        groups: list[tuple[Code, ...]] = []
        if filters.modality:
            groups.append((Code(filters.modality, SCHEME_MODALITY, ""),))
        if filters.region:
            groups.append((Code(filters.region, SCHEME_REGION, ""),))
        refs = None
        if filters.accession and filters.accession_issuer:
            refs = [ReferenceId(filters.accession, filters.accession_issuer,
                                ACCESSION_SCHEME).cxi()]
        entries = dmp.find_documents(
            patient, vihf, statuses=("Approved",),
            creation_from=_dtm(filters.date_from) if filters.date_from else "",
            creation_to=_dtm(filters.date_to, end=True) if filters.date_to else "",
            event_codes=tuple(groups), reference_ids=refs)
    except DmpSecurityError as exc:
        return SearchOutcome("dmp_security", ",".join(exc.codes)[:200])
    except DmpRefusedError as exc:
        return SearchOutcome("dmp_refused", ",".join(exc.codes)[:200])
    except DmpTlsError:
        return SearchOutcome("dmp_unreachable", "tls")
    except DmpTransientError as exc:
        return SearchOutcome("dmp_unreachable", type(exc).__name__)
    except DmpError as exc:
        return SearchOutcome("dmp_refused", type(exc).__name__)
    kos = [e for e in entries if e.status == "Approved" and _is_kos(e)]
    if filters.accession and not filters.accession_issuer:
        kos = [e for e in kos if _accession_matches(e, filters.accession)]
    kos.sort(key=lambda e: ((e.service_start or e.creation_time)[:14], e.creation_time,
                            e.unique_id), reverse=True)
    priors = [prior_of(e) for e in kos]
    return SearchOutcome(priors=priors[:max_results], total=len(priors))
