"""QIDO-RS searches on the index, in domain terms (PS3.18 10.6, PS3.4 C.2.2.2).

A search is parsed from ``(name, value)`` pairs into a :class:`Query` (:func:`parse_query`,
pure, raises :class:`QueryError` naming the offending parameter) and run as **one** SQL
statement on the index (:func:`search`): files are never read. The HTTP face
(``dicomweb/qido.py``) only translates requests and results.

What can be matched and returned is the registry :data:`ATTRIBUTES`: the columns of the
index plus a few values computed in SQL (counts, ModalitiesInStudy) or constant
(InstanceAvailability ``ONLINE``). A matching key outside it is refused (400): an answer
that silently ignored a filter would return studies the caller did not ask for. An
``includefield`` outside it is accepted and the attribute is simply absent; so is a private
tag (odd group: ``00091010``, or ``0009xx10`` for any private block), never indexed.

Matching rules (PS3.4 C.2.2.2), on values as stored (as received, without padding):

* *universal*: an empty value, or ``*`` alone, matches everything; the attribute is returned.
* *single value*: exact, case-sensitive, except PN (below).
* *wildcard* (``*``, ``?``) for text VRs (not UI, DA, TM, numbers): case-sensitive on both
  back-ends (PostgreSQL ``LIKE``, SQLite ``GLOB``; literal ``%``, ``_`` and ``[`` are escaped).
* *UID list*: UIDs separated by ``,`` or ``\\``; any of them matches.
* *range* for DA and TM: ``A-B``, ``-B``, ``A-``, bounds inclusive; a TM bound covers its
  whole precision (``-11`` includes 11:59:59). Empty stored values never match a range. A
  single TM value is the range of its precision (``10`` = 10:00:00 to 10:59:59.999999).
  StudyDate and StudyTime are matched independently (no combined datetime matching).
  Stored dates in a non-standard form (``2026.01.15``) match no range.
* *PN* (PatientName, ReferringPhysicianName): case-insensitive (allowed by PS3.4
  C.2.2.2.1; Orthanc's default too): both sides go through the database's ``lower()``, so
  ASCII letters fold on both back-ends; accented ones fold on PostgreSQL (UTF-8 locale)
  but not on SQLite. With ``fuzzymatching=true`` a PN value also
  matches when it is a case-insensitive *prefix of any name component or word*
  (``dup`` and ``jea`` both match ``DUPONT^JEAN``). Other VRs ignore ``fuzzymatching``, so
  no ``Warning: 299`` is needed (PS3.18 8.3.4.2 requires it only when fuzzy matching is
  not supported).
* ModalitiesInStudy matches when any series of the study matches one of the values
  (``CT,MR`` or ``CT\\MR``; wildcards allowed).

Paging: ``limit`` (1 or more) / ``offset`` (0 or more), both at most 2^63-1 (SQL ``BIGINT``,
see :mod:`gateway.imaging.integers`; integer matching values must fit their VR, IS: 32 bits). Each
level has a server maximum (:data:`MAX_RESULTS`). When more matches exist than the maximum
allows, the first page is returned and ``truncated`` is set (the HTTP face adds PS3.18's
``Warning: 299``). The order is deterministic, so pages are stable: studies newest first
(StudyDate, StudyTime descending, then insertion order descending); series and instances
in their study's order, then SeriesNumber, InstanceNumber ascending (missing numbers last)
and insertion order. Offset paging is stable while the index does not change; an instance
stored between two pages can shift later pages.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import ColumnElement, Select, and_, bindparam, exists, func, literal, or_, select

from gateway.imaging.integers import INT64_MAX, VR_RANGES, BadInteger, parse_int
from gateway.index.models import Instance, Patient, Series, Study
from gateway.index.prepared import Compiled, compile_select, fetch_all
from gateway.index.store import InstanceIndex
from gateway.ingest.uids import is_safe_uid


class Level(enum.IntEnum):
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


MAX_RESULTS = {Level.STUDY: 1000, Level.SERIES: 1000, Level.INSTANCE: 10000}
"""Largest page per level. A request without ``limit``, or with a larger one, gets at most
this many results (and a warning when more exist)."""


class QueryError(ValueError):
    """A query parameter is unknown or malformed; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


