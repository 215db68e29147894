"""XDS-I.b metadata of a KOS publication, as domain objects (R4; SPEC.md sections 2.1-2.2).

:func:`kos_document_entry` and :func:`submission_set` say *what* is published; the DMP adapter
(``adapters/dmp``) serialises them to ebRIM. Values follow the ANS XDS validator sample
(``drim-m-samples/xds/validateur-xds/XDS.xml``):

=================  ========================================================================
classCode          ``31`` "Imagerie médicale", scheme 1.2.250.1.213.1.1.4.1 (TRE_A03)
typeCode           ``IMG-KOS``, scheme 1.2.250.1.213.1.1.4.12 (TRE_A05)
formatCode         ``1.2.840.10008.5.1.4.1.1.88.59``, scheme 1.2.840.10008.2.6.1 (TRE_A09)
confidentiality    ``N`` (2.16.840.1.113883.5.25) plus MASQUE_PS / INVISIBLE_PATIENT /
                   INVISIBLE_REP_LEGAUX (1.2.250.1.213.1.1.4.13) when the report asks
eventCodeList      one code per acquisition modality (scheme 1.2.250.1.213.1.1.5.618, the
                   JDV the samples use), plus region / act codes when the report gives them
patientId          ``<INS>^^^&<OID>&ISO^NH``
referenceIdList    accession, study UID and placer order as CXi values
uniqueId           the KOS SOP Instance UID; hash = SHA-1 hex, size = bytes of the KOS file
=================  ========================================================================
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

from gateway.identity.ins import Ins
from gateway.manifest.facts import StudyFacts

# Coding schemes (OIDs) of the R4 table.
SCHEME_CLASS = "1.2.250.1.213.1.1.4.1"
SCHEME_TYPE = "1.2.250.1.213.1.1.4.12"
SCHEME_FORMAT = "1.2.840.10008.2.6.1"
SCHEME_CONFIDENTIALITY_HL7 = "2.16.840.1.113883.5.25"
SCHEME_CONFIDENTIALITY_DMP = "1.2.250.1.213.1.1.4.13"
SCHEME_MODALITY = "1.2.250.1.213.1.1.5.618"
SCHEME_FACILITY_TYPE = "1.2.250.1.71.4.2.4"
SCHEME_PRACTICE_SETTING = "1.2.250.1.213.1.1.4.9"
SCHEME_CONTENT_TYPE = "1.2.250.1.213.2.2"

KOS_MIME_TYPE = "application/dicom"
KOS_FORMAT_CODE = "1.2.840.10008.5.1.4.1.1.88.59"

#: The DMP's masking flags (MetaDMPMSS OBX of the report), by name.
MASKING_FLAGS = {
    "MASQUE_PS": "Masqué aux professionnels de santé",
    "INVISIBLE_PATIENT": "Non visible par le patient",
    "INVISIBLE_REP_LEGAUX": "Non visible par les représentants légaux du patient",
}

MODALITY_NAMES = {
    "CT": "Computed Tomography",
    "MR": "Magnetic Resonance",
    "CR": "Computed Radiography",
    "DX": "Digital Radiography",
    "MG": "Mammography",
    "US": "Ultrasound",
    "NM": "Nuclear Medicine",
    "PT": "Positron emission tomography (PET)",
    "XA": "X-Ray Angiography",
    "RF": "Radio Fluoroscopy",
    "IO": "Intra-oral Radiography",
    "PX": "Panoramic X-Ray",
    "OT": "Other",
}


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    scheme: str
    display: str


@dataclass(frozen=True, slots=True)
class ReferenceId:
    """A CXi value of ``urn:ihe:iti:xds:2013:referenceIdList``."""

    value: str
    assigning_authority: str
    kind: str

    def cxi(self) -> str:
        return f"{self.value}^^^&{self.assigning_authority}&ISO^{self.kind}"


@dataclass(frozen=True, slots=True)
class Author:
    """XDS author: a person (XCN) and/or an institution (XON)."""

    person: str = ""
    institution: str = ""
    role: str = ""
    specialty: str = ""


@dataclass(frozen=True, slots=True)
class PublicationContext:
    """What the report (or the configuration) adds to the images' facts."""

    healthcare_facility_type: Code
    practice_setting: Code
    author: Author
    masking_flags: tuple[str, ...] = ()
    legal_authenticator: str = ""
    region_codes: tuple[Code, ...] = ()
    act_codes: tuple[Code, ...] = ()
    service_start: str = ""
    service_stop: str = ""
    study_uid_authority: str = ""
    """Assigning authority OID for the studyInstanceUID reference id (our repository OID)."""


@dataclass(frozen=True, slots=True)
class DocumentEntry:
    unique_id: str
    patient_id: str
    source_patient_id: str
    source_patient_info: tuple[str, ...]
    mime_type: str
    class_code: Code
    type_code: Code
    format_code: Code
    confidentiality: tuple[Code, ...]
    event_codes: tuple[Code, ...]
    healthcare_facility_type: Code
    practice_setting: Code
    language: str
    creation_time: str
    service_start: str
    service_stop: str
    title: str
    comments: str
    author: Author
    legal_authenticator: str
    reference_ids: tuple[ReferenceId, ...]
    hash_sha1: str
    size: int


@dataclass(frozen=True, slots=True)
class SubmissionSet:
    unique_id: str
    source_id: str
    patient_id: str
    submission_time: str
    content_type: Code
    author: Author
    title: str = "Publication d'un examen d'imagerie"
    extra: dict[str, str] = field(default_factory=dict)


class MetadataError(ValueError):
    """The metadata cannot be built (a required value is missing); the message says which."""


