"""Professionals and structures of the Annuaire Santé, and what the gateway takes from them.

A CR names its author by national identifier (IdNat_PS: ``8`` + RPPS, or ``0`` + ADELI, under
the OID ``1.2.250.1.71.4.2.1``) and often little else. The publication needs more: the XDS
``authorPerson`` (name), ``authorSpecialty`` (profession and specialty), ``authorInstitution``
(structure) and the VIHF built from them (R4, R6). :func:`complete_author` fills what the report
lacks from the directory entry, and only that: what the report says is kept as it is. A
professional the directory does not know is *not* invented: the author keeps what the report
gave and the problem is returned for the study's history (``drimbox study show``).

The MSSanté delivery (:mod:`gateway.mssante`) takes recipients' MSSanté addresses from here when
the CR gives only an identifier.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

from gateway.manifest.xds_metadata import Author, Code

OID_IDNPS = "1.2.250.1.71.4.2.1"
"""IdNat_PS: national identifier of a professional (``8`` + RPPS, ``0`` + ADELI)."""
OID_IDNST = "1.2.250.1.71.4.2.2"
"""IdNat_Struct: national identifier of a structure (``1`` + FINESS, ``3`` + SIRET, ...)."""
SCHEME_AUTHOR_SPECIALTY = "1.2.250.1.213.1.1.4.5"
"""JDV_J01-XdsAuthorSpecialty-CISIS: ``G15_<profession>[/<specialty>]`` (the CDA's
``assignedAuthor/code`` and the XDS ``authorSpecialty``)."""


class DirectoryError(Exception):
    """The directory could not answer."""


class DirectoryUnavailable(DirectoryError):
    """Unreachable, timed out, or a server error: try again later."""


class DirectoryAccessRefused(DirectoryError):
    """The directory refused our credentials (HTTP 401/403: the API key is missing or wrong).
    Not retried: an operator must fix the setting."""


@dataclass(frozen=True, slots=True)
class Structure:
    """A structure (``Organization``) of the directory."""

    name: str = ""
    idnst: str = ""
    """IdNat_Struct (``1`` + FINESS for an establishment)."""
    finess: str = ""
    mssante_addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Professional:
    """A professional of the directory, with the activity (``PractitionerRole``) that counts."""

    idnps: str
    """IdNat_PS: ``8`` + RPPS or ``0`` + ADELI."""
    family: str = ""
    given: str = ""
    profession: Code | None = None
    """TRE_G15 profession (``10`` médecin...)."""
    specialty: Code | None = None
    """TRE_R38 specialty (``SM44`` radio-diagnostic...)."""
    structure: Structure | None = None
    mssante_addresses: tuple[str, ...] = ()
    """MSSanté mailboxes (personal first), from the activity and the practitioner."""

    @property
    def rpps(self) -> str:
        return self.idnps[1:] if self.idnps.startswith("8") else ""

    @property
    def author_specialty(self) -> Code | None:
        """The XDS ``authorSpecialty`` / CDA ``assignedAuthor/code`` (JDV_J01)."""
        if self.profession is None:
            return None
        code = f"G15_{self.profession.code}"
        display = self.profession.display
        if self.specialty is not None:
            code += f"/{self.specialty.code}"
            display = " - ".join(x for x in (display, self.specialty.display) if x)
        return Code(code, SCHEME_AUTHOR_SPECIALTY, display)


class ProfessionalDirectory(Protocol):
    """The Annuaire Santé (``adapters.annuaire``)."""

    def professional(self, national_id: str) -> Professional | None:
        """The professional with this IdNat_PS (or bare RPPS / ADELI), None when unknown.
        Raises :class:`DirectoryUnavailable` or :class:`DirectoryAccessRefused`."""

    def structure(self, finess: str) -> Structure | None:
        """The structure with this FINESS (or IdNat_Struct), None when unknown."""


def idnps_of(identifier: str, root: str = "") -> str:
    """The IdNat_PS of an identifier as reports write it: an IdNat_PS (``8`` + RPPS, 12
    characters; ``0`` + ADELI, 10), or a bare RPPS (11 digits) that gets its ``8``, or a bare
    ADELI (9 characters) that gets its ``0``."""
    value = identifier.strip()
    if root in ("", OID_IDNPS) and value.isalnum():
        if len(value) == 11 and value.isdigit():
            return "8" + value
        if len(value) == 9:
            return "0" + value
    return value


# ------------------------------------------------------------------------- XDS values


def xcn(idnps: str, family: str, given: str) -> str:
    """XDS XCN of a professional: ``<IdNat_PS>^FAMILY^Given^^^^^^&<OID>&ISO^D^^^IDNPS``."""
    return f"{idnps}^{family}^{given}^^^^^^&{OID_IDNPS}&ISO^D^^^IDNPS"


def xon(structure: Structure) -> str:
    """XDS XON of a structure: ``<Name>^^^^^&<OID>&ISO^IDNST^^^<IdNat_Struct>``."""
    return f"{structure.name}^^^^^&{OID_IDNST}&ISO^IDNST^^^{structure.idnst}"


def ce(code: Code) -> str:
    """An XDS coded slot value: ``code^display^scheme``."""
    return f"{code.code}^{code.display}^{code.scheme}"


def _xcn_parts(value: str) -> list[str]:
    parts = value.split("^")
    return parts + [""] * (3 - len(parts))


@dataclass(frozen=True, slots=True)
class Completion:
    """An author completed from the directory, and what could not be done."""

    author: Author
    filled: tuple[str, ...] = ()
    """What came from the directory (``name``, ``specialty``, ``institution``)."""
    problems: tuple[str, ...] = ()


def complete_author(author: Author, national_id: str, found: Professional | None, *,
                    has_institution: bool = True) -> Completion:
    """``author`` (from the report) with what it lacks taken from ``found``, the directory's
    entry for ``national_id``; ``has_institution`` False: the report named no structure (the
    author's institution is the configuration's), the directory's replaces it. ``found``
    None: the professional is unknown, nothing is invented (a problem says so)."""
    if not national_id:
        return Completion(author, problems=("the report names no author identifier: nothing to "
                                            "look up in the Annuaire Santé",))
    if found is None:
        return Completion(author, problems=(
            f"author {national_id} is not in the Annuaire Santé: the author's name, profession "
            "and structure stay as the report gave them",))
    filled: list[str] = []
    idnps, family, given = _xcn_parts(author.person)[:3]
    person = author.person
    if not (idnps and family):
        person = xcn(idnps or found.idnps, family or found.family, given or found.given)
        filled.append("name")
    specialty = author.specialty
    if not specialty and found.author_specialty is not None:
        specialty = ce(found.author_specialty)
        filled.append("specialty")
    institution = author.institution
    if found.structure is not None and found.structure.idnst and not has_institution:
        institution = xon(found.structure)
        filled.append("institution")
    problems = []
    if not specialty:
        problems.append(f"author {national_id}: no profession in the Annuaire Santé")
    return Completion(dataclasses.replace(author, person=person, specialty=specialty,
                                          institution=institution),
                      tuple(filled), tuple(problems))
