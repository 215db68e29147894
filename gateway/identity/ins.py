"""The patient's INS (Identifiant National de Santé), requirement R19.

An INS is a 15-character *matricule* (13-character NIR or NIA + 2-digit key) qualified by an
OID that says which register it comes from, plus the RNIV identity status of the record that
carries it. Publication to the DMP is keyed by a *qualified* INS only (RNIV EXI SI 08).

Rules applied (SPEC.md section 4):

* key = 97 - (N mod 97), N the first 13 characters read as a number after replacing ``2A`` by
  ``19`` and ``2B`` by ``18`` at the department position (characters 6-7, Corsica);
* format and key only: months and communes are not over-validated (real NIAs and INS have
  unusual ones);
* OIDs: NIR ``1.2.250.1.213.1.4.8``, NIA ``.9``, test NIR ``.10``, demo NIR ``.11``; the legacy
  INS-C ``1.2.250.1.213.1.4.2`` is refused;
* identity status: ``QUAL`` may be published; ``VALI`` only when a setting admits it (test
  platforms); ``PROV`` and ``RECUP`` never.

Every refusal is an :class:`InsError` whose ``rule`` names the rule that failed.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

OID_NIR = "1.2.250.1.213.1.4.8"
OID_NIA = "1.2.250.1.213.1.4.9"
OID_NIR_TEST = "1.2.250.1.213.1.4.10"
OID_NIR_DEMO = "1.2.250.1.213.1.4.11"
OID_INS_C = "1.2.250.1.213.1.4.2"

INS_OIDS: dict[str, str] = {
    OID_NIR: "INS-NIR",
    OID_NIA: "INS-NIA",
    OID_NIR_TEST: "INS-NIR-TEST",
    OID_NIR_DEMO: "INS-NIR-DEMO",
}

#: The literal issuer the DRIM-M samples put in DICOM IssuerOfPatientID and HL7 PID-3.4.1.
INS_ISSUER_NAME = "ASIP-SANTE-INS-NIR"

_MATRICULE = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{8}$")


class InsError(ValueError):
    """An INS was refused; ``rule`` names the rule that failed."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule


class IdentityStatus(enum.Enum):
    """RNIV identity statuses (FR Core ``fr-core-cs-identity-status``)."""

    PROV = "PROV"
    RECUP = "RECUP"
    VALI = "VALI"
    QUAL = "QUAL"


def check_key(matricule: str) -> int:
    """The key (1-97) the first 13 characters of ``matricule`` call for."""
    body = matricule[:13].upper()
    if body[5:7] == "2A":
        body = body[:5] + "19" + body[7:]
    elif body[5:7] == "2B":
        body = body[:5] + "18" + body[7:]
    return 97 - (int(body) % 97)


def validate_matricule(matricule: str) -> str:
    """Return the normalised matricule (upper case) or raise :class:`InsError`."""
    if not isinstance(matricule, str):
        raise InsError("format", "the INS must be a string")
    value = matricule.strip().upper()
    if len(value) != 15:
        raise InsError("length", f"an INS has 15 characters, not {len(value)}")
    if not _MATRICULE.match(value):
        raise InsError(
            "format",
            "an INS is 13 digits (2A/2B allowed at positions 6-7 for Corsica) and a 2-digit key",
        )
    expected = check_key(value)
    if int(value[13:]) != expected:
        raise InsError("key", f"the key should be {expected:02d}, not {value[13:]}")
    return value


def validate_oid(oid: str) -> str:
    """Return the OID if it designates an INS register, or raise :class:`InsError`."""
    oid = (oid or "").strip()
    if oid == OID_INS_C:
        raise InsError("oid", "INS-C (1.2.250.1.213.1.4.2) is not an INS and must not be used")
    if oid not in INS_OIDS:
        raise InsError("oid", f"{oid or '(empty)'} is not an INS OID")
    return oid


@dataclass(frozen=True, slots=True)
class Ins:
    """A validated INS: matricule and the OID of its register."""

    matricule: str
    oid: str = OID_NIR

    def __post_init__(self) -> None:
        object.__setattr__(self, "matricule", validate_matricule(self.matricule))
        object.__setattr__(self, "oid", validate_oid(self.oid))

    @property
    def kind(self) -> str:
        return INS_OIDS[self.oid]

    @property
    def is_test(self) -> bool:
        return self.oid in (OID_NIR_TEST, OID_NIR_DEMO)

    def masked(self) -> str:
        """For logs: never the full identity (e.g. ``2790351215*****``)."""
        return self.matricule[:10] + "*****"


def check_publishable(status: IdentityStatus | str | None, admit_validated: bool = False) -> None:
    """Raise :class:`InsError` unless an identity with ``status`` may be published (R19)."""
    if status is None or status == "":
        raise InsError("status", "the identity status is unknown; only a qualified INS is published")
    try:
        st = status if isinstance(status, IdentityStatus) else IdentityStatus(str(status).upper())
    except ValueError:
        raise InsError("status", f"{status!r} is not an identity status") from None
    if st is IdentityStatus.QUAL:
        return
    if st is IdentityStatus.VALI and admit_validated:
        return
    raise InsError(
        "status",
        f"identity status {st.value} is not qualified (QUAL)"
        + ("" if admit_validated else "; VALI is admitted only on test platforms"),
    )
