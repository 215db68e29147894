"""The manifests of a stored study as this DRIMbox would publish them: the KOS, its
XDS-I.b metadata and the FHIR twin, built from the index and the configuration.

This is what ``drimbox kos`` and ``drimbox manifest`` show, and what the publication workflow
sends. Every refusal says why (:class:`~gateway.index.facts.NotPublishable`, a missing
setting, or :class:`~gateway.manifest.xds_metadata.MetadataError`).
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.config import Settings
from gateway.index.facts import NotPublishable, PublicationPolicy, study_facts
from gateway.index.store import InstanceIndex
from gateway.manifest.facts import Publisher, StudyFacts
from gateway.manifest.fhir_twin import build_fhir_twin
from gateway.manifest.kos import build_kos
from gateway.manifest.xds_metadata import (
    SCHEME_FACILITY_TYPE,
    SCHEME_PRACTICE_SETTING,
    Author,
    Code,
    DocumentEntry,
    PublicationContext,
    kos_document_entry,
)

if TYPE_CHECKING:
    from fhir.resources.R4B.bundle import Bundle


def policy(settings: Settings) -> PublicationPolicy:
    return PublicationPolicy(settings.dicom_ins_status, settings.admit_validated_ins,
                             settings.accession_issuer_oid or "")


def publisher(settings: Settings) -> Publisher:
    if not settings.repository_oid:
        raise NotPublishable(
            "DRIMBOX_REPOSITORY_OID is not set: the KOS needs our repository OID "
            "(Retrieve Location UID)"
        )
    return Publisher(
        public_url=settings.effective_public_url,
        ae_title=settings.ae_title,
        repository_oid=settings.repository_oid,
        institution_name=settings.institution_name,
        structure_id=settings.structure_id,
    )


def publication_context(settings: Settings) -> PublicationContext:
    """The XDS context the configuration gives (the report, when there is one, adds to it)."""
    if not settings.healthcare_facility_type:
        raise NotPublishable(
            "DRIMBOX_HEALTHCARE_FACILITY_TYPE is not set (healthcareFacilityTypeCode, e.g. SA07)"
        )
    return PublicationContext(
        healthcare_facility_type=Code(settings.healthcare_facility_type, SCHEME_FACILITY_TYPE,
                                      settings.healthcare_facility_type),
        practice_setting=Code(settings.practice_setting, SCHEME_PRACTICE_SETTING,
                              settings.practice_setting.capitalize()),
        author=structure_author(settings),
        study_uid_authority=settings.repository_oid or "",
    )


def structure_author(settings: Settings) -> Author:
    """The XDS author of a publication without a report: the centre (an XON institution)."""
    institution = settings.institution_name or settings.ae_title
    return Author(
        institution=f"{institution}^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^{settings.structure_id}"
        if settings.structure_id else institution,
    )


@dataclass(frozen=True)
class StudyManifest:
    facts: StudyFacts
    kos: Dataset
    kos_bytes: bytes
    created: dt.datetime


def build_study_manifest(
    index: InstanceIndex,
    settings: Settings,
    study_uid: str,
    *,
    kos_sop_instance_uid: str | None = None,
    created: dt.datetime | None = None,
) -> StudyManifest:
    facts = study_facts(index, study_uid, policy(settings))
    return manifest_from_facts(facts, settings, kos_sop_instance_uid=kos_sop_instance_uid,
                               created=created)


def manifest_from_facts(
    facts: StudyFacts,
    settings: Settings,
    *,
    kos_sop_instance_uid: str | None = None,
    created: dt.datetime | None = None,
) -> StudyManifest:
    """The KOS of ``facts`` (the publication workflow reads them in its own transaction)."""
    created = created or dt.datetime.now(dt.UTC).astimezone()
    kos = build_kos(
        facts,
        publisher(settings),
        sop_instance_uid=kos_sop_instance_uid or generate_uid(),
        created=created,
    )
    buf = io.BytesIO()
    kos.save_as(buf, enforce_file_format=True)
    return StudyManifest(facts, kos, buf.getvalue(), created)


def document_entry(manifest: StudyManifest, settings: Settings) -> DocumentEntry:
    return kos_document_entry(
        manifest.facts,
        manifest.kos_bytes,
        str(manifest.kos.SOPInstanceUID),
        manifest.created,
        publication_context(settings),
    )


def fhir_bundle(manifest: StudyManifest, settings: Settings,
                entry: DocumentEntry | None = None) -> Bundle:
    return build_fhir_twin(manifest.facts, publisher(settings), str(manifest.kos.SOPInstanceUID),
                           entry, created=manifest.created)
