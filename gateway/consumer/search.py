"""The patient's prior imaging exams, found in the DMP (R16; SPEC 1.3 flow B step 4).

For the patient of the consumer context and the practitioner of the PSC session, acting for
the activity (structure) they chose:

1. the VIHF (:func:`adapters.dmp.consumer.vihf_context`, bound to the DMP port that
   :func:`search` is given): ``NameID`` = the practitioner's SubjectNameID, ``subject-id``
   their name of exercise, ``Identifiant_Structure`` / ``Secteur_Activite`` from the chosen
   activity, the role = profession (1.2.250.1.71.1.2.7) plus, for doctors (10) and pharmacists
   (21), the savoir-faire (1.2.250.1.71.4.2.5), ``resource-id`` = the context's INS; the LPS
   identifiers and ``Authentification_Mode`` from the settings (``dmp_lps_*``,
   ``dmp_authentication_mode``);
2. TD0.2, the access check (:meth:`DmpSearch.check_access`): no search when
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

from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import (
    MODALITY_NAMES,
    SCHEME_MODALITY,
    Code,
    PublishedEntry,
    ReferenceId,
)

SCHEME_REGION = "1.2.250.1.213.1.1.5.695"
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


@dataclass(frozen=True, slots=True)
class AccessCheck:
    """The answer of the patient's DMP access check (TD0.2)."""

    status: str
    """``open`` (search allowed), ``no_dmp``, ``closed`` or ``refused`` (opposition)."""
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == "open"


class DmpProblem(Exception):
    """A DMP call that failed, in the page's and the audit trail's terms: ``problem`` is
    ``dmp_unreachable``, ``dmp_refused`` or ``dmp_security``; ``detail`` the DMP's codes
    (no identity)."""

    def __init__(self, problem: str, detail: str = "") -> None:
        super().__init__(problem, detail)
        self.problem, self.detail = problem, detail[:200]


class DmpSearch(Protocol):
    """What :func:`search` needs of the DMP, already bound to the practitioner's VIHF
    (:class:`adapters.dmp.consumer.ConsumerDmp`). Failures raise :class:`DmpProblem`."""

    def check_access(self, patient: Ins) -> AccessCheck: ...

    def find_documents(self, patient: Ins, *, statuses: tuple[str, ...], creation_from: str,
                       creation_to: str, event_codes: tuple[tuple[Code, ...], ...],
                       reference_ids: list[str] | None) -> list[PublishedEntry]: ...


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


def search(dmp: DmpSearch, patient: Ins, consent: bool, filters: Filters,
           max_results: int = 200) -> SearchOutcome:
    """TD0.2 then ITI-18 (R16). Never raises for a DMP failure: the outcome says what went
    wrong."""
    if not consent:
        return SearchOutcome("no_consent")
    try:
        access = dmp.check_access(patient)
        if not access.allowed:
            return SearchOutcome({"no_dmp": "no_dmp", "closed": "dmp_closed",
                                  "refused": "access_refused"}.get(access.status,
                                                                   "access_refused"),
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
            patient, statuses=("Approved",),
            creation_from=_dtm(filters.date_from) if filters.date_from else "",
            creation_to=_dtm(filters.date_to, end=True) if filters.date_to else "",
            event_codes=tuple(groups), reference_ids=refs)
    except DmpProblem as exc:
        return SearchOutcome(exc.problem, exc.detail)
    kos = [e for e in entries if e.status == "Approved" and _is_kos(e)]
    if filters.accession and not filters.accession_issuer:
        kos = [e for e in kos if _accession_matches(e, filters.accession)]
    kos.sort(key=lambda e: ((e.service_start or e.creation_time)[:14], e.creation_time,
                            e.unique_id), reverse=True)
    priors = [prior_of(e) for e in kos]
    return SearchOutcome(priors=priors[:max_results], total=len(priors))
