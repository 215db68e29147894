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
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
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
    restored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """When evicted instances of the study were last fetched back from the PACS (a use of the
    study in the eviction order, :mod:`gateway.ingest.retention`); NULL if never."""

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (
        # ModalitiesInStudy (aggregate and matching) reads only this index (QIDO-RS).
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
    evicted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """Storage as a cache of the PACS: when the file was removed by the retention task (the row,
    and so QIDO-RS and the cached metadata, stay; WADO-RS fetches the file back from the PACS).
    NULL while the file is in the store."""

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


class AuditEvent(Base):
    """One access decision (R15, R22): append-only. ``subject`` is a SubjectNameID,
    local user name or share-link id, never a token or a full identity; ``patient_ins`` is the
    INS matricule the data belongs to, when known."""

    __tablename__ = "audit_events"
    __table_args__ = (Index(None, "recorded_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    principal_kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text, default="")
    via: Mapped[str] = mapped_column(String(32), default="")
    activity: Mapped[str] = mapped_column(Text, default="")
    action: Mapped[str] = mapped_column(String(64))
    """What was asked: ``qido``, ``wado``, ``metadata``, ``rendered``, ``stow``, ``login``,
    ``share-open``, ``viewer-source`` ... """
    outcome: Mapped[str] = mapped_column(String(16))
    """``allowed`` or ``denied``."""
    reason: Mapped[str] = mapped_column(Text, default="")
    study_instance_uid: Mapped[str] = mapped_column(UID, default="")
    series_instance_uid: Mapped[str] = mapped_column(UID, default="")
    sop_instance_uids: Mapped[str] = mapped_column(Text, default="")
    """Space-separated SOP Instance UIDs, '' when the request named none."""
    patient_ins: Mapped[str] = mapped_column(String(15), default="")
    kos_uid: Mapped[str] = mapped_column(UID, default="")
    client_address: Mapped[str] = mapped_column(String(64), default="")


class Report(Base):
    """One HL7 message from the RIS (R1): a report, a withdrawal, an order or an exam
    cancellation. The key (MSH-3, MSH-4, MSH-10) makes processing idempotent: a repeated
    message is answered with the ACK stored here. Holds no name and no full identity besides
    the INS matricule the report was filed under."""

    __tablename__ = "reports"
    __table_args__ = (
        UniqueConstraint("sending_application", "sending_facility", "msh10"),
        Index(None, "study_instance_uid"),
        Index(None, "id_cda"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sending_application: Mapped[str] = mapped_column(String(255), default="")
    sending_facility: Mapped[str] = mapped_column(String(255), default="")
    msh10: Mapped[str] = mapped_column(String(199))
    message_type: Mapped[str] = mapped_column(String(32), default="")
    kind: Mapped[str] = mapped_column(String(16), default="")
    """``report``, ``withdrawal``, ``cancel``, ``order``; '' when the message was unreadable."""
    study_instance_uid: Mapped[str] = mapped_column(UID, default="")
    """The (first) study the message names."""
    other_study_uids: Mapped[str] = mapped_column(Text, default="")
    """Space-separated further studies of a report that documents several."""
    id_cda: Mapped[str] = mapped_column(String(255), default="")
    replaces_id_cda: Mapped[str] = mapped_column(String(255), default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    ins_matricule: Mapped[str] = mapped_column(String(15), default="")
    confidentiality: Mapped[str] = mapped_column(Text, default="")
    """Space-separated confidentiality codes (``N MASQUE_PS ...``)."""
    cda: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="received")
    """``received`` (being processed), ``accepted``, ``refused`` (AE: the content is wrong),
    ``failed`` (AR: processed again when re-sent)."""
    ack_code: Mapped[str] = mapped_column(String(2), default="")
    error_location: Mapped[str] = mapped_column(String(64), default="")
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")

# --- Viewer sessions and patient share links (R15; the CD replacement). ---


class ShareLink(Base):
    """A link that opens one study to the patient (``drimbox share``). The token given to
    the patient is never stored, only its SHA-256 (``token_sha256``); ``id`` is the public
    name used to list, revoke and audit it. Wrong birth dates count in ``failed_attempts``;
    too many set ``locked_until`` (kept here so the lock holds across processes/restarts)."""

    __tablename__ = "share_links"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(Text, default="")
    """Who made it: ``cli`` or the SubjectNameID of the admin."""
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ViewerSession(Base):
    """A browser session of the viewer: a PSC login (``kind`` practitioner) or an opened share
    link (``kind`` share). The cookie holds a random id; the row is keyed by its SHA-256.
    ``activity`` is '' until the practitioner has chosen one (``activities`` holds the
    choices, JSON). ``id_token`` is PSC's ID token, kept server-side for the logout hint;
    ``psc_access_token`` the access token, sealed (R17)."""

    __tablename__ = "viewer_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)
    """SubjectNameID (practitioner) or share-link id (share)."""
    activity: Mapped[str] = mapped_column(Text, default="")
    activities: Mapped[str] = mapped_column(Text, default="")
    study_instance_uid: Mapped[str] = mapped_column(UID, default="")
    share_link_id: Mapped[str | None] = mapped_column(
        ForeignKey("share_links.id", ondelete="CASCADE"), nullable=True, index=True
    )
    id_token: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    psc_access_token: Mapped[str] = mapped_column(Text, default="", server_default="")
    """R17: PSC's access token of a practitioner session, which the consumer presents to
    Source DRIMboxes; encrypted with a key derived from the cookie's random value
    (:mod:`gateway.access.sessions`), so the table alone yields no usable token. '' for none."""


class PendingLogin(Base):
    """A PSC login under way: what the callback must check (state, nonce) and send (the PKCE
    verifier), keyed by the SHA-256 of a short-lived cookie so it is bound to the browser
    that started it. Deleted when the callback uses it."""

    __tablename__ = "pending_logins"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(128))
    nonce: Mapped[str] = mapped_column(String(128))
    code_verifier: Mapped[str] = mapped_column(String(128))
    return_to: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

# --- The publication outbox and each study's publication history (R4-R8). ---


class OutboxItem(Base):
    """One publication, replacement or withdrawal to carry to the shared record (the DMP),
    written in the same transaction as the change that causes it (:mod:`gateway.publication.workflow`)
    and sent by the outbox worker (:mod:`gateway.publication.outbox`). A publication keeps the KOS bytes and
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


# --- MSSanté delivery of reports (gateway/mssante/): one row per message. ---


class MssanteMessage(Base):
    """One MSSanté message to send: a CR flagged DESTMSSANTEPS (to a professional) or
    DESTMSSANTEPAT (to the patient), with the study's XDM archive, written when the report is
    accepted and sent by the MSSanté outbox (:mod:`gateway.mssante.delivery`). ``message_id``
    (the ``Message-ID`` header) is fixed here, before any attempt: every retry sends the same
    message.

    ``state``: ``pending`` (due at ``next_attempt_at``), ``sending`` (claimed by ``claimed_by``
    until ``lease_until``), ``sent`` (the server took it: ``smtp_reply``), ``refused`` (a
    permanent SMTP refusal, 5xx: ``error_code`` / ``error_text``)."""

    __tablename__ = "mssante_outbox"
    __table_args__ = (
        Index(None, "state", "next_attempt_at"),
        Index(None, "study_instance_uid", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    id_cda: Mapped[str] = mapped_column(Text)
    """The CR (ClinicalDocument/id) the message carries."""
    recipient_kind: Mapped[str] = mapped_column(String(16))
    """``professional`` (DESTMSSANTEPS) or ``patient`` (DESTMSSANTEPAT)."""
    recipient_id: Mapped[str] = mapped_column(Text, default="", server_default="")
    """The professional's IdNat_PS ('' for the patient)."""
    address: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    ack_reception: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ack_read: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str] = mapped_column(Text, default="", server_default="")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    smtp_reply: Mapped[str] = mapped_column(Text, default="", server_default="")
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    error_code: Mapped[str] = mapped_column(Text, default="", server_default="")
    error_text: Mapped[str] = mapped_column(Text, default="", server_default="")


# --- The consumer role (R13-R16; gateway/consumer/): the patient an appel contextuel names. ---


class ConsumerContext(Base):
    """A patient context of the consumer DRIMbox: the strict INS traits an appel contextuel
    (R13) or the search form gave, kept server-side, never in a URL.

    It is first *pending*: bound to the browser that posted it by a short-lived cookie whose
    SHA-256 is ``pending_sha256`` (a cross-site POST from the clinician's software carries no
    session cookie). The consumer page *claims* it for the practitioner's session
    (``session_sha256`` = the ``viewer_sessions`` key; ``pending_sha256`` cleared); a session
    has one current context, its latest claimed one. Later steps (the DMP search, retrieval,
    export) hang their rows off ``id``. ``traits`` is JSON (:class:`gateway.consumer.context.
    PatientContext`); ``ins_matricule`` is repeated for lookups and the audit."""

    __tablename__ = "consumer_contexts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pending_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    session_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    ins_matricule: Mapped[str] = mapped_column(String(15))
    traits: Mapped[str] = mapped_column(Text)
    situation: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(16))
    """``appel-contextuel`` (another origin) or ``search-form`` (our page)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ConsumerRetrieval(Base):
    """R17: a study the consumer retrieved from a Source DRIMbox for a practitioner's session,
    from the KOS ``kos_uid`` (the DMP document's uniqueId). Its files are under
    ``<data_dir>/consumer-cache/<id>/``; ``state`` is ``retrieving``, ``complete`` (every
    series whole), ``partial`` (finished, some series missing: refused, failed) or ``failed``
    (none). ``series`` is JSON: one object per series of the KOS (uid, state, counts, the
    reason shown). Only the session ``session_sha256`` may read it. ``last_used_at`` orders
    evictions; ``viewed_at`` (the viewer read it) protects a study in use."""

    __tablename__ = "consumer_retrievals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_sha256: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(Text)
    kos_uid: Mapped[str] = mapped_column(UID, index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, default="")
    patient_ins: Mapped[str] = mapped_column(String(15), default="")
    state: Mapped[str] = mapped_column(String(16))
    series: Mapped[str] = mapped_column(Text, default="[]")
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    viewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
