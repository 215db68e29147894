"""What the manifests (KOS, XDS-I.b metadata, FHIR twin) are built from, in domain terms.

:class:`StudyFacts` is read from the index (and, later, completed by the radiology report);
:class:`Publisher` describes this DRIMbox as the place the study is retrieved from. Nothing
here knows about DICOM encodings, XML or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.identity.ins import Ins


@dataclass(frozen=True, slots=True)
class InstanceRef:
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None

    @property
    def is_image(self) -> bool:
        return bool(self.rows and self.columns)


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    series_instance_uid: str
    modality: str
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    instances: tuple[InstanceRef, ...] = ()


@dataclass(frozen=True, slots=True)
class PatientFacts:
    ins: Ins
    name: str = ""
    """DICOM PN form, ``FAMILY^GIVEN``."""
    birth_date: str = ""
    sex: str = ""
    ipp: str | None = None
    ipp_issuer: str | None = None


def accession_issuer(accession_number: str, carried: str, default: str) -> str:
    """The Issuer of Accession Number (0008,0051) a study is published with: the one its
    instances carry, else the centre's default (``accession_issuer_oid``, modalities rarely
    fill it), and none for a study without an accession number."""
    if carried:
        return carried
    return default if accession_number else ""


@dataclass(frozen=True, slots=True)
class StudyFacts:
    study_instance_uid: str
    patient: PatientFacts
    series: tuple[SeriesFacts, ...]
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    study_id: str = ""
    referring_physician_name: str = ""
    accession_number: str = ""
    accession_number_issuer: str = ""
    """OID of the assigning authority of the accession number (UniversalEntityID), if known."""
    placer_order_number: str = ""
    placer_order_issuer: str = ""
    filler_order_number: str = ""

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(sorted({s.modality for s in self.series if s.modality}))


@dataclass(frozen=True, slots=True)
class Publisher:
    """This DRIMbox, as a Source."""

    public_url: str
    """Base URL of our HTTP side; RetrieveURL = ``<public_url>/dicom-web/studies/.../series/...``."""
    ae_title: str
    repository_oid: str
    """Our repositoryUniqueId / Retrieve Location UID (XDS-I.b)."""
    institution_name: str = ""
    structure_id: str = ""
    """Identifier of the care structure (FINESS...), appended to InstitutionName as DRIM-M does."""
    manufacturer: str = "DRIMbox"
    extra: dict[str, str] = field(default_factory=dict)
