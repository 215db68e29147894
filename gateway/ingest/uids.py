"""DICOM UID checks (PS3.5 9.1).

Two levels: :func:`is_safe_uid` is what may ever become part of a file path (digits and
single dots, at most 64 characters); :func:`is_conformant_uid` adds the standard's rule of
no leading zero in a component. Real modalities do send UIDs with leading zeros, so ingest
accepts safe-but-nonconformant UIDs rather than losing an exam, and only safe ones reach the
file system.
"""

from __future__ import annotations

import re

_SAFE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CONFORMANT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_safe_uid(value: object) -> bool:
    """True when ``value`` is a string of digit groups separated by single dots, <= 64 chars."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_SAFE.match(value))


def is_conformant_uid(value: object) -> bool:
    """True when ``value`` is a UID exactly as PS3.5 9.1 defines it."""
    return is_safe_uid(value) and bool(_CONFORMANT.match(value))  # type: ignore[arg-type]
