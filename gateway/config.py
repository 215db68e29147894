"""Gateway configuration: environment variables (``DRIMBOX_*``) and an optional TOML file.

Precedence, highest first: explicit keyword arguments, environment variables, the TOML
file given to ``drimbox serve --config FILE`` (or ``DRIMBOX_CONFIG``), the defaults below.
Every setting is validated when the settings are built, so a wrong value stops start-up
with a message that names it (see :func:`load_settings`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash,
# no control characters; leading/trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def validate_ae_title(value: str) -> str:
    """Return the AE title stripped of padding, or raise ``ValueError`` naming the rule."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)"
        )
    return stripped


#: Where ``make setup`` puts OHIF's prebuilt viewer (the source tree's ``.cache/``).
DEFAULT_VIEWER_DIR = Path(__file__).resolve().parent.parent / ".cache" / "ohif" / "dist"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class PeerAE(BaseModel):
    """A DICOM application entity we know: a modality, the centre's PACS, another DRIMbox."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    storage_commitment: Literal["same_association", "new_association"] = "same_association"
    """Where our Storage Commitment result (N-EVENT-REPORT, PS3.4 J.3.3) goes: on the
    association of the request while it is open (else on a new one), or always on a new
    association to ``host`` and ``storage_commitment_port``."""
    storage_commitment_port: int | None = Field(default=None, ge=1, le=65535)
    """The port of the peer's Storage Commitment SCU for a new association. Default ``port``."""

    _check_ae = field_validator("ae_title")(validate_ae_title)


TlsMode = Literal["on", "off", "proxy"]
ClientAuth = Literal["none", "optional", "required"]


class ConfigError(Exception):
    """A setting is wrong; the message names it."""


