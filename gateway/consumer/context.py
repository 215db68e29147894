"""The appel contextuel's parameters and the patient context they make (R13, R14, R19).

The clinician's software (LPS) posts, form-urlencoded, exactly these parameters (names are
case-sensitive; the ANS test server's list, SPEC 1.3 flow B step 1):

=============================  =========  ==================================================
parameter                      mandatory  value (checked here)
=============================  =========  ==================================================
``Patient.identifier.value``   yes        INS matricule: 15 characters, key checked (R19)
``Patient.identifier.system``  yes        an INS OID (NIR, NIA, test, demo), bare or
                                          ``urn:oid:``-prefixed; INS-C is refused
``Patient.name.family``        yes        birth name
``Patient.name.given``         yes        birth first names, space-separated, first first
``Patient.gender``             yes        FHIR ``male`` / ``female`` / ``other`` /
                                          ``unknown``, or the INS letters ``M`` / ``F`` /
                                          ``I``
``Patient.birthDate``          yes        FHIR date ``YYYY-MM-DD`` (or ``YYYY-MM``,
                                          ``YYYY`` when partly unknown), not in the future
``Address.district``           yes        birthplace, INSEE COG code (5 characters, ``2A`` /
                                          ``2B`` for Corsica, ``99xxx`` abroad)
``InformationEtConsentement``  yes        ``true`` or ``false`` (the patient was informed
                                          and consents to the consultation)
``PatientID``                  yes        the local IPP (at most 64 characters)
``PatientIDIssuer``            yes        its issuer: the whole PID-3.4 (``name&OID&ISO``)
``Situation``                  no         the activity (structure) to act for
=============================  =========  ==================================================

:func:`parse` returns a :class:`PatientContext` or the list of every :class:`Problem` (a
missing, unknown, repeated, empty or malformed parameter), each naming its parameter. No value
is echoed in a problem, only names and rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date

from gateway.identity.ins import INS_OIDS, InsError, validate_matricule, validate_oid

INS_VALUE = "Patient.identifier.value"
INS_SYSTEM = "Patient.identifier.system"
FAMILY = "Patient.name.family"
GIVEN = "Patient.name.given"
GENDER = "Patient.gender"
BIRTH_DATE = "Patient.birthDate"
BIRTHPLACE = "Address.district"
CONSENT = "InformationEtConsentement"
PATIENT_ID = "PatientID"
PATIENT_ID_ISSUER = "PatientIDIssuer"
SITUATION = "Situation"

MANDATORY: tuple[str, ...] = (INS_VALUE, INS_SYSTEM, FAMILY, GIVEN, GENDER, BIRTH_DATE,
                              BIRTHPLACE, CONSENT, PATIENT_ID, PATIENT_ID_ISSUER)
OPTIONAL: tuple[str, ...] = (SITUATION,)
PARAMETERS: tuple[str, ...] = MANDATORY + OPTIONAL

#: FHIR administrative-gender codes, and the INS letters mapped to them.
GENDERS = {"male": "male", "female": "female", "other": "other", "unknown": "unknown",
           "M": "male", "F": "female", "I": "other"}
GENDER_LABELS = {"male": "Masculin", "female": "Féminin", "other": "Indéterminé",
                 "unknown": "Inconnu"}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = re.compile(r"^[^\W\d_]", re.UNICODE)  # starts with a letter
_NAME_CHARS = re.compile(r"^(?:[^\W\d_]|[ '’-])+$", re.UNICODE)  # letters, space, ' ’ -
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_COG = re.compile(r"^(?:\d{2}|2[AB])\d{3}$")
_OID = re.compile(r"^[0-2](?:\.(?:0|[1-9]\d*))+$")
MAX_NAME = 100
MAX_NAME_NAMES = 200


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one parameter was refused: ``kind`` is missing, unknown, repeated, empty or
    malformed; ``rule`` says which rule (no value is repeated)."""

    parameter: str
    kind: str
    rule: str = ""

    def __str__(self) -> str:
        return f"{self.parameter}: {self.kind}" + (f" ({self.rule})" if self.rule else "")


@dataclass(frozen=True, slots=True)
class PatientContext:
    """The patient an appel contextuel names: the strict INS traits (R14) and the local IPP."""

    ins: str
    ins_oid: str
    birth_name: str
    birth_given_names: str
    gender: str
    birth_date: str
    birthplace: str
    consent: bool
    patient_id: str
    patient_id_issuer: str
    situation: str = ""

    @property
    def first_given_name(self) -> str:
        """The first birth first name (RNIV: the first of the space-separated list)."""
        return self.birth_given_names.split(" ")[0]

    @property
    def ins_kind(self) -> str:
        return INS_OIDS.get(self.ins_oid, "")

    @property
    def gender_label(self) -> str:
        return GENDER_LABELS.get(self.gender, self.gender)

    @property
    def birth_date_label(self) -> str:
        """``JJ/MM/AAAA`` (``MM/AAAA``, ``AAAA`` for a partly unknown date)."""
        return "/".join(reversed(self.birth_date.split("-")))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PatientContext:
        return cls(**json.loads(text))


