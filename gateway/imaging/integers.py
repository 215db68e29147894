"""Integers received as text from outside (HTTP query parameters, QIDO-RS matching values).

One rule for all of them: optional surrounding spaces, an optional sign, then ASCII decimal
digits only (no ``_`` separators, no other scripts' digits, which Python's ``int`` would take),
and a value within explicit bounds. A value outside the bounds is refused here, before it can
reach the database: SQLite and PostgreSQL both fail on integers beyond 64 bits, and a column
of 32-bit integers cannot hold larger ones anyway. The error names the parameter and its range,
so the HTTP face can answer 400 with it.
"""

from __future__ import annotations

import re

INT64_MAX = 2**63 - 1
"""The largest value SQL ``BIGINT`` (and SQLite's INTEGER) holds: the bound for counts,
offsets and page sizes."""

VR_RANGES: dict[str, tuple[int, int]] = {
    "IS": (-(2**31), 2**31 - 1),  # PS3.5 6.2: an IS value is within -2^31 .. 2^31-1
    "SL": (-(2**31), 2**31 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "US": (0, 2**16 - 1),
}
"""The values each integer VR can carry (PS3.5 Table 6.2-1)."""

_DECIMAL = re.compile(r"[+-]?[0-9]{1,25}")  # 25 digits: beyond any bound, cheap to convert


class BadInteger(ValueError):
    """``parameter`` is not an integer within its bounds; ``message`` says so, naming it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


def parse_int(parameter: str, raw: str, minimum: int, maximum: int) -> int:
    """The integer ``raw`` stands for, within ``minimum``..``maximum``; else :class:`BadInteger`
    (``"offset must be an integer between 0 and 9223372036854775807, not '-3'"``)."""
    value = raw.strip()
    if _DECIMAL.fullmatch(value):
        n = int(value)
        if minimum <= n <= maximum:
            return n
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    raise BadInteger(parameter, f"{parameter} must be an integer between {minimum} and "
                                f"{maximum}, not {shown!r}")
