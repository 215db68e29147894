"""The INS and the local IPP in each format the gateway meets (R3, R19; SPEC.md section 4).

Readers return a :class:`PatientIds`: the INS when one is present *and* valid, otherwise the
reason it is not usable (``ins_refusal``, naming the rule), plus the local IPP and its issuer.
Writers put a validated :class:`~gateway.identity.ins.Ins` (and optionally the IPP) in the form each
format expects:

* DICOM: ``PatientID`` = matricule, ``IssuerOfPatientID`` = ``ASIP-SANTE-INS-NIR``,
  ``IssuerOfPatientIDQualifiersSequence`` = {UniversalEntityID = OID, type ISO},
  ``OtherPatientIDsSequence`` repeating the INS (``TypeOfPatientID`` TEXT) - the DRIM-M KOS
  samples. The IPP, when given, is a second Other Patient IDs item.
* HL7 v2 PID-3: ``<INS>^^^ASIP-SANTE-INS-NIR&<OID>&ISO^INS~<IPP>^^^<AA>&<OID>&ISO^PI``.
* CDA: ``recordTarget/patientRole/id root=<OID> extension=<INS>``.
* FHIR (FR Core): ``identifier`` with ``system = urn:oid:<OID>``, ``type`` from
  ``fr-core-cs-v2-0203`` (INS-NIR, INS-NIA, INS-NIR-TEST, INS-NIR-DEMO), ``use`` official
  (``temp`` for an NIA).

These functions translate formats only; the rules live in :mod:`gateway.identity.ins`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree
from pydicom.dataset import Dataset

from gateway.identity.ins import (
    INS_ISSUER_NAME,
    INS_OIDS,
    OID_INS_C,
    OID_NIA,
    IdentityStatus,
    Ins,
    InsError,
)

FR_CORE_IDENTIFIER_TYPE = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
HL7_V2_IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
CDA_NS = "urn:hl7-org:v3"


@dataclass(frozen=True, slots=True)
class PatientIds:
    """What a message or object says about who the patient is."""

    ins: Ins | None = None
    ins_refusal: str | None = None
    """Why no usable INS was found (``rule: message``), when ``ins`` is None."""
    ipp: str | None = None
    ipp_issuer: str | None = None
    """The IPP's assigning authority (OID when known, else its name)."""
    status: IdentityStatus | None = None


def _try_ins(matricule: str, oid: str | None, where: str) -> tuple[Ins | None, str | None]:
    if not oid:
        return None, f"oid: {where} gives no OID for the INS"
    try:
        return Ins(matricule, oid), None
    except InsError as exc:
        return None, f"{exc} ({where})"


# -- DICOM ----------------------------------------------------------------------------------


def _qualifier_oid(item: Dataset) -> str | None:
    seq = item.get("IssuerOfPatientIDQualifiersSequence")
    if not seq:
        return None
    uid = str(seq[0].get("UniversalEntityID", "") or "").strip()
    return uid or None


def ins_from_dicom(ds: Dataset) -> PatientIds:
    """Read the INS from PatientID (+ issuer and qualifiers) or from OtherPatientIDsSequence.

    When the main PatientID is not the INS it is taken as the local IPP.
    """
    patient_id = str(ds.get("PatientID", "") or "").strip()
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    main_oid = _qualifier_oid(ds)
    ins: Ins | None = None
    refusal: str | None = None
    ipp = ipp_issuer = None
    if patient_id and (issuer == INS_ISSUER_NAME or main_oid in INS_OIDS or main_oid == OID_INS_C):
        ins, refusal = _try_ins(patient_id, main_oid, "PatientID")
    elif patient_id:
        ipp, ipp_issuer = patient_id, main_oid or issuer or None
    if ins is None:
        for item in ds.get("OtherPatientIDsSequence", []) or []:
            other_id = str(item.get("PatientID", "") or "").strip()
            other_issuer = str(item.get("IssuerOfPatientID", "") or "").strip()
            oid = _qualifier_oid(item)
            if other_id and (other_issuer == INS_ISSUER_NAME or oid in INS_OIDS or oid == OID_INS_C):
                found, why = _try_ins(other_id, oid, "OtherPatientIDsSequence")
                if found is not None:
                    ins, refusal = found, None
                    break
                refusal = refusal or why
    if ins is None and refusal is None:
        refusal = "absent: no INS in PatientID or OtherPatientIDsSequence"
    return PatientIds(ins=ins, ins_refusal=refusal, ipp=ipp, ipp_issuer=ipp_issuer)


def _qualifiers(oid: str) -> list[Dataset]:
    q = Dataset()
    q.UniversalEntityID = oid
    q.UniversalEntityIDType = "ISO"
    return [q]


def ins_to_dicom(ds: Dataset, ins: Ins, ipp: str | None = None, ipp_issuer: str | None = None) -> None:
    """Write the INS into ``ds`` as the DRIM-M KOS samples do (in place)."""
    ds.PatientID = ins.matricule
    ds.IssuerOfPatientID = INS_ISSUER_NAME
    ds.IssuerOfPatientIDQualifiersSequence = _qualifiers(ins.oid)
    item = Dataset()
    item.PatientID = ins.matricule
    item.IssuerOfPatientID = INS_ISSUER_NAME
    item.TypeOfPatientID = "TEXT"
    item.IssuerOfPatientIDQualifiersSequence = _qualifiers(ins.oid)
    others = [item]
    if ipp:
        local = Dataset()
        local.PatientID = ipp
        local.TypeOfPatientID = "TEXT"
        if ipp_issuer:
            if all(part.isdigit() for part in ipp_issuer.split(".")):
                local.IssuerOfPatientIDQualifiersSequence = _qualifiers(ipp_issuer)
            else:
                local.IssuerOfPatientID = ipp_issuer[:64]
        others.append(local)
    ds.OtherPatientIDsSequence = others


