"""INS rules (R19): matricule format and key, OIDs, identity status. Pure logic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.identity.ins import (
    OID_INS_C,
    OID_NIA,
    OID_NIR,
    OID_NIR_DEMO,
    OID_NIR_TEST,
    IdentityStatus,
    Ins,
    InsError,
    check_key,
    check_publishable,
    validate_matricule,
)

# The test INS values of the spec digest (SPEC.md section 4).
SPEC_VALUES = ["279035121518989", "162018885045327", "248039263001064", "253072B07300470"]


@pytest.mark.parametrize("value", SPEC_VALUES)
def test_spec_values_validate(value: str) -> None:
    assert validate_matricule(value) == value
    assert Ins(value, OID_NIR_TEST).matricule == value


def test_lower_case_corsica_is_normalised() -> None:
    assert validate_matricule("253072b07300470") == "253072B07300470"


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("27903512151898", "length"),  # 14
        ("2790351215189890", "length"),  # 16
        ("", "length"),
        ("279035121518988", "key"),  # wrong key
        ("279035121518999", "key"),
        ("2790351215189AB", "format"),  # letters in the key
        ("27903X121518989", "format"),
        ("253072C07300470", "format"),  # only 2A/2B are letters
        ("25307A207300470", "format"),  # 2A at the wrong place
        ("253072A07300470", "key"),  # 2A instead of 2B: the key no longer matches
    ],
)
def test_wrong_values_are_refused_with_the_rule(value: str, rule: str) -> None:
    with pytest.raises(InsError) as err:
        validate_matricule(value)
    assert err.value.rule == rule


@pytest.mark.parametrize("oid", [OID_NIR, OID_NIA, OID_NIR_TEST, OID_NIR_DEMO])
def test_ins_oids_accepted(oid: str) -> None:
    assert Ins("279035121518989", oid).oid == oid


@pytest.mark.parametrize("oid", [OID_INS_C, "1.2.250.1.213.1.4.99", "", "ASIP-SANTE-INS-NIR"])
def test_other_oids_refused(oid: str) -> None:
    with pytest.raises(InsError) as err:
        Ins("279035121518989", oid)
    assert err.value.rule == "oid"
    if oid == OID_INS_C:
        assert "INS-C" in str(err.value)


def test_status_rules() -> None:
    check_publishable(IdentityStatus.QUAL)
    check_publishable("qual")
    check_publishable("VALI", admit_validated=True)
    for status in ("VALI", "PROV", "RECUP", None, "", "XYZ"):
        with pytest.raises(InsError) as err:
            check_publishable(status)
        assert err.value.rule == "status"
    with pytest.raises(InsError):
        check_publishable("PROV", admit_validated=True)


def test_masked_never_shows_the_whole_matricule() -> None:
    ins = Ins("279035121518989")
    assert ins.masked() == "2790351215*****"


bodies = st.builds(
    lambda a, dept, b: a + dept + b,
    st.text("0123456789", min_size=5, max_size=5),
    st.one_of(st.text("0123456789", min_size=2, max_size=2), st.sampled_from(["2A", "2B"])),
    st.text("0123456789", min_size=6, max_size=6),
)


@given(bodies)
def test_property_computed_key_validates(body: str) -> None:
    """For any 13-character body, body + its key is valid, and the key is in 1..97."""
    key = check_key(body)
    assert 1 <= key <= 97
    assert validate_matricule(f"{body}{key:02d}")


@given(bodies, st.integers(min_value=0, max_value=99))
def test_property_any_other_key_is_refused(body: str, key: int) -> None:
    if key == check_key(body):
        return
    with pytest.raises(InsError) as err:
        validate_matricule(f"{body}{key:02d}")
    assert err.value.rule == "key"


@given(bodies)
def test_property_key_arithmetic(body: str) -> None:
    """97 - (N mod 97) with the Corsica substitution, computed independently."""
    corsica = {"2A": "19", "2B": "18"}
    n = int(body[:5] + corsica.get(body[5:7], body[5:7]) + body[7:])  # positions 6-7 only
    assert check_key(body) == 97 - n % 97
    assert (n + check_key(body)) % 97 == 0
