"""``XdsTransport``: the publication outbox's :class:`~gateway.publication.transport.DocumentTransport`
over the DMP's XDS.b transactions (R4-R8).

==========  ==========================================================================
submit      ITI-41 Provide and Register with the Signature01 document (R4, R5); with
            ``replaces_*`` set, an RPLC association on the previous entryUUID (R8)
find        ITI-18 GetDocuments by uniqueId (any status)
withdraw    ITI-57 UpdateAvailabilityStatus Approved → Deprecated (R8 un-publication)
==========  ==========================================================================

Errors follow the seam's contract: :class:`~adapters.dmp.errors.DmpTransientError` (the DMP may
or may not have acted: connection, TLS, timeout, 5xx, SOAP Receiver fault, unreadable answer)
becomes :class:`~gateway.publication.transport.TransportUnavailable`;
:class:`~adapters.dmp.errors.DmpRefusedError` (RegistryResponse Failure, WS-Security fault)
becomes :class:`~gateway.publication.transport.TransportRefused` with each XDS error code and
codeContext.

The VIHF of a publication without a report (R6; SPEC 3.4, FAQ 8801 "build it from the author and
the structure") comes from the settings: the structure (``dmp_structure_id``,
``dmp_activity_sector``), the author the centre publishes for (``dmp_author_*``) and the LPS
identifiers of the DMP homologation (``dmp_lps_*``). Each call gets a fresh submission set and
Signature01 uniqueId; the KOS uniqueId and bytes are the outbox row's, unchanged.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pydicom.uid import generate_uid

from adapters.dmp.client import DmpClient
from adapters.dmp.errors import DmpRefusedError, DmpTransientError, XdsError
from adapters.dmp.vihf import Role, VihfContext
from gateway.identity.ins import Ins
from gateway.manifest.xds_metadata import (
    SCHEME_CONTENT_TYPE,
    Author,
    Code,
    SubmissionSet,
    submission_set,
    xds_patient_id,
)
from gateway.publication.transport import (
    OutgoingDocument,
    Refusal,
    RegisteredDocument,
    SubmitReceipt,
    TransportRefused,
    TransportUnavailable,
)

PROFESSION_SCHEME = "1.2.250.1.71.1.2.7"  # TRE_G15 profession
SPECIALTY_SCHEME = "1.2.250.1.71.4.2.5"  # TRE_R38 savoir-faire
CONTENT_TYPE_NAMES = {"04": "Hospitalisation de jour"}


@dataclass(frozen=True, slots=True)
class SystemPublisher:
    """Who the VIHF says publishes when no report names an author (R6)."""

    author_id: str
    author_name: str
    structure_id: str
    activity_sector: str
    roles: tuple[Role, ...]
    lps_id: str
    lps_name: str
    lps_version: str
    lps_homologation_id: str
    authentication_mode: str = "INDIRECTE"
    source_id: str = ""
    content_type: Code = Code("04", SCHEME_CONTENT_TYPE, "Hospitalisation de jour")
    author: Author = Author()
    """The submission set's author for a withdrawal (a publication uses the entry's)."""

    def vihf(self, patient: Ins, author: Author | None = None) -> VihfContext:
        """The VIHF for ``patient``; its subject is the DocumentEntry's ``author`` when that is
        a professional (a publication from a CR: the report's author, FAQ 8801),
        the configured ``dmp_author_*`` otherwise."""
        subject_id, subject_name, roles = self.author_id, self.author_name, self.roles
        person = (author.person if author is not None else "").split("^")
        if person[0]:
            subject_id = person[0]
            named = " ".join(p for p in (person[2:3] + person[1:2]) if p)
            subject_name = named or subject_id
            roles = author_roles(author.specialty) or roles
        return VihfContext(
            subject_id=subject_id, subject_name=subject_name,
            structure_id=self.structure_id, activity_sector=self.activity_sector,
            roles=roles, patient_id=xds_patient_id(patient), lps_id=self.lps_id,
            lps_name=self.lps_name, lps_version=self.lps_version,
            lps_homologation_id=self.lps_homologation_id,
            authentication_mode=self.authentication_mode)

    @classmethod
    def from_settings(cls, settings) -> SystemPublisher:  # noqa: ANN001 - gateway.config.Settings
        """The publisher the settings describe; ``ValueError`` names every missing value (the
        DMP refuses a VIHF with an empty attribute)."""
        author_id = settings.dmp_author_id or settings.dmp_structure_id
        author_name = settings.dmp_author_name or settings.institution_name
        source_id = settings.dmp_source_id or settings.repository_oid or ""
        missing = [name for name, value in (
            ("dmp_structure_id", settings.dmp_structure_id),
            ("dmp_activity_sector", settings.dmp_activity_sector),
            ("dmp_author_id (or dmp_structure_id)", author_id),
            ("dmp_author_name (or institution_name)", author_name),
            ("dmp_lps_id", settings.dmp_lps_id),
            ("dmp_lps_homologation_id", settings.dmp_lps_homologation_id),
            ("dmp_source_id (or repository_oid)", source_id),
        ) if not value]
        if missing:
            raise ValueError("the DMP publication VIHF needs: " + ", ".join(missing))
        roles = [Role(settings.dmp_author_profession, PROFESSION_SCHEME)]
        if settings.dmp_author_specialty:
            roles.append(Role(settings.dmp_author_specialty, SPECIALTY_SCHEME))
        content = settings.dmp_content_type
        from gateway.manifest.manifests import structure_author

        return cls(author_id=author_id, author_name=author_name,
                   structure_id=settings.dmp_structure_id,
                   activity_sector=settings.dmp_activity_sector, roles=tuple(roles),
                   lps_id=settings.dmp_lps_id, lps_name=settings.dmp_lps_name,
                   lps_version=settings.dmp_lps_version,
                   lps_homologation_id=settings.dmp_lps_homologation_id,
                   authentication_mode=settings.dmp_authentication_mode, source_id=source_id,
                   content_type=Code(content, SCHEME_CONTENT_TYPE,
                                     CONTENT_TYPE_NAMES.get(content, content)),
                   author=structure_author(settings))


def author_roles(specialty: str) -> tuple[Role, ...]:
    """The VIHF roles of an XDS ``authorSpecialty`` (JDV_J01, ``G15_10/SM44^display^OID``, from
    the CR or the Annuaire Santé): the TRE_G15 profession and, for a doctor or a pharmacist,
    the TRE_R38 specialty (R6). () when the value is not of that form."""
    code = specialty.split("^", 1)[0].strip()
    if not code.startswith("G15_"):
        return ()
    profession, _, savoir_faire = code[4:].partition("/")
    if not profession:
        return ()
    roles = [Role(profession, PROFESSION_SCHEME)]
    if savoir_faire:
        roles.append(Role(savoir_faire, SPECIALTY_SCHEME))
    return tuple(roles)


def _refusals(errors: list[XdsError]) -> list[Refusal]:
    return [Refusal(e.code, e.context, e.location) for e in errors if not e.is_warning] or [
        Refusal("XDSRegistryError", "refused without an error")]


class XdsTransport:
    """:class:`~gateway.publication.transport.DocumentTransport` over :class:`DmpClient`."""

    def __init__(self, client: DmpClient, publisher: SystemPublisher) -> None:
        self.client = client
        self.publisher = publisher

    @classmethod
    def from_settings(cls, settings) -> XdsTransport:  # noqa: ANN001 - gateway.config.Settings
        publisher = SystemPublisher.from_settings(settings)
        return cls(DmpClient.from_settings(settings), publisher)

    def _call(self, what: str, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        try:
            return fn(*args, **kwargs)
        except DmpRefusedError as exc:
            raise TransportRefused(_refusals(exc.errors)) from exc
        except DmpTransientError as exc:
            raise TransportUnavailable(f"{what}: {exc}") from exc

    def submit(self, doc: OutgoingDocument) -> SubmitReceipt:
        """ITI-41 (RPLC when ``doc`` replaces a document, R8); the receipt's entryUUID is read
        back with GetDocuments (an ITI-41 answer carries none)."""
        replaces = doc.replaces_entry_uuid
        if doc.replaces_unique_id and not replaces:
            old = self.find(doc.patient, doc.replaces_unique_id)
            if old is None:
                raise TransportRefused([Refusal(
                    "XDSRegistryError", f"the replaced document {doc.replaces_unique_id} is not "
                    "in the registry")])
            replaces = old.entry_uuid
        entry = doc.entry
        if entry.patient_id != xds_patient_id(doc.patient):
            raise ValueError("the DocumentEntry is not the outgoing document's patient's")
        ss = submission_set(entry, generate_uid(), self.publisher.source_id,
                            dt.datetime.now(dt.UTC), self.publisher.content_type)
        warnings = self._call("ITI-41", self.client.provide_and_register, entry, ss,
                              doc.kos_bytes, self.publisher.vihf(doc.patient, entry.author),
                              generate_uid(),
                              replaces)
        registered = self.find(doc.patient, entry.unique_id)
        if registered is None:  # accepted but not found: the outcome is unknown, retry
            raise TransportUnavailable(f"ITI-41 accepted {entry.unique_id} but GetDocuments "
                                       "does not find it")
        return SubmitReceipt(registered.entry_uuid,
                             [Refusal(w.code, w.context, w.location) for w in warnings])

    def find(self, patient: Ins, unique_id: str) -> RegisteredDocument | None:
        found = self._call("ITI-18", self.client.get_documents, self.publisher.vihf(patient),
                           unique_ids=[unique_id])
        mine = [e for e in found if e.unique_id == unique_id]
        if not mine:
            return None
        # Approved first: a registry keeps one Approved version of a uniqueId at most.
        best = min(mine, key=lambda e: e.status != "Approved")
        return RegisteredDocument(best.unique_id, best.entry_uuid, best.status,
                                  best.repository_unique_id)

    def withdraw(self, patient: Ins, unique_id: str, entry_uuid: str | None = None) -> None:
        """ITI-57: Approved → Deprecated. Without ``entry_uuid`` the entry is looked up first:
        already Deprecated or absent, there is nothing to do."""
        if entry_uuid is None:
            current = self.find(patient, unique_id)
            if current is None or current.status != "Approved":
                return
            entry_uuid = current.entry_uuid
        ss = SubmissionSet(unique_id=generate_uid(), source_id=self.publisher.source_id,
                           patient_id=xds_patient_id(patient),
                           submission_time=dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S"),
                           content_type=self.publisher.content_type, author=self.publisher.author,
                           title="Retrait d'un examen d'imagerie")
        self._call("ITI-57", self.client.deprecate, entry_uuid, ss, self.publisher.vihf(patient))

    def close(self) -> None:
        self.client.close()