# -- HL7 v2 ---------------------------------------------------------------------------------


def ins_from_pid3(
    pid3: str,
    status: str | None = None,
    component: str = "^",
    repetition: str = "~",
    subcomponent: str = "&",
) -> PatientIds:
    """Read PID-3 (list of CX). ``status`` is PID-32 (identity reliability, e.g. VALI)."""
    ins: Ins | None = None
    refusal: str | None = None
    ipp = ipp_issuer = None
    for rep in pid3.split(repetition):
        parts = rep.split(component)
        value = parts[0].strip() if parts else ""
        authority = parts[3].split(subcomponent) if len(parts) > 3 else []
        namespace = authority[0] if authority else ""
        oid = authority[1] if len(authority) > 1 else ""
        id_type = parts[4].strip() if len(parts) > 4 else ""
        if not value:
            continue
        if id_type in ("INS", "INS-NIR", "INS-NIA") or oid in INS_OIDS or oid == OID_INS_C:
            found, why = _try_ins(value, oid or None, "PID-3")
            if found is not None and ins is None:
                ins, refusal = found, None
            elif found is None and ins is None:
                refusal = refusal or why
        elif id_type == "PI" and ipp is None:
            ipp, ipp_issuer = value, oid or namespace or None
    if ins is None and refusal is None:
        refusal = "absent: no INS in PID-3"
    st: IdentityStatus | None = None
    if status:
        try:
            st = IdentityStatus(status.strip().upper())
        except ValueError:
            st = None
    return PatientIds(ins=ins, ins_refusal=refusal, ipp=ipp, ipp_issuer=ipp_issuer, status=st)


def ins_to_pid3(
    ins: Ins, ipp: str | None = None, ipp_namespace: str = "", ipp_oid: str = ""
) -> str:
    """Build PID-3 with the INS first, then the IPP (standard encoding characters)."""
    field = f"{ins.matricule}^^^{INS_ISSUER_NAME}&{ins.oid}&ISO^INS"
    if ipp:
        field += f"~{ipp}^^^{ipp_namespace}&{ipp_oid}&ISO^PI"
    return field


# -- CDA ------------------------------------------------------------------------------------


def ins_from_cda(document: bytes | etree._Element) -> PatientIds:
    """Read ``recordTarget/patientRole/id``: an INS OID root is the INS, another root the IPP."""
    root = etree.fromstring(document) if isinstance(document, bytes) else document
    ids = root.findall(f"{{{CDA_NS}}}recordTarget/{{{CDA_NS}}}patientRole/{{{CDA_NS}}}id")
    ins: Ins | None = None
    refusal: str | None = None
    ipp = ipp_issuer = None
    for el in ids:
        oid = (el.get("root") or "").strip()
        ext = (el.get("extension") or "").strip()
        if oid in INS_OIDS or oid == OID_INS_C:
            found, why = _try_ins(ext, oid, "recordTarget/patientRole/id")
            if found is not None and ins is None:
                ins, refusal = found, None
            elif found is None and ins is None:
                refusal = refusal or why
        elif ext and ipp is None:
            ipp, ipp_issuer = ext, oid or None
    if ins is None and refusal is None:
        refusal = "absent: no INS in recordTarget/patientRole/id"
    return PatientIds(ins=ins, ins_refusal=refusal, ipp=ipp, ipp_issuer=ipp_issuer)


def ins_to_cda_id(ins: Ins) -> etree._Element:
    """``<id root="<OID>" extension="<INS>"/>`` in the CDA namespace."""
    el = etree.Element(f"{{{CDA_NS}}}id", nsmap={None: CDA_NS})
    el.set("root", ins.oid)
    el.set("extension", ins.matricule)
    return el


# -- FHIR -----------------------------------------------------------------------------------


def ins_to_fhir_identifier(ins: Ins) -> dict[str, Any]:
    """A FR Core ``Patient.identifier`` (as a dict for fhir.resources) for the INS."""
    return {
        "use": "temp" if ins.oid == OID_NIA else "official",
        "type": {"coding": [{"system": FR_CORE_IDENTIFIER_TYPE, "code": ins.kind}]},
        "system": f"urn:oid:{ins.oid}",
        "value": ins.matricule,
    }


def ins_from_fhir_identifiers(identifiers: list[dict[str, Any]]) -> PatientIds:
    """Read a list of ``Patient.identifier`` (dicts): the INS by its ``urn:oid:`` system;
    an identifier typed PI is the IPP."""
    ins: Ins | None = None
    refusal: str | None = None
    ipp = ipp_issuer = None
    for ident in identifiers:
        system = str(ident.get("system") or "")
        value = str(ident.get("value") or "").strip()
        oid = system[len("urn:oid:") :] if system.startswith("urn:oid:") else ""
        codes = [c.get("code") for c in (ident.get("type") or {}).get("coding", [])]
        if oid in INS_OIDS or oid == OID_INS_C:
            found, why = _try_ins(value, oid, "Patient.identifier")
            if found is not None and ins is None:
                ins, refusal = found, None
            elif found is None and ins is None:
                refusal = refusal or why
        elif "PI" in codes and value and ipp is None:
            ipp, ipp_issuer = value, oid or system or None
    if ins is None and refusal is None:
        refusal = "absent: no INS in Patient.identifier"
    return PatientIds(ins=ins, ins_refusal=refusal, ipp=ipp, ipp_issuer=ipp_issuer)