class Settings(BaseSettings):
    """All the gateway's settings. Environment variables are ``DRIMBOX_`` + the upper-case name."""

    model_config = SettingsConfigDict(
        env_prefix="DRIMBOX_", extra="forbid", validate_default=True
    )

    data_dir: Path = Path("./data")
    """Where instances (``storage/``), the staging area and the SQLite index live."""

    database_url: str | None = None
    """SQLAlchemy URL of the index. Default: SQLite (WAL) at ``<data_dir>/index.sqlite``.
    PostgreSQL: ``postgresql+psycopg://user@host:5432/dbname``."""

    pg_bin_dir: Path | None = None
    """Folder of the PostgreSQL client programs ``drimbox backup`` runs (``pg_dump``,
    ``pg_restore``), whose major version must be at least the server's. Default: the
    ``PATH``."""

    ae_title: str = "DRIMBOX"
    host: str = "127.0.0.1"
    """Address the DICOM listener binds (``0.0.0.0`` to accept modalities on the network)."""
    http_host: str | None = None
    """Address the HTTP listener binds. Default: ``host``."""
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    http_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    """Base URL the outside world uses to reach our HTTP side (used in every URI we emit).
    Default: ``http://<host>:<http_port>``."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses (or networks, ``10.0.0.0/24``) of reverse proxies whose ``Forwarded`` /
    ``X-Forwarded-Proto/Host/Prefix`` headers we honour when building URIs. Empty: the headers
    are ignored and every URI comes from ``public_url``. In the environment: JSON, e.g.
    ``["127.0.0.1"]``."""

    viewer_dir: Path | None = None
    """Folder of the OHIF viewer's prebuilt ``dist/`` served at ``/viewer``. Default:
    ``.cache/ohif/dist`` in the source tree (``make setup`` fetches it)."""

    # --- TLS on our listeners (R12; gateway/tls.py, docs/operations.md#tls). ---
    tls_cert: Path | None = None
    """PEM server certificate (with its chain) that every TLS listener presents: HTTPS, DICOM
    TLS and MLLP over TLS. Setting it turns TLS on for every listener (see ``http_tls``)."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert`` (unencrypted)."""
    tls_ca_bundle: Path | None = None
    """PEM CAs whose client certificates our listeners accept (``*_tls_client_auth``)."""
    http_tls: TlsMode | None = None
    """The HTTP listener: ``on`` (HTTPS with ``tls_cert``), ``off`` (plain HTTP: loopback
    only) or ``proxy`` (plain HTTP behind a reverse proxy that terminates TLS). Default: ``on``
    when ``tls_cert`` is set, else ``off``. ``true``/``false`` mean ``on``/``off``."""
    dicom_tls: TlsMode | None = None
    """The DICOM listener (DICOM TLS, PS3.15 B.1 / BCP 195), as ``http_tls``."""
    hl7_tls: TlsMode | None = None
    """The HL7 MLLP listener (MLLP over TLS), as ``http_tls``."""
    http_tls_client_auth: ClientAuth = "none"
    """Client certificates on HTTPS: ``none``, ``optional`` (asked for; one presented must
    chain to ``tls_ca_bundle``: consumer DRIMboxes beside browsers) or ``required``."""
    dicom_tls_client_auth: ClientAuth = "required"
    """Client certificates on DICOM TLS (modalities, the PACS): ``required`` by default, since
    DICOM has no other authentication than AE titles."""
    hl7_tls_client_auth: ClientAuth = "required"
    """Client certificates on MLLP over TLS (the RIS): ``required`` by default."""
    consumer_client_certificate: Literal["off", "whitelisted"] = "off"
    """Mutual TLS between DRIMboxes on the Source's side (R11, R12): with ``whitelisted``, a
    request carrying a PSC bearer token (a consumer DRIMbox) must come over HTTPS with a
    client certificate (``http_tls = on``, ``http_tls_client_auth`` optional or required,
    chained to ``tls_ca_bundle``) whose subject DN is an operator DN of the verified ANS
    whitelist (``whitelist_source``); otherwise 403, audited with the DN. Browsers (viewer
    sessions, share links) are not concerned."""

    @field_validator("http_tls", "dicom_tls", "hl7_tls", mode="before")
    @classmethod
    def _tls_mode(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return "on" if v else "off"
        if isinstance(v, str):
            low = v.strip().lower()
            return {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off",
                    "no": "off", "": None}.get(low, low)
        return v

    peers: list[PeerAE] = Field(default_factory=list)
    """Known DICOM peers. In the environment: JSON, e.g.
    ``[{"ae_title": "PACS", "host": "10.0.0.5", "port": 104}]``."""

    restrict_callers: bool = False
    """Accept associations only from calling AE titles listed in ``peers``."""

    query_retrieve: bool = True
    """Offer the Query/Retrieve SCP (C-FIND, C-MOVE, C-GET; Patient Root and Study Root) on
    the DICOM listener, to the callers ``query_retrieve_callers`` allows (docs/dicom.md)."""

    query_retrieve_callers: list[str] = Field(default_factory=list)
    """Calling AE titles allowed to query and retrieve. Empty (the default): the AE titles
    listed in ``peers``, nobody when there are none. ``["*"]``: any caller, from anywhere (a
    deliberate choice for a closed network). There is no loopback exception."""

    query_retrieve_check_address: bool = True
    """A query/retrieve caller whose AE title is in ``peers`` must connect from an address its
    ``host`` resolves to."""

    check_called_ae: bool = True
    """Refuse associations whose called AE title is not ours."""

    accept_unknown_sop_classes: bool = False
    """Accept C-STORE of private or unknown SOP classes (like Orthanc's UnknownSopClassAccepted)."""

    storage_commitment: Literal["off", "peers", "any"] = "peers"
    """Storage Commitment Push Model SCP (PS3.4 Annex J): ``off`` (not negotiated), ``peers``
    (only calling AE titles listed in ``peers``; others get 0x0124 refused), ``any`` caller
    (one not in ``peers`` gets its result on the same association only)."""

    duplicate_policy: Literal["replace", "refuse", "keep"] = "replace"
    """What a re-sent SOP Instance UID with *different* content does: ``replace`` the stored
    instance (the PACS corrected it), ``refuse`` it with status 0x0111, or ``keep`` the stored
    copy and answer success (Orthanc's ``OverwriteInstances = false``). Identical content
    always succeeds without a second copy. ``drimbox import`` has its own ``--on-conflict``
    (default ``keep``: an old CD never replaces a corrected copy)."""

    max_pdu_size: int = Field(default=1_048_576, ge=0)
    """Largest P-DATA PDU we accept (0 = unlimited). Large PDUs cut per-fragment overhead."""

    dul_poll_interval: float = Field(default=0.0002, gt=0, le=0.01)
    """Seconds pynetdicom's network thread sleeps when it goes round its loop with nothing to
    do (pynetdicom's own default: 0.001). The SCP's network thread waits on its socket
    instead (``adapters.dicom_transport``) and sleeps this long only where it cannot
    wait: after a wait of up to 50 ms with nothing to do, and while a closing connection
    drains (Sta13). Only associations accepted by the SCP; those the gateway requests
    (C-MOVE sub-operations, exports) wait on their sockets too and sleep pynetdicom's own
    1 ms where they cannot wait."""

    reactor_wait: float = Field(default=0.005, ge=0, le=0.1)
    """Seconds pynetdicom's association thread waits for the next DIMSE message before
    going round its loop again (``adapters.dicom_transport.ReactorQueue``). pynetdicom itself polls
    every 1 ms, which delays each C-STORE by ~0.5 ms; waiting on the queue takes each
    request at once. Release, abort and timeout checks then run every ``reactor_wait`` +
    1 ms. ``0``: pynetdicom's own polling."""

    commit_batch_max: int = Field(default=64, ge=1, le=10_000)
    """Most index rows one group commit holds (instances arriving together over several
    associations share one flush and one index commit; each is still acknowledged only
    after the flush and commit that hold it)."""

    ingest_flush: Literal["filesystem", "files"] = "filesystem"
    """How a group of received instances is made durable before its acknowledgement
    (:mod:`gateway.ingest.recovery`). ``filesystem``: one ``syncfs`` of the data directory's
    file system per group, covering files, directory entries and (SQLite beside the data)
    the index, whose rows are rebuilt from the files after an unclean stop. ``files``: an
    ``fsync`` per file and per directory, then a flushed index commit (for a data directory
    on a file system other programs write heavily to; also used where ``syncfs`` is
    missing)."""

    dicom_workers: int = Field(default=2, ge=0, le=64)
    """Processes that accept DICOM associations (``drimbox serve``; see
    :mod:`gateway.ingest.workers`). Each runs pynetdicom and the ingest path in its own interpreter,
    so concurrent associations use more than one core (one Python process tops out near 200
    CT slices/s under the GIL). ``0`` runs the DICOM SCP inside the main process, next to
    the HTTP app, as before. The main process keeps the HTTP app and shares one listening
    socket with the workers. Default 2, measured on a 2-core machine (bench/RESULTS.md);
    ``max_associations`` applies per worker."""

    max_associations: int = Field(default=32, ge=1, le=1000)
    """Associations open at once (per DICOM worker). An association counts from the moment
    its A-ASSOCIATE-RQ has arrived whole until it is released or aborted; connections still
    sending their request do not count (``max_pending_per_address``, ``artim_timeout``).
    One over the limit is rejected (A-ASSOCIATE-RJ, local limit exceeded)."""
    max_associations_per_ae: int = Field(default=16, ge=1, le=1000)
    """Associations open at once from one calling AE title (per DICOM worker), counted as
    ``max_associations``: a peer cannot take every slot. One over is rejected the same way
    (A-ASSOCIATE-RJ transient, local limit exceeded)."""
    network_timeout: float = Field(default=60.0, gt=0)
    """Seconds of silence before an association is aborted: no PDU at all, or no byte while
    a PDU is half received, or the peer not reading what we send
    (:mod:`gateway.ingest.dimse_guard`)."""
    artim_timeout: float = Field(default=30.0, gt=0, le=3600)
    """The ARTIM timer (PS3.8 9.1.5): seconds a new DICOM connection has to deliver its whole
    A-ASSOCIATE-RQ before it is closed; also how long we wait for the peer to close after
    rejecting or releasing an association."""
    max_pending_per_address: int = Field(default=8, ge=1, le=10_000)
    """DICOM connections from one IP address that may be still sending their A-ASSOCIATE-RQ
    at once (per DICOM worker); more are closed at once and logged."""
    shutdown_grace: float = Field(default=30.0, ge=0)
    """Seconds SIGTERM waits for in-flight associations before aborting them."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    dicomweb_auth: Literal["psc", "none"] = "psc"
    """Who may read DICOMweb (R10). ``psc``: a Pro Santé Connect bearer token (consumer
    DRIMbox) or a principal from the viewer login / share links, then the access policy
    (:mod:`gateway.access.policy`). ``none``: anonymous readers see everything; development only,
    accepted only while the HTTP side listens on a loopback address."""

    console_auth: Literal["psc", "none"] = "psc"
    """Who may open the operator console at ``/`` (docs/console.md). ``psc``: a PSC login
    whose SubjectNameID has the staff role ``viewer`` (look) or ``admin`` (look and act) in
    ``staff_roles``. ``none``: loopback development, the console opens without a login as an
    ``admin`` (a login, when there is one, still wins); accepted only while the HTTP side
    listens on a loopback address."""

    # --- Manifests and publishability (R3, R19). ---
    repository_oid: str | None = None
    """This DRIMbox's repository OID: Retrieve Location UID in the KOS and the assigning
    authority of the studyInstanceUID reference id (XDS-I.b). Required to build a manifest."""
    accession_issuer_oid: str | None = None
    """OID of the authority assigning this centre's accession numbers: the Issuer of Accession
    Number (0008,0051) of a study whose instances carry none (modalities rarely fill it), for
    the KOS and the XDS-I.b accession number reference id. An issuer in the instances wins."""
    institution_name: str = ""
    """InstitutionName of the KOS (the centre)."""
    structure_id: str = ""
    """Identifier of the care structure (FINESS...), appended to InstitutionName as DRIM-M does."""
    healthcare_facility_type: str = ""
    """XDS healthcareFacilityTypeCode (TRE_R02-SecteurActivite, e.g. ``SA07`` cabinet, ``SA01``
    hospital); the report may override it. Required for the XDS-I.b metadata."""
    practice_setting: str = "AMBULATOIRE"
    """XDS practiceSettingCode (scheme 1.2.250.1.213.1.1.4.9)."""
    study_stable_seconds: float = Field(default=60.0, gt=0)
    """A study is stable after this many seconds without a new instance; a new one reopens it."""
    dicom_ins_status: Literal["QUAL", "VALI", "unknown"] = "QUAL"
    """Identity status given to an INS read from the images (DICOM has no status attribute).
    ``QUAL``: an INS travels in the images only for a qualified identity (RNIV), so it may be
    published; ``unknown``: only a report (HL7 PID-32) can qualify it."""
    admit_validated_ins: bool = False
    """Also publish identities whose status is VALI (test platforms only; R19 says QUAL)."""

    # --- DMP publication (R4-R8). The outbox worker uses them. ---
    dmp_transport: Literal["xds", "mhd"] = "xds"
    """How we talk to the DMP: ``xds`` (IHE XDS.b SOAP, the DMP today) or ``mhd`` (FHIR PDSm /
    IHE MHD ITI-65/67, ``adapters.mhd.transport``; needs ``dmp_fhir_url``)."""
    dmp_registry_url: str | None = None
    """DMP registry endpoint (ITI-18, ITI-57), e.g.
    ``https://lps.dev9.dmp.gouv.fr/si-dmp-server/v2/services/registry``."""
    dmp_repository_url: str | None = None
    """DMP repository endpoint (ITI-41, ITI-43), e.g. ``.../si-dmp-server/v2/services/repository``."""
    dmp_client_cert: Path | None = None
    """PEM certificate (chain) of the structure's IGC-Santé ORG *authentication* certificate:
    the TLS client certificate (R7). PS certificates are refused by the DMP."""
    dmp_client_key: Path | None = None
    """PEM private key of ``dmp_client_cert``."""
    dmp_ca_bundle: Path | None = None
    """PEM bundle of the CAs we trust for the DMP's server certificate (IGC-Santé ACs)."""
    dmp_sign_cert: Path | None = None
    """PEM ORG *signature* certificate: signs the VIHF (R6) and Signature01 (R5)."""
    dmp_sign_key: Path | None = None
    """PEM private key of ``dmp_sign_cert``."""
    dmp_timeout: float = Field(default=30.0, gt=0)
    """Seconds before a DMP call is abandoned (a transient error: the outbox retries)."""
    dmp_source_id: str | None = None
    """``XDSSubmissionSet.sourceId``: our OID (default: the repository OID)."""
    dmp_structure_id: str = ""
    """VIHF ``Identifiant_Structure`` (FINESS géographique in EG / EJ-EG mode)."""
    dmp_activity_sector: str = ""
    """VIHF ``Secteur_Activite`` code (TRE_R02, e.g. ``SA07``)."""
    dmp_authentication_mode: str = "INDIRECTE"
    """VIHF ``Authentification_Mode`` (``INDIRECTE`` in the DMP samples)."""
    dmp_lps_id: str = ""
    """VIHF ``LPS_ID`` (from the DMP homologation)."""
    dmp_lps_name: str = "DRIMbox"
    """VIHF ``LPS_Nom``."""
    dmp_lps_version: str = "0.1.0"
    """VIHF ``LPS_Version``."""
    dmp_lps_homologation_id: str = ""
    """VIHF ``LPS_ID_HOMOLOGATION_DMP``."""

    # --- FHIR (IHE MHD / ANS PDSm) transport, used when dmp_transport = "mhd"
    dmp_fhir_url: str | None = None
    """Base URL of the record's FHIR endpoint (IHE MHD ITI-65/67, ANS PDSm), https only, e.g.
    ``https://dmp-sim.example:8443/fhir``. Same client certificate and CA bundle as XDS."""

    # -- HL7 v2 from the RIS, the centre's PACS ------------------------------
    hl7_port: int | None = Field(default=None, ge=1, le=65535)
    """TCP port of the HL7 v2 MLLP listener (reports from the RIS, R1); off when unset."""
    hl7_host: str | None = None
    """Address the MLLP listener binds; default ``host``."""
    hl7_application: str = "DRIMBOX"
    """Our application name (MSH-3) in the ACKs."""
    hl7_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest HL7 message accepted (a CR with its PDF is ~0.5 MB); larger ones get AR."""
    pacs_ae_title: str | None = None
    """AE title of the centre's PACS, queried (C-FIND) and asked to send (C-MOVE) the study a
    report names when it is not in the index (R2). The PACS must know our ``ae_title`` with
    our host and ``dicom_port`` as a C-MOVE destination."""
    pacs_host: str | None = None
    """Host of the centre's PACS."""
    pacs_port: int | None = Field(default=None, ge=1, le=65535)
    """DICOM port of the centre's PACS."""
    pacs_retrieve_timeout: float = Field(default=300.0, gt=0)
    """Seconds to wait for a C-MOVE and for the moved instances to be indexed."""

    # --- Retention: storage as a cache of the PACS; the audit trail and rejected instances.
    storage_max_bytes: int | None = Field(default=None, ge=1)
    """Above this many bytes of instance files, the retention task evicts the files of the
    least recently used studies (their index rows stay; WADO-RS fetches them back from the
    PACS by C-MOVE). Unset: no size limit. Needs the ``pacs_*`` settings."""
    storage_max_age_days: float | None = Field(default=None, gt=0)
    """A study not used (received, or fetched back) for this many days has its files evicted.
    Unset: no age limit. Needs the ``pacs_*`` settings."""
    retention_interval: float = Field(default=3600.0, gt=0)
    """Seconds between two passes of the retention task in ``drimbox serve`` (eviction and the
    purges below); the first pass runs a minute after start."""
    pacs_restore_retry_after: int = Field(default=60, ge=1, le=86400)
    """``Retry-After`` (seconds) of the 503 a WADO-RS request gets when an evicted instance
    cannot be fetched back because the PACS is unreachable."""
    audit_retention_days: int = Field(default=3650, ge=30)
    """Audit rows older than this many days are deleted by the retention task (``drimbox store
    purge``); younger ones never are."""
    rejected_retention_days: int = Field(default=365, ge=1)
    """Instances removed by an IOCM rejection note are kept under ``rejected/`` this many days
    (from the note's arrival), then deleted by the retention task."""

    # --- Access control: PSC bearer tokens, roles (R10, R15, R22). ---
    psc_issuer: str | None = None
    """PSC issuer, e.g. ``https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet``. Unset
    with ``dicomweb_auth = psc``: the gateway starts, logs a warning, and answers bearer
    tokens with 503 (no token: 401)."""
    psc_discovery_path: str = "/.well-known/wallet-openid-configuration"
    """Appended to ``psc_issuer`` to fetch the discovery document (PSC's non-standard path)."""
    psc_client_id: str = ""
    """Our PSC client id: the client that authenticates to the introspection endpoint, and the
    audience a bearer JWT must name unless ``psc_audiences`` lists others."""
    psc_client_secret: SecretStr | None = None
    """Secret of ``psc_client_id`` with ``psc_client_auth = client_secret_basic`` or
    ``client_secret_post``: introspection and the login's token request. Never logged; refused
    with ``tls_client_auth`` and ``private_key_jwt`` (R21: no client secret)."""
    psc_client_auth: Literal["client_secret_basic", "client_secret_post", "tls_client_auth",
                             "private_key_jwt"] = "client_secret_basic"
    """How our client authenticates to PSC's token and introspection endpoints: the secret in
    an ``Authorization: Basic`` header or in the form, the TLS client certificate
    ``psc_client_cert`` (RFC 8705; PSC knows its subject DN), or a JWT signed with
    ``psc_client_assertion_key`` (RFC 7523; PSC knows its public key)."""
    psc_ca_bundle: Path | None = None
    """PEM bundle of the CAs trusted for PSC's https server certificate. Default: the system's
    CAs."""
    psc_client_cert: Path | None = None
    """PEM certificate (chain) presented to PSC on every call when set: the ``ORG_AUTH_CLI``
    certificate of ``tls_client_auth`` (CN = our client id), required by it."""
    psc_client_key: Path | None = None
    """PEM private key of ``psc_client_cert``."""
    psc_client_assertion_key: Path | None = None
    """PEM private key (RSA, or EC P-256 with ES256) signing the client assertions of
    ``private_key_jwt``, required by it; its public key is registered at PSC."""
    psc_client_assertion_kid: str | None = None
    """``kid`` header of the client assertions. Default: the key's RFC 7638 thumbprint."""
    psc_client_assertion_alg: Literal["RS256", "PS256", "ES256"] = "RS256"
    """Signature algorithm of the client assertions (ES256 needs an EC P-256 key)."""
    psc_client_assertion_audience: Literal["token_endpoint", "issuer"] = "token_endpoint"
    """``aud`` of the client assertions, for the token and the introspection requests alike:
    PSC's token endpoint URL (OpenID Connect Core 9) or its issuer."""
    psc_client_assertion_lifetime: int = Field(default=60, ge=5, le=600)
    """Seconds from a client assertion's ``iat`` to its ``exp``."""
    psc_audiences: list[str] = Field(default_factory=list)
    """PSC client ids whose access tokens we accept (``aud`` or ``azp``): in DRIM-M a consumer
    DRIMbox presents a token issued to *its own* client. Empty: ``psc_client_id`` only for
    JWTs; by introspection, any token PSC reports active (what R10 requires). JSON in the
    environment: ``["conso-client-1", "conso-client-2"]``."""
    psc_token_check: Literal["jwt", "introspection"] = "introspection"
    """How a bearer token is checked: ``introspection`` (RFC 7662 at PSC, what R10 asks:
    "introspected active"; sees logouts) or ``jwt`` (signature against PSC's JWKS, local)."""
    psc_min_acr: Literal["eidas1", "eidas2", "eidas3"] = "eidas1"
    """Lowest ``acr`` accepted on a bearer token."""
    psc_jwks_cache_seconds: float = Field(default=3600.0, gt=0)
    """How long PSC's signing keys are kept before a refetch (an unknown ``kid`` refetches)."""
    psc_introspection_cache_seconds: float = Field(default=30.0, ge=0)
    """How long an introspection answer is reused for the same token (0: ask every time)."""
    staff_roles: dict[str, list[str]] = Field(default_factory=dict)
    """Local roles by SubjectNameID or local user name, JSON in the environment:
    ``{"899700427885": ["viewer", "admin"]}``. ``viewer``: sees every study of this centre;
    ``admin``: admin endpoints (audit export, share links, outbox)."""

    @field_validator("psc_issuer")
    @classmethod
    def _psc_issuer(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.match(r"^(https?)://([^/:\s]+|\[[0-9a-fA-F:.]+\])(:\d+)?(/\S*)?$", v)
        if not m:
            raise ValueError(f"{v!r} is not an absolute http(s) URL")
        if m.group(1) == "http" and not _is_loopback(m.group(2).strip("[]")):
            raise ValueError(f"{v!r}: PSC must be reached over https (R12); http only on loopback")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _psc_credentials(self) -> Settings:
        if self.psc_client_secret and self.psc_client_auth in ("tls_client_auth",
                                                               "private_key_jwt"):
            raise ValueError(f"psc_client_secret is set but psc_client_auth = "
                             f"{self.psc_client_auth} never sends a secret (R21): remove it")
        if (self.psc_client_cert is None) != (self.psc_client_key is None):
            raise ValueError("psc_client_cert and psc_client_key go together")
        if self.psc_client_auth == "tls_client_auth" and self.psc_client_cert is None:
            raise ValueError("psc_client_auth = tls_client_auth needs psc_client_cert and "
                             "psc_client_key")
        if self.psc_client_auth == "private_key_jwt" and self.psc_client_assertion_key is None:
            raise ValueError("psc_client_auth = private_key_jwt needs psc_client_assertion_key")
        if self.dicomweb_auth == "psc" and self.psc_issuer:
            if not self.psc_client_id:
                raise ValueError("psc_issuer is set but psc_client_id is not (the token audience)")
            if (self.psc_token_check == "introspection" and not self.psc_client_secret
                    and self.psc_client_auth in ("client_secret_basic", "client_secret_post")):
                raise ValueError(f"psc_token_check = introspection with psc_client_auth = "
                                 f"{self.psc_client_auth} needs psc_client_secret")
        return self

    # --- Viewer login sessions and share links (R15). The PSC client above is
    # also the viewer's relying party (authorization code + PKCE).
    viewer_session_hours: float = Field(default=8.0, gt=0, le=24 * 7)
    """Lifetime of a viewer session (PSC login or share link) from its creation."""
    viewer_session_idle_minutes: float = Field(default=30.0, gt=0)
    """A viewer session unused for this long ends."""
    share_link_days: int = Field(default=30, ge=1, le=365)
    """Default validity of a share link (``drimbox share --days``)."""
    share_link_max_days: int = Field(default=365, ge=1, le=3650)
    """Longest validity a share link may be given."""
    share_max_attempts: int = Field(default=5, ge=1, le=100)
    """Wrong birth dates on a share link before it is locked."""
    share_lock_minutes: float = Field(default=15.0, gt=0)
    """How long a share link stays locked after ``share_max_attempts`` wrong birth dates."""
    share_max_failures_per_address: int = Field(default=20, ge=1, le=10_000)
    """Failed share-link openings (an unknown link, a wrong birth date) from one client
    address, over every link, within ``failure_window_minutes``, before that address is locked
    out of share links for ``failure_lock_minutes`` (429 with ``Retry-After``)."""
    login_max_failures_per_address: int = Field(default=10, ge=1, le=10_000)
    """Failed PSC logins (a callback refused for any reason) from one client address within
    ``failure_window_minutes`` before that address is locked out of ``/auth/login`` and
    ``/auth/callback`` for ``failure_lock_minutes`` (429 with ``Retry-After``)."""
    failure_window_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    """The sliding window in which failures per address are counted."""
    failure_lock_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    """How long an address that reached a failure limit is locked out."""

    # --- DICOMweb work limits (rendered images, frame lists): what one request may cost. ---
    render_max_size: int = Field(default=4096, ge=16, le=16384)
    """Largest rendered image (WADO-RS rendered and thumbnail), in pixels on each side: a
    ``viewport`` wider or taller is 400; an image bigger than this with no viewport is scaled
    down to fit."""
    render_max_source_pixels: int = Field(default=33_554_432, ge=1, le=268_435_456)
    """Largest stored frame (Rows x Columns) the server decodes to render it; a bigger one is
    400 (its frames and the instance can still be retrieved as DICOM)."""
    stow_max_part_bytes: int = Field(default=4 * 1024**3, ge=1024)
    """The largest part (one Part 10 file) a STOW-RS request may carry. A bigger part stops
    the request at once with 413 naming this setting; the parts before it are stored and
    listed in the error."""
    max_frames_per_request: int = Field(default=1000, ge=1, le=100_000)
    """Longest frame list of ``.../frames/{list}`` (WADO-RS frames and rendered frames); a
    longer list is 400."""

    @model_validator(mode="after")
    def _psc_login(self) -> Settings:
        if self.dicomweb_auth != "psc":
            return self
        public = self.effective_public_url
        host = re.sub(r"^https?://([^/:]+|\[[^\]]+\]).*$", r"\1", public).strip("[]")
        if public.startswith("http://") and not _is_loopback(host):
            raise ValueError(
                f"public_url {public} is plain http on a non-loopback host: session cookies "
                "must be Secure (R12); use https"
            )
        return self

    @property
    def cookies_secure(self) -> bool:
        """Session cookies are Secure (and ``__Host-`` prefixed) unless on plain-http loopback."""
        return self.effective_public_url.startswith("https://")

    # --- Roles: DRIM-M Source and/or Consommatrice (R13-R16; gateway/consumer/). ---
    roles: Literal["source", "consumer", "both"] = "source"
    """What this DRIMbox does: ``source`` (publishes and serves its centre's exams: the DICOM
    SCP, the HL7 listener, the publication outbox, DICOMweb under ``/dicom-web``, the R18
    viewer link, share links), ``consumer`` (a clinician's DRIMbox: the appel contextuel, the
    pages under ``/consumer``, the consumer's DICOMweb and the viewer over retrieved studies,
    the export into the PACS), or ``both``. The routes of a role that is off answer 404 and
    its listeners do not open."""

    @property
    def consumer_enabled(self) -> bool:
        return self.roles in ("consumer", "both")

    @property
    def source_enabled(self) -> bool:
        return self.roles in ("source", "both")

    # --- Consumer: the DMP search of a patient's prior exams (R16; gateway/consumer/search.py).
    dmp_patients_url: str | None = None
    """The DMP's ``/patients`` service, where the consumer sends TD0.2 (the patient's DMP access
    check) before it searches. Default: ``dmp_registry_url`` with its last path segment
    replaced by ``patients`` (the DMP's layout, SPEC 2.6)."""
    consumer_search_max_results: int = Field(default=200, ge=1, le=10000)
    """At most this many priors are listed on the consumer page (newest first); the page says
    when the DMP returned more."""

    @field_validator("dmp_patients_url")
    @classmethod
    def _dmp_patients_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an https:// URL (every flow is encrypted, R7/R12)")
        return v

    # --- Publication workflow and outbox (R4-R8, gateway/publication/workflow.py). ---
    auto_publish: bool | None = None
    """Publish each study that becomes stable with a publishable INS (a new KOS replaces the
    previous one, RPLC). Default: on when a DMP is configured (``dmp_registry_url`` and
    ``dmp_repository_url``), off otherwise."""
    publication_trigger: Literal["stable", "report"] | None = None
    """What publishes a study automatically (R1, R4): ``stable`` - the study became
    stable (``auto_publish``); ``report`` - an accepted report (CR) from the RIS: stability
    alone then publishes nothing for a study without an accepted CR, and a study that has one
    is re-published (RPLC) on its next stability when instances were added. An accepted CR
    publishes (or replaces, with its metadata) in both modes. Default: ``report`` when
    ``hl7_port`` is set, ``stable`` otherwise."""
    viewer_link_template: str = "{public_url}/viewer/source?studyUID={study_uid}&idCDA={id_cda}"
    """The R18 link to a study's images in our viewer, shown by ``drimbox study show`` and
    ``GET /admin/studies/{uid}``; ``{public_url}``, ``{study_uid}`` and ``{id_cda}`` (the
    idCDA of the study's last accepted CR) are filled in."""
    outbox_backoff_initial: float = Field(default=5.0, gt=0)
    """Seconds before the first retry of a publication the DMP did not answer; doubled at each
    failure (with jitter) up to ``outbox_backoff_max``."""
    outbox_backoff_max: float = Field(default=900.0, gt=0)
    """Longest wait between two retries of one publication."""
    outbox_poll_interval: float = Field(default=2.0, gt=0)
    """How often the outbox worker looks for due rows (it also wakes up when this process
    queues one)."""
    outbox_lease_seconds: float | None = Field(default=None, gt=0)
    """How long a row being sent stays claimed by one process; after that another process
    (or the same one after a restart) takes it again. Default ``4 * dmp_timeout + 30``. A
    process that died on this host is detected at once at the next start."""
    dmp_author_id: str = ""
    """VIHF ``NameID`` of a publication without a report (a study that became stable): the
    national id of the practitioner the centre publishes for. Default: ``dmp_structure_id``."""
    dmp_author_name: str = ""
    """VIHF ``subject-id`` ("Prénom Nom") of that author. Default: ``institution_name``."""
    dmp_author_profession: str = "10"
    """VIHF role: the author's profession code (TRE_G15, ``10`` médecin)."""
    dmp_author_specialty: str = ""
    """VIHF role: the author's savoir-faire code (TRE_R38, e.g. radiology), '' for none."""
    dmp_content_type: str = "04"
    """``XDSSubmissionSet.contentTypeCode`` (TRE_R209-TypeActivite, scheme 1.2.250.1.213.2.2;
    the MHD ``ihe-designationType``); ``04`` is the ANS sample's value: set the one your DMP
    integration was validated with."""

    # --- The Annuaire Santé (adapters/annuaire, docs/annuaire.md). ---
    annuaire_url: str | None = None
    """Base URL of the Annuaire Santé FHIR API (production:
    ``https://gateway.api.esante.gouv.fr/fhir/v2``). Set: a report's author is completed from
    it (name, profession, specialty, structure) and MSSanté recipients named only by RPPS get
    their address from it. Unset: neither."""
    annuaire_api_key: SecretStr | None = None
    """The centre's API key of the Annuaire Santé API (sent as ``ESANTE-API-KEY``)."""
    annuaire_timeout: float = Field(default=10.0, gt=0, le=300)
    """Seconds an Annuaire Santé request may take."""
    annuaire_cache_seconds: float = Field(default=86400.0, ge=0)
    """How long an answer (a professional, a structure, or that one is unknown) is kept in
    memory before it is asked again."""
    annuaire_ca_bundle: Path | None = None
    """PEM CAs trusted for the Annuaire Santé's https server. Default: the system's CAs."""

    # --- MSSanté delivery of reports (gateway/mssante, adapters/mssante, docs/mssante.md). ---
    mssante_smtp_host: str | None = None
    """The centre's MSSanté operator's SMTP server (submission, STARTTLS). Set with
    ``mssante_sender``: reports flagged DESTMSSANTEPS / DESTMSSANTEPAT are sent."""
    mssante_smtp_port: int = Field(default=587, ge=1, le=65535)
    """Its port (submission with STARTTLS)."""
    mssante_sender: str | None = None
    """The MSSanté address the messages come from: the centre's applicative mailbox (BAL
    applicative), e.g. ``drimbox@centre.mssante.fr``."""
    mssante_client_cert: Path | None = None
    """PEM certificate (chain) presented in the TLS handshake after STARTTLS: the applicative
    mailbox's IGC-Santé certificate (ORG authentication). ``drimbox pki init`` issues a test one."""
    mssante_client_key: Path | None = None
    """PEM private key of ``mssante_client_cert``."""
    mssante_ca_bundle: Path | None = None
    """PEM CAs trusted for the operator's SMTP server certificate. Default: the system's."""
    mssante_timeout: float = Field(default=60.0, gt=0, le=600)
    """Seconds the SMTP server may stay silent before an attempt is abandoned (retried)."""
    mssante_backoff_initial: float = Field(default=30.0, gt=0)
    """Wait before the first retry of a message the server did not take (4xx, connection);
    doubled at each retry up to ``mssante_backoff_max``, with jitter."""
    mssante_backoff_max: float = Field(default=3600.0, gt=0)
    """The longest wait between two attempts of a message."""
    mssante_poll_interval: float = Field(default=2.0, gt=0, le=300)
    """How often the MSSanté outbox looks for due messages when nothing woke it."""

    # --- Consumer: the ANS whitelist (R11; adapters/whitelist, docs/consumer.md). ---
    whitelist_source: str | None = None
    """Where the signed ANS whitelist is fetched: an ``https://`` URL or a local file path.
    Unset: no list, so no Source DRIMbox is trusted."""
    whitelist_refresh_hours: float = Field(default=24.0, gt=0, le=24 * 7)
    """How often ``drimbox serve`` fetches the list again (DRIM-M: daily). After a failure it
    retries every hour (or this interval, if shorter), keeping the last good list."""
    whitelist_trust_anchors: Path | None = None
    """PEM file of the CA certificates the signer must chain to: the IGC-Santé root and the
    ORG intermediate (TEST: ``TEST AC RACINE IGC-SANTE ELEMENTAIRE`` and ``TEST AC IGC-SANTE
    ELEMENTAIRE ORGANISATIONS``). Required with ``whitelist_source`` (unless unsigned lists are
    allowed for development)."""
    whitelist_signer_cn: str = "Liste Blanche DRIM-M"
    """CN the signing certificate must have."""
    whitelist_signer_ou: str = "318751275100020"
    """OU the signing certificate must have (the ANS's SIRET)."""
    whitelist_crls: list[str] = Field(default_factory=list)
    """CRLs checked at each refresh (file paths or http(s) URLs, DER or PEM), e.g. IGC-Santé
    TEST's ``http://igc-sante.esante.gouv.fr/CRL/ACI-EL-ORG-TEST.crl``: a current CRL signed by
    the signer's issuer must be among them and must not list the signer, or the list is
    refused. Empty: revocation is not checked (a warning at start-up). JSON in the
    environment."""
    whitelist_tls_ca_bundle: Path | None = None
    """PEM bundle of the CAs trusted for the https server of ``whitelist_source``. Default: the
    system's CAs."""
    whitelist_timeout: float = Field(default=30.0, gt=0)
    """Seconds before a whitelist download is abandoned (the last good list stays)."""
    whitelist_insecure_allow_unsigned: bool = False
    """DEVELOPMENT ONLY: also trust an *unsigned* list (a signed one is still verified).
    Accepted only with a local file as ``whitelist_source`` and the HTTP side on a loopback
    address; logs a warning at start-up and at each load."""

    @field_validator("whitelist_source")
    @classmethod
    def _whitelist_source(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if "://" in v:
            if not re.match(r"^https://[^/\s]+(/\S*)?$", v, re.I):
                raise ValueError(f"{v!r}: the whitelist is fetched over https:// only (or from "
                                 "a local file path)")
        return v

    @field_validator("whitelist_crls")
    @classmethod
    def _whitelist_crls(cls, v: list[str]) -> list[str]:
        for item in v:
            if "://" in item and not re.match(r"^https?://[^/\s]+(/\S*)?$", item, re.I):
                raise ValueError(f"{item!r}: a CRL is a file path or an http(s) URL")
        return [item.strip() for item in v if item.strip()]

    @model_validator(mode="after")
    def _consumer_client_certificate(self) -> Settings:
        if self.consumer_client_certificate == "whitelisted":
            if self.listener_tls("http") != "on" or self.http_tls_client_auth == "none":
                raise ValueError("consumer_client_certificate = whitelisted needs HTTPS here "
                                 "(http_tls = on) asking for client certificates "
                                 "(http_tls_client_auth = optional or required)")
            if not self.whitelist_source:
                raise ValueError("consumer_client_certificate = whitelisted needs the ANS "
                                 "whitelist (whitelist_source)")
        return self

    @model_validator(mode="after")
    def _whitelist(self) -> Settings:
        if self.whitelist_insecure_allow_unsigned:
            if not self.whitelist_source or "://" in self.whitelist_source:
                raise ValueError("whitelist_insecure_allow_unsigned needs a local file as "
                                 "whitelist_source (never a URL)")
            if not _is_loopback(self.effective_http_host):
                raise ValueError(
                    f"whitelist_insecure_allow_unsigned: HTTP host {self.effective_http_host} is "
                    "not a loopback address; an unsigned whitelist is for development only")
        elif self.whitelist_source and self.whitelist_trust_anchors is None:
            raise ValueError("whitelist_source is set but whitelist_trust_anchors is not: the "
                             "list's signature cannot be verified (R11)")
        return self

    # --- Consumer: export of retrieved studies into the centre's PACS (R17 import;
    # gateway/consumer/export.py, adapters/pacs/export.py, docs/consumer.md). ---
    export_destination: Literal["cstore", "stow", "orthanc"] | None = None
    """Where ``POST /consumer/studies/{id}/export`` and ``drimbox consumer export`` send a
    retrieved study: ``cstore`` (DICOM C-STORE), ``stow`` (STOW-RS) or ``orthanc`` (Orthanc's
    REST API). Unset: export is off (the route answers 503)."""
    export_ae_title: str | None = None
    """C-STORE: the PACS's AE title. Default ``pacs_ae_title``."""
    export_host: str | None = None
    """C-STORE: the PACS's host. Default ``pacs_host``."""
    export_port: int | None = Field(default=None, ge=1, le=65535)
    """C-STORE: the PACS's DICOM port. Default ``pacs_port``."""
    export_stow_url: str | None = None
    """STOW-RS: the PACS's DICOMweb base URL (``POST {url}/studies``; QIDO-RS
    ``{url}/studies/{uid}/instances`` to skip what it has), e.g.
    ``http://pacs:8042/dicom-web``."""
    export_orthanc_url: str | None = None
    """Orthanc: the base URL of its REST API, e.g. ``http://pacs:8042``."""
    export_username: str | None = None
    """HTTP Basic user for ``export_stow_url`` and ``export_orthanc_url``; unset: none."""
    export_password: SecretStr | None = None
    """Password of ``export_username``. Never logged."""
    export_coerce_identifiers: bool = True
    """Replace the instances' PatientID and IssuerOfPatientID (and its qualifiers) by the local
    ones of the appel contextuel (``PatientID``, ``PatientIDIssuer``), keeping the INS in
    Other Patient IDs Sequence; only for instances that carry the context's INS. Off: the
    instances go exactly as retrieved."""
    export_timeout: float = Field(default=60.0, gt=0)
    """Seconds to wait for the PACS at each step (association, C-STORE response, HTTP)."""

    @field_validator("export_stow_url", "export_orthanc_url")
    @classmethod
    def _export_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v, re.I):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v

    @model_validator(mode="after")
    def _export(self) -> Settings:
        if self.export_ae_title:
            self.export_ae_title = validate_ae_title(self.export_ae_title)
        if self.export_destination == "cstore" and not all(self.effective_export_cstore):
            raise ValueError("export_destination cstore needs export_ae_title, export_host and "
                             "export_port (or pacs_ae_title, pacs_host and pacs_port)")
        if self.export_destination == "stow" and not self.export_stow_url:
            raise ValueError("export_destination stow needs export_stow_url")
        if self.export_destination == "orthanc" and not self.export_orthanc_url:
            raise ValueError("export_destination orthanc needs export_orthanc_url")
        return self

    @property
    def effective_export_cstore(self) -> tuple[str | None, str | None, int | None]:
        """(AE title, host, port) of the C-STORE export destination."""
        return (self.export_ae_title or self.pacs_ae_title, self.export_host or self.pacs_host,
                self.export_port or self.pacs_port)

    # --- Consumer: retrieval from Source DRIMboxes and the local cache (R17; retrieve). ---
    consumer_source_client_cert: Path | None = None
    """PEM certificate the consumer presents to Source DRIMboxes (mutual TLS, the structure's
    ORG authentication certificate, R7/R17). Default: ``dmp_client_cert``."""
    consumer_source_client_key: Path | None = None
    """PEM private key of ``consumer_source_client_cert``. Default: ``dmp_client_key``."""
    consumer_source_ca_bundle: Path | None = None
    """PEM bundle of the CAs trusted for Source DRIMboxes' https servers (IGC-Santé). Default:
    ``dmp_ca_bundle``, else the system's CAs."""
    consumer_source_timeout: float = Field(default=60.0, gt=0)
    """Seconds a Source may stay silent (connect, or between two reads) before a series'
    attempt is abandoned (then retried)."""
    consumer_retrieve_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts per series when a Source answers 5xx or the connection fails or is cut."""
    consumer_retrieve_backoff_seconds: float = Field(default=2.0, ge=0, le=300)
    """Wait before the second attempt of a series; doubled at each further attempt."""
    consumer_retrieve_parallel_series: int = Field(default=4, ge=1, le=32)
    """Series retrieved at the same time, over all retrievals of the process."""
    consumer_cache_max_bytes: int = Field(default=20 * 1024**3, ge=1)
    """Size limit of the retrieved studies kept under ``<data_dir>/consumer-cache``. Past it,
    the least recently used studies are evicted, never one being retrieved or in use."""
    consumer_cache_in_use_minutes: float = Field(default=30.0, gt=0)
    """A cached study read by the viewer within this time is in use: never evicted."""
    consumer_trust_sources_without_whitelist: bool = False
    """DEVELOPMENT ONLY: without a verified ANS whitelist (``whitelist_source`` unset), trust
    every https Source. Off: without a list every series is refused (R11)."""

    # --- IHE XDM archives (R23): import checks. ---
    xdm_signature_ca_bundle: Path | None = None
    """PEM bundle of the CAs whose certificates may sign an imported XDM archive (SIGN_*.XML;
    IGC-Santé ORG signature ACs). Default: ``dmp_ca_bundle``."""
    xdm_require_signature: bool = True
    """Refuse an XDM archive that is not signed or whose signature does not verify. Off
    (DEVELOPMENT ONLY): such an archive is imported, its KOS and documents still checked
    against METADATA.XML's sizes and hashes."""
    xdm_max_upload_bytes: int = Field(default=512 * 1024**2, ge=1024)
    """Largest XDM archive the consumer page accepts as an upload."""

    @field_validator("query_retrieve_callers")
    @classmethod
    def _callers(cls, v: list[str]) -> list[str]:
        return [c.strip() if c.strip() == "*" else validate_ae_title(c) for c in v]

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return validate_ae_title(v)

    @field_validator("repository_oid", "accession_issuer_oid")
    @classmethod
    def _repository_oid(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[0-2](\.(0|[1-9][0-9]*))+$", v):
            raise ValueError(f"{v!r} is not an OID")
        return v

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an absolute http(s) URL")
        return v.rstrip("/")

    @field_validator("dmp_registry_url", "dmp_repository_url", "dmp_fhir_url")
    @classmethod
    def _dmp_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^https://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an https:// URL (every flow is encrypted, R7/R12)")
        return v

    @field_validator("annuaire_url")
    @classmethod
    def _annuaire_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.match(r"^(https?)://([^/\s:]+|\[[^\]]+\])(:[0-9]+)?(/\S*)?$", v)
        if m is None:
            raise ValueError(f"{v!r} is not an http(s) URL")
        if m.group(1) == "http" and not _is_loopback(m.group(2).strip("[]")):
            raise ValueError(f"{v!r}: plain http only on loopback (a simulator); the Annuaire "
                             "Santé is https (R12)")
        return v.rstrip("/")

    @field_validator("mssante_sender")
    @classmethod
    def _mssante_sender(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$", v):
            raise ValueError(f"{v!r} is not an e-mail address")
        return v

    @model_validator(mode="after")
    def _mssante_pairs(self) -> Settings:
        if (self.mssante_client_cert is None) != (self.mssante_client_key is None):
            raise ValueError("mssante_client_cert and mssante_client_key go together")
        if bool(self.mssante_smtp_host) != bool(self.mssante_sender):
            raise ValueError("mssante_smtp_host and mssante_sender go together")
        if self.annuaire_url and self.annuaire_api_key is None:
            raise ValueError("annuaire_url needs annuaire_api_key (ESANTE-API-KEY)")
        return self

    @model_validator(mode="after")
    def _dmp_pairs(self) -> Settings:
        for cert, key in (("dmp_client_cert", "dmp_client_key"), ("dmp_sign_cert", "dmp_sign_key")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{cert} and {key} go together")
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return out

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("only sqlite:// and postgresql:// URLs are supported")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v[len("postgresql://") :]
        return v

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.dicom_port and self.http_port and self.dicom_port == self.http_port:
            raise ValueError("dicom_port and http_port must differ")
        if self.dicomweb_auth == "none" and not _is_loopback(self.effective_http_host):
            raise ValueError(
                f"HTTP host {self.effective_http_host} is not a loopback address: anonymous DICOMweb "
                "(dicomweb_auth = none) would expose patient data"
            )
        if self.console_auth == "none" and not _is_loopback(self.effective_http_host):
            raise ValueError(
                f"HTTP host {self.effective_http_host} is not a loopback address: the operator "
                "console without login (console_auth = none) would expose patient data"
            )
        if self.restrict_callers and not self.peers:
            raise ValueError("restrict_callers is on but no peers are configured")
        return self

    @model_validator(mode="after")
    def _pacs_together(self) -> Settings:
        given = [n for n in ("pacs_ae_title", "pacs_host", "pacs_port") if getattr(self, n)]
        if given and len(given) != 3:
            raise ValueError("pacs_ae_title, pacs_host and pacs_port go together")
        if self.pacs_ae_title:
            self.pacs_ae_title = validate_ae_title(self.pacs_ae_title)
        if self.hl7_port and self.hl7_port in (self.dicom_port, self.http_port):
            raise ValueError("hl7_port must differ from dicom_port and http_port")
        return self

    @model_validator(mode="after")
    def _eviction_needs_pacs(self) -> Settings:
        if self.eviction_enabled and not self.pacs_configured:
            raise ValueError("storage_max_bytes / storage_max_age_days evict files that only the "
                             "PACS can give back: set pacs_ae_title, pacs_host and pacs_port")
        return self

    @property
    def pacs_configured(self) -> bool:
        return bool(self.pacs_ae_title and self.pacs_host and self.pacs_port)

    @property
    def eviction_enabled(self) -> bool:
        return self.storage_max_bytes is not None or self.storage_max_age_days is not None

    @property
    def effective_hl7_host(self) -> str:
        return self.hl7_host or self.host

    @property
    def mssante_configured(self) -> bool:
        """An MSSanté SMTP server and sender are set: the MSSanté outbox worker runs."""
        return bool(self.mssante_smtp_host and self.mssante_sender)

    @property
    def dmp_configured(self) -> bool:
        """A DMP is configured (XDS: registry and repository endpoints; MHD: the FHIR base
        URL): the outbox worker runs."""
        if self.dmp_transport == "mhd":
            return bool(self.dmp_fhir_url)
        return bool(self.dmp_registry_url and self.dmp_repository_url)

    @property
    def effective_publication_trigger(self) -> str:
        if self.publication_trigger is not None:
            return self.publication_trigger
        return "report" if self.hl7_port else "stable"

    @property
    def effective_auto_publish(self) -> bool:
        return self.dmp_configured if self.auto_publish is None else self.auto_publish

    @property
    def effective_outbox_lease_seconds(self) -> float:
        return self.outbox_lease_seconds or 4 * self.dmp_timeout + 30

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def effective_http_host(self) -> str:
        return self.http_host or self.host

    @property
    def effective_viewer_dir(self) -> Path:
        return self.viewer_dir if self.viewer_dir is not None else DEFAULT_VIEWER_DIR

    @property
    def effective_public_url(self) -> str:
        scheme = "https" if self.listener_tls("http") == "on" else "http"
        return self.public_url or f"{scheme}://{self.effective_http_host}:{self.http_port}"

    def listener_tls(self, listener: str) -> str:
        """``on``, ``off`` or ``proxy`` for ``http``, ``dicom`` or ``hl7``."""
        mode = getattr(self, f"{listener}_tls")
        return mode or ("on" if self.tls_cert is not None else "off")

    def listener_client_auth(self, listener: str) -> str:
        return str(getattr(self, f"{listener}_tls_client_auth"))

    def listeners(self) -> list[tuple[str, str, int]]:
        """The listeners ``drimbox serve`` opens: (name, host, port)."""
        out = [("http", self.effective_http_host, self.http_port)]
        if self.source_enabled:
            out.insert(0, ("dicom", self.host, self.dicom_port))
            if self.hl7_port:
                out.append(("hl7", self.effective_hl7_host, self.hl7_port))
        return out

    @model_validator(mode="after")
    def _listeners_tls(self) -> Settings:
        """R12: a listener off loopback is encrypted, by us or by a proxy in front of it.
        Defined last: the other rules name their own settings first."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        for name, host, port in self.listeners():
            mode = self.listener_tls(name)
            label = {"http": "HTTP", "dicom": "DICOM", "hl7": "HL7 MLLP"}[name]
            if mode == "on" and self.tls_cert is None:
                raise ValueError(f"{name}_tls = on needs tls_cert and tls_key (the {label} "
                                 "listener's certificate)")
            auth = self.listener_client_auth(name)
            if mode == "on" and auth != "none" and self.tls_ca_bundle is None:
                raise ValueError(f"{name}_tls_client_auth = {auth} needs tls_ca_bundle (the CAs "
                                 f"of the {label} clients' certificates)")
            if mode == "off" and not _is_loopback(host):
                raise ValueError(
                    f"the {label} listener on {host}:{port} is not a loopback address and "
                    f"{name}_tls is off: every flow is encrypted (R12). Set tls_cert and "
                    f"tls_key ({name}_tls = on), or {name}_tls = proxy when a proxy in front "
                    "of it terminates TLS")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = os.environ.get("DRIMBOX_CONFIG")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        name = ".".join(str(p) for p in e["loc"]) or "settings"
        env = "DRIMBOX_" + str(e["loc"][0]).upper() if e["loc"] else ""
        lines.append(f"setting {name!r} ({env}): {e['msg']}")
    return "\n".join(lines)


#: ``DRIMBOX_*`` variables that are not settings: the config file path, and the test suite's.
_NOT_SETTINGS = ("DRIMBOX_CONFIG", "DRIMBOX_TEST_")


def unknown_environment_variables(environ: dict[str, str] | None = None) -> list[str]:
    """``DRIMBOX_*`` variables that name no setting (a typo would otherwise be ignored)."""
    environ = dict(os.environ) if environ is None else environ
    known = {f"DRIMBOX_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.startswith("DRIMBOX_")
        and name not in known
        and not name.startswith(_NOT_SETTINGS)
    )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, raising :class:`ConfigError` with a readable message on any error.

    An unknown ``DRIMBOX_*`` environment variable is an error too, as an unknown key in the
    TOML file is: a misspelled ``DRIMBOX_RESTRICT_CALLERS`` must not silently open the door.
    """
    unknown = unknown_environment_variables()
    if unknown:
        raise ConfigError(
            "unknown environment variable(s) " + ", ".join(unknown)
            + " (no such setting; see docs/configuration.md)"
        )
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        os.environ["DRIMBOX_CONFIG"] = str(path)
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"config file {os.environ.get('DRIMBOX_CONFIG', '')!r} is not valid TOML: {err}"
        ) from None
    except ValueError as err:  # e.g. a DRIMBOX_PEERS value that is not JSON
        raise ConfigError(f"configuration: {err}") from None
