"""TD0.2, the DMP's "does this patient have a DMP, may I open it" check (R16; SPEC 1.3 step 4).

SPEC names the transaction (HL7v3 ``PRPA_IN201307UV02``, Patient Registry Query by Id, posted
to the DMP's ``/patients`` service with a VIHF) but not the DMP's answer. This module models it
on the HL7v3 query/response pair and **this model is ours, not the DMP guide's**:

* request ``PRPA_IN201307UV02``: ``queryByParameter/parameterList/patientIdentifier/value``
  with ``root`` = the INS OID and ``extension`` = the matricule (the VIHF ``resource-id`` must
  name the same patient);
* answer ``PRPA_IN201308UV02``: ``acknowledgement/@typeCode`` ``AA`` (query read) or ``AE``
  (refused, ``acknowledgementDetail/code/@code`` and ``text`` say why);
  ``controlActProcess/queryAck/queryResponseCode/@code`` ``OK`` (the patient has a DMP) or
  ``NF`` (no DMP); with ``OK``, ``subject/registrationEvent/subject1/patient/statusCode/@code``
  is ``active`` or ``terminated`` (the DMP is closed) and
  ``.../patient/confidentialityCode/@code`` tells the professional's access: ``N`` (allowed)
  or ``R`` (the patient refused this professional, *opposition*).

:func:`parse_response` turns the answer into a :class:`DmpAccess`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from lxml import etree

from adapters.dmp.ns import HL7, q

INTERACTION_ROOT = "2.16.840.1.113883.1.6"
DMP_DEVICE = "1.2.250.1.213.4.1.4.2"
"""The receiving application's device id (the DMP), as the PoC's TD0.2 request names it."""

#: DmpAccess.status values.
OPEN, NO_DMP, CLOSED, REFUSED = "open", "no_dmp", "closed", "refused"


@dataclass(frozen=True, slots=True)
class DmpAccess:
    status: str
    """``open`` (search allowed), ``no_dmp``, ``closed`` or ``refused`` (opposition)."""
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == OPEN


def _el(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, q(HL7, tag), **attrs)


def _header(root: etree._Element, interaction: str, sender: str, receiver: str) -> None:
    _el(root, "id", root=str(uuid.uuid4()).upper())
    _el(root, "creationTime", value=dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"))
    _el(root, "interactionId", root=INTERACTION_ROOT, extension=interaction)
    _el(root, "processingCode", code="P")
    _el(root, "processingModeCode", code="T")
    _el(root, "acceptAckCode", code="AL" if interaction.endswith("307UV02") else "NE")
    for side, device in (("receiver", receiver), ("sender", sender)):
        d = _el(_el(root, side, typeCode="RCV" if side == "receiver" else "SND"), "device",
                classCode="DEV", determinerCode="INSTANCE")
        _el(d, "id", root=device)


def request(ins: str, ins_oid: str, lps_id: str) -> etree._Element:
    """The ``PRPA_IN201307UV02`` body for one patient (``ins`` = matricule)."""
    root = etree.Element(q(HL7, "PRPA_IN201307UV02"), nsmap={None: HL7}, ITSVersion="XML_1.0")
    _header(root, "PRPA_IN201307UV02", lps_id or "LPS", DMP_DEVICE)
    cap = _el(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _el(cap, "code", code="PRPA_TE201307UV02", codeSystem=INTERACTION_ROOT)
    qbp = _el(cap, "queryByParameter")
    _el(qbp, "queryId", root=str(uuid.uuid4()).upper())
    _el(qbp, "statusCode", code="new")
    _el(qbp, "responsePriorityCode", code="I")
    pid = _el(_el(qbp, "parameterList"), "patientIdentifier")
    _el(pid, "value", root=ins_oid, extension=ins)
    etree.SubElement(pid, q(HL7, "semanticsText")).text = "Patient.id"
    return root


def queried_patient(req: etree._Element) -> tuple[str, str] | None:
    """(OID, matricule) of a ``PRPA_IN201307UV02``; None when it names no patient."""
    v = req.find(f".//{q(HL7, 'parameterList')}/{q(HL7, 'patientIdentifier')}/{q(HL7, 'value')}")
    if v is None or not v.get("root") or not v.get("extension"):
        return None
    return v.get("root", ""), v.get("extension", "")


def response(ack: str, *, found: bool = False, status: str = "active",
             confidentiality: str = "N", ins: tuple[str, str] | None = None,
             error_code: str = "", error_text: str = "") -> etree._Element:
    """A ``PRPA_IN201308UV02`` (the simulator's answer)."""
    root = etree.Element(q(HL7, "PRPA_IN201308UV02"), nsmap={None: HL7}, ITSVersion="XML_1.0")
    _header(root, "PRPA_IN201308UV02", DMP_DEVICE, "LPS")
    a = _el(root, "acknowledgement")
    _el(a, "typeCode", code=ack)
    if error_code:
        d = _el(a, "acknowledgementDetail", typeCode="E")
        _el(d, "code", code=error_code)
        etree.SubElement(d, q(HL7, "text")).text = error_text
    cap = _el(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _el(cap, "code", code="PRPA_TE201308UV02", codeSystem=INTERACTION_ROOT)
    if ack == "AA" and found and ins is not None:
        ev = _el(_el(cap, "subject", typeCode="SUBJ"), "registrationEvent", classCode="REG",
                 moodCode="EVN")
        patient = _el(_el(ev, "subject1", typeCode="SBJ"), "patient", classCode="PAT")
        _el(patient, "id", root=ins[0], extension=ins[1])
        _el(patient, "statusCode", code=status)
        _el(patient, "confidentialityCode", code=confidentiality)
    qa = _el(cap, "queryAck")
    _el(qa, "queryResponseCode", code=("OK" if found else "NF") if ack == "AA" else "AE")
    return root


@dataclass(frozen=True, slots=True)
class AckError:
    code: str
    text: str


def parse_response(resp: etree._Element) -> DmpAccess | AckError:
    """The access a ``PRPA_IN201308UV02`` grants, or the :class:`AckError` of an ``AE``."""
    if resp.tag != q(HL7, "PRPA_IN201308UV02"):
        raise ValueError(f"{resp.tag} is not a PRPA_IN201308UV02")
    ack = resp.find(f"{q(HL7, 'acknowledgement')}/{q(HL7, 'typeCode')}")
    if ack is None or ack.get("code") != "AA":
        detail = resp.find(f"{q(HL7, 'acknowledgement')}/{q(HL7, 'acknowledgementDetail')}")
        code = detail.find(q(HL7, "code")) if detail is not None else None
        return AckError(code.get("code", "") if code is not None else "AE",
                        (detail.findtext(q(HL7, "text")) or "") if detail is not None else "")
    rc = resp.find(f".//{q(HL7, 'queryAck')}/{q(HL7, 'queryResponseCode')}")
    if rc is None or rc.get("code") not in ("OK", "NF"):
        raise ValueError("queryResponseCode is neither OK nor NF")
    if rc.get("code") == "NF":
        return DmpAccess(NO_DMP)
    patient = resp.find(f".//{q(HL7, 'subject1')}/{q(HL7, 'patient')}")
    if patient is None:
        raise ValueError("queryResponseCode OK without a patient")
    status = patient.find(q(HL7, "statusCode"))
    conf = patient.find(q(HL7, "confidentialityCode"))
    if status is not None and status.get("code") != "active":
        return DmpAccess(CLOSED, status.get("code", ""))
    if conf is not None and conf.get("code") not in ("N", None):
        return DmpAccess(REFUSED, conf.get("code", ""))
    return DmpAccess(OPEN)
