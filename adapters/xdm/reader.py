"""Reading and checking an XDM archive before anything of it is used (ITI-32 Portable Media
Importer, R23).

:func:`read_xdm` accepts an archive only when all of this holds, and otherwise raises
:class:`XdmRefused` whose message names the first thing wrong:

1. it is a readable zip (every member's CRC checked) that does not expand past ``MAX_TOTAL``
   nor ``MAX_RATIO`` times its compressed size;
2. it holds exactly one ``IHE_XDM/<subset>/METADATA.XML`` (a single top folder around the
   tree is allowed, as when a mailer zips the media's folder);
3. METADATA.XML is well-formed XML holding an ebRIM ``lcm:SubmitObjectsRequest`` (alone, or
   inside an ITI-41 SOAP envelope as in the PoC's sample) with a submission set and a KOS;
4. each document it lists is in the archive at its ``URI`` (relative to the submission set's
   folder or to ``IHE_XDM/``), with the ``size`` and SHA-1 ``hash`` METADATA.XML gives;
5. the KOS is a DICOM Key Object Selection whose SOP Instance UID is its uniqueId;
6. unless ``require_signature`` is off: the Signature01 document (IHE DSG) is there and
   verifies (:func:`adapters.dmp.dsg.verify_signature_document`: XMLDSig, XAdES signing
   certificate, purpose of signature, a signer certificate issued by one of ``trusted_cas``,
   and a manifest whose digests are those of the submission set and of every document).

Nothing is extracted to a path made from a member's name: documents are read in memory.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from lxml import etree
from pydicom import dcmread

from adapters.dmp import dsg
from adapters.dmp import ns as N
from adapters.dmp.ebrim import entry_from_extrinsic
from adapters.dmp.ns import LCM, RIM, q
from gateway.manifest.xds_metadata import KOS_FORMAT_CODE, DocumentEntry

MAX_METADATA = 8 << 20
MAX_DOCUMENT = 64 << 20
MAX_TOTAL = 64 << 30
MAX_RATIO = 200
_METADATA_RE = re.compile(r"^(?P<root>(?:[^/]+/)?)ihe_xdm/(?P<subset>[^/]+)/metadata\.xml$",
                          re.IGNORECASE)
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


class XdmRefused(ValueError):
    """The archive is refused; ``str()`` is the precise reason."""


@dataclass(frozen=True, slots=True)
class XdmDocument:
    symbolic_id: str
    entry: DocumentEntry
    member: str
    data: bytes


@dataclass(frozen=True, slots=True)
class XdmPackage:
    """A checked archive."""

    subset: str
    submission_set_uid: str
    patient_id: str
    kos: XdmDocument
    documents: tuple[XdmDocument, ...]
    signature: XdmDocument | None
    signer: str = ""
    """The signing certificate's subject (RFC 4514), when the signature was verified."""
    media_root: str = ""
    """The folder of the archive that holds the XDM tree ('' or 'TOP/')."""
    has_dicomdir: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def report(self) -> XdmDocument | None:
        return next((d for d in self.documents
                     if d is not self.kos and d is not self.signature), None)


def _open(data: bytes | Path) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise XdmRefused(f"not a readable zip archive ({exc})") from None
    declared = sum(i.file_size for i in archive.infolist())
    packed = sum(i.compress_size for i in archive.infolist())
    if declared > MAX_TOTAL or declared > MAX_RATIO * max(packed, 1) + (1 << 20):
        archive.close()
        raise XdmRefused(f"the archive would expand to {declared} bytes: refused (a zip bomb?)")
    try:
        bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError) as exc:
        raise XdmRefused(f"damaged zip archive ({exc})") from None
    if bad is not None:
        raise XdmRefused(f"damaged zip archive: member {bad!r} fails its CRC check")
    return archive


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise XdmRefused(f"{info.filename} is larger than {limit >> 20} MiB")
    if info.flag_bits & 0x1:
        raise XdmRefused(f"{info.filename} is encrypted")
    return archive.read(info)


