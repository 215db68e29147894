"""Exports of the audit trail (R15, R22): FHIR AuditEvent and the DRIM-M KPI
file. Both read ``audit_events`` (:mod:`gateway.access.audit`) from a given time on.

**FHIR** (:func:`fhir_audit_bundle`): an R4B ``Bundle`` of type ``collection``, one
``AuditEvent`` per decision, shaped after DICOM PS3.15 A.5 / IHE BALP:

* ``type`` (DICOM DCM codes, system ``http://dicom.nema.org/resources/ontology/DCM``):
  QIDO-RS ``110112`` Query; WADO-RS retrieve, metadata, rendered ``110106`` Export (data
  leave the Source); STOW-RS ``110107`` Import; the admin endpoints ``110101`` Audit Log Used.
  ``subtype`` names the IHE transaction (``urn:ihe:event-type-code``): RAD-129 QIDO-RS,
  RAD-107 WADO-RS, RAD-108 STOW-RS.
* ``action`` E (query), R (read), C (create); ``outcome`` 0 when allowed, 4 (minor failure)
  when denied, with the policy's reason code in ``outcomeDesc``.
* ``agent[0]``: the requestor: its SubjectNameID (identifier system
  ``urn:oid:1.2.250.1.71.4.2.1``, IdNat_PS) for a practitioner, else the local user or share
  id; ``type`` DCM 110152 Destination Role ID (110153 Source Role ID for a store); the client
  address in ``network`` (type 2, IP); how it was proven in ``altId``.
  ``agent[1]``: this DRIMbox (``requestor`` false, the opposite role, its AE title).
* ``source``: this DRIMbox, type 4 (application server).
* ``entity``: the patient (the INS matricule, its OID as ``urn:oid:`` system; type 1 person,
  role 1 patient), the study (DCM 110180 Study Instance UID; type 2 system object, role 3
  report) with the KOS UID and the instance UIDs as details.

**KPI** (:func:`kpi_csv`): the DRIM-M statistics file "ModelStat" (R22). The FAQ names the
columns ``Nombre_Appel`` (one per call received) and ``Statut_Appel`` (``succes`` /
``erreur``); the full model is not in the public corpus ([GAP] in SPEC), so the file is a
semicolon-separated CSV (French spreadsheet convention, UTF-8, header line) with one line per
day, call type and status::

    Date;Type_Appel;Nombre_Appel;Statut_Appel
    2026-11-23;wado;12;succes
    2026-11-23;wado;3;erreur

``Type_Appel`` is the audited action (``qido``, ``wado``, ``metadata``, ``rendered``,
``download``, ``stow``, ``admin``, and those other modules record, e.g. ``login``); ``Statut_Appel`` is
``succes`` for an allowed call and ``erreur`` for a denied one.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from gateway.access.audit import ALLOWED
from gateway.index.models import AuditEvent, Study
from gateway.index.store import InstanceIndex

if TYPE_CHECKING:
    from fhir.resources.R4B.bundle import Bundle

DCM = "http://dicom.nema.org/resources/ontology/DCM"
IHE_EVENT = "urn:ihe:event-type-code"
IDNAT_PS = "urn:oid:1.2.250.1.71.4.2.1"
ACTION_CODE = "http://terminology.hl7.org/CodeSystem/audit-event-action"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"

#: action -> (DCM event id, display, FHIR action, IHE transaction or None)
EVENT_TYPES: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {
    "qido": ("110112", "Query", "E", ("RAD-129", "QIDO-RS")),
    "wado": ("110106", "Export", "R", ("RAD-107", "WADO-RS Retrieve")),
    "metadata": ("110106", "Export", "R", ("RAD-107", "WADO-RS Retrieve")),
    "rendered": ("110106", "Export", "R", ("RAD-107", "WADO-RS Retrieve")),
    "download": ("110106", "Export", "R", None),  # the study as DICOM media (a zip)
    "stow": ("110107", "Import", "C", ("RAD-108", "Store Instances over the Web")),
    "admin": ("110101", "Audit Log Used", "R", None),
    "dicom_find": ("110112", "Query", "E", None),
    "dicom_move": ("110106", "Export", "R", None),
    "dicom_get": ("110106", "Export", "R", None),
}
_OTHER = ("110100", "Application Activity", "E", None)

KPI_COLUMNS = ("Date", "Type_Appel", "Nombre_Appel", "Statut_Appel")


def audit_rows(index: InstanceIndex, since: datetime | None = None) -> list[AuditEvent]:
    """The audit events recorded at or after ``since`` (all when None), oldest first."""
    q = select(AuditEvent).order_by(AuditEvent.recorded_at, AuditEvent.id)
    if since is not None:
        q = q.where(AuditEvent.recorded_at >= since)
    with index.read() as s:
        rows = list(s.scalars(q).all())
        s.expunge_all()
    return rows


def _ins_oids(index: InstanceIndex, rows: Sequence[AuditEvent]) -> dict[str, str]:
    studies = {r.study_instance_uid for r in rows if r.patient_ins and r.study_instance_uid}
    if not studies:
        return {}
    with index.read() as s:
        found = s.execute(select(Study.study_instance_uid, Study.ins_oid)
                          .where(Study.study_instance_uid.in_(sorted(studies)))).all()
    return {uid: oid for uid, oid in found if oid}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _event(row: AuditEvent, ae_title: str, ins_oid: str) -> dict:
    code, display, action, transaction = EVENT_TYPES.get(row.action, _OTHER)
    storing = row.action == "stow"
    requestor_role = ("110153", "Source Role ID") if storing else \
        ("110152", "Destination Role ID")
    our_role = ("110152", "Destination Role ID") if storing else ("110153", "Source Role ID")
    who: dict = {"display": row.principal_kind}
    if row.subject:
        who = {"identifier": {"value": row.subject}, "display": row.principal_kind}
        if row.principal_kind == "practitioner":
            who["identifier"]["system"] = IDNAT_PS
    requestor: dict = {
        "type": {"coding": [{"system": DCM, "code": requestor_role[0],
                             "display": requestor_role[1]}]},
        "who": who, "requestor": True,
    }
    if row.via:
        requestor["altId"] = row.via
    if row.client_address:
        requestor["network"] = {"address": row.client_address, "type": "2"}
    entities: list[dict] = []
    if row.patient_ins:
        identifier = {"value": row.patient_ins}
        if ins_oid:
            identifier["system"] = f"urn:oid:{ins_oid}"
        entities.append({
            "what": {"identifier": identifier},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        })
    if row.study_instance_uid:
        details = []
        if row.kos_uid:
            details.append({"type": "KOS-SOPInstanceUID", "valueString": row.kos_uid})
        if row.series_instance_uid:
            details.append({"type": "SeriesInstanceUID", "valueString": row.series_instance_uid})
        if row.sop_instance_uids:
            details.append({"type": "SOPInstanceUIDs", "valueString": row.sop_instance_uids})
        study: dict = {
            "what": {"identifier": {
                "type": {"coding": [{"system": DCM, "code": "110180",
                                     "display": "Study Instance UID"}]},
                "value": row.study_instance_uid}},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "3", "display": "Report"},
        }
        if details:
            study["detail"] = details
        entities.append(study)
    event: dict = {
        "resourceType": "AuditEvent",
        "id": f"drimbox-audit-{row.id}",
        "type": {"system": DCM, "code": code, "display": display},
        "action": action,
        "recorded": _utc(row.recorded_at).isoformat(),
        "outcome": "0" if row.outcome == ALLOWED else "4",
        "outcomeDesc": f"{row.outcome}: {row.reason}" if row.reason else row.outcome,
        "agent": [
            requestor,
            {"type": {"coding": [{"system": DCM, "code": our_role[0], "display": our_role[1]}]},
             "who": {"display": f"DRIMbox {ae_title}"}, "requestor": False},
        ],
        "source": {"observer": {"display": f"DRIMbox {ae_title}"},
                   "type": [{"system": SOURCE_TYPE, "code": "4",
                             "display": "Application Server"}]},
    }
    if transaction is not None:
        event["subtype"] = [{"system": IHE_EVENT, "code": transaction[0],
                             "display": transaction[1]}]
    if entities:
        event["entity"] = entities
    return event


def fhir_audit_bundle(index: InstanceIndex, ae_title: str, since: datetime | None = None
                      ) -> Bundle:
    """The audit trail as a FHIR R4B Bundle of AuditEvents (validated by fhir.resources)."""
    # fhir.resources only here: its models cost ~0.2 s to import at every start of the app.
    from fhir.resources.R4B.auditevent import AuditEvent as FhirAuditEvent
    from fhir.resources.R4B.bundle import Bundle

    rows = audit_rows(index, since)
    oids = _ins_oids(index, rows)
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'drimbox-audit-{r.id}')}",
                "resource": FhirAuditEvent.model_validate(
                    _event(r, ae_title, oids.get(r.study_instance_uid, "")))}
               for r in rows]
    return Bundle.model_validate({
        "resourceType": "Bundle", "type": "collection",
        "timestamp": datetime.now(UTC).isoformat(), "entry": entries,
    })


def kpi_csv(index: InstanceIndex, since: datetime | None = None) -> str:
    """The KPI file (R22): calls counted per day, type and status (see the module docstring)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for r in audit_rows(index, since):
        status = "succes" if r.outcome == ALLOWED else "erreur"
        counts[(_utc(r.recorded_at).date().isoformat(), r.action, status)] += 1
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(KPI_COLUMNS)
    for (day, action, status), n in sorted(counts.items()):
        writer.writerow((day, action, n, status))
    return out.getvalue()
