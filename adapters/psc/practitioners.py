"""Fictitious practitioners the PSC simulator can log in, shaped like PSC userinfo (SPEC 3.3).

All identifiers are invented for tests (IdNat_PS "8" + an RPPS-like number that is not
attributed); structures carry fictitious FINESS numbers.
"""

from __future__ import annotations

from typing import Any


def _activity(structure_id: str, name: str, sector: str, finess: str) -> dict[str, Any]:
    return {
        "codeModeExercice": "S",
        "codeSecteurDactivite": sector,
        "codeSectionPharmacien": None,
        "codeRole": "FON-05",
        "codeGenreActivite": "GENR01",
        "numeroSiretSite": None,
        "numeroSirenSite": None,
        "numeroFinessSite": finess,
        "numeroFinessetablissementJuridique": None,
        "identifiantTechniqueDeLaStructure": f"R{structure_id}",
        "raisonSocialeSite": name,
        "enseigneCommercialeSite": None,
        "ancienIdentifiantDeLaStructure": structure_id,
        "autoriteDenregistrement": "CNOM/CNOM/CNOM",
    }


PRACTITIONERS: dict[str, dict[str, Any]] = {
    "899999000001": {
        "given_name": "CLAIRE",
        "family_name": "MARTIN",
        "SubjectRole": ["10^1.2.250.1.213.1.1.5.5"],
        "Secteur_Activite": "SA07^1.2.250.1.71.4.2.4",
        "exercices": [
            {
                "codeProfession": "10",
                "codeCategorieProfessionnelle": "C",
                "codeCiviliteDexercice": "DR",
                "nomDexercice": "MARTIN",
                "prenomDexercice": "CLAIRE",
                "codeTypeSavoirFaire": "S",
                "codeSavoirFaire": "SM44",  # radiologie (fictitious use)
                "activities": [
                    _activity("499999000000101", "CABINET DE RADIOLOGIE TEST", "SA07", "999000101"),
                    _activity("499999000000202", "CENTRE HOSPITALIER TEST", "SA01", "999000202"),
                ],
            }
        ],
    },
    "899999000002": {
        "given_name": "PAUL",
        "family_name": "DURAND",
        "SubjectRole": ["10^1.2.250.1.213.1.1.5.5"],
        "Secteur_Activite": "SA01^1.2.250.1.71.4.2.4",
        "exercices": [
            {
                "codeProfession": "10",
                "codeCategorieProfessionnelle": "C",
                "codeCiviliteDexercice": "DR",
                "nomDexercice": "DURAND",
                "prenomDexercice": "PAUL",
                "codeTypeSavoirFaire": "S",
                "codeSavoirFaire": "SM26",
                "activities": [
                    _activity("499999000000202", "CENTRE HOSPITALIER TEST", "SA01", "999000202"),
                ],
            }
        ],
    },
}


def userinfo_claims(subject_name_id: str) -> dict[str, Any]:
    """The userinfo of a test practitioner, as PSC returns it."""
    p = PRACTITIONERS[subject_name_id]
    return {
        "sub": f"f:00000000-0000-0000-0000-{subject_name_id}",
        "SubjectNameID": subject_name_id,
        "SubjectRole": p["SubjectRole"],
        "Secteur_Activite": p["Secteur_Activite"],
        "SubjectOrganization": p["exercices"][0]["activities"][0]["raisonSocialeSite"],
        "SubjectOrganizationID": p["exercices"][0]["activities"][0]["ancienIdentifiantDeLaStructure"],
        "Palier_Authentification": "APPPRIP3^1.2.250.1.213.1.5.1.1.1",
        "PSI_Locale": "1.2.250.1.213.1.3.1.1",
        "UITVersion": "1.0",
        "authMode": "CARD",
        "otherIds": [{"identifiant": subject_name_id[1:], "origine": "RPPS", "qualite": 1}],
        "codeCivilite": "M",
        "given_name": p["given_name"],
        "family_name": p["family_name"],
        "preferred_username": subject_name_id,
        "SubjectRefPro": {"codeCivilite": "M", "exercices": p["exercices"]},
    }