class Source(enum.Enum):
    COLUMN = "column"
    COMPUTED = "computed"  # aggregated in SQL
    CONSTANT = "constant"
    URL = "url"  # built by the HTTP face (RetrieveURL)


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level | None  # None: belongs to the returned level, whatever it is
    source: Source = Source.COLUMN
    column: Any = None
    tag: int = field(init=False)
    vr: str = field(init=False)

    def __post_init__(self) -> None:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "vr", dictionary_VR(tag))

    @property
    def matchable(self) -> bool:
        return self.source is Source.COLUMN or self.keyword == "ModalitiesInStudy"


def _a(keyword: str, level: Level | None, column: Any = None, source: Source = Source.COLUMN):
    return Attribute(keyword, level, source, column)


# Core tables (not ORM entities): building a statement from them costs a fraction.
PATIENTS, STUDIES, SERIES, INSTANCES = (m.__table__ for m in (Patient, Study, Series, Instance))

_S, _SE, _I = Level.STUDY, Level.SERIES, Level.INSTANCE
_ATTRS = [
    # Patient attributes are study attributes (Study Root model, PS3.18 10.6.1.2.3).
    _a("PatientName", _S, PATIENTS.c.patient_name),
    _a("PatientID", _S, PATIENTS.c.patient_id),
    _a("IssuerOfPatientID", _S, PATIENTS.c.issuer_of_patient_id),
    _a("PatientBirthDate", _S, PATIENTS.c.patient_birth_date),
    _a("PatientSex", _S, PATIENTS.c.patient_sex),
    _a("StudyInstanceUID", _S, STUDIES.c.study_instance_uid),
    _a("StudyDate", _S, STUDIES.c.study_date),
    _a("StudyTime", _S, STUDIES.c.study_time),
    _a("AccessionNumber", _S, STUDIES.c.accession_number),
    _a("ReferringPhysicianName", _S, STUDIES.c.referring_physician_name),
    _a("StudyDescription", _S, STUDIES.c.study_description),
    _a("StudyID", _S, STUDIES.c.study_id),
    _a("ModalitiesInStudy", _S, source=Source.COMPUTED),
    _a("NumberOfStudyRelatedSeries", _S, source=Source.COMPUTED),
    _a("NumberOfStudyRelatedInstances", _S, source=Source.COMPUTED),
    _a("SeriesInstanceUID", _SE, SERIES.c.series_instance_uid),
    _a("Modality", _SE, SERIES.c.modality),
    _a("SeriesNumber", _SE, SERIES.c.series_number),
    _a("SeriesDescription", _SE, SERIES.c.series_description),
    _a("BodyPartExamined", _SE, SERIES.c.body_part_examined),
    _a("PerformedProcedureStepStartDate", _SE, SERIES.c.performed_procedure_step_start_date),
    _a("PerformedProcedureStepStartTime", _SE, SERIES.c.performed_procedure_step_start_time),
    _a("NumberOfSeriesRelatedInstances", _SE, source=Source.COMPUTED),
    _a("SOPInstanceUID", _I, INSTANCES.c.sop_instance_uid),
    _a("SOPClassUID", _I, INSTANCES.c.sop_class_uid),
    _a("InstanceNumber", _I, INSTANCES.c.instance_number),
    _a("Rows", _I, INSTANCES.c.rows),
    _a("Columns", _I, INSTANCES.c.columns),
    _a("BitsAllocated", _I, INSTANCES.c.bits_allocated),
    _a("NumberOfFrames", _I, INSTANCES.c.number_of_frames),
    _a("AvailableTransferSyntaxUID", _I, INSTANCES.c.transfer_syntax_uid),
    _a("InstanceAvailability", None, source=Source.CONSTANT),
    _a("RetrieveURL", None, source=Source.URL),
]
ATTRIBUTES: dict[str, Attribute] = {a.keyword: a for a in _ATTRS}
"""Everything a QIDO-RS search can match or return, by keyword."""

