"""The appel contextuel's parameter rules (R13, R19; gateway/consumer/context.py): each
missing, unknown, repeated, empty or malformed parameter is named. The HTTP face's own test
(tests/test_consumer_entry.py) posts the same cases to a real ``drimbox serve``.

Values: the ANS test INS ``279035121518989`` (PAT-TROIS DOMINIQUE, born 03/1979 in 51-215, test
OID ``1.2.250.1.213.1.4.10``; SPEC section 4); parameter names from the ANS test server's list
(``ansforge/DRIM-M_DRIMbox`` TestServer-AppelContextuel ParameterList.java, commit 81bae17).
"""

from __future__ import annotations

from datetime import date

import pytest

from gateway.consumer.context import (
    MANDATORY,
    ContextRefused,
    PatientContext,
    parse,
)

TODAY = date(2026, 12, 4)

GOOD: dict[str, str] = {
    "Patient.identifier.value": "279035121518989",
    "Patient.identifier.system": "urn:oid:1.2.250.1.213.1.4.10",
    "Patient.name.family": "PAT-TROIS",
    "Patient.name.given": "DOMINIQUE MARIE",
    "Patient.gender": "female",
    "Patient.birthDate": "1979-03-12",
    "Address.district": "51215",
    "InformationEtConsentement": "true",
    "PatientID": "IPP-000123",
    "PatientIDIssuer": "CH TEST&1.2.250.1.999.1.1&ISO",
}

#: (what is changed, the parameter that must be named, the problem kind). ``None`` removes.
BAD: list[tuple[dict[str, str | None], str, str]] = [
    *[({name: None}, name, "missing") for name in MANDATORY],
    *[({name: ""}, name, "empty") for name in MANDATORY],
    ({"patient.birthdate": "1979-03-12"}, "patient.birthdate", "unknown"),
    ({"StudyInstanceUID": "1.2.3"}, "StudyInstanceUID", "unknown"),
    ({"Patient.identifier.value": "279035121518988"}, "Patient.identifier.value", "malformed"),
    ({"Patient.identifier.value": "27903512151898"}, "Patient.identifier.value", "malformed"),
    ({"Patient.identifier.value": "2790351215189AB"}, "Patient.identifier.value", "malformed"),
    ({"Patient.identifier.system": "1.2.250.1.213.1.4.2"}, "Patient.identifier.system",
     "malformed"),
    ({"Patient.identifier.system": "1.2.250.1.213.1.4.99"}, "Patient.identifier.system",
     "malformed"),
    ({"Patient.gender": "F1"}, "Patient.gender", "malformed"),
    ({"Patient.gender": "Female"}, "Patient.gender", "malformed"),
    ({"Patient.birthDate": "12/03/1979"}, "Patient.birthDate", "malformed"),
    ({"Patient.birthDate": "19790312"}, "Patient.birthDate", "malformed"),
    ({"Patient.birthDate": "1979-02-30"}, "Patient.birthDate", "malformed"),
    ({"Patient.birthDate": "2099-01-01"}, "Patient.birthDate", "malformed"),
    ({"Address.district": "5121"}, "Address.district", "malformed"),
    ({"Address.district": "PARIS"}, "Address.district", "malformed"),
    ({"InformationEtConsentement": "peut-être"}, "InformationEtConsentement", "malformed"),
    ({"Patient.name.family": "PAT\nTROIS"}, "Patient.name.family", "malformed"),
    ({"Patient.name.family": "X" * 101}, "Patient.name.family", "malformed"),
    ({"Patient.name.given": "DOMINIQUE  MARIE"}, "Patient.name.given", "malformed"),
    ({"Patient.name.given": "D0MINIQUE"}, "Patient.name.given", "malformed"),
    ({"Patient.name.family": "<b>DUPONT</b>"}, "Patient.name.family", "malformed"),
    ({"PatientID": "A" * 65}, "PatientID", "malformed"),
    ({"PatientIDIssuer": "CH&not-an-oid&ISO"}, "PatientIDIssuer", "malformed"),
    ({"Situation": "R1\r\nX"}, "Situation", "malformed"),
]


def pairs(changes: dict[str, str | None]) -> list[tuple[str, str]]:
    values: dict[str, str | None] = {**GOOD, **changes}
    return [(k, v) for k, v in values.items() if v is not None]


def test_a_good_appel_contextuel() -> None:
    patient = parse(pairs({"Situation": "R499999000000202"}), TODAY)
    assert patient == PatientContext(
        ins="279035121518989", ins_oid="1.2.250.1.213.1.4.10", birth_name="PAT-TROIS",
        birth_given_names="DOMINIQUE MARIE", gender="female", birth_date="1979-03-12",
        birthplace="51215", consent=True, patient_id="IPP-000123",
        patient_id_issuer="CH TEST&1.2.250.1.999.1.1&ISO", situation="R499999000000202")
    assert patient.first_given_name == "DOMINIQUE"
    assert patient.birth_date_label == "12/03/1979" and patient.gender_label == "Féminin"
    assert patient.ins_kind == "INS-NIR-TEST"
    assert PatientContext.from_json(patient.to_json()) == patient


@pytest.mark.parametrize(("value", "expected"), [
    ({"Patient.gender": "M"}, "male"), ({"Patient.gender": "I"}, "other"),
    ({"Patient.identifier.system": "1.2.250.1.213.1.4.8"}, "1.2.250.1.213.1.4.8"),
    ({"Patient.birthDate": "1979-03"}, "03/1979"), ({"Address.district": "2A004"}, "2A004"),
    ({"InformationEtConsentement": "FALSE"}, False), ({"Situation": ""}, ""),
    ({"Patient.name.family": "DE LA FONTAINE-D’ÉTÉ"}, "DE LA FONTAINE-D’ÉTÉ"),
])
def test_accepted_variants(value: dict[str, str], expected: object) -> None:
    """INS letters for the sex, a bare OID, a partly unknown birth date, a Corsican birthplace,
    a refusal of consent, an empty optional Situation (as good as absent), accents."""
    p = parse(pairs(value), TODAY)
    assert expected in (p.gender, p.ins_oid, p.birth_date_label, p.birthplace, p.consent,
                        p.situation, p.birth_name)


@pytest.mark.parametrize(("changes", "parameter", "kind"), BAD,
                         ids=[f"{k}-{p}" for _, p, k in BAD])
def test_each_bad_parameter_is_named(changes: dict[str, str | None], parameter: str,
                                     kind: str) -> None:
    with pytest.raises(ContextRefused) as err:
        parse(pairs(changes), TODAY)
    assert [(p.parameter, p.kind) for p in err.value.problems] == [(parameter, kind)]
    identity = ("Patient.identifier.value", "Patient.name.family", "Patient.name.given",
                "Patient.birthDate", "PatientID")
    for name, value in changes.items():
        if name in identity and value:
            assert value not in str(err.value)  # no identity value echoed


def test_every_problem_at_once_and_repeats() -> None:
    bad = [("Patient.identifier.value", "279035121518989"),
           ("Patient.identifier.value", "279035121518989"), ("Foo", "1"),
           ("Patient.gender", "X")]
    with pytest.raises(ContextRefused) as err:
        parse(bad, TODAY)
    named = {(p.parameter, p.kind) for p in err.value.problems}
    assert ("Patient.identifier.value", "repeated") in named and ("Foo", "unknown") in named
    assert ("Patient.gender", "malformed") in named
    assert {n for n, k in named if k == "missing"} == set(MANDATORY) - {
        "Patient.identifier.value", "Patient.gender"}
