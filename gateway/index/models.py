"""The index schema: patient / study / series / instance.

Columns hold what QIDO-RS and C-FIND match and return (PS3.18 10.6, PS3.4 C.6); values are
kept as received (DICOM strings, '' when absent) so that matching follows the standard's
rules on the raw values. Counts and ModalitiesInStudy are derived by queries, not stored, so
they can never disagree with the rows. Any schema change goes through an Alembic migration in
``gateway/index/migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_id", "issuer_of_patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(Text, default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(Text, default="")
    patient_name: Mapped[str] = mapped_column(Text, default="")
    patient_birth_date: Mapped[str] = mapped_column(String(32), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        Index(None, "study_date"),
        Index(None, "accession_number"),
        Index(None, "ins_matricule"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    study_date: Mapped[str] = mapped_column(String(32), default="")
    study_time: Mapped[str] = mapped_column(String(32), default="")
    accession_number: Mapped[str] = mapped_column(Text, default="")
    accession_number_issuer: Mapped[str] = mapped_column(Text, default="")
    referring_physician_name: Mapped[str] = mapped_column(Text, default="")
    study_description: Mapped[str] = mapped_column(Text, default="")
    study_id: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    """When the last instance of the study arrived (or was replaced)."""
    stable_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """When the study was last found quiet for ``study_stable_seconds``; the study is stable
    while ``stable_at >= updated_at`` (a new instance reopens it)."""
    ins_matricule: Mapped[str] = mapped_column(String(15), default="", server_default="")
    """The patient's INS as the images carry it, when valid (R19); '' otherwise."""
    ins_oid: Mapped[str] = mapped_column(String(64), default="", server_default="")
    ins_refusal: Mapped[str] = mapped_column(Text, default="", server_default="")
    """Why the images carry no usable INS (the rule that failed), '' when they do."""

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (
        # ModalitiesInStudy (aggregate and matching) reads only this index (issue #3, QIDO-RS).
        Index(None, "study_pk", "modality"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(Text, default="")
    body_part_examined: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    performed_procedure_step_start_date: Mapped[str] = mapped_column(
        String(32), default="", server_default=""
    )
    performed_procedure_step_start_time: Mapped[str] = mapped_column(
        String(32), default="", server_default=""
    )

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    size: Mapped[int] = mapped_column(BigInteger)
    """Bytes of the dataset as received (without the Part 10 header we add)."""
    sha256: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the dataset bytes as received."""
    storage_key: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(Text, default="")
    """Where it came from: the calling AE title, ``import``, ``stow``."""
    # QIDO-RS instance default return attributes (PS3.18 Table 10.6.3-5); NULL when absent.
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bits_allocated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)

    series: Mapped[Series] = relationship(back_populates="instances")


class Manifest(Base):
    """A KOS this DRIMbox built to publish (R4, R8): the key of the publication outbox and of
    the access policy (R10: a consumer names it in ``KOS-SOPInstanceUID`` and sees only the
    instances it references). ``published_at`` is set when the shared record acknowledged it,
    ``withdrawn_at`` when it was un-published or replaced; only a published, not withdrawn
    manifest opens access."""

    __tablename__ = "manifests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kos_uid: Mapped[str] = mapped_column(UID, unique=True)
    """SOPInstanceUID of the KOS, also the DocumentEntry uniqueId."""
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    replaces_kos_uid: Mapped[str] = mapped_column(UID, default="", server_default="")
    """The KOS this one replaces (RPLC), '' for a first publication."""

    instances: Mapped[list[ManifestInstance]] = relationship(back_populates="manifest")


class ManifestInstance(Base):
    """One instance a manifest references (the KOS's Evidence Sequence, flattened)."""

    __tablename__ = "manifest_instances"
    __table_args__ = (UniqueConstraint("manifest_pk", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    manifest_pk: Mapped[int] = mapped_column(ForeignKey("manifests.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)

    manifest: Mapped[Manifest] = relationship(back_populates="instances")


# --- Issue #5: the publication outbox and each study's publication history (R4-R8). ---


class OutboxItem(Base):
    """One publication, replacement or withdrawal to carry to the shared record (the DMP),
    written in the same transaction as the change that causes it (:mod:`gateway.publication`)
    and sent by the outbox worker (:mod:`gateway.outbox`). A publication keeps the KOS bytes and
    its DocumentEntry as built, so every retry sends the same uniqueId and bytes.

    ``state``: ``pending`` (due at ``next_attempt_at``), ``sending`` (claimed by ``claimed_by``
    until ``lease_until``), ``done``, ``refused`` (a business refusal: ``error_code`` /
    ``error_text``), ``superseded`` (a refused publication a newer one made moot)."""

    __tablename__ = "publication_outbox"
    __table_args__ = (
        Index(None, "state", "next_attempt_at"),
        Index(None, "study_instance_uid", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``publish``, ``replace`` (RPLC of ``replaces_kos_uid``) or ``withdraw``."""
    study_instance_uid: Mapped[str] = mapped_column(UID)
    kos_uid: Mapped[str] = mapped_column(UID, index=True)
    """The document's uniqueId: the KOS published, or the one withdrawn."""
    replaces_kos_uid: Mapped[str] = mapped_column(UID, default="", server_default="")
    ins_matricule: Mapped[str] = mapped_column(String(15))
    ins_oid: Mapped[str] = mapped_column(String(64))
    kos_bytes: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    entry_json: Mapped[str] = mapped_column(Text, default="", server_default="")
    """The XDS-I.b DocumentEntry as built (JSON), '' for a withdrawal."""
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str] = mapped_column(Text, default="", server_default="")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    entry_uuid: Mapped[str] = mapped_column(Text, default="", server_default="")
    """The registry's entryUUID of the document, once known."""
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    """The last transient failure (retried)."""
    error_code: Mapped[str] = mapped_column(Text, default="", server_default="")
    error_text: Mapped[str] = mapped_column(Text, default="", server_default="")
    warnings: Mapped[str] = mapped_column(Text, default="", server_default="")


class PublicationEvent(Base):
    """One line of a study's publication history (``drimbox study show``): built, queued,
    published, replaced, withdrawn, refused, not publishable, errors."""

    __tablename__ = "publication_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event: Mapped[str] = mapped_column(String(32))
    kos_uid: Mapped[str] = mapped_column(UID, default="", server_default="")
    outbox_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")