# PS3.18 Table 10.6.3-3 / -4 / -5 (default return attributes), plus StudyDescription and
# IssuerOfPatientID at study level (the DRIM-M consumer matches the INS with its issuer).
# SpecificCharacterSet is added by the JSON encoder when needed; TimezoneOffsetFromUTC and
# RequestAttributeSequence are not indexed and never returned.
DEFAULTS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
        "ModalitiesInStudy", "ReferringPhysicianName", "RetrieveURL", "PatientName",
        "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
        "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: (
        "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
        "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "RetrieveURL",
    ),
    Level.INSTANCE: (
        "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL",
        "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
    ),
}

_UID_OF = {Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID",
           Level.INSTANCE: "SOPInstanceUID"}
_NUMERIC_VRS = {"IS", "US", "UL", "SS", "SL", "DS", "FL", "FD"}
_NO_WILDCARD_VRS = {"UI", "DA", "TM", "DT", *_NUMERIC_VRS}
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_PRIVATE_TAG = re.compile(r"^[0-9A-Fa-f]{3}[13579BDFbdf](?:[0-9A-Fa-f]{2}|[xX]{2})[0-9A-Fa-f]{2}$")
"""A private tag (odd group), as 8 hex digits or with ``xx`` for its private block
(``00091010``, ``0009xx10``)."""
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}


# -- attribute names ---------------------------------------------------------------------


def resolve_keyword(name: str) -> str | None:
    """``PatientID`` or ``00100020`` → ``PatientID``; ``None`` if not a DICOM attribute."""
    if _TAG.match(name):
        return keyword_for_tag(int(name, 16)) or None
    return name if tag_for_keyword(name) is not None else None


# -- matching conditions (pure) ----------------------------------------------------------


class Match(enum.Enum):
    SINGLE = "single"
    WILDCARD = "wildcard"
    LIST = "list"
    RANGE = "range"
    FUZZY = "fuzzy"


@dataclass(frozen=True)
class Condition:
    """One matching key. ``values``: SINGLE ``(v,)``, WILDCARD/FUZZY ``(pattern,)``,
    LIST ``(v1, v2, ...)``, RANGE ``(low, high)`` with ``''`` for an open end."""

    attribute: Attribute
    match: Match
    values: tuple[Any, ...]


def wildcard_to_like(value: str) -> str:
    """DICOM ``*``/``?`` → SQL ``LIKE`` pattern (escape ``\\``), literal ``%``/``_`` escaped."""
    out = []
    for ch in value:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def wildcard_to_glob(value: str) -> str:
    """DICOM ``*``/``?`` → SQLite ``GLOB`` pattern (case-sensitive); a literal ``[`` is
    written ``[[]`` (``*`` and ``?`` are always wildcards in DICOM)."""
    return value.replace("[", "[[]")


def fuzzy_like_patterns(value: str) -> list[str]:
    """``LIKE`` patterns for fuzzy PN matching (case is folded in SQL, on both sides):
    ``value`` (wildcards allowed) as a prefix of the whole name, or of any component (after
    ``^`` or ``=``) or word (after a space)."""
    base = wildcard_to_like(value) + "%"
    return [base, "%^" + base, "% " + base, "%=" + base]


def _check_date(parameter: str, value: str) -> str:
    if not re.fullmatch(r"\d{8}", value):
        raise QueryError(parameter, f"{parameter}: {value!r} is not a date (YYYYMMDD)")
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise QueryError(parameter, f"{parameter}: {value!r} is not a valid date") from None
    return value