def _parse(data: bytes) -> etree._Element:
    try:
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True,
                                                      huge_tree=False))
    except etree.XMLSyntaxError as exc:
        raise XdmRefused(f"METADATA.XML is not well-formed XML ({exc})") from None
    request = root if root.tag == q(LCM, "SubmitObjectsRequest") else next(
        root.iter(q(LCM, "SubmitObjectsRequest")), None)
    if request is None:
        raise XdmRefused("METADATA.XML holds no ebRIM SubmitObjectsRequest")
    return request


def _slot(el: etree._Element, name: str) -> str:
    value = el.find(f"{q(RIM, 'Slot')}[@name='{name}']/{q(RIM, 'ValueList')}/{q(RIM, 'Value')}")
    return (value.text or "").strip() if value is not None else ""


def _external(el: etree._Element, scheme: str) -> str:
    for e in el.findall(q(RIM, "ExternalIdentifier")):
        if e.get("identificationScheme") == scheme:
            return e.get("value", "")
    return ""


def _member_for(uri: str, names: dict[str, zipfile.ZipInfo], root: str,
                subset: str) -> zipfile.ZipInfo | None:
    if not uri or uri.startswith("/") or "\\" in uri or ".." in uri.split("/"):
        return None
    for candidate in (f"{root}IHE_XDM/{subset}/{uri}", f"{root}IHE_XDM/{uri}"):
        info = names.get(candidate.lower())
        if info is not None:
            return info
    return None


def _is_signature(entry: DocumentEntry) -> bool:
    return entry.format_code.code == N.DSG_FORMAT or entry.class_code.code == N.DSG_CLASS


def _is_kos(entry: DocumentEntry) -> bool:
    return entry.mime_type == "application/dicom" and entry.format_code.code == KOS_FORMAT_CODE


