"""The header of a CDA R2 imaging report (CI-SIS IMG-CR-IMG; SPEC.md section 2.5, R1, R2, R18).

:func:`read_cda` reads what the gateway needs from the report the RIS sends (R1), as domain
values: who the patient is (INS and IPP, ``recordTarget/patientRole/id``), which exam it
reports (StudyInstanceUID = ``documentationOf/serviceEvent/id/@root``, one per service event),
the order (``inFulfillmentOf/order/id``, ``ps3-20:accessionNumber``), the act / modality /
region codes (``serviceEvent/code`` and its translations), the author, the legal
authenticator, the facility type (``componentOf/.../healthCareFacility/code``), the practice
setting (``.../representedOrganization/standardIndustryClassCode``), the confidentiality code,
the replaced document (``relatedDocument[@typeCode='RPLC']``) and the body kind (structured,
or level 1 with an embedded PDF).

Every problem is a :class:`CdaError` naming the XPath of what is missing or wrong; nothing is
swallowed. Optional header parts that are absent are ``None`` / empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from gateway.identity.codecs import PatientIds, ins_from_cda
from gateway.ingest.uids import is_safe_uid
from gateway.manifest.xds_metadata import Code

NS = {"cda": "urn:hl7-org:v3", "ps3-20": "urn:dicom-org:ps3-20"}

#: codeSystem of the DICOM modality translation (qualifier 121139) and of the LOINC /
#: SNOMED CT / CCAM codes of ``serviceEvent/code`` (SPEC.md section 2.5).
CS_DCM = "1.2.840.10008.2.16.4"
CS_LOINC = "2.16.840.1.113883.6.1"
CS_SNOMED = "2.16.840.1.113883.6.96"
CS_CCAM = "1.2.250.1.213.2.5"
LOINC_IMAGING_REPORT = "18748-4"

_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True, remove_comments=True
)


class CdaError(ValueError):
    """The CDA is not usable; ``xpath`` names the element or attribute at fault."""

    def __init__(self, xpath: str, message: str) -> None:
        super().__init__(f"{xpath}: {message}")
        self.xpath = xpath
        self.message = message


@dataclass(frozen=True, slots=True)
class InstanceIdentifier:
    """An HL7 v3 ``II``: ``root`` (OID) and optional ``extension``."""

    root: str
    extension: str = ""

    def __str__(self) -> str:
        return f"{self.root}^{self.extension}" if self.extension else self.root


@dataclass(frozen=True, slots=True)
class CdaPerson:
    """A health professional of the header (author, legal authenticator)."""

    id: str
    """RPPS / ADELI identifier (``assignedAuthor/id/@extension``)."""
    id_root: str
    family: str = ""
    given: str = ""
    organization_id: str = ""
    organization_name: str = ""
    time: str = ""
    code: Code | None = None
    """``assignedAuthor/code``: profession / specialty (JDV_J01, ``G15_10/SM44``)."""


@dataclass(frozen=True, slots=True)
class Recipient:
    """A recipient the CR names (``informationRecipient/intendedRecipient``): a professional by
    national identifier and/or an MSSanté address (``telecom`` ``mailto:``)."""

    id: str = ""
    id_root: str = ""
    family: str = ""
    given: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class CdaHeader:
    document_id: InstanceIdentifier
    """``ClinicalDocument/id``: the idCDA (R18)."""
    title: str
    effective_time: str
    document_code: Code
    confidentiality: Code
    patient: PatientIds
    study_instance_uids: tuple[str, ...]
    """One per ``documentationOf/serviceEvent``, in document order."""
    set_id: str = ""
    version_number: int | None = None
    placer_order: InstanceIdentifier | None = None
    accession_number: InstanceIdentifier | None = None
    act_codes: tuple[Code, ...] = ()
    """LOINC code(s) of the service events and CCAM translations."""
    modality_codes: tuple[Code, ...] = ()
    region_codes: tuple[Code, ...] = ()
    service_start: str = ""
    service_stop: str = ""
    author: CdaPerson | None = None
    legal_authenticator: CdaPerson | None = None
    healthcare_facility_type: Code | None = None
    practice_setting: Code | None = None
    replaces: str = ""
    """``relatedDocument[@typeCode='RPLC']/parentDocument/id`` of the replaced report."""
    body: str = ""
    """``structured`` (level 3), ``pdf`` (level 1, ``nonXMLBody`` PDF) or another media type."""
    recipients: tuple[Recipient, ...] = ()
    """``informationRecipient/intendedRecipient``, in document order."""
    patient_address: str = ""
    """The patient's MSSanté address (``recordTarget/patientRole/telecom`` ``mailto:`` on an
    MSSanté domain), '' when none."""


def _one(el: etree._Element, path: str, where: str) -> etree._Element:
    found = el.find(path, NS)
    if found is None:
        raise CdaError(where, "missing")
    return found


def _attr(el: etree._Element, name: str, where: str) -> str:
    value = (el.get(name) or "").strip()
    if not value:
        raise CdaError(f"{where}/@{name}", "missing or empty")
    return value


def _code(el: etree._Element | None) -> Code | None:
    if el is None or not el.get("code"):
        return None
    return Code(el.get("code", "").strip(), el.get("codeSystem", "").strip(),
                el.get("displayName", "").strip())


def _ii(el: etree._Element | None) -> InstanceIdentifier | None:
    if el is None or not el.get("root"):
        return None
    return InstanceIdentifier(el.get("root", "").strip(), (el.get("extension") or "").strip())


def _text(el: etree._Element | None, path: str) -> str:
    if el is None:
        return ""
    found = el.find(path, NS)
    return "".join(found.itertext()).strip() if found is not None else ""


def _person(el: etree._Element | None, entity: str, time_el: etree._Element | None) -> CdaPerson | None:
    if el is None:
        return None
    assigned = el.find(f"cda:{entity}", NS)
    if assigned is None:
        return None
    ident = assigned.find("cda:id", NS)
    person = assigned.find("cda:assignedPerson/cda:name", NS)
    org = assigned.find("cda:representedOrganization", NS)
    return CdaPerson(
        id=(ident.get("extension") or "").strip() if ident is not None else "",
        id_root=(ident.get("root") or "").strip() if ident is not None else "",
        family=_text(person, "cda:family"),
        given=_text(person, "cda:given"),
        organization_id=((org.find("cda:id", NS).get("extension") or "").strip()
                         if org is not None and org.find("cda:id", NS) is not None else ""),
        organization_name=_text(org, "cda:name"),
        time=(time_el.get("value") or "").strip() if time_el is not None else "",
        code=_code(assigned.find("cda:code", NS)),
    )


def _mailto(el: etree._Element | None) -> list[str]:
    """The ``mailto:`` addresses of ``el``'s ``telecom`` children."""
    if el is None:
        return []
    out = []
    for tel in el.findall("cda:telecom", NS):
        value = (tel.get("value") or "").strip()
        if value.lower().startswith("mailto:") and "@" in value:
            out.append(value[7:].strip())
    return out


