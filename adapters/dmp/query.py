"""ITI-18 stored queries, ITI-43 retrieve, and the registry's answers (ITI TF-2a 3.18, 3.43).

Builders write the request bodies; parsers turn the answers into domain values
(:class:`gateway.manifest.xds_metadata.PublishedEntry`) or :class:`~adapters.dmp.errors.XdsError` lists.
Stored-query parameter values follow ITI TF-2a 3.18.4.1.2.3.5: strings in single quotes
(inner quotes doubled), multiple values as ``('a','b')``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from adapters.dmp import ns as N
from adapters.dmp.errors import XdsError
from adapters.dmp.ns import QUERY, RIM, RS, XDSB, q
from adapters.dmp.soap import element_bytes
from gateway.manifest.xds_metadata import Code, PublishedEntry

STATUS_NAMES = {N.STATUS_APPROVED: "Approved", N.STATUS_DEPRECATED: "Deprecated"}
STATUS_URNS = {v: k for k, v in STATUS_NAMES.items()}


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def quote_list(values: list[str] | tuple[str, ...]) -> str:
    return "(" + ",".join(quote(v) for v in values) + ")"


def adhoc_query(query_id: str, params: dict[str, str | list[str]],
                return_type: str = "LeafClass") -> etree._Element:
    """An AdhocQueryRequest; list values become one ``Value`` each (OR semantics)."""
    req = etree.Element(q(QUERY, "AdhocQueryRequest"), nsmap={"query": QUERY, "rim": RIM})
    etree.SubElement(req, q(QUERY, "ResponseOption"), returnComposedObjects="true",
                     returnType=return_type)
    aq = etree.SubElement(req, q(RIM, "AdhocQuery"), id=query_id)
    for name, value in params.items():
        s = etree.SubElement(aq, q(RIM, "Slot"), name=name)
        vl = etree.SubElement(s, q(RIM, "ValueList"))
        for v in value if isinstance(value, list) else [value]:
            etree.SubElement(vl, q(RIM, "Value")).text = v
    return req


def find_documents(patient_id: str, statuses: tuple[str, ...] = ("Approved",),
                   creation_from: str = "", creation_to: str = "",
                   service_start_from: str = "", service_stop_to: str = "",
                   event_codes: tuple[Code, ...] | tuple[tuple[Code, ...], ...] = (),
                   reference_ids: list[str] | None = None) -> etree._Element:
    """FindDocuments by patientId (INS^NH) with status / date / eventCode filters; with
    ``reference_ids``, FindDocumentsByReferenceId with the same filters. ``event_codes`` is
    either codes (one OR group) or groups of codes (each group ORed, the groups ANDed, ITI TF-2a
    3.18.4.1.2.3.5: one Slot per group)."""
    params: dict[str, str | list[str]] = {
        "$XDSDocumentEntryPatientId": quote(patient_id),
        "$XDSDocumentEntryStatus": quote_list([STATUS_URNS[s] for s in statuses]),
    }
    if reference_ids is not None:
        params["$XDSDocumentEntryReferenceIdList"] = quote_list(reference_ids)
    for name, value in (("$XDSDocumentEntryCreationTimeFrom", creation_from),
                        ("$XDSDocumentEntryCreationTimeTo", creation_to),
                        ("$XDSDocumentEntryServiceStartTimeFrom", service_start_from),
                        ("$XDSDocumentEntryServiceStopTimeTo", service_stop_to)):
        if value:
            params[name] = value
    groups = [g for g in ((event_codes,) if event_codes and isinstance(event_codes[0], Code)
                          else event_codes) if g]
    req = adhoc_query(N.SQ_FIND_BY_REFERENCE_ID if reference_ids is not None
                      else N.SQ_FIND_DOCUMENTS, params)
    aq = req.find(q(RIM, "AdhocQuery"))
    for group in groups:
        s = etree.SubElement(aq, q(RIM, "Slot"), name="$XDSDocumentEntryEventCodeList")
        etree.SubElement(etree.SubElement(s, q(RIM, "ValueList")), q(RIM, "Value")).text = \
            quote_list([f"{c.code}^^{c.scheme}" for c in group])
    return req


def find_documents_by_reference_id(patient_id: str, reference_ids: list[str],
                                   statuses: tuple[str, ...] = ("Approved",)) -> etree._Element:
    """FindDocumentsByReferenceId: ``reference_ids`` are CXi values (e.g. the accession)."""
    return adhoc_query(N.SQ_FIND_BY_REFERENCE_ID, {
        "$XDSDocumentEntryPatientId": quote(patient_id),
        "$XDSDocumentEntryReferenceIdList": quote_list(reference_ids),
        "$XDSDocumentEntryStatus": quote_list([STATUS_URNS[s] for s in statuses]),
    })


def get_documents(entry_uuids: list[str] = (), unique_ids: list[str] = ()) -> etree._Element:
    if bool(entry_uuids) == bool(unique_ids):
        raise ValueError("GetDocuments takes entryUUIDs or uniqueIds, not both")
    if entry_uuids:
        return adhoc_query(N.SQ_GET_DOCUMENTS,
                           {"$XDSDocumentEntryEntryUUID": quote_list(list(entry_uuids))})
    return adhoc_query(N.SQ_GET_DOCUMENTS,
                       {"$XDSDocumentEntryUniqueId": quote_list(list(unique_ids))})


def retrieve_request(repository_unique_id: str, document_unique_id: str) -> etree._Element:
    req = etree.Element(q(XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": XDSB})
    dr = etree.SubElement(req, q(XDSB, "DocumentRequest"))
    etree.SubElement(dr, q(XDSB, "RepositoryUniqueId")).text = repository_unique_id
    etree.SubElement(dr, q(XDSB, "DocumentUniqueId")).text = document_unique_id
    return req


# ------------------------------------------------------------------------------------ parsing

def registry_errors(resp: etree._Element) -> list[XdsError]:
    """The RegistryErrors of a RegistryResponse / AdhocQueryResponse / RetrieveDocumentSetResponse."""
    return [
        XdsError(e.get("errorCode", ""), e.get("codeContext", ""), e.get("location", ""),
                 e.get("severity", N.SEVERITY_ERROR))
        for e in resp.iter(q(RS, "RegistryError"))
    ]


def response_status(resp: etree._Element) -> str:
    if resp.tag == q(XDSB, "RetrieveDocumentSetResponse"):
        rr = resp.find(q(RS, "RegistryResponse"))
        return rr.get("status", "") if rr is not None else ""
    return resp.get("status", "")


def _slot_values(el: etree._Element, name: str) -> list[str]:
    s = el.find(f"{q(RIM, 'Slot')}[@name='{name}']")
    if s is None:
        return []
    return [(v.text or "") for v in s.iter(q(RIM, "Value"))]


def _code(c: etree._Element) -> Code:
    scheme = _slot_values(c, "codingScheme")
    name = c.find(f"{q(RIM, 'Name')}/{q(RIM, 'LocalizedString')}")
    return Code(c.get("nodeRepresentation", ""), scheme[0] if scheme else "",
                name.get("value", "") if name is not None else "")


def parse_extrinsic(eo: etree._Element) -> PublishedEntry:
    classes: dict[str, list[Code]] = {}
    for c in eo.findall(q(RIM, "Classification")):
        classes.setdefault(c.get("classificationScheme", ""), []).append(_code(c))
    ext = {e.get("identificationScheme"): e.get("value", "")
           for e in eo.findall(q(RIM, "ExternalIdentifier"))}
    name = eo.find(f"{q(RIM, 'Name')}/{q(RIM, 'LocalizedString')}")
    desc = eo.find(f"{q(RIM, 'Description')}/{q(RIM, 'LocalizedString')}")
    size = _slot_values(eo, "size")

    def one(scheme: str) -> Code | None:
        return classes.get(scheme, [None])[0]

    return PublishedEntry(
        entry_uuid=eo.get("id", ""),
        unique_id=ext.get(N.DE_UNIQUE_ID, ""),
        patient_id=ext.get(N.DE_PATIENT_ID, ""),
        status=STATUS_NAMES.get(eo.get("status", ""), eo.get("status", "")),
        mime_type=eo.get("mimeType", ""),
        repository_unique_id=next(iter(_slot_values(eo, "repositoryUniqueId")), ""),
        hash_sha1=next(iter(_slot_values(eo, "hash")), ""),
        size=int(size[0]) if size and size[0].isdigit() else None,
        creation_time=next(iter(_slot_values(eo, "creationTime")), ""),
        title=name.get("value", "") if name is not None else "",
        class_code=one(N.DE_CLASS), type_code=one(N.DE_TYPE), format_code=one(N.DE_FORMAT),
        event_codes=tuple(classes.get(N.DE_EVENT, [])),
        reference_ids=tuple(_slot_values(eo, "urn:ihe:iti:xds:2013:referenceIdList")),
        confidentiality_codes=tuple(classes.get(N.DE_CONFIDENTIALITY, [])),
        author_persons=tuple(
            v for c in eo.findall(f"{q(RIM, 'Classification')}[@classificationScheme="
                                  f"'{N.DE_AUTHOR}']")
            for v in _slot_values(c, "authorPerson")),
        legal_authenticator=next(iter(_slot_values(eo, "legalAuthenticator")), ""),
        author_institutions=tuple(
            v for c in eo.findall(f"{q(RIM, 'Classification')}[@classificationScheme="
                                  f"'{N.DE_AUTHOR}']")
            for v in _slot_values(c, "authorInstitution")),
        service_start=next(iter(_slot_values(eo, "serviceStartTime")), ""),
        comments=desc.get("value", "") if desc is not None else "",
    )


def parse_query_response(resp: etree._Element) -> list[PublishedEntry]:
    rol = resp.find(q(RIM, "RegistryObjectList"))
    if rol is None:
        return []
    return [parse_extrinsic(eo) for eo in rol.findall(q(RIM, "ExtrinsicObject"))]


@dataclass(frozen=True, slots=True)
class RetrievedDocument:
    repository_unique_id: str
    unique_id: str
    mime_type: str
    data: bytes


def parse_retrieve_response(resp: etree._Element,
                            attachments: dict[str, bytes]) -> list[RetrievedDocument]:
    out = []
    for dr in resp.findall(q(XDSB, "DocumentResponse")):
        doc = dr.find(q(XDSB, "Document"))
        out.append(RetrievedDocument(
            dr.findtext(q(XDSB, "RepositoryUniqueId"), ""), dr.findtext(q(XDSB, "DocumentUniqueId"), ""),
            dr.findtext(q(XDSB, "mimeType"), ""),
            element_bytes(doc, attachments) if doc is not None else b""))
    return out