def load_trusted_cas(path: Path | None) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle (none without a path)."""
    if path is None:
        return []
    return list(x509.load_pem_x509_certificates(path.read_bytes()))


def read_xdm(data: bytes | Path, *, trusted_cas: list[x509.Certificate],
             require_signature: bool = True) -> XdmPackage:
    """Check the archive (module docstring) and return what it holds."""
    archive = _open(data)
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        names = {i.filename.lower(): i for i in infos}
        found = [(m, i) for i in infos if (m := _METADATA_RE.match(i.filename))]
        if not found:
            raise XdmRefused("no IHE_XDM/<subset>/METADATA.XML in the archive: not an XDM "
                             "archive")
        if len(found) > 1:
            raise XdmRefused(f"{len(found)} submission sets in the archive "
                             f"({', '.join(i.filename for _, i in found)}): one at a time")
        match, info = found[0]
        root, subset = match.group("root"), match.group("subset")
        request = _parse(_read(archive, info, MAX_METADATA))
        packages = list(request.iter(q(RIM, "RegistryPackage")))
        if len(packages) != 1:
            raise XdmRefused(f"METADATA.XML has {len(packages)} submission sets "
                             "(rim:RegistryPackage), expected 1")
        package = packages[0]
        ss_uid = _external(package, N.SS_UNIQUE_ID)
        patient = _external(package, N.SS_PATIENT_ID)
        if not ss_uid:
            raise XdmRefused("METADATA.XML: the submission set has no uniqueId")
        documents: list[XdmDocument] = []
        for eo in request.iter(q(RIM, "ExtrinsicObject")):
            entry = entry_from_extrinsic(eo)
            label = eo.get("id", "") or entry.unique_id
            uri = _slot(eo, "URI")
            if not uri:
                raise XdmRefused(f"METADATA.XML: document {label} has no URI slot")
            member = _member_for(uri, names, root, subset)
            if member is None:
                raise XdmRefused(f"document {label} ({uri}) named in METADATA.XML is not in "
                                 "the archive")
            body = _read(archive, member, MAX_DOCUMENT)
            size = _slot(eo, "size")
            if size != str(len(body)):
                raise XdmRefused(f"{member.filename}: {len(body)} bytes, METADATA.XML says "
                                 f"size {size or '(none)'}")
            digest = hashlib.sha1(body).hexdigest()  # noqa: S324 - XDS mandates SHA-1
            if _slot(eo, "hash").lower() != digest:
                raise XdmRefused(f"{member.filename}: its SHA-1 is {digest}, METADATA.XML says "
                                 f"hash {_slot(eo, 'hash') or '(none)'}")
            if patient and entry.patient_id and entry.patient_id != patient:
                raise XdmRefused(f"document {label} is for another patient than its "
                                 "submission set")
            documents.append(XdmDocument(eo.get("id", ""), entry, member.filename, body))
        kos_docs = [d for d in documents if _is_kos(d.entry)]
        if len(kos_docs) != 1:
            raise XdmRefused(f"METADATA.XML lists {len(kos_docs)} KOS documents, expected 1")
        kos = kos_docs[0]
        try:
            ds = dcmread(io.BytesIO(kos.data), stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable content
            raise XdmRefused(f"{kos.member} is not a readable DICOM file ({exc})") from None
        if str(ds.get("SOPClassUID", "")) != KOS_SOP_CLASS:
            raise XdmRefused(f"{kos.member} is not a Key Object Selection document")
        if str(ds.get("SOPInstanceUID", "")) != kos.entry.unique_id:
            raise XdmRefused(f"{kos.member}: SOP Instance UID {ds.get('SOPInstanceUID', '')} "
                             f"is not its uniqueId in METADATA.XML ({kos.entry.unique_id})")
        signatures = [d for d in documents if _is_signature(d.entry)]
        signature = signatures[0] if signatures else None
        signer = ""
        notes: list[str] = []
        if signature is None:
            if require_signature:
                raise XdmRefused("the archive is not signed: METADATA.XML lists no signature "
                                 "document (SIGN_*.XML, IHE DSG)")
            notes.append("not signed (accepted: xdm_require_signature is off)")
        elif require_signature and not trusted_cas:
            raise XdmRefused("signature refused: no CA is configured to verify XDM signatures "
                             "(xdm_signature_ca_bundle, or dmp_ca_bundle)")
        else:
            signed = {d.entry.unique_id: d.data for d in documents if d is not signature}
            try:
                verified = dsg.verify_signature_document(signature.data, ss_uid, package,
                                                         signed, trusted_cas)
            except Exception as exc:  # noqa: BLE001 - SignatureDocumentError, unreadable
                # certificate, a signature that does not follow the XMLDSig schema...
                name = signature.member.rsplit("/", 1)[-1]
                reason = (str(exc).replace("Signature01", name)
                          if isinstance(exc, dsg.SignatureDocumentError)
                          else f"{name} is not a verifiable XML signature "
                               f"({type(exc).__name__}: {exc})")
                if require_signature:
                    raise XdmRefused(f"signature refused: {reason}") from None
                notes.append(f"signature not verified (accepted: xdm_require_signature is "
                             f"off): {reason}")
            else:
                signer = verified.certificate.subject.rfc4514_string()
        has_dicomdir = f"{root}dicomdir".lower() in names
        return XdmPackage(subset, ss_uid, patient, kos, tuple(documents), signature, signer,
                          root, has_dicomdir, notes)


_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def extract_media(data: bytes | Path, package: XdmPackage, target: Path) -> int:
    """Write the archive's DICOM media part (the DICOMDIR and its files: everything outside
    ``IHE_XDM/`` but README.TXT and INDEX.HTM) under ``target``, for the importer; the number
    of files. A member whose path is not plain media names (``..``, absolute, odd characters)
    refuses the archive."""
    archive = _open(data)
    count = 0
    with archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.startswith(package.media_root):
                continue
            rest = info.filename[len(package.media_root):]
            if rest.upper().startswith("IHE_XDM/") or rest.upper() in ("README.TXT", "INDEX.HTM"):
                continue
            parts = rest.split("/")
            if not all(_SAFE_COMPONENT.match(p) for p in parts) or len(parts) > 9:
                raise XdmRefused(f"member {info.filename!r} is not a DICOM media file name")
            dst = target.joinpath(*parts)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(_read(archive, info, 4 * MAX_DOCUMENT))
            count += 1
    return count


def check_archive(data: bytes | Path, settings) -> XdmPackage:  # noqa: ANN001 - Settings
    """:func:`read_xdm` with the configured trust: ``xdm_signature_ca_bundle`` (default
    ``dmp_ca_bundle``) and ``xdm_require_signature``."""
    bundle = settings.xdm_signature_ca_bundle or settings.dmp_ca_bundle
    return read_xdm(data, trusted_cas=load_trusted_cas(bundle),
                    require_signature=settings.xdm_require_signature)
