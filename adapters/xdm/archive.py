"""The XDM export of a study's manifest (ITI-32 Portable Media Creator, R23).

:func:`build_xdm_archive` is the entry point (``drimbox xdm export``, the MSSanté sender): it
takes the study's KOS and DocumentEntry **as published** (the outbox row of the live manifest:
the same uniqueId, bytes, hash and size as in the DMP; a Source serves only a published KOS,
R10), or, for a study not published exported with its images, builds them as a publication
would (:mod:`gateway.manifest.manifests`); adds the CR in force when the RIS sent one; and
writes the archive (:func:`write_xdm`):

* ``METADATA.XML`` — the very registry objects of the DMP publication
  (:func:`adapters.dmp.ebrim.submit_objects`: SubmissionSet01, DocumentKOS, Signature01 and
  their associations), plus the ``URI`` slot of each document (ITI-32);
* ``SIGN_1.XML`` — Signature01 (:mod:`adapters.dmp.dsg`, XAdES), signed with the centre's
  organisation signature certificate (``dmp_sign_cert`` / ``dmp_sign_key``): its manifest
  lists the submission set and every document with its SHA-256;
* ``README.TXT`` / ``INDEX.HTM``; with ``with_images`` the stored instances as DICOM media
  (:mod:`gateway.imaging.media`: a DICOMDIR at the root, the files byte for byte as stored).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import BinaryIO

from lxml import etree
from pydicom.uid import generate_uid
from sqlalchemy import select

from adapters.dmp import ebrim
from adapters.dmp.ns import RIM, q
from adapters.dmp.transport import CONTENT_TYPE_NAMES
from adapters.xdm import layout as L
from gateway import __version__
from gateway.config import Settings
from gateway.imaging.media import MediaSource, add_study_media_to_zip
from gateway.imaging.retrieval import find_instances
from gateway.index.facts import UnknownStudy
from gateway.index.lookup import study_exists
from gateway.index.models import OutboxItem
from gateway.index.outbox import PUBLISH, REPLACE, entry_from_json
from gateway.index.reports import current_report
from gateway.index.store import InstanceIndex
from gateway.ingest.storage import FileStore
from gateway.manifest.manifests import build_study_manifest, document_entry
from gateway.manifest.xds_metadata import (
    SCHEME_CONTENT_TYPE,
    Code,
    DocumentEntry,
    submission_set,
)
from gateway.publication.workflow import live_manifest
from gateway.reports.cda import CdaError, read_cda

MEDIA_TYPE = "application/zip"
#: The IHE format code of a CDA imaging report (XDS-I.b), scheme of the IHE format codes.
CR_FORMAT = Code("urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013",
                 "1.3.6.1.4.1.19376.1.2.3", "Compte rendu d'imagerie (CDA)")
CR_CLASS = Code("10", "1.2.250.1.213.1.1.4.1", "Compte rendu")


class XdmExportError(ValueError):
    """The archive cannot be made; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends the archive (README.TXT, INDEX.HTM)."""

    institution: str
    structure_id: str = ""
    application: str = "DRIMbox"
    version: str = __version__


@dataclass(frozen=True, slots=True)
class ExportDocuments:
    """What an XDM export of a study carries."""

    kos_bytes: bytes
    entry: DocumentEntry
    published: bool
    """True: the KOS and entry the DMP holds (the publication's outbox row); False: built now
    (the study is not published; only with the images)."""
    report: tuple[DocumentEntry, bytes] | None = None


@dataclass(frozen=True, slots=True)
class XdmArchive:
    """An XDM archive in memory (``data``: the zip's bytes), for a file or a mail attachment."""

    data: bytes
    filename: str
    study_uid: str
    kos_uid: str
    patient_id: str
    """The XDS patientId (``INS^^^&OID&ISO^NH``)."""
    with_images: bool
    image_count: int = 0
    media_type: str = MEDIA_TYPE


def report_entry(kos: DocumentEntry, cda: bytes) -> DocumentEntry:
    """The DocumentEntry of the CR in the archive: the KOS's patient and context, the CDA's
    own id, title, code and times."""
    try:
        header = read_cda(cda)
    except CdaError as exc:
        raise XdmExportError(f"the study's CR cannot be read: {exc}") from exc
    ident = header.document_id
    unique_id = str(ident)
    return replace(
        kos, unique_id=unique_id, mime_type="text/xml", class_code=CR_CLASS,
        type_code=header.document_code, format_code=CR_FORMAT,
        title=header.title or kos.title, comments="",
        creation_time=(header.effective_time or kos.creation_time)[:14],
        hash_sha1=hashlib.sha1(cda).hexdigest(),  # noqa: S324 - XDS mandates SHA-1
        size=len(cda))


def study_documents(index: InstanceIndex, settings: Settings, study_uid: str, *,
                    require_published: bool = True) -> ExportDocuments:
    """The KOS and entry of the study's publication in the DMP, and the CR in force.

    A Source serves a consumer only the KOS it has published (R10): a KOS built now would be
    refused at retrieval (``kos_unknown``). So a study without a published KOS is refused
    (:class:`XdmExportError`), unless ``require_published`` is off (an archive that carries
    the images): its KOS is then built as a publication would build it (raising
    :class:`~gateway.index.facts.NotPublishable` or
    :class:`~gateway.manifest.xds_metadata.MetadataError`, which say why)."""
    with index.read() as s:
        live = live_manifest(s, study_uid)
        row = None
        if live is not None and live.published:
            row = s.scalars(select(OutboxItem)
                            .where(OutboxItem.kos_uid == live.kos_uid,
                                   OutboxItem.kind.in_((PUBLISH, REPLACE)),
                                   OutboxItem.kos_bytes.is_not(None))
                            .order_by(OutboxItem.id.desc())).first()
        kos = (bytes(row.kos_bytes), entry_from_json(row.entry_json)) if row is not None else None
        cr = current_report(s, study_uid)
    if kos is not None:
        docs = ExportDocuments(kos[0], kos[1], published=True)
    elif require_published:
        if not study_exists(index, study_uid):
            raise UnknownStudy(study_uid)
        raise XdmExportError(
            "it has no KOS published in the DMP, and this DRIMbox serves a consumer only a "
            "published KOS (R10): publish it first (drimbox publish), or export it "
            "--with-images")
    else:
        manifest = build_study_manifest(index, settings, study_uid)
        docs = ExportDocuments(manifest.kos_bytes, document_entry(manifest, settings),
                               published=False)
    if cr is not None and cr.cda:
        docs = replace(docs, report=(report_entry(docs.entry, cr.cda), cr.cda))
    return docs


def _add_uri_slots(request: etree._Element, uris: dict[str, str]) -> None:
    """The ITI-32 ``URI`` slot of each document, after its other slots (ebRIM order)."""
    for eo in request.iter(q(RIM, "ExtrinsicObject")):
        uri = uris.get(eo.get("id", ""))
        if uri is None:
            continue
        slots = eo.findall(q(RIM, "Slot"))
        new = ebrim.slot(eo, "URI", uri)  # appended: move it after the last slot
        eo.remove(new)
        eo.insert(eo.index(slots[-1]) + 1 if slots else 0, new)


def _readme(sender: Sender, files: list[str], with_images: bool) -> str:
    who = sender.institution + (f" ({sender.structure_id})" if sender.structure_id else "")
    lines = [
        "Emetteur :", "=========", f"    . Organisme : {who}", "",
        "Application de l'emetteur :", "==========================",
        f"    . Nom : {sender.application}", f"    . Version : {sender.version}", "",
        "Instructions :", "==============",
        ". Archive IHE XDM (ITI-32) : le manifeste (KOS) d'un examen d'imagerie, ses",
        "  metadonnees XDS-I.b (IHE_XDM/SUBSET01/METADATA.XML) et sa signature (SIGN_1.XML).",
        ". Importez-la dans une DRIMbox (drimbox xdm import, ou la page Consommateur) pour",
        "  recuperer les images chez la DRIMbox source.",
    ]
    if with_images:
        lines.append(". Les images sont jointes (DICOMDIR a la racine) : un lecteur DICOM les ouvre.")
    lines += ["", "Arborescence :", "=============", f"     {L.README}", f"     {L.INDEX}",
              f"     {L.XDM_DIR}", f"          {L.SUBSET}"]
    lines += [f"               {name}" for name in files]
    if with_images:
        lines.append("     DICOMDIR")
    return "\r\n".join(lines) + "\r\n"


def _index(sender: Sender, files: list[tuple[str, str]], with_images: bool) -> str:
    e = html.escape
    items = "".join(f'<li><a href="{e(L.subset_member(name))}">{e(title)}</a></li>'
                    for name, title in files)
    images = '<p><a href="DICOMDIR">Images (DICOMDIR)</a></p>' if with_images else ""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
            '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
            '<html xmlns="http://www.w3.org/1999/xhtml"><head><title>IHE XDM</title></head>'
            f"<body><p>Emetteur : {e(sender.institution)}"
            f"{' (' + e(sender.structure_id) + ')' if sender.structure_id else ''}</p>"
            f'<p>Voir le fichier <a href="{L.README}">ReadMe</a></p><ul>{items}</ul>{images}'
            "</body></html>\n")


def write_xdm(out: BinaryIO, docs: ExportDocuments, *, source_id: str, content_type: Code,
              sign_key_pem: bytes, sign_cert_pem: bytes, sender: Sender,
              images: Iterable[MediaSource] | None = None,
              now: dt.datetime | None = None) -> int:
    """Write the XDM zip of ``docs`` to ``out`` (seekable or not); the number of images."""
    now = now or dt.datetime.now(dt.UTC)
    ss = submission_set(docs.entry, generate_uid(), source_id, now, content_type)
    extra = ()
    if docs.report is not None:
        extra = (ebrim.ExtraDocument(L.CR_ID, docs.report[0], docs.report[1]),)
    objects = ebrim.submit_objects(docs.entry, ss, docs.kos_bytes, sign_key_pem, sign_cert_pem,
                                   generate_uid(), now=now, extra=extra)
    uris = {ebrim.KOS_ID: L.KOS_FILE, ebrim.SIG_ID: L.SIGN_FILE}
    files = [(L.KOS_FILE, docs.kos_bytes, "Manifeste de l'examen (KOS)")]
    if docs.report is not None:
        uris[L.CR_ID] = L.CR_FILE
        files.append((L.CR_FILE, docs.report[1], "Compte rendu (CDA)"))
    files.append((L.SIGN_FILE, objects.signature, "Signature (XAdES)"))
    _add_uri_slots(objects.request, uris)
    metadata = etree.tostring(objects.request, xml_declaration=True, encoding="UTF-8")
    count = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        names = [L.METADATA] + [name for name, _, _ in files]
        archive.writestr(L.README, _readme(sender, names, images is not None).encode("utf-8"))
        archive.writestr(L.INDEX, _index(sender, [(n, t) for n, _, t in files],
                                         images is not None).encode("utf-8"))
        archive.writestr(L.subset_member(L.METADATA), metadata)
        for name, data, _ in files:
            archive.writestr(L.subset_member(name), data)
        if images is not None:
            count = len(add_study_media_to_zip(archive, images).entries)
    return count


def build_xdm_archive(index: InstanceIndex, settings: Settings, study_uid: str, *,
                      with_images: bool = False, store: FileStore | None = None,
                      now: dt.datetime | None = None) -> XdmArchive:
    """The XDM archive of ``study_uid`` (R23) as bytes, ready to be written or attached.

    Without ``with_images`` the study must be published (:func:`study_documents`).
    Raises :class:`XdmExportError` (no signing certificate configured, no published KOS,
    unreadable CR),
    :class:`~gateway.index.facts.UnknownStudy` / ``NotPublishable`` /
    :class:`~gateway.manifest.xds_metadata.MetadataError` (a study that cannot be published,
    each saying why)."""
    if settings.dmp_sign_cert is None or settings.dmp_sign_key is None:
        raise XdmExportError("signing the XDM archive needs the organisation signature "
                             "certificate: set dmp_sign_cert and dmp_sign_key")
    docs = study_documents(index, settings, study_uid, require_published=not with_images)
    images = None
    if with_images:
        store = store or FileStore(settings.data_dir)
        images = [store.path_of(ref.storage_key) for ref in find_instances(index, study_uid)]
    content = settings.dmp_content_type
    buf = io.BytesIO()
    count = write_xdm(
        buf, docs, source_id=settings.dmp_source_id or settings.repository_oid or "",
        content_type=Code(content, SCHEME_CONTENT_TYPE, CONTENT_TYPE_NAMES.get(content, content)),
        sign_key_pem=settings.dmp_sign_key.read_bytes(),
        sign_cert_pem=settings.dmp_sign_cert.read_bytes(),
        sender=Sender(settings.institution_name or settings.ae_title, settings.structure_id),
        images=images, now=now)
    return XdmArchive(buf.getvalue(), f"XDM_{study_uid}.zip", study_uid,
                      docs.entry.unique_id, docs.entry.patient_id, with_images, count)