class ContextRefused(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


def _text(value: str, limit: int) -> str | None:
    """A rule broken by a free-text value, or None."""
    if len(value) > limit:
        return f"at most {limit} characters"
    if _CONTROL.search(value):
        return "control characters are not allowed"
    if value != value.strip():
        return "leading or trailing spaces"
    return None


def _check_name(value: str, limit: int) -> str | None:
    rule = _text(value, limit)
    if rule:
        return rule
    if "  " in value:
        return "names are separated by one space"
    if not _NAME_CHARS.match(value):
        return "letters, spaces, hyphens and apostrophes only"
    if not all(_NAME.match(part) for part in value.split(" ")):
        return "each name starts with a letter"
    return None


def _check_date(value: str, today: date) -> str | None:
    m = _DATE.match(value)
    if not m:
        return "a FHIR date YYYY-MM-DD (YYYY-MM or YYYY when partly unknown)"
    year, month, day = int(m[1]), int(m[2] or 1), int(m[3] or 1)
    try:
        when = date(year, month, day)
    except ValueError:
        return "not a calendar date"
    if when > today or year < 1850:
        return "not a plausible birth date (in the future or before 1850)"
    return None


def _check_issuer(value: str) -> str | None:
    rule = _text(value, 255)
    if rule:
        return rule
    parts = value.split("&")
    if len(parts) > 3:
        return "PID-3.4 has at most three components (name&OID&ISO)"
    if len(parts) == 3 and parts[2] == "ISO" and not _OID.match(parts[1]):
        return "the universal id of an ISO issuer is an OID"
    return None


def parse(pairs: Iterable[tuple[str, str]], today: date | None = None) -> PatientContext:
    """The patient context of an appel contextuel's ``(name, value)`` pairs, as received
    (duplicates and empty values kept). Raise :class:`ContextRefused` listing every problem."""
    today = today or date.today()
    problems: list[Problem] = []
    values: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name not in PARAMETERS:
            shown = name if len(name) <= 64 and not _CONTROL.search(name) else name[:64].encode(
                "unicode_escape").decode("ascii")
            problems.append(Problem(shown, "unknown", "not a parameter of the appel contextuel "
                                    "(names are case-sensitive)"))
            continue
        if name in seen:
            if not any(p.parameter == name and p.kind == "repeated" for p in problems):
                problems.append(Problem(name, "repeated", "give each parameter once"))
            continue
        seen.add(name)
        values[name] = value
    for name in MANDATORY:
        if name not in seen:
            problems.append(Problem(name, "missing"))
        elif values[name] == "":
            problems.append(Problem(name, "empty"))
    if values.get(SITUATION) == "":
        values.pop(SITUATION)  # an empty optional parameter is as good as absent

    def malformed(name: str, rule: str | None) -> None:
        if rule:
            problems.append(Problem(name, "malformed", rule))

    ins = values.get(INS_VALUE) or ""
    if ins:
        try:
            ins = validate_matricule(ins)
            if ins != values[INS_VALUE]:
                raise InsError("format", "upper case, no spaces")
        except InsError as exc:
            malformed(INS_VALUE, str(exc))
    oid = values.get(INS_SYSTEM) or ""
    if oid:
        bare = oid.removeprefix("urn:oid:")
        try:
            oid = validate_oid(bare)
            if bare != values[INS_SYSTEM].removeprefix("urn:oid:"):
                raise InsError("oid", "no spaces")
        except InsError as exc:
            malformed(INS_SYSTEM, str(exc))
    if values.get(FAMILY):
        malformed(FAMILY, _check_name(values[FAMILY], MAX_NAME))
    if values.get(GIVEN):
        malformed(GIVEN, _check_name(values[GIVEN], MAX_NAME_NAMES))
    gender = values.get(GENDER) or ""
    if gender and gender not in GENDERS:
        malformed(GENDER, "male, female, other or unknown (FHIR), or M, F, I (INS)")
    if values.get(BIRTH_DATE):
        malformed(BIRTH_DATE, _check_date(values[BIRTH_DATE], today))
    if values.get(BIRTHPLACE) and not _COG.match(values[BIRTHPLACE]):
        malformed(BIRTHPLACE, "an INSEE COG code: 5 characters, 2A/2B for Corsica")
    consent = values.get(CONSENT) or ""
    if consent and consent.lower() not in ("true", "false"):
        malformed(CONSENT, "true or false")
    if values.get(PATIENT_ID):
        rule = _text(values[PATIENT_ID], 64)
        if not rule and "\\" in values[PATIENT_ID]:
            rule = "no backslash (DICOM LO)"
        malformed(PATIENT_ID, rule)
    if values.get(PATIENT_ID_ISSUER):
        malformed(PATIENT_ID_ISSUER, _check_issuer(values[PATIENT_ID_ISSUER]))
    if values.get(SITUATION):
        malformed(SITUATION, _text(values[SITUATION], 128))
    if problems:
        raise ContextRefused(problems)
    return PatientContext(
        ins=ins, ins_oid=oid, birth_name=values[FAMILY], birth_given_names=values[GIVEN],
        gender=GENDERS[gender], birth_date=values[BIRTH_DATE], birthplace=values[BIRTHPLACE],
        consent=consent.lower() == "true", patient_id=values[PATIENT_ID],
        patient_id_issuer=values[PATIENT_ID_ISSUER], situation=values.get(SITUATION, ""),
    )
