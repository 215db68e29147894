"""Query/Retrieve identifiers in domain terms (PS3.4 C.4, C.6.1, C.6.2): what a C-FIND
matches and returns, and which stored instances a C-MOVE or C-GET sends.

The DIMSE face (:mod:`gateway.ingest.query_retrieve`) turns an identifier into :class:`Key`
values (keyword, value as text) and builds its response datasets from the rows given here;
statuses are its business, :class:`IdentifierError` says what is wrong in domain terms.

C-FIND uses **the same index and matching rules as QIDO-RS**: STUDY, SERIES and IMAGE level
identifiers become a :class:`gateway.imaging.query.Query` (:func:`~gateway.imaging.query.parse_query`
with the keys as parameters, so single value, universal, wildcard, range and UID-list matching
are QIDO-RS's, PS3.4 C.2.2.2); the PATIENT level (Patient Root only) is one SELECT on the
patients with the same condition builder. Results are paged through the index
(:data:`~gateway.imaging.query.MAX_RESULTS` per page) so a C-FIND is never truncated.

Hierarchical search and retrieve only (no relational extended negotiation, PS3.4 C.4.1.2.1,
C.4.2.2.1): the unique keys of every level above the Query/Retrieve Level must be present with a
single value (Patient ID in the Patient Root model, Study Instance UID, Series Instance UID);
a retrieve names the unique key of its level (a list of UIDs is allowed there). A matching
key of a level below the Query/Retrieve Level is refused (:attr:`Problem.LOWER_LEVEL_KEY`).
A key the index does not hold (sequences, unindexed attributes) is returned zero-length and is
not used for matching (PS3.4 C.2.2.1.3: an SCP need not support matching on optional keys).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, func, select

from gateway.imaging.query import (
    ATTRIBUTES,
    INSTANCES,
    MAX_RESULTS,
    PATIENTS,
    SERIES,
    STUDIES,
    Condition,
    Level,
    Query,
    QueryError,
    condition_clause,
    parse_condition,
    parse_query,
    search,
)
from gateway.imaging.restore import RestoreFailed, Restorer
from gateway.index.retention import evicted_instances
from gateway.index.store import InstanceIndex
from gateway.ingest.uids import is_safe_uid

PATIENT_ROOT, STUDY_ROOT = "PATIENT", "STUDY"
MODELS = (PATIENT_ROOT, STUDY_ROOT)
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_QUERY_LEVEL = {"STUDY": Level.STUDY, "SERIES": Level.SERIES, "IMAGE": Level.INSTANCE}
UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
              "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}

#: Patient level attributes (Patient Root, PATIENT level: PS3.4 C.6.1.1.2).
PATIENT_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                "PatientSex")
PATIENT_COUNTS = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                  "NumberOfPatientRelatedInstances")
#: Keys the face answers itself (never matched here).
CONTROL_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle",
                          "InstanceAvailability"})


class Problem(enum.Enum):
    BAD_LEVEL = "bad_level"  # missing, unknown, or not in this model
    MISSING_KEY = "missing_key"  # a unique key of the hierarchy absent or not single
    LOWER_LEVEL_KEY = "lower_level_key"  # a matching key below the Query/Retrieve Level
    BAD_VALUE = "bad_value"  # a matching value that cannot be parsed


class IdentifierError(ValueError):
    def __init__(self, problem: Problem, message: str, keyword: str = "") -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.keyword = keyword


@dataclass(frozen=True, slots=True)
class Key:
    """One element of an identifier: ``value`` is its text (multiple values joined with
    ``\\``), ``""`` for universal matching, ``None`` for a value we cannot match (a sequence)."""

    keyword: str
    value: str | None


def check_level(model: str, level: str) -> str:
    if not level:
        raise IdentifierError(Problem.BAD_LEVEL, "Query/Retrieve Level is missing",
                              "QueryRetrieveLevel")
    if level not in LEVELS or (model == STUDY_ROOT and level == "PATIENT"):
        raise IdentifierError(Problem.BAD_LEVEL, f"level {level[:16]!r} is not supported "
                              f"in the {model.title()} Root model", "QueryRetrieveLevel")
    return level


def _single(keys: dict[str, Key], keyword: str, uid: bool) -> str:
    key = keys.get(keyword)
    value = (key.value or "").strip() if key is not None else ""
    if not value or "\\" in value or "*" in value or "?" in value or (uid and "," in value):
        raise IdentifierError(Problem.MISSING_KEY, f"{keyword} must be given with a single "
                              "value (hierarchical query/retrieve)", keyword)
    if uid and not is_safe_uid(value):
        raise IdentifierError(Problem.BAD_VALUE, f"{keyword}: {value[:64]!r} is not a UID",
                              keyword)
    return value


def _above(model: str, level: str) -> list[str]:
    """The levels above ``level`` whose unique keys a hierarchical request must carry."""
    chain = LEVELS if model == PATIENT_ROOT else LEVELS[1:]
    return list(chain[: chain.index(level)])


def _key_level(keyword: str) -> str | None:
    if keyword in PATIENT_KEYS or keyword in PATIENT_COUNTS:
        return "PATIENT"
    attr = ATTRIBUTES.get(keyword)
    if attr is None or attr.level is None:
        return None
    return {Level.STUDY: "STUDY", Level.SERIES: "SERIES", Level.INSTANCE: "IMAGE"}[attr.level]


# -- C-FIND ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindPlan:
    model: str
    level: str
    query: Query | None  # STUDY, SERIES, IMAGE
    patient_conditions: tuple[Condition, ...]  # PATIENT
    returned: tuple[str, ...]  # the identifier's keywords, in its order

    @property
    def study_uid(self) -> str:
        """The study the request is about, when it names exactly one (for the audit)."""
        if self.query is not None and self.query.study_uid:
            return self.query.study_uid
        for cond in self.query.conditions if self.query is not None else ():
            if cond.attribute.keyword == "StudyInstanceUID" and len(cond.values) == 1:
                return str(cond.values[0])
        return ""


def plan_find(model: str, level: str, keys: Iterable[Key]) -> FindPlan:
    """Check a C-FIND identifier and translate it. Raises :class:`IdentifierError`."""
    level = check_level(model, level)
    keys = list(keys)
    by_name = {k.keyword: k for k in keys}
    rank = LEVELS.index(level)
    above = _above(model, level)
    path: dict[str, str] = {}
    for upper in above:
        keyword = UNIQUE_KEY[upper]
        path[keyword] = _single(by_name, keyword, uid=keyword != "PatientID")
    returned = tuple(k.keyword for k in keys if k.keyword not in ("QueryRetrieveLevel",))
    matching: list[Key] = []
    for key in keys:
        if key.keyword in CONTROL_KEYS or key.value is None:
            continue
        key_level = _key_level(key.keyword)
        if key_level is not None and LEVELS.index(key_level) > rank and key.value.strip():
            raise IdentifierError(Problem.LOWER_LEVEL_KEY, f"{key.keyword} is a "
                                  f"{key_level} key; it cannot be matched at {level} level",
                                  key.keyword)
        matching.append(key)
    if level == "PATIENT":
        conditions = []
        for key in matching:
            if key.keyword in PATIENT_KEYS:
                cond = _condition(key)
                if cond is not None:
                    conditions.append(cond)
        return FindPlan(model, level, None, tuple(conditions), returned)
    params: list[tuple[str, str]] = []
    study_uid = path.get("StudyInstanceUID")
    series_uid = path.get("SeriesInstanceUID")
    for key in matching:
        attr = ATTRIBUTES.get(key.keyword)
        if attr is None or not attr.matchable or key.keyword in (
                "StudyInstanceUID" if study_uid else "", "SeriesInstanceUID" if series_uid else ""):
            continue  # unindexed optional key: returned empty, not matched
        params.append((key.keyword, key.value or ""))
    wanted = sorted({k.keyword for k in keys if k.keyword in ATTRIBUTES
                     and (_key_level(k.keyword) or level) in LEVELS[: rank + 1]})
    if wanted:
        params.append(("includefield", ",".join(wanted)))
    try:
        query = parse_query(_QUERY_LEVEL[level], params, study_uid, series_uid)
    except QueryError as exc:
        raise IdentifierError(Problem.BAD_VALUE, exc.message, exc.parameter) from None
    return FindPlan(model, level, query, (), returned)


def _condition(key: Key) -> Condition | None:
    try:
        return parse_condition(key.keyword, ATTRIBUTES[key.keyword], key.value or "", False)
    except QueryError as exc:
        raise IdentifierError(Problem.BAD_VALUE, exc.message, key.keyword) from None


def find(index: InstanceIndex, plan: FindPlan) -> Iterator[dict[str, Any]]:
    """The matches, one dict of keyword -> value (str, int, list, None) each, page by page:
    the caller may stop between two (a C-CANCEL)."""
    if plan.query is None:
        yield from _find_patients(index, plan.patient_conditions)
        return
    page = MAX_RESULTS[plan.query.level]
    query = dataclasses.replace(plan.query, limit=page, offset=0, limited_by_server=False)
    while True:
        rows = search(index, query).rows
        yield from rows
        if len(rows) < page:
            return
        query = dataclasses.replace(query, offset=query.offset + page)


def _find_patients(index: InstanceIndex, conditions: Sequence[Condition]
                   ) -> Iterator[dict[str, Any]]:
    dialect = index.engine.dialect.name
    p, st, se, it = PATIENTS.c, STUDIES.alias(), SERIES.alias(), INSTANCES.alias()
    studies = select(func.count()).select_from(st).where(st.c.patient_pk == p.id)
    series = (select(func.count()).select_from(se).join(st, se.c.study_pk == st.c.id)
              .where(st.c.patient_pk == p.id))
    instances = (select(func.count()).select_from(it).join(se, it.c.series_pk == se.c.id)
                 .join(st, se.c.study_pk == st.c.id).where(st.c.patient_pk == p.id))
    columns = [ATTRIBUTES[k].column.label(k) for k in PATIENT_KEYS]
    columns += [q.scalar_subquery().label(name)
                for q, name in zip((studies, series, instances), PATIENT_COUNTS, strict=True)]
    st2 = STUDIES.alias()
    stmt = select(*columns).select_from(PATIENTS).where(
        exists().where(st2.c.patient_pk == p.id))
    clauses = [condition_clause(c.attribute.column, c, dialect)
               for c in conditions]
    if clauses:
        stmt = stmt.where(and_(*clauses))
    stmt = stmt.order_by(p.id)
    page, offset = MAX_RESULTS[Level.STUDY], 0
    while True:
        with index.read() as s:
            rows = [dict(r) for r in s.execute(stmt.limit(page).offset(offset)).mappings()]
        yield from rows
        if len(rows) < page:
            return
        offset += page


# -- C-MOVE and C-GET --------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievePlan:
    model: str
    level: str
    patient_id: str | None
    issuer: str | None
    study_uids: tuple[str, ...]
    series_uids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]

    @property
    def study_uid(self) -> str:
        return self.study_uids[0] if len(self.study_uids) == 1 else ""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One stored instance a retrieve sends."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    evicted: bool


def _uid_list(keys: dict[str, Key], keyword: str) -> tuple[str, ...]:
    key = keys.get(keyword)
    value = (key.value or "").strip() if key is not None else ""
    uids = tuple(u.strip() for u in value.replace(",", "\\").split("\\") if u.strip())
    if not uids:
        raise IdentifierError(Problem.MISSING_KEY, f"{keyword} is required to retrieve at "
                              "this level", keyword)
    for uid in uids:
        if not is_safe_uid(uid):
            raise IdentifierError(Problem.BAD_VALUE, f"{keyword}: {uid[:64]!r} is not a UID",
                                  keyword)
    return uids


def plan_retrieve(model: str, level: str, keys: Iterable[Key]) -> RetrievePlan:
    """Check a C-MOVE / C-GET identifier (unique keys only, PS3.4 C.4.2.2.1, C.4.3.2.1).
    Raises :class:`IdentifierError`."""
    level = check_level(model, level)
    by_name = {k.keyword: k for k in keys}
    found: dict[str, tuple[str, ...]] = {}
    for upper in _above(model, level):
        keyword = UNIQUE_KEY[upper]
        found[keyword] = (_single(by_name, keyword, uid=keyword != "PatientID"),)
    keyword = UNIQUE_KEY[level]
    if level == "PATIENT":
        found[keyword] = (_single(by_name, keyword, uid=False),)
    else:
        found[keyword] = _uid_list(by_name, keyword)
    issuer_key = by_name.get("IssuerOfPatientID")
    issuer = (issuer_key.value or "").strip() or None if issuer_key is not None else None
    pid = found.get("PatientID")
    return RetrievePlan(model, level, pid[0] if pid else None, issuer,
                        found.get("StudyInstanceUID", ()), found.get("SeriesInstanceUID", ()),
                        found.get("SOPInstanceUID", ()))


def select_instances(index: InstanceIndex, plan: RetrievePlan) -> list[Outgoing]:
    """The stored instances the plan names, in study, series number, instance number order
    (none: an empty list; the face answers success with no sub-operation)."""
    st, se, it, pa = STUDIES.c, SERIES.c, INSTANCES.c, PATIENTS.c
    stmt = (select(st.study_instance_uid, se.series_instance_uid, it.sop_instance_uid,
                   it.sop_class_uid, it.transfer_syntax_uid, it.storage_key,
                   it.evicted_at.is_not(None))
            .select_from(INSTANCES).join(SERIES, it.series_pk == se.id)
            .join(STUDIES, se.study_pk == st.id).join(PATIENTS, st.patient_pk == pa.id))
    if plan.patient_id is not None:
        stmt = stmt.where(pa.patient_id == plan.patient_id)
        if plan.issuer is not None:
            stmt = stmt.where(pa.issuer_of_patient_id == plan.issuer)
    if plan.study_uids:
        stmt = stmt.where(st.study_instance_uid.in_(plan.study_uids))
    if plan.series_uids:
        stmt = stmt.where(se.series_instance_uid.in_(plan.series_uids))
    if plan.sop_instance_uids:
        stmt = stmt.where(it.sop_instance_uid.in_(plan.sop_instance_uids))
    stmt = stmt.order_by(st.id, se.series_number.is_(None), se.series_number, se.id,
                         it.instance_number.is_(None), it.instance_number, it.id)
    with index.read() as s:
        return [Outgoing(*(str(v) for v in r[:6]), bool(r[6])) for r in s.execute(stmt).all()]


def fetch_back(restorer: Restorer | None, instances: Sequence[Outgoing],
               audit: Any = None) -> tuple[set[str], str]:
    """Bring evicted instances back from the PACS before they are sent (storage as a cache
    of the PACS, :mod:`gateway.imaging.restore`). Returns the SOP Instance UIDs still not
    readable (their sub-operations fail) and why; never raises."""
    evicted: dict[str, list[str]] = {}
    for item in instances:
        if item.evicted:
            evicted.setdefault(item.study_instance_uid, []).append(item.sop_instance_uid)
    if not evicted:
        return set(), ""
    if restorer is None:
        return {u for sops in evicted.values() for u in sops}, "evicted, no PACS to fetch from"
    missing: set[str] = set()
    reason = ""
    for study, sops in evicted.items():
        try:
            restorer.ensure_local(study, sops, audit)
        except RestoreFailed as exc:
            reason = exc.message
            missing |= set(evicted_instances(restorer.index, sops))
        except Exception as exc:  # the PACS adapter misbehaving: fail these, not the retrieve
            reason = f"fetching back from the PACS failed: {exc}"
            missing |= set(evicted_instances(restorer.index, sops))
    return missing, reason