def xds_patient_id(ins: Ins) -> str:
    """``<INS>^^^&<OID>&ISO^NH`` (R4)."""
    return f"{ins.matricule}^^^&{ins.oid}&ISO^NH"


def _xds_time(date: str, time: str = "") -> str:
    digits = (date + time.split(".")[0]).strip()
    return digits[:14]


def kos_document_entry(
    facts: StudyFacts,
    kos_bytes: bytes,
    kos_sop_instance_uid: str,
    kos_created: dt.datetime,
    ctx: PublicationContext,
) -> DocumentEntry:
    """The DocumentEntry of a KOS (R4). ``kos_bytes`` is the Part 10 file as sent."""
    if not facts.accession_number:
        raise MetadataError("referenceIdList: the study has no accession number")
    if not facts.accession_number_issuer:
        raise MetadataError("referenceIdList: the accession number has no issuer OID")
    for flag in ctx.masking_flags:
        if flag not in MASKING_FLAGS:
            raise MetadataError(f"confidentialityCode: unknown masking flag {flag!r}")
    confidentiality = (Code("N", SCHEME_CONFIDENTIALITY_HL7, "Normal"),) + tuple(
        Code(flag, SCHEME_CONFIDENTIALITY_DMP, MASKING_FLAGS[flag]) for flag in ctx.masking_flags
    )
    events = tuple(
        Code(m, SCHEME_MODALITY, MODALITY_NAMES.get(m, m)) for m in facts.modalities
    ) + ctx.region_codes + ctx.act_codes
    refs = [ReferenceId(facts.accession_number, facts.accession_number_issuer,
                        "urn:ihe:iti:xds:2013:accession")]
    if ctx.study_uid_authority:
        refs.append(ReferenceId(facts.study_instance_uid, ctx.study_uid_authority,
                                "urn:ihe:iti:xds:2016:studyInstanceUID"))
    if facts.placer_order_number and facts.placer_order_issuer:
        refs.append(ReferenceId(facts.placer_order_number, facts.placer_order_issuer,
                                "urn:ihe:iti:xds:2013:order"))
    patient = facts.patient
    info = tuple(
        v
        for v in (
            f"PID-5|{patient.name}^^^^^L" if patient.name else "",
            f"PID-7|{patient.birth_date}" if patient.birth_date else "",
            f"PID-8|{patient.sex}" if patient.sex else "",
        )
        if v
    )
    source_pid = (
        f"{patient.ipp}^^^&{patient.ipp_issuer}&ISO^PI"
        if patient.ipp and patient.ipp_issuer
        else xds_patient_id(patient.ins)
    )
    study_time = _xds_time(facts.study_date, facts.study_time)
    return DocumentEntry(
        unique_id=kos_sop_instance_uid,
        patient_id=xds_patient_id(patient.ins),
        source_patient_id=source_pid,
        source_patient_info=info,
        mime_type=KOS_MIME_TYPE,
        class_code=Code("31", SCHEME_CLASS, "Imagerie médicale"),
        type_code=Code("IMG-KOS", SCHEME_TYPE, "Reference d'objets d'un examen d'imagerie"),
        format_code=Code(
            KOS_FORMAT_CODE,
            SCHEME_FORMAT,
            "Document de Références d'objets d'imagerie selon profil IHE RAD XDS-I",
        ),
        confidentiality=confidentiality,
        event_codes=events,
        healthcare_facility_type=ctx.healthcare_facility_type,
        practice_setting=ctx.practice_setting,
        language="fr-FR",
        creation_time=kos_created.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S"),
        service_start=ctx.service_start or study_time,
        service_stop=ctx.service_stop or study_time,
        title="Reference d'Objets d'un Examen d'Imagerie",
        comments="KOS",
        author=ctx.author,
        legal_authenticator=ctx.legal_authenticator,
        reference_ids=tuple(refs),
        hash_sha1=hashlib.sha1(kos_bytes).hexdigest(),  # noqa: S324 - XDS mandates SHA-1
        size=len(kos_bytes),
    )


def submission_set(
    entry: DocumentEntry,
    unique_id: str,
    source_id: str,
    submitted: dt.datetime,
    content_type: Code,
) -> SubmissionSet:
    """The SubmissionSet that carries ``entry`` (R4/R5; the signature document is the DMP
    adapter's job). ``content_type`` is the care setting (scheme 1.2.250.1.213.2.2, e.g. ``04``
    "Hospitalisation de jour" in the ANS sample): it comes from configuration or the report,
    there is no universal default."""
    return SubmissionSet(
        unique_id=unique_id,
        source_id=source_id,
        patient_id=entry.patient_id,
        submission_time=submitted.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S"),
        content_type=content_type,
        author=entry.author,
    )


@dataclass(frozen=True, slots=True)
class PublishedEntry:
    """A DocumentEntry as the DMP registry returns it (ITI-18): what the publication outbox
    keeps to replace or deprecate it later (R8). ``status`` is ``Approved`` or ``Deprecated``."""

    entry_uuid: str
    unique_id: str
    patient_id: str
    status: str
    mime_type: str
    repository_unique_id: str = ""
    hash_sha1: str = ""
    size: int | None = None
    creation_time: str = ""
    title: str = ""
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    event_codes: tuple[Code, ...] = ()
    reference_ids: tuple[str, ...] = ()
    confidentiality_codes: tuple[Code, ...] = ()
    author_persons: tuple[str, ...] = ()
    """``authorPerson`` (XCN) of each author classification."""
    legal_authenticator: str = ""
    author_institutions: tuple[str, ...] = ()
    """``authorInstitution`` (XON) values of the author classifications."""
    service_start: str = ""
    comments: str = ""