def is_mssante_address(address: str) -> bool:
    """An address of the MSSanté space: its domain is ``mssante.fr`` or one of its
    sub-domains (operators' domains: ``<operator>.mssante.fr``, patients'
    ``patient.mssante.fr``)."""
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    return domain == "mssante.fr" or domain.endswith(".mssante.fr")


def _recipients(root: etree._Element) -> tuple[Recipient, ...]:
    out = []
    for rec in root.findall("cda:informationRecipient/cda:intendedRecipient", NS):
        ident = rec.find("cda:id", NS)
        person = rec.find("cda:informationRecipient/cda:name", NS)
        addresses = [a for a in _mailto(rec) if is_mssante_address(a)]
        found = Recipient(
            id=(ident.get("extension") or "").strip() if ident is not None else "",
            id_root=(ident.get("root") or "").strip() if ident is not None else "",
            family=_text(person, "cda:family"), given=_text(person, "cda:given"),
            address=addresses[0] if addresses else "")
        if found.id or found.address:
            out.append(found)
    return tuple(out)


def parse_xml(data: bytes) -> etree._Element:
    """Parse the document, refusing entities and network access."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise CdaError("/", f"not well-formed XML ({exc})") from None
    if root.tag != f"{{{NS['cda']}}}ClinicalDocument":
        raise CdaError("/cda:ClinicalDocument", f"the root element is {root.tag!r}")
    return root


def read_cda(data: bytes) -> CdaHeader:
    """Read the IMG-CR-IMG header of ``data`` (the CDA bytes) or raise :class:`CdaError`."""
    root = parse_xml(data)
    top = "/ClinicalDocument"
    doc_id = _ii(_one(root, "cda:id", f"{top}/id"))
    if doc_id is None:
        raise CdaError(f"{top}/id/@root", "missing or empty")

    patient = ins_from_cda(root)
    if patient.ins is None:
        raise CdaError(f"{top}/recordTarget/patientRole/id", f"no usable INS ({patient.ins_refusal})")

    events = root.findall("cda:documentationOf/cda:serviceEvent", NS)
    if not events:
        raise CdaError(f"{top}/documentationOf/serviceEvent", "missing")
    study_uids: list[str] = []
    acts: list[Code] = []
    modalities: list[Code] = []
    regions: list[Code] = []
    starts: list[str] = []
    stops: list[str] = []
    for n, event in enumerate(events, start=1):
        where = f"{top}/documentationOf[{n}]/serviceEvent/id"
        id_el = event.find("cda:id", NS)
        if id_el is None:
            continue  # a service event that is no imaging exam (e.g. the screening context)
        uid = _attr(id_el, "root", where)
        if not is_safe_uid(uid):
            raise CdaError(f"{where}/@root", f"{uid!r} is not a DICOM UID (StudyInstanceUID)")
        if uid not in study_uids:
            study_uids.append(uid)
        code_el = event.find("cda:code", NS)
        act = _code(code_el)
        if act is not None and act not in acts:
            acts.append(act)
        for tr in code_el.findall("cda:translation", NS) if code_el is not None else ():
            code = _code(tr)
            if code is None:
                continue
            qualifier = tr.find("cda:qualifier/cda:name", NS)
            q = qualifier.get("code") if qualifier is not None else ""
            bucket = (modalities if (q == "121139" or code.scheme == CS_DCM)
                      else regions if (q == "39111-0" or code.scheme == CS_SNOMED)
                      else acts)
            if code not in bucket:
                bucket.append(code)
        low = event.find("cda:effectiveTime/cda:low", NS)
        high = event.find("cda:effectiveTime/cda:high", NS)
        if low is not None and low.get("value"):
            starts.append(low.get("value"))
        if high is not None and high.get("value"):
            stops.append(high.get("value"))

    if not study_uids:
        raise CdaError(f"{top}/documentationOf/serviceEvent/id", "no service event names a study")
    order = root.find("cda:inFulfillmentOf/cda:order", NS)
    author_el = root.find("cda:author", NS)
    legal_el = root.find("cda:legalAuthenticator", NS)
    practice = _code(root.find(
        "cda:author/cda:assignedAuthor/cda:representedOrganization/cda:standardIndustryClassCode", NS
    )) or _code(root.find(
        "cda:documentationOf/cda:serviceEvent/cda:performer/cda:assignedEntity/"
        "cda:representedOrganization/cda:standardIndustryClassCode", NS
    ))
    version = root.find("cda:versionNumber", NS)
    try:
        version_number = int(version.get("value")) if version is not None and version.get("value") else None
    except ValueError:
        raise CdaError(f"{top}/versionNumber/@value", f"{version.get('value')!r} is not an integer") from None
    confidentiality = _code(root.find("cda:confidentialityCode", NS))
    if confidentiality is None:
        raise CdaError(f"{top}/confidentialityCode/@code", "missing")
    document_code = _code(root.find("cda:code", NS))
    if document_code is None:
        raise CdaError(f"{top}/code/@code", "missing")
    effective = root.find("cda:effectiveTime", NS)
    rplc = root.find("cda:relatedDocument[@typeCode='RPLC']/cda:parentDocument/cda:id", NS)
    return CdaHeader(
        document_id=doc_id,
        title=_text(root, "cda:title"),
        effective_time=(effective.get("value") or "") if effective is not None else "",
        document_code=document_code,
        confidentiality=confidentiality,
        patient=patient,
        study_instance_uids=tuple(study_uids),
        set_id=str(_ii(root.find("cda:setId", NS)) or ""),
        version_number=version_number,
        placer_order=_ii(order.find("cda:id", NS)) if order is not None else None,
        accession_number=(_ii(order.find("ps3-20:accessionNumber", NS))
                          if order is not None else None),
        act_codes=tuple(acts),
        modality_codes=tuple(modalities),
        region_codes=tuple(regions),
        service_start=min(starts) if starts else "",
        service_stop=max(stops) if stops else "",
        author=_person(author_el, "assignedAuthor",
                       author_el.find("cda:time", NS) if author_el is not None else None),
        legal_authenticator=_person(legal_el, "assignedEntity",
                                    legal_el.find("cda:time", NS) if legal_el is not None else None),
        healthcare_facility_type=_code(root.find(
            "cda:componentOf/cda:encompassingEncounter/cda:location/cda:healthCareFacility/cda:code", NS
        )),
        practice_setting=practice,
        replaces=str(_ii(rplc) or ""),
        body=_body_kind(root),
        recipients=_recipients(root),
        patient_address=next((a for a in _mailto(root.find("cda:recordTarget/cda:patientRole", NS))
                              if is_mssante_address(a)), ""),
    )


def _body_kind(root: etree._Element) -> str:
    if root.find("cda:component/cda:structuredBody", NS) is not None:
        return "structured"
    text = root.find("cda:component/cda:nonXMLBody/cda:text", NS)
    if text is not None:
        media = (text.get("mediaType") or "").strip()
        return "pdf" if media == "application/pdf" else media
    raise CdaError("/ClinicalDocument/component", "no structuredBody nor nonXMLBody")
