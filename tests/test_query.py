"""QIDO-RS search in domain terms (PS3.4 C.2.2.2, PS3.18 10.6).

First the pure rules of ``gateway.imaging.query`` (parsing, wildcard and range translation), then
the SQL they become, run on both index back-ends (SQLite and PostgreSQL) through
``InstanceIndex.record``: the same matches on both, one SQL statement per search.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import event

from dicomweb import dicom_json
from gateway.imaging import query as q
from gateway.imaging.query import ATTRIBUTES, Level, Match, QueryError, parse_condition, parse_query
from gateway.index.engine import create_index_engine, upgrade
from gateway.index.store import InstanceIndex, StoredFile
from gateway.ingest.header import InstanceHeader

# -- pure rules ----------------------------------------------------------------------------


def test_wildcards_translate_with_literal_specials_escaped() -> None:
    assert q.wildcard_to_like("AB*C?") == "AB%C_"
    assert q.wildcard_to_like("A_1%*") == "A\\_1\\%%"
    assert q.wildcard_to_like("A\\B") == "A\\\\B"
    assert q.wildcard_to_glob("AB*C?") == "AB*C?"
    assert q.wildcard_to_glob("A[1]*") == "A[[]1]*"


def test_fuzzy_patterns_cover_every_name_component_and_word() -> None:
    assert q.fuzzy_like_patterns("Dup") == ["Dup%", "%^Dup%", "% Dup%", "%=Dup%"]
    assert q.fuzzy_like_patterns("j_a*") == ["j\\_a%%", "%^j\\_a%%", "% j\\_a%%", "%=j\\_a%%"]


@pytest.mark.parametrize(
    ("keyword", "raw", "match", "values"),
    [
        ("PatientID", "123", Match.SINGLE, ("123",)),
        ("PatientID", " 123 ", Match.SINGLE, ("123",)),
        ("PatientID", "12*", Match.WILDCARD, ("12*",)),
        ("PatientID", "1?3", Match.WILDCARD, ("1?3",)),
        ("StudyInstanceUID", "1.2.3", Match.SINGLE, ("1.2.3",)),
        ("StudyInstanceUID", "1.2.3,1.2.4", Match.LIST, ("1.2.3", "1.2.4")),
        ("StudyInstanceUID", "1.2.3\\1.2.4", Match.LIST, ("1.2.3", "1.2.4")),
        ("StudyDate", "20260101", Match.SINGLE, ("20260101",)),
        ("StudyDate", "20260101-20261231", Match.RANGE, ("20260101", "20261231")),
        ("StudyDate", "-20261231", Match.RANGE, ("", "20261231")),
        ("StudyDate", "20260101-", Match.RANGE, ("20260101", "")),
        ("StudyTime", "10", Match.RANGE, ("10", "105959.999999")),
        ("StudyTime", "0930-1015", Match.RANGE, ("0930", "101559.999999")),
        ("StudyTime", "-101530.5", Match.RANGE, ("", "101530.599999")),
        ("SeriesNumber", "3", Match.SINGLE, (3,)),
        ("PatientName", "DUPONT^JEAN", Match.SINGLE, ("DUPONT^JEAN",)),
        ("ModalitiesInStudy", "CT,MR", Match.LIST, ("CT", "MR")),
        ("ModalitiesInStudy", "CT\\M*", Match.LIST, ("CT", "M*")),
    ],
)
def test_parse_condition(keyword: str, raw: str, match: Match, values: tuple) -> None:
    cond = parse_condition(keyword, ATTRIBUTES[keyword], raw, fuzzy=False)
    assert cond is not None
    assert (cond.match, cond.values) == (match, values)


def test_universal_matching_and_fuzzy_only_for_person_names() -> None:
    assert parse_condition("PatientID", ATTRIBUTES["PatientID"], "", fuzzy=False) is None
    assert parse_condition("PatientID", ATTRIBUTES["PatientID"], "*", fuzzy=False) is None
    pn = parse_condition("PatientName", ATTRIBUTES["PatientName"], "dup", fuzzy=True)
    assert pn is not None and pn.match is Match.FUZZY
    lo = parse_condition("PatientID", ATTRIBUTES["PatientID"], "dup", fuzzy=True)
    assert lo is not None and lo.match is Match.SINGLE


@pytest.mark.parametrize(
    ("keyword", "raw", "fragment"),
    [
        ("StudyDate", "2026-01-01", "not a date"),
        ("StudyDate", "20261301", "not a valid date"),
        ("StudyDate", "20261231-20260101", "ends before it starts"),
        ("StudyDate", "-", "at least one bound"),
        ("StudyDate", "2026*", "not a date"),
        ("StudyTime", "2500", "not a valid time"),
        ("StudyTime", "10:15", "not a time"),
        ("StudyInstanceUID", "1.2.abc", "not a UID"),
        ("StudyInstanceUID", "1.2.3,", "not a UID"),
        ("SeriesNumber", "x", "must be an integer between -2147483648 and 2147483647"),
        ("SeriesNumber", "2147483648", "must be an integer between -2147483648 and 2147483647"),
        ("Rows", "65536", "must be an integer between 0 and 65535"),
        ("SeriesNumber", "1*", "wildcards are not supported"),
    ],
)
def test_malformed_values_name_the_parameter(keyword: str, raw: str, fragment: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_condition(keyword, ATTRIBUTES[keyword], raw, fuzzy=False)
    assert err.value.parameter == keyword
    assert fragment in err.value.message


def _returned(query: q.Query) -> set[str]:
    return {a.keyword for a in query.returned}


def test_keyword_and_tag_are_the_same_key() -> None:
    by_keyword = parse_query(Level.STUDY, [("PatientID", "X")])
    by_tag = parse_query(Level.STUDY, [("00100020", "X")])
    by_lower_tag = parse_query(Level.STUDY, [("0020000d", "1.2")])
    assert by_keyword.conditions == by_tag.conditions
    assert by_lower_tag.conditions[0].attribute.keyword == "StudyInstanceUID"
    with pytest.raises(QueryError, match="twice") as err:
        parse_query(Level.STUDY, [("PatientID", "X"), ("00100020", "Y")])
    assert err.value.parameter == "00100020"


def test_default_return_attributes_follow_the_path_scope() -> None:
    studies = _returned(parse_query(Level.STUDY, []))
    assert {"StudyDate", "PatientName", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
            "RetrieveURL", "InstanceAvailability"} <= studies
    assert "Modality" not in studies
    all_series = _returned(parse_query(Level.SERIES, []))
    assert {"PatientID", "StudyDate", "Modality", "NumberOfSeriesRelatedInstances"} <= all_series
    study_series = _returned(parse_query(Level.SERIES, [], "1.2.3"))
    assert "PatientID" not in study_series and "Modality" in study_series
    assert "StudyInstanceUID" in study_series  # parents' UIDs always come back
    series_instances = _returned(parse_query(Level.INSTANCE, [], "1.2.3", "1.2.3.4"))
    assert {"SOPInstanceUID", "Rows", "Columns", "BitsAllocated", "NumberOfFrames"} <= (
        series_instances)
    assert "Modality" not in series_instances
    assert "Modality" in _returned(parse_query(Level.INSTANCE, [], "1.2.3"))
    assert "PatientID" in _returned(parse_query(Level.INSTANCE, []))


def test_includefield_forms() -> None:
    one = _returned(parse_query(Level.SERIES, [("includefield", "00180015")], "1.2"))
    assert "BodyPartExamined" in one
    listed = _returned(parse_query(
        Level.SERIES, [("includefield", "BodyPartExamined,PatientID"),
                       ("includefield", "00081030")], "1.2"))
    assert {"BodyPartExamined", "PatientID", "StudyDescription"} <= listed
    everything = _returned(parse_query(Level.STUDY, [("includefield", "all")]))
    assert {"StudyDescription", "IssuerOfPatientID"} <= everything
    assert "Modality" not in everything  # "all" means all of this level
    # Known but not indexed (SliceThickness) or lower level (Rows at study level): absent.
    quiet = _returned(parse_query(Level.STUDY, [("includefield", "SliceThickness,Rows")]))
    assert not {"SliceThickness", "Rows"} & quiet
    with pytest.raises(QueryError) as err:
        parse_query(Level.STUDY, [("includefield", "NoSuchThing")])
    assert err.value.parameter == "includefield"


@pytest.mark.parametrize(
    ("params", "parameter", "fragment"),
    [
        ([("Foo", "1")], "Foo", "unknown query parameter"),
        ([("limit", "ten")], "limit", f"limit must be an integer between 1 and {2**63 - 1}"),
        ([("limit", "0")], "limit", f"limit must be an integer between 1 and {2**63 - 1}"),
        ([("offset", "-1")], "offset", f"offset must be an integer between 0 and {2**63 - 1}"),
        ([("offset", str(2**63))], "offset", "offset must be an integer between 0 and"),
        ([("fuzzymatching", "yes")], "fuzzymatching", "true or false"),
        ([("SliceThickness", "1")], "SliceThickness", "not indexed"),
        ([("NumberOfStudyRelatedSeries", "1")], "NumberOfStudyRelatedSeries", "not indexed"),
        ([("Modality", "CT")], "Modality", "use ModalitiesInStudy"),
        ([("00081111.00081150", "1.2")], "00081111.00081150", "sequence"),
        ([("includefield", "PatientID,")], "includefield", "empty"),
    ],
)
def test_bad_parameters_are_named(params: list, parameter: str, fragment: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_query(Level.STUDY, params)
    assert err.value.parameter == parameter
    assert fragment in err.value.message


def test_path_uid_cannot_be_repeated_as_a_key() -> None:
    with pytest.raises(QueryError, match="already given in the path"):
        parse_query(Level.SERIES, [("StudyInstanceUID", "1.2")], "1.2")


def test_limit_is_capped_by_the_server_maximum() -> None:
    assert parse_query(Level.STUDY, []).limit == q.MAX_RESULTS[Level.STUDY] == 1000
    capped = parse_query(Level.STUDY, [("limit", "5000")])
    assert (capped.limit, capped.limited_by_server) == (1000, True)
    asked = parse_query(Level.STUDY, [("limit", "10"), ("offset", "20")])
    assert (asked.limit, asked.offset, asked.limited_by_server) == (10, 20, False)


def test_dicom_json_encoding() -> None:
    attrs = [ATTRIBUTES[k] for k in ("PatientName", "NumberOfStudyRelatedSeries",
                                     "ModalitiesInStudy", "StudyDate", "Rows", "PatientID")]
    row = {"PatientName": "DUPONT^JEAN=デュポン", "NumberOfStudyRelatedSeries": 2,
           "ModalitiesInStudy": ["CT", "MR"], "StudyDate": "", "Rows": None,
           "PatientID": "X"}
    out = dicom_json.dataset(attrs, row)
    assert list(out) == ["00080005", "00080020", "00080061", "00100010", "00100020",
                         "00201206", "00280010"]
    assert out["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}
    assert out["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DUPONT^JEAN",
                                                       "Ideographic": "デュポン"}]}
    assert out["00201206"] == {"vr": "IS", "Value": [2]}
    assert out["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert out["00080020"] == {"vr": "DA"}
    assert out["00280010"] == {"vr": "US"}
    assert dicom_json.element("DS", "1.5\\2") == {"vr": "DS", "Value": [1.5, 2]}
    assert dicom_json.element("IS", "abc") == {"vr": "IS"}
    assert dicom_json.element("CS", "ORIGINAL\\PRIMARY") == {
        "vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}


# -- the SQL, on both back-ends -----------------------------------------------------------


@pytest.fixture
def index(database_url: str) -> InstanceIndex:
    engine = create_index_engine(database_url)
    upgrade(engine)
    yield InstanceIndex(engine)
    engine.dispose()


def _add(index: InstanceIndex, **fields: object) -> InstanceHeader:
    n = index.counts().instances + 1  # SOP Instance UIDs 9.1, 9.2, ... in insertion order
    base = InstanceHeader(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"9.{n}",
        study_instance_uid="1.1",
        series_instance_uid="1.1.1",
        modality="CT",
    )
    h = replace(base, **fields)
    index.record(h, StoredFile("1.2.840.10008.1.2.1", "a" * 64, 10, f"k/{n}", "TEST"))
    return h


def _find(index: InstanceIndex, level: Level, *params: tuple[str, str], study=None,
          series=None) -> list[dict]:
    return q.search(index, parse_query(level, params, study, series)).rows


def _studies(index: InstanceIndex, *params: tuple[str, str]) -> list[str]:
    return [r["StudyInstanceUID"] for r in _find(index, Level.STUDY, *params)]


@pytest.fixture
def corpus(index: InstanceIndex) -> InstanceIndex:
    # study 1.1: two CT instances, one MR, literal % and _ in its accession number
    for series, modality, number in (("1.1.1", "CT", 1), ("1.1.1", "CT", 2), ("1.1.2", "MR", 1)):
        _add(index, study_instance_uid="1.1", series_instance_uid=series, modality=modality,
             patient_id="INS1", issuer_of_patient_id="1.2.250.1.213.1.4.8",
             patient_name="DUPONT^JEAN", study_date="20260115", study_time="093000",
             accession_number="ACC_1%", series_number=int(series[-1]), instance_number=number)
    _add(index, study_instance_uid="1.2", series_instance_uid="1.2.1", modality="CR",
         patient_id="INS1", issuer_of_patient_id="ASIP-SANTE-INS-NIR", patient_name="DUPONT^JEAN",
         study_date="20250610", study_time="101500", accession_number="ACCX1")
    _add(index, study_instance_uid="1.3", series_instance_uid="1.3.1", modality="CT",
         patient_id="P3", patient_name="LEFÈVRE^ÉLODIE MARIE", study_date="20261231",
         study_time="235959", accession_number="ACC10")
    _add(index, study_instance_uid="1.4", series_instance_uid="1.4.1", modality="",
         patient_id="P4", patient_name="durand^paul", study_date="", study_time="",
         accession_number="acc_1x")
    return index


def test_order_is_newest_first_with_empty_dates_last(corpus: InstanceIndex) -> None:
    assert _studies(corpus) == ["1.3", "1.1", "1.2", "1.4"]


def test_counts_and_modalities_are_computed(corpus: InstanceIndex) -> None:
    rows = {r["StudyInstanceUID"]: r for r in _find(corpus, Level.STUDY)}
    assert rows["1.1"]["NumberOfStudyRelatedSeries"] == 2
    assert rows["1.1"]["NumberOfStudyRelatedInstances"] == 3
    assert rows["1.1"]["ModalitiesInStudy"] == ["CT", "MR"]
    assert rows["1.4"]["ModalitiesInStudy"] == []
    series = _find(corpus, Level.SERIES, study="1.1")
    assert [(s["SeriesInstanceUID"], s["NumberOfSeriesRelatedInstances"]) for s in series] == [
        ("1.1.1", 2), ("1.1.2", 1)]


def test_wildcards_escape_literals_and_are_case_sensitive(corpus: InstanceIndex) -> None:
    # '_' and '%' are literal in DICOM: ACCX1 must not match ACC_1*, nor lower-case acc_1x.
    assert _studies(corpus, ("AccessionNumber", "ACC_1*")) == ["1.1"]
    assert _studies(corpus, ("AccessionNumber", "ACC_1%")) == ["1.1"]
    assert _studies(corpus, ("AccessionNumber", "ACC?1")) == ["1.2"]
    assert _studies(corpus, ("AccessionNumber", "acc*")) == ["1.4"]
    assert _studies(corpus, ("AccessionNumber", "ACC1?")) == ["1.3"]
    assert _studies(corpus, ("AccessionNumber", "ACC")) == []


def test_issuer_of_patient_id_is_matched_literally(corpus: InstanceIndex) -> None:
    assert _studies(corpus, ("PatientID", "INS1")) == ["1.1", "1.2"]
    assert _studies(corpus, ("PatientID", "INS1"),
                    ("IssuerOfPatientID", "1.2.250.1.213.1.4.8")) == ["1.1"]
    assert _studies(corpus, ("PatientID", "INS1"),
                    ("IssuerOfPatientID", "ASIP-SANTE-INS-NIR")) == ["1.2"]


def test_date_and_time_ranges(corpus: InstanceIndex) -> None:
    assert _studies(corpus, ("StudyDate", "20260101-20261231")) == ["1.3", "1.1"]
    assert _studies(corpus, ("StudyDate", "-20260115")) == ["1.1", "1.2"]  # not the empty one
    assert _studies(corpus, ("StudyDate", "20260116-")) == ["1.3"]
    assert _studies(corpus, ("StudyDate", "20250610")) == ["1.2"]
    assert _studies(corpus, ("StudyTime", "09-10")) == ["1.1", "1.2"]  # 10 covers 10:15
    assert _studies(corpus, ("StudyTime", "23")) == ["1.3"]
    assert _studies(corpus, ("StudyTime", "0930-")) == ["1.3", "1.1", "1.2"]


def test_uid_lists(corpus: InstanceIndex) -> None:
    assert _studies(corpus, ("StudyInstanceUID", "1.2,1.4,9.9")) == ["1.2", "1.4"]
    assert _studies(corpus, ("StudyInstanceUID", "1.2\\1.3")) == ["1.3", "1.2"]
    rows = _find(corpus, Level.INSTANCE, ("SOPInstanceUID", "9.1,9.3"))
    assert len(rows) == 2


def test_person_names(corpus: InstanceIndex) -> None:
    assert _studies(corpus, ("PatientName", "dupont^jean")) == ["1.1", "1.2"]  # PN ignores case
    assert _studies(corpus, ("PatientName", "DUR*")) == ["1.4"]
    assert _studies(corpus, ("PatientName", "DUPONT")) == []  # literal: the whole name
    fuzzy = ("fuzzymatching", "true")
    assert _studies(corpus, ("PatientName", "dup"), fuzzy) == ["1.1", "1.2"]
    assert _studies(corpus, ("PatientName", "JEA"), fuzzy) == ["1.1", "1.2"]  # given name
    assert _studies(corpus, ("PatientName", "marie"), fuzzy) == ["1.3"]  # a word
    assert _studies(corpus, ("PatientName", "UPONT"), fuzzy) == []  # prefixes only
    assert _studies(corpus, ("PatientName", "LEFÈVRE^ÉLODIE MARIE")) == ["1.3"]
    assert _studies(corpus, ("PatientName", "LEF*")) == ["1.3"]
    assert _studies(corpus, ("PatientName", "lef"), fuzzy) == ["1.3"]
    # Folding non-ASCII letters (é/É) is the database's: PostgreSQL does, SQLite does not.


def test_modalities_in_study_and_relational_keys(corpus: InstanceIndex) -> None:
    assert _studies(corpus, ("ModalitiesInStudy", "MR")) == ["1.1"]
    assert _studies(corpus, ("ModalitiesInStudy", "CR,MR")) == ["1.1", "1.2"]
    assert _studies(corpus, ("ModalitiesInStudy", "C*")) == ["1.3", "1.1", "1.2"]
    series = _find(corpus, Level.SERIES, ("Modality", "CT"), ("PatientID", "INS1"))
    assert [s["SeriesInstanceUID"] for s in series] == ["1.1.1"]
    assert [r["SOPInstanceUID"] for r in _find(corpus, Level.INSTANCE, study="1.1",
                                                series="1.1.1")] == ["9.1", "9.2"]
    assert _find(corpus, Level.SERIES, study="7.7") == []


def test_paging_is_stable(corpus: InstanceIndex) -> None:
    everything = _find(corpus, Level.INSTANCE)
    pages = [_find(corpus, Level.INSTANCE, ("limit", "2"), ("offset", str(o)))
             for o in range(0, 8, 2)]
    assert [r["SOPInstanceUID"] for p in pages for r in p] == [
        r["SOPInstanceUID"] for r in everything]
    assert len(everything) == 6 and pages[-1] == []


def test_server_maximum_truncates_and_says_so(corpus: InstanceIndex,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(q.MAX_RESULTS, Level.STUDY, 3)
    result = q.search(corpus, parse_query(Level.STUDY, []))
    assert (len(result.rows), result.truncated) == (3, True)
    exact = q.search(corpus, parse_query(Level.STUDY, [("offset", "1")]))
    assert (len(exact.rows), exact.truncated) == (3, False)
    asked = q.search(corpus, parse_query(Level.STUDY, [("limit", "2")]))
    assert (len(asked.rows), asked.truncated) == (2, False)


def test_one_sql_statement_per_search(corpus: InstanceIndex) -> None:
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(corpus.engine, "before_cursor_execute", count)
    try:
        rows = _find(corpus, Level.INSTANCE, ("includefield", "all"))
    finally:
        event.remove(corpus.engine, "before_cursor_execute", count)
    assert len(rows) == 6
    assert len(statements) == 1, statements


@pytest.mark.parametrize("level, params", [
    (Level.STUDY, ()),
    (Level.STUDY, (("PatientID", "P1"),)),
    (Level.STUDY, (("StudyDate", "20260101-"), ("limit", "2"), ("offset", "1"))),
    (Level.STUDY, (("StudyDate", "-20261231"), ("AccessionNumber", "A*"))),
    (Level.STUDY, (("PatientName", "dup"), ("fuzzymatching", "true"))),
    (Level.STUDY, (("StudyInstanceUID", "1.1,1.2"), ("includefield", "all"))),
    (Level.SERIES, (("Modality", "C?"), ("SeriesNumber", "1"))),
    (Level.INSTANCE, (("includefield", "all"),)),
    (Level.INSTANCE, (("StudyTime", "10"),)),
])
def test_precompiled_statement_answers_as_the_built_one(
        corpus: InstanceIndex, level: Level, params: tuple) -> None:
    """The lean path (a statement compiled once per query shape, run with plain values) and
    the statement built per request give the same rows, in the same order, on both back-ends;
    a second query of the same shape reuses the compiled statement."""
    query = parse_query(level, params)
    shape = q._shape(query, corpus.engine.dialect.name)
    assert shape is not None
    with corpus.read() as s:
        built = [dict(r) for r in s.execute(q.build_select(query, corpus.engine.dialect.name))
                 .mappings().all()]
    assert q._run_prepared(corpus, query, shape) == built
    assert q._PREPARED[shape] is q._PREPARED[q._shape(query, corpus.engine.dialect.name)]