def _check_time(parameter: str, value: str) -> str:
    if not _TIME.match(value):
        raise QueryError(parameter, f"{parameter}: {value!r} is not a time (HH[MM[SS[.F]]])")
    hh, mm, ss = int(value[:2]), int(value[2:4] or 0), int(value[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        raise QueryError(parameter, f"{parameter}: {value!r} is not a valid time")
    return value


def time_upper_bound(value: str) -> str:
    """The last instant a TM value of some precision covers: ``11`` → ``115959.999999``."""
    full = "000000.000000"
    if len(value) <= 6:
        return value + "595959"[len(value) :] + ".999999"
    return value + "9" * (len(full) - len(value))


def parse_condition(parameter: str, attribute: Attribute, raw: str, fuzzy: bool
                    ) -> Condition | None:
    """Parse one matching value; ``None`` for universal matching. Raises QueryError."""
    value = raw.strip()
    if value in ("", "*"):
        return None
    vr = attribute.vr
    name = attribute.keyword
    if vr == "UI":
        uids = tuple(u.strip() for u in re.split(r"[,\\]", value))
        for uid in uids:
            if not is_safe_uid(uid):
                raise QueryError(parameter, f"{name}: {uid!r} is not a UID")
        return Condition(attribute, Match.SINGLE if len(uids) == 1 else Match.LIST, uids)
    if vr in ("DA", "TM"):
        check = _check_date if vr == "DA" else _check_time
        if "-" in value:
            low, _, high = (p.strip() for p in value.partition("-"))
            if not low and not high:
                raise QueryError(parameter, f"{name}: a range needs at least one bound")
            if low:
                check(parameter, low)
            if high:
                check(parameter, high)
            if vr == "TM" and high:
                high = time_upper_bound(high)
            if low and high and low > high:
                raise QueryError(parameter, f"{name}: range {value!r} ends before it starts")
            return Condition(attribute, Match.RANGE, (low, high))
        check(parameter, value)
        if vr == "TM":
            return Condition(attribute, Match.RANGE, (value, time_upper_bound(value)))
        return Condition(attribute, Match.SINGLE, (value,))
    has_wildcard = "*" in value or "?" in value
    if vr in _NUMERIC_VRS:
        if has_wildcard:
            raise QueryError(parameter, f"{name}: wildcards are not supported for numbers")
        # A value the VR cannot carry matches nothing stored, and one beyond 64 bits would
        # fail in SQL: refused, naming the parameter and the VR's range.
        low, high = VR_RANGES.get(vr, (-INT64_MAX - 1, INT64_MAX))
        label = parameter if parameter == name else f"{parameter} ({name})"
        try:
            return Condition(attribute, Match.SINGLE, (parse_int(label, value, low, high),))
        except BadInteger as exc:
            raise QueryError(parameter, exc.message) from None
    if name == "ModalitiesInStudy":
        values = tuple(v.strip() for v in re.split(r"[,\\]", value) if v.strip())
        return Condition(attribute, Match.LIST, values)
    if vr == "PN" and fuzzy:
        return Condition(attribute, Match.FUZZY, (value,))
    if has_wildcard:
        return Condition(attribute, Match.WILDCARD, (value,))
    return Condition(attribute, Match.SINGLE, (value,))


# -- the query object --------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A parsed QIDO-RS search at one level, scoped by the UIDs in the path."""

    level: Level
    study_uid: str | None
    series_uid: str | None
    conditions: tuple[Condition, ...]
    returned: tuple[Attribute, ...]  # in tag order
    limit: int
    offset: int
    limited_by_server: bool  # the page size is the server maximum, not the caller's


def scope_levels(level: Level, study_uid: str | None, series_uid: str | None) -> list[Level]:
    """Levels whose default attributes are returned (PS3.18 10.6.3.3): the target level,
    plus the levels above it that the path does not fix (``/series`` → study + series)."""
    if series_uid is not None:
        top = Level.INSTANCE
    elif study_uid is not None:
        top = Level.SERIES
    else:
        top = Level.STUDY
    return [lv for lv in Level if top <= lv <= level]


def _int_param(parameter: str, value: str, minimum: int, maximum: int = INT64_MAX) -> int:
    try:
        return parse_int(parameter, value, minimum, maximum)
    except BadInteger as exc:
        raise QueryError(exc.parameter, exc.message) from None


def _attribute_key(name: str, parameter: str | None = None) -> str:
    """The keyword ``name`` stands for; ``''`` for a valid sequence path (never indexed)."""
    what = "unknown query parameter" if parameter is None else f"{parameter}: unknown attribute"
    parameter = parameter or name
    if "." in name:
        if all(resolve_keyword(p) for p in name.split(".")):
            return ""
        raise QueryError(parameter, f"{parameter}: unknown attribute path {name!r}")
    keyword = resolve_keyword(name)
    if keyword is None:
        raise QueryError(parameter, f"{what} {name!r}")
    return keyword


def parse_query(
    level: Level,
    params: Iterable[tuple[str, str]],
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Query:
    """Build a :class:`Query` from the request's query parameters. Raises QueryError."""
    params = list(params)
    fuzzy = False
    limit: int | None = None
    offset = 0
    included: set[str] = set()
    include_all = False
    seen: dict[str, str] = {}
    for name, value in params:
        if name == "fuzzymatching":
            if value.strip().lower() not in ("true", "false"):
                raise QueryError(name, f"fuzzymatching must be true or false, not {value!r}")
            fuzzy = value.strip().lower() == "true"
        elif name == "limit":
            limit = _int_param(name, value, 1)
        elif name == "offset":
            offset = _int_param(name, value, 0)
        elif name == "includefield":
            for token in (t.strip() for t in value.split(",")):
                if token == "all":
                    include_all = True
                elif _PRIVATE_TAG.match(token):
                    continue  # a private attribute: never indexed, so absent (not a 400)
                elif token:
                    keyword = _attribute_key(token, name)
                    if keyword:
                        included.add(keyword)
                else:
                    raise QueryError(name, "includefield has an empty value")

    path = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
    conditions: list[Condition] = []
    matched: set[str] = set()
    for name, value in params:
        if name in _CONTROL:
            continue
        keyword = _attribute_key(name)
        if not keyword:
            raise QueryError(name, f"{name}: matching on sequence items is not supported")
        if keyword in seen:
            raise QueryError(name, f"{keyword} is given twice ({seen[keyword]!r} and {name!r})")
        seen[keyword] = name
        if path.get(keyword):
            raise QueryError(name, f"{keyword} is already given in the path")
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or not attribute.matchable:
            raise QueryError(name, f"{keyword} cannot be used as a matching key here: "
                                   "it is not indexed")
        if attribute.level is not None and attribute.level > level:
            hint = " (use ModalitiesInStudy)" if keyword == "Modality" else ""
            raise QueryError(name, f"{keyword} is a {attribute.level.name.lower()} attribute; "
                                   f"it cannot be matched at {level.name.lower()} level{hint}")
        condition = parse_condition(name, attribute, value, fuzzy)
        matched.add(keyword)
        if condition is not None:
            conditions.append(condition)

    levels = scope_levels(level, study_uid, series_uid)
    wanted: set[str] = {k for lv in levels for k in DEFAULTS[lv]}
    wanted |= {_UID_OF[lv] for lv in Level if lv <= level}
    if include_all:
        wanted |= {a.keyword for a in _ATTRS if a.level is None or a.level in levels}
    wanted |= matched
    # includefield of an attribute we do not index, or of a lower level: absent (documented).
    wanted |= {k for k in included
               if k in ATTRIBUTES and (ATTRIBUTES[k].level or level) <= level}
    returned = tuple(sorted((ATTRIBUTES[k] for k in wanted), key=lambda a: a.tag))

    maximum = MAX_RESULTS[level]
    limited_by_server = limit is None or limit > maximum
    return Query(level, study_uid, series_uid, tuple(conditions), returned,
                 min(limit or maximum, maximum), offset, limited_by_server)


# -- SQL ---------------------------------------------------------------------------------


@dataclass
class SearchResult:
    """Matches in order; each row maps keywords to plain values (str, int, None, list)."""

    query: Query
    rows: list[dict[str, Any]]
    truncated: bool
    """More matches exist beyond the server maximum (the caller did not set a smaller limit)."""


def _bound_values(cond: Condition, dialect: str) -> tuple[Any, ...]:
    """The values one condition binds, in the order its clause uses them (one place, so that
    a precompiled statement and a built one bind the same values)."""
    if cond.match is Match.LIST:
        return cond.values
    if cond.match is Match.RANGE:
        return tuple(v for v in cond.values if v)
    value = cond.values[0]
    if cond.match is Match.FUZZY:
        return tuple(fuzzy_like_patterns(value))
    if cond.match is Match.WILDCARD:
        if cond.attribute.vr != "PN" and dialect == "sqlite":
            return (wildcard_to_glob(value),)
        return (wildcard_to_like(value),)
    return (value,)


def _text_condition(col: Any, cond: Condition, dialect: str,
                    binds: Sequence[Any] | None = None) -> ColumnElement[bool]:
    """The clause of ``cond`` on ``col``; ``binds``: bind parameters standing for
    :func:`_bound_values` (a precompiled statement), else the values themselves."""
    pn = cond.attribute.vr == "PN"
    vals = list(_bound_values(cond, dialect) if binds is None else binds)
    if cond.match is Match.LIST:
        return col.in_(vals)
    if cond.match is Match.RANGE:
        low, high = cond.values
        taken = iter(vals)
        parts = [col != ""]
        if low:
            parts.append(col >= next(taken))
        if high:
            parts.append(col <= next(taken))
        return and_(*parts)
    # PN: both sides are folded by the database's lower(), so a value always matches itself.
    if cond.match is Match.FUZZY:
        lowered = func.lower(col)
        return or_(*(lowered.like(func.lower(p), escape="\\") for p in vals))
    value = vals[0]
    if cond.match is Match.WILDCARD:
        if pn:
            return func.lower(col).like(func.lower(value), escape="\\")
        if dialect == "sqlite":
            return col.op("GLOB")(value)
        return col.like(value, escape="\\")
    if pn:
        return func.lower(col) == func.lower(value)
    return col == value


def condition_clause(column: Any, cond: Condition, dialect: str) -> ColumnElement[bool]:
    """The WHERE clause of one parsed condition on ``column`` (C-FIND's PATIENT level uses
    the same rules as every QIDO-RS level)."""
    return _text_condition(column, cond, dialect)


def _modality_condition(cond: Condition, dialect: str) -> ColumnElement[bool]:
    s2 = SERIES.alias()
    alternatives = []
    for value in cond.values:
        if "*" in value or "?" in value:
            alternatives.append(_text_condition(
                s2.c.modality, Condition(cond.attribute, Match.WILDCARD, (value,)), dialect))
        else:
            alternatives.append(s2.c.modality == value)
    return exists().where(s2.c.study_pk == STUDIES.c.id, or_(*alternatives))


@functools.cache
def _computed_column(keyword: str, dialect: str) -> Any:
    """The labelled correlated subquery for a computed attribute (built once, reused)."""
    return _computed(keyword, dialect).scalar_subquery().label(keyword)


def _computed(keyword: str, dialect: str, scope: SearchScope | None = None) -> Any:
    s2, i2 = SERIES.alias(), INSTANCES.alias()
    # Under a scope, counts and modalities cover only what the scope shows (R10: a consumer
    # learns nothing about instances its KOS does not reference).
    sops = scope.sop_instance_uids if scope is not None else None
    series_uids = scope.series_uids if scope is not None else None

    def visible_series(stmt: Select) -> Select:
        if series_uids is not None:
            stmt = stmt.where(s2.c.series_instance_uid.in_(sorted(series_uids)))
        if sops is not None:
            i3 = INSTANCES.alias()
            stmt = stmt.where(exists().where(i3.c.series_pk == s2.c.id,
                                             i3.c.sop_instance_uid.in_(sorted(sops))))
        return stmt

    def visible_instances(stmt: Select) -> Select:
        return stmt if sops is None else stmt.where(i2.c.sop_instance_uid.in_(sorted(sops)))

    if keyword == "NumberOfStudyRelatedSeries":
        return visible_series(select(func.count()).select_from(s2)
                              .where(s2.c.study_pk == STUDIES.c.id))
    if keyword == "NumberOfStudyRelatedInstances":
        stmt = (select(func.count()).select_from(i2).join(s2, i2.c.series_pk == s2.c.id)
                .where(s2.c.study_pk == STUDIES.c.id))
        if series_uids is not None:
            stmt = stmt.where(s2.c.series_instance_uid.in_(sorted(series_uids)))
        return visible_instances(stmt)
    if keyword == "NumberOfSeriesRelatedInstances":
        return visible_instances(select(func.count()).select_from(i2)
                                 .where(i2.c.series_pk == SERIES.c.id))
    if keyword == "ModalitiesInStudy":
        if dialect == "postgresql":
            agg = func.string_agg(s2.c.modality.distinct(), literal(","))
        else:
            agg = func.group_concat(s2.c.modality.distinct())
        return visible_series(select(agg).where(s2.c.study_pk == STUDIES.c.id,
                                                s2.c.modality != ""))
    raise AssertionError(keyword)


@dataclass(frozen=True)
class SearchScope:
    """What a search may return, whatever it matches (the access policy's visibility, R10);
    None at a level means no limit there."""

    study_uids: frozenset[str] | None = None
    series_uids: frozenset[str] | None = None
    sop_instance_uids: frozenset[str] | None = None


def _scoped(stmt: Select, level: Level, scope: SearchScope) -> Select:
    if scope.study_uids is not None:
        stmt = stmt.where(STUDIES.c.study_instance_uid.in_(sorted(scope.study_uids)))
    if level >= Level.SERIES and scope.series_uids is not None:
        stmt = stmt.where(SERIES.c.series_instance_uid.in_(sorted(scope.series_uids)))
    if scope.sop_instance_uids is not None:
        sops = sorted(scope.sop_instance_uids)
        if level is Level.INSTANCE:
            stmt = stmt.where(INSTANCES.c.sop_instance_uid.in_(sops))
        else:  # a study or series is visible when one of its instances is
            i3, s3 = INSTANCES.alias(), SERIES.alias()
            owner = (i3.c.series_pk == SERIES.c.id if level is Level.SERIES else and_(
                i3.c.series_pk == s3.c.id, s3.c.study_pk == STUDIES.c.id))
            sub = exists().where(owner, i3.c.sop_instance_uid.in_(sops))
            stmt = stmt.where(sub)
    return stmt


def build_select(query: Query, dialect: str, scope: SearchScope | None = None,
                 bind: bool = False) -> Select:
    """The one SELECT that answers ``query`` (columns labelled by keyword), limited to
    ``scope`` when given. ``bind``: every value (path UIDs, matching values, limit, offset) a
    named bind parameter (:func:`_parameters` gives their values), so that the statement
    serves every query of the same shape (:func:`_shape`)."""
    level = query.level
    columns: list[Any] = []
    for attr in query.returned:
        if attr.source is Source.COLUMN:
            columns.append(attr.column.label(attr.keyword))
        elif attr.source is Source.COMPUTED and scope is not None:
            columns.append(_computed(attr.keyword, dialect, scope).scalar_subquery()
                           .label(attr.keyword))
        elif attr.source is Source.COMPUTED:
            columns.append(_computed_column(attr.keyword, dialect))
    stmt = select(*columns)
    if level is Level.INSTANCE:
        stmt = (stmt.select_from(INSTANCES).join(SERIES, INSTANCES.c.series_pk == SERIES.c.id)
                .join(STUDIES, SERIES.c.study_pk == STUDIES.c.id))
    elif level is Level.SERIES:
        stmt = stmt.select_from(SERIES).join(STUDIES, SERIES.c.study_pk == STUDIES.c.id)
    else:
        stmt = stmt.select_from(STUDIES)
    stmt = stmt.join(PATIENTS, STUDIES.c.patient_pk == PATIENTS.c.id)

    def value(name: str, v: Any) -> Any:
        return bindparam(name) if bind else v

    if query.study_uid is not None:
        stmt = stmt.where(STUDIES.c.study_instance_uid == value("p_study", query.study_uid))
    if query.series_uid is not None:
        stmt = stmt.where(SERIES.c.series_instance_uid == value("p_series", query.series_uid))
    for i, cond in enumerate(query.conditions):
        if cond.attribute.keyword == "ModalitiesInStudy":
            stmt = stmt.where(_modality_condition(cond, dialect))
        else:
            binds = None
            if bind:
                binds = [bindparam(f"c{i}_{j}")
                         for j in range(len(_bound_values(cond, dialect)))]
            stmt = stmt.where(_text_condition(cond.attribute.column, cond, dialect, binds))
    if scope is not None:
        stmt = _scoped(stmt, level, scope)

    st, se, it = STUDIES.c, SERIES.c, INSTANCES.c
    order: list[Any] = [st.study_date.desc(), st.study_time.desc(), st.id.desc()]
    if level >= Level.SERIES:
        order += [se.series_number.is_(None), se.series_number, se.id]
    if level >= Level.INSTANCE:
        order += [it.instance_number.is_(None), it.instance_number, it.id]
    page = query.limit + 1 if query.limited_by_server else query.limit
    return (stmt.order_by(*order).limit(value("p_limit", page))
            .offset(value("p_offset", query.offset)))


# -- precompiled statements (the lean path of the commonest searches) ----------------------


def _shape(query: Query, dialect: str) -> tuple | None:
    """What a query's SQL depends on, its values aside; None when it is not precompiled
    (ModalitiesInStudy, whose clause embeds its values)."""
    conds = []
    for cond in query.conditions:
        if cond.attribute.keyword == "ModalitiesInStudy":
            return None
        present = tuple(bool(v) for v in cond.values) if cond.match is Match.RANGE else ()
        conds.append((cond.attribute.keyword, cond.match, len(_bound_values(cond, dialect)),
                      present))
    return (dialect, query.level, query.study_uid is None, query.series_uid is None,
            tuple(conds), tuple(a.keyword for a in query.returned))


def _parameters(query: Query, dialect: str) -> dict[str, Any]:
    """The bind values of ``build_select(query, dialect, bind=True)``."""
    params: dict[str, Any] = {
        "p_limit": query.limit + 1 if query.limited_by_server else query.limit,
        "p_offset": query.offset,
    }
    if query.study_uid is not None:
        params["p_study"] = query.study_uid
    if query.series_uid is not None:
        params["p_series"] = query.series_uid
    for i, cond in enumerate(query.conditions):
        for j, v in enumerate(_bound_values(cond, dialect)):
            params[f"c{i}_{j}"] = v
    return params


_PREPARED: dict[tuple, Compiled] = {}
_PREPARED_MAX = 512


def _run_prepared(index: InstanceIndex, query: Query, shape: tuple) -> list[dict[str, Any]]:
    """One precompiled SELECT on a pooled DBAPI connection: no statement building, no cache
    key, no ORM session (:mod:`gateway.index.prepared`)."""
    engine = index.engine
    compiled = _PREPARED.get(shape)
    if compiled is None:
        compiled = compile_select(build_select(query, engine.dialect.name, bind=True), engine)
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.clear()
        _PREPARED[shape] = compiled
    keys = compiled.keys
    return [dict(zip(keys, r, strict=True))
            for r in fetch_all(engine, compiled, _parameters(query, engine.dialect.name))]


def search(index: InstanceIndex, query: Query, scope: SearchScope | None = None) -> SearchResult:
    """Run ``query`` on the index, limited to ``scope``: one SQL statement, no file read."""
    dialect = index.engine.dialect.name
    shape = _shape(query, dialect) if scope is None else None
    if shape is not None:
        raw = _run_prepared(index, query, shape)
    else:
        stmt = build_select(query, dialect, scope)
        with index.read() as session:
            raw = session.execute(stmt).mappings().all()
    truncated = query.limited_by_server and len(raw) > query.limit
    rows = []
    for r in raw[: query.limit]:
        row = dict(r)
        if "ModalitiesInStudy" in row:
            modalities = (row["ModalitiesInStudy"] or "").split(",")
            row["ModalitiesInStudy"] = sorted(set(modalities) - {""})
        for attr in query.returned:
            if attr.source is Source.CONSTANT:
                row[attr.keyword] = "ONLINE"
        rows.append(row)
    return SearchResult(query, rows, truncated)


def uids_of(row: dict[str, Any], query: Query) -> Sequence[str]:
    """The UIDs that name a result row's resource (study; study, series; ...)."""
    return [row[_UID_OF[lv]] for lv in Level if lv <= query.level]
