"""The one rule for integers received as text (``gateway.imaging.integers``) and its HTTP form
(``dicomweb.params.int_param``, a 400 naming the parameter). End-to-end checks through a real
gateway are in ``test_qido.py::test_integer_parameters_are_bounded``."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from dicomweb.params import int_param
from gateway.imaging.integers import INT64_MAX, BadInteger, parse_int


@pytest.mark.parametrize("raw", [str(INT64_MAX + 1), "-1", "9" * 5000, "ten", "", " ", "1_0",
                                 "\u00b2", "\u0661", "0x1", "1.0", "1e3", "--1", "+-1"])
def test_refused_values_name_the_parameter_and_its_range(raw: str) -> None:
    with pytest.raises(BadInteger) as caught:
        parse_int("offset", raw, 0, INT64_MAX)
    assert caught.value.parameter == "offset"
    assert caught.value.message.startswith(
        f"offset must be an integer between 0 and {INT64_MAX}, not ")
    assert len(caught.value.message) < 150  # a long value is shortened


@pytest.mark.parametrize(("raw", "value"), [("0", 0), (str(INT64_MAX), INT64_MAX), (" 7 ", 7),
                                            ("+7", 7), ("007", 7)])
def test_accepted_values(raw: str, value: int) -> None:
    assert parse_int("offset", raw, 0, INT64_MAX) == value


def test_int_param_is_a_400_naming_the_parameter() -> None:
    assert int_param("quality", None, 1, 100, default=90) == 90
    assert int_param("quality", "100", 1, 100) == 100
    with pytest.raises(HTTPException) as caught:
        int_param("quality", "101", 1, 100)
    assert caught.value.status_code == 400
    assert caught.value.detail == "quality must be an integer between 1 and 100, not '101'"
