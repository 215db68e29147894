"""The ITI-65 Provide Document Bundle (IHE MHD 4.2, ANS PDSm "Ajout d'un lot de documents").

:func:`provide_bundle` builds the ``transaction`` Bundle of one KOS publication (R4) and
validates it with ``fhir.resources`` (R4B): in this order, as in the PDSm examples,

1. the SubmissionSet ``List`` (``POST List``);
2. for a replacement (R8) a FHIRPath Patch ``Parameters`` setting the replaced
   DocumentReference's ``status`` to ``superseded`` (``PATCH DocumentReference?identifier=
   urn:ietf:rfc:3986|urn:oid:<old uniqueId>``, MHD 4.2 ITI-65 §2:3.65.4.1.2.3, profile
   ``IHE.MHD.Patch.Parameters``); the conditional URL is PDSm's way to address a fiche by its
   business identifier;
3. the ``DocumentReference`` (``POST``), with ``relatesTo`` = ``replaces`` → the old one (the
   same conditional reference, plus its ``masterIdentifier`` in ``target.identifier``);
4. the KOS as a ``Binary`` (``POST``), which ``content.attachment.url`` points at by fullUrl.

Every fullUrl is a fresh ``urn:uuid``; the DocumentReference's and the List's entryUUID
identifiers are their fullUrls (the recipient keeps them, as an XDS registry keeps a
``urn:uuid`` id), so the entryUUID is known before the answer comes back.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from adapters.mhd.resources import (
    PROFILE_BUNDLE,
    RFC3986,
    document_reference,
    fhir_time,
    submission_set_list,
)
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import DocumentEntry, SubmissionSet

PATCH_PROFILE = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Patch.Parameters"


def identifier_query(unique_id: str) -> str:
    """``identifier=`` token of a document: its uniqueId (masterIdentifier), or its entryUUID
    when given as ``urn:uuid:...``."""
    value = unique_id if unique_id.startswith("urn:uuid:") else f"urn:oid:{unique_id}"
    return f"{RFC3986}|{value}"


def conditional_url(unique_id: str) -> str:
    return f"DocumentReference?identifier={identifier_query(unique_id)}"


def status_patch(status: str) -> dict[str, Any]:
    """FHIRPath Patch replacing ``DocumentReference.status`` (MHD Patch.Parameters; PDSm
    flux 03)."""
    return {"resourceType": "Parameters", "meta": {"profile": [PATCH_PROFILE]},
            "parameter": [{"name": "operation", "part": [
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "DocumentReference.status"},
                {"name": "value", "valueCode": status},
            ]}]}


@dataclass(frozen=True, slots=True)
class ProvideBundle:
    bundle: Bundle
    document_entry_uuid: str
    submission_set_entry_uuid: str

    def json(self) -> dict[str, Any]:
        return self.bundle.model_dump(mode="json", exclude_none=True)


def provide_bundle(entry: DocumentEntry, ss: SubmissionSet, patient: Ins, kos_bytes: bytes,
                   replaces_unique_id: str | None = None) -> ProvideBundle:
    """The validated ITI-65 Bundle publishing ``kos_bytes`` described by ``entry`` (R4), or
    replacing the document ``replaces_unique_id`` (R8; an entryUUID ``urn:uuid:...`` is
    accepted too)."""
    if entry.patient_id != ss.patient_id:
        raise ValueError("the submission set and the document are for different patients")
    ss_url, dr_url, bin_url = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    dr = document_reference(entry, entry_uuid=dr_url, attachment_url=bin_url,
                            indexed=fhir_time(ss.submission_time))
    entries: list[dict[str, Any]] = [{
        "fullUrl": ss_url,
        "resource": submission_set_list(ss, patient, entry_uuid=ss_url, members=[dr_url]),
        "request": {"method": "POST", "url": "List"},
    }]
    if replaces_unique_id:
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}",
                        "resource": status_patch("superseded"),
                        "request": {"method": "PATCH", "url": conditional_url(replaces_unique_id)}})
        dr["relatesTo"] = [{"code": "replaces", "target": {
            "reference": conditional_url(replaces_unique_id),
            "identifier": {"system": RFC3986,
                           "value": identifier_query(replaces_unique_id).split("|", 1)[1]}}}]
    entries.append({"fullUrl": dr_url, "resource": dr,
                    "request": {"method": "POST", "url": "DocumentReference"}})
    entries.append({"fullUrl": bin_url,
                    "resource": {"resourceType": "Binary", "contentType": entry.mime_type,
                                 "data": base64.b64encode(kos_bytes).decode()},
                    "request": {"method": "POST", "url": "Binary"}})
    bundle = Bundle.model_validate({
        "resourceType": "Bundle", "meta": {"profile": [PROFILE_BUNDLE]}, "type": "transaction",
        "timestamp": fhir_time(ss.submission_time), "entry": entries})
    return ProvideBundle(bundle, dr_url, ss_url)
