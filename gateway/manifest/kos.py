"""The DRIM-M manifest: a Key Object Selection Document referencing every instance of a study
(R3; SPEC.md section 2.4).

Built with highdicom's :class:`~highdicom.ko.KeyObjectSelectionDocument` (standard-compliant by
construction: TID 2010, SR Document General/Content modules, Key Object Document module), then
completed with what DRIM-M adds:

* the patient module carries the INS (:func:`gateway.identity.codecs.ins_to_dicom`);
* ``ReferencedRequestSequence`` (accession and its issuer, study UID, placer/filler order);
* per series in ``CurrentRequestedProcedureEvidenceSequence``: ``RetrieveURL`` (0008,1190) =
  ``<public URL>/dicom-web/studies/<study>/series/<series>``, ``RetrieveAETitle`` and
  ``RetrieveLocationUID`` (our repository OID) for XDS-I.b/MADO readers;
* ``InstitutionName`` = ``<name>^^^^^^^^^<structure id>`` when a structure id is configured.

Deliberate differences from the official samples (``drim-m-samples/kos``): the root content
item is a CONTAINER titled (113030, DCM, "Manifest") as the standard and the SPEC digest say
(one sample has a TEXT root with code "DCM"); the Key Object Description is a plain sentence,
not the PoC's parsed "Examen : ... / Série-..." format; referenced items carry highdicom's
purpose-of-reference concept (260753009, SCT, "Source"); non-image objects (PDF, SR) are
COMPOSITE items rather than IMAGE items. The encoding is Implicit VR Little Endian, like the
samples. RetrieveURL inside ReferencedSeriesSequence makes the object a Standard Extended
SOP Class (dciodvfy warns so); DRIM-M consumers need it. Everything is deterministic except the new UIDs and the creation date/time, which can
be passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from gateway.identity.codecs import ins_to_dicom
from gateway.imaging.locations import series_url
from gateway.manifest.facts import Publisher, StudyFacts

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"
MANIFEST_TITLE = Code("113030", "DCM", "Manifest")
KOS_SERIES_NUMBER = 59  # as in the DRIM-M samples


class ManifestError(ValueError):
    """The study cannot be described by a KOS (e.g. it has no instance)."""


def _evidence(facts: StudyFacts) -> list[Dataset]:
    """Minimal datasets standing for the referenced instances (highdicom reads these)."""
    out = []
    for series in facts.series:
        for inst in series.instances:
            ds = Dataset()
            ds.SOPClassUID = inst.sop_class_uid
            ds.SOPInstanceUID = inst.sop_instance_uid
            ds.StudyInstanceUID = facts.study_instance_uid
            ds.SeriesInstanceUID = series.series_instance_uid
            ds.Modality = series.modality
            ds.PatientID = facts.patient.ins.matricule
            ds.PatientName = facts.patient.name
            ds.PatientBirthDate = facts.patient.birth_date
            ds.PatientSex = facts.patient.sex
            ds.StudyDate = facts.study_date
            ds.StudyTime = facts.study_time
            ds.StudyID = facts.study_id
            ds.AccessionNumber = facts.accession_number
            ds.ReferringPhysicianName = facts.referring_physician_name
            if inst.is_image:
                ds.Rows = inst.rows
                ds.Columns = inst.columns
            out.append(ds)
    return out


def _requested_procedure(facts: StudyFacts) -> Dataset:
    req = Dataset()
    req.StudyInstanceUID = facts.study_instance_uid
    req.ReferencedStudySequence = []
    req.AccessionNumber = facts.accession_number
    if facts.accession_number_issuer:
        issuer = Dataset()
        issuer.UniversalEntityID = facts.accession_number_issuer
        issuer.UniversalEntityIDType = "ISO"
        req.IssuerOfAccessionNumberSequence = [issuer]
    req.RequestedProcedureDescription = facts.study_description[:64]
    req.RequestedProcedureCodeSequence = []
    req.RequestedProcedureID = facts.study_id[:16]
    req.PlacerOrderNumberImagingServiceRequest = facts.placer_order_number
    if facts.placer_order_issuer:
        placer = Dataset()
        placer.UniversalEntityID = facts.placer_order_issuer
        placer.UniversalEntityIDType = "ISO"
        req.OrderPlacerIdentifierSequence = [placer]
    req.FillerOrderNumberImagingServiceRequest = facts.filler_order_number
    return req


def _description(facts: StudyFacts) -> str:
    parts = [facts.study_description or "Examen d'imagerie"]
    parts.append(", ".join(facts.modalities) or "")
    parts.append(f"{len(facts.series)} série(s), {facts.instance_count} objet(s)")
    return " - ".join(p for p in parts if p)


def build_kos(
    facts: StudyFacts,
    publisher: Publisher,
    *,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    created: dt.datetime | None = None,
) -> Dataset:
    """The DRIM-M KOS of ``facts``, ready to be written (``kos.save_as(path)``)."""
    # highdicom only here: its import costs ~0.25 s that every ``drimbox serve`` start would
    # pay (the ingest path reads KOS through this module, never builds one).
    from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument

    if facts.instance_count == 0:
        raise ManifestError("the study has no instance to reference")
    evidence = _evidence(facts)
    content = KeyObjectSelection(
        document_title=MANIFEST_TITLE,
        referenced_objects=evidence,
        description=_description(facts),
    )
    institution = publisher.institution_name
    if publisher.structure_id:
        institution = f"{institution}^^^^^^^^^{publisher.structure_id}"
    created = created or dt.datetime.now(dt.UTC).astimezone()
    kos = KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=publisher.manufacturer,
        institution_name=institution[:64] or None,
        requested_procedures=[_requested_procedure(facts)],
        transfer_syntax_uid=ImplicitVRLittleEndian,
    )
    kos.SpecificCharacterSet = "ISO_IR 100"
    kos.StudyDescription = facts.study_description
    kos.InstanceCreationDate = created.strftime("%Y%m%d")
    kos.InstanceCreationTime = created.strftime("%H%M%S")
    kos.ContentDate = kos.InstanceCreationDate
    kos.ContentTime = kos.InstanceCreationTime
    kos.SeriesDate = kos.InstanceCreationDate
    kos.SeriesTime = kos.InstanceCreationTime
    offset = created.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    kos.TimezoneOffsetFromUTC = f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    for equipment in kos.get("ContributingEquipmentSequence", []):
        equipment.ContributionDateTime = created.strftime("%Y%m%d%H%M%S")
    ins_to_dicom(kos, facts.patient.ins, facts.patient.ipp, facts.patient.ipp_issuer)
    _add_retrieve_locations(kos, facts, publisher)
    return kos


def _add_retrieve_locations(kos: Dataset, facts: StudyFacts, publisher: Publisher) -> None:
    for study_item in kos.CurrentRequestedProcedureEvidenceSequence:
        for series_item in study_item.ReferencedSeriesSequence:
            se = str(series_item.SeriesInstanceUID)
            series_item.RetrieveURL = series_url(publisher.public_url, facts.study_instance_uid, se)
            series_item.RetrieveAETitle = publisher.ae_title
            series_item.RetrieveLocationUID = publisher.repository_oid


def referenced_instances(kos: Dataset) -> set[str]:
    """SOP Instance UIDs a KOS references in its evidence (for checks and access control)."""
    out: set[str] = set()
    for study_item in kos.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series_item in study_item.get("ReferencedSeriesSequence", []):
            for ref in series_item.get("ReferencedSOPSequence", []):
                out.add(str(ref.ReferencedSOPInstanceUID))
    return out


def series_retrieve_urls(kos: Dataset) -> dict[str, str]:
    """Series Instance UID -> RetrieveURL, as a consumer reads them."""
    out = {}
    for study_item in kos.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series_item in study_item.get("ReferencedSeriesSequence", []):
            out[str(series_item.SeriesInstanceUID)] = str(series_item.get("RetrieveURL", ""))
    return out


__all__: Sequence[str] = [
    "KOS_SOP_CLASS_UID",
    "ManifestError",
    "build_kos",
    "referenced_instances",
    "series_retrieve_urls",
]
