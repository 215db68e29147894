"""``drimbox import PATH...``: ingest folders, CDs (DICOMDIR) and zip archives.

Every instance goes through :meth:`gateway.ingest.ingestor.Ingestor.ingest` exactly as a C-STORE does
(``source="import"``, expected SOP Class/Instance UIDs from the file's meta information), so
an imported instance is checked, written durably and indexed the same way, and its stored
file holds the very bytes that followed the File Meta Information in the source file.

What it accepts, for each PATH:

* a folder: walked recursively (symbolic links to folders are not followed). Every folder
  that holds a ``DICOMDIR`` (any case, ISO 9660 ``;1`` suffix allowed) is read first: the
  files it references are imported in its order, resolved case-insensitively and ignoring
  ISO 9660 version suffixes and trailing dots. A referenced file that cannot be found is
  reported as *missing* (unless the same SOP Instance UID came from another file of the
  run). Files the DICOMDIR does not list are imported too, and counted (nothing on the disc
  is left behind). ``*.zip`` files found in a folder are imported as archives.
* a ``DICOMDIR`` file: only the files it references.
* a zip archive: members are read in memory, one at a time, never written to a path made
  from their names; a DICOMDIR inside is used like on a disc. A ``*.zip`` member is
  rejected ("extract it and import it"), not opened.
* a single DICOM file.

A DICOM file is a Part 10 file: 128-byte preamble, ``DICM``, File Meta Information. Files
whose meta information starts the file (no preamble) are accepted too: the meta still gives
the transfer syntax. Datasets without any meta information are *rejected* ("no File Meta
Information"): their transfer syntax would be a guess. Files that are not DICOM at all
(``README.TXT``, ``AUTORUN.INF``, viewers...) are *skipped*, counted but not reported one by
one. DICOMDIR files (Media Storage Directory) are never ingested. A truncated file from a
damaged disc is rejected instead of stored by the ingest path's completeness check
(:mod:`gateway.ingest.completeness`, shared with C-STORE and STOW-RS).

How it reports: a progress bar on stderr when stderr is a terminal (``--quiet`` hides it;
without a terminal a line every 10 seconds, unless ``--quiet``), then a summary on stdout:
counts of stored, already present, replaced, skipped (not DICOM), DICOMDIRs used and files
they did not list, then one line per rejected or missing file (path and reason) and per
warning (a DICOMDIR that cannot be read: its folder is then read file by file); ``--json``
prints the same as one JSON object. Exit status: 0 when every DICOM file was kept, 1 when
at least one was rejected or missing (or the run stopped: disk full, interrupted: 130),
2 for usage or configuration errors (including an index that cannot be opened).

It may run next to ``drimbox serve`` on the same data directory and index: staging files carry
their writer's pid and each process removes only those of dead writers
(:meth:`gateway.ingest.storage.FileStore.prepare`), and every ingest commits on its own.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian

from gateway.config import Settings
from gateway.ingest.ingestor import Incoming, IngestRejected, Outcome, Rejection

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SOURCE = "import"


# -- Part 10 files ------------------------------------------------------------------------


class NotDicom(Exception):
    """The bytes are not DICOM at all (skipped, not rejected)."""


class BadFile(Exception):
    """DICOM, but not importable; the message is the reason shown to the operator."""


@dataclass(frozen=True, slots=True)
class Part10:
    """What the File Meta Information says, and where the dataset starts."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    transfer_syntax_uid: str
    dataset_offset: int


_VR = re.compile(rb"^[A-Z]{2}$")
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def _meta_start(data: bytes | memoryview) -> int:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return 132
    if data[:4] == b"DICM":  # preamble left out, prefix kept
        return 4
    if len(data) >= 8 and data[:2] == b"\x02\x00" and _VR.match(bytes(data[4:6])):
        return 0  # meta information without preamble nor prefix
    if (
        len(data) >= 8
        and data[:2] == b"\x08\x00"
        and (_VR.match(bytes(data[4:6])) or int.from_bytes(data[4:8], "little") < len(data))
    ):
        raise BadFile(
            "no File Meta Information (a raw dataset, not a Part 10 file): "
            "its transfer syntax is unknown"
        )
    raise NotDicom


def split_part10(data: bytes | memoryview) -> Part10:
    """Read the File Meta Information of a Part 10 file without re-encoding anything.

    The dataset starts where group 0002 ends. The meta elements are walked (explicit VR
    little endian, PS3.10 7.1; implicit VR tolerated as some writers use it); the group
    length (0002,0000) is used when it agrees with the walk, and for deflated files (whose
    compressed first bytes could look like a group 0002 tag). Raises :class:`NotDicom` or
    :class:`BadFile`.
    """
    start = _meta_start(data)
    pos = start
    end = len(data)
    values: dict[int, bytes] = {}
    group_end: int | None = None
    while pos + 8 <= end and data[pos : pos + 2] == b"\x02\x00":
        elem = int.from_bytes(data[pos + 2 : pos + 4], "little")
        vr = bytes(data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise BadFile("File Meta Information is truncated")
            length, head = int.from_bytes(data[pos + 8 : pos + 12], "little"), 12
        elif _VR.match(vr):
            length, head = int.from_bytes(data[pos + 6 : pos + 8], "little"), 8
        else:
            length, head = int.from_bytes(data[pos + 4 : pos + 8], "little"), 8
        if length == 0xFFFFFFFF or pos + head + length > end:
            raise BadFile("File Meta Information is truncated or corrupt")
        value = bytes(data[pos + head : pos + head + length])
        values[elem] = value
        pos += head + length
        if elem == 0x0000 and length == 4:
            group_end = pos + int.from_bytes(value, "little")
    if pos == start:
        raise BadFile("File Meta Information is empty")
    if pos + 8 > end:
        if group_end == end == pos:
            raise BadFile("the file holds File Meta Information but no dataset")
        raise BadFile("File Meta Information is truncated")

    def uid(elem: int) -> str | None:
        raw = values.get(elem)
        if raw is None:
            return None
        try:
            text = raw.decode("ascii").rstrip("\x00 ").strip()
        except UnicodeDecodeError:
            raise BadFile(f"File Meta Information element (0002,{elem:04X}) is not ASCII") from None
        return text or None

    ts = uid(0x0010)
    if ts is None:
        raise BadFile("File Meta Information has no Transfer Syntax UID (0002,0010)")
    offset = pos
    if group_end is not None and ts == DeflatedExplicitVRLittleEndian and start < group_end < pos:
        offset = group_end
    return Part10(uid(0x0002), uid(0x0003), ts, offset)


# -- DICOMDIR resolution ------------------------------------------------------------------


def normalize_name(name: str) -> str:
    """How a CD file name compares with a DICOMDIR component: case-insensitive, without an
    ISO 9660 version suffix (``;1``) nor trailing dots (``IM000001.``)."""
    return re.sub(r";\d*$", "", name).rstrip(".").upper()


def is_dicomdir_name(name: str) -> bool:
    return normalize_name(name) == "DICOMDIR"


def split_components(parts: list[str]) -> tuple[str, ...] | None:
    """Path components of a Referenced File ID (backslash-separated values; some writers
    put ``/`` or ``\\`` inside one value). ``None`` when it would leave the DICOMDIR's folder
    or is empty."""
    out: list[str] = []
    for part in parts:
        for piece in re.split(r"[\\/]", str(part).strip()):
            piece = piece.strip()
            if piece in ("", "."):
                continue
            if piece == ".." or ":" in piece:
                return None
            out.append(piece)
    return tuple(out) or None


class NameIndex:
    """Case-insensitive lookup of files by relative path components (a folder tree or the
    members of a zip). An exact match wins over a normalized one."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, ...], list[tuple[tuple[str, ...], object]]] = {}

    def add(self, components: tuple[str, ...], handle: object) -> None:
        key = tuple(normalize_name(c) for c in components)
        self._by_key.setdefault(key, []).append((components, handle))

    def find(self, components: tuple[str, ...]) -> object | None:
        found = self._by_key.get(tuple(normalize_name(c) for c in components))
        if not found:
            return None
        for exact, handle in found:
            if exact == components:
                return handle
        return found[0][1]


@dataclass(frozen=True, slots=True)
class Reference:
    components: tuple[str, ...] | None
    """None: the Referenced File ID is unusable (shown as ``raw``)."""
    raw: str
    sop_instance_uid: str


def read_dicomdir(fp: str | Path | io.BufferedIOBase | io.BytesIO) -> list[Reference]:
    """The files a DICOMDIR references, in its order. Raises on an unreadable DICOMDIR."""
    ds = dcmread(fp)
    refs: list[Reference] = []
    for record in ds.get("DirectoryRecordSequence", []):
        value = record.get("ReferencedFileID")
        if value in (None, ""):
            continue
        parts = [value] if isinstance(value, str) else list(value)
        refs.append(
            Reference(
                split_components(parts),
                "\\".join(str(p) for p in parts),
                str(record.get("ReferencedSOPInstanceUIDInFile", "") or ""),
            )
        )
    return refs


# -- the plan: what will be read ----------------------------------------------------------


def show(text: str) -> str:
    """A path or member name made safe to print (undecodable bytes, control characters)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Entry:
    display: str
    path: Path | None = None
    member: zipfile.ZipInfo | None = None
    missing: Reference | None = None
    unlisted: bool = False
    """Under a folder with a DICOMDIR that does not list it."""
    explicit: bool = False
    """Named on the command line (a non-DICOM file is then rejected, not skipped)."""


@dataclass
class Source:
    display: str
    zip_path: Path | None = None
    entries: list[Entry] = field(default_factory=list)


@dataclass
class Problem:
    path: str
    reason: str


@dataclass
class Summary:
    stored: int = 0
    already_present: int = 0
    replaced: int = 0
    kept_existing: int = 0
    """Already stored with other bytes; the stored copy kept (``--on-conflict keep``)."""
    skipped_not_dicom: int = 0
    dicomdirs_used: int = 0
    not_in_dicomdir: int = 0
    bytes_kept: int = 0
    rejected: list[Problem] = field(default_factory=list)
    missing: list[Problem] = field(default_factory=list)
    missing_uids: list[str] = field(default_factory=list, repr=False)
    """SOP Instance UID the DICOMDIR gives for each of :attr:`missing`."""
    warnings: list[Problem] = field(default_factory=list)
    not_processed: int = 0
    stopped: str | None = None

    @property
    def exit_status(self) -> int:
        if self.stopped == "interrupted":
            return 130
        return 1 if (self.rejected or self.missing or self.stopped) else 0

    def as_dict(self) -> dict:
        return {
            "stored": self.stored,
            "already_present": self.already_present,
            "replaced": self.replaced,
            "kept_existing": self.kept_existing,
            "skipped_not_dicom": self.skipped_not_dicom,
            "dicomdirs_used": self.dicomdirs_used,
            "not_in_dicomdir": self.not_in_dicomdir,
            "bytes_kept": self.bytes_kept,
            "rejected": [vars(p) for p in self.rejected],
            "missing": [vars(p) for p in self.missing],
            "warnings": [vars(p) for p in self.warnings],
            "not_processed": self.not_processed,
            "stopped": self.stopped,
            "exit_status": self.exit_status,
        }

    def text(self) -> str:
        lines = [
            f"stored:               {self.stored}",
            f"already present:      {self.already_present}",
            f"replaced:             {self.replaced}",
            f"kept existing:        {self.kept_existing}",
            f"skipped (not DICOM):  {self.skipped_not_dicom}",
            f"rejected:             {len(self.rejected)}",
        ]
        if self.dicomdirs_used:
            lines.append(
                f"DICOMDIRs used:       {self.dicomdirs_used} "
                f"({self.not_in_dicomdir} DICOM files they do not list were imported too)"
            )
        if self.missing:
            lines.append(f"missing:              {len(self.missing)} (listed in a DICOMDIR)")
        if self.stopped:
            lines.append(
                f"stopped:              {self.stopped}; {self.not_processed} files not processed"
            )
        for title, problems in (
            ("Rejected", self.rejected),
            ("Missing", self.missing),
            ("Warnings", self.warnings),
        ):
            if problems:
                lines.append(f"{title}:")
                lines += [f"  {p.path}: {p.reason}" for p in problems]
        return "\n".join(lines)


def _is_zip_name(name: str) -> bool:
    return normalize_name(name).endswith(".ZIP")


def _tree_entries(
    files: list[tuple[tuple[str, ...], object, str]],
    read_dir: Callable[[Any], list[Reference]],
    summary: Summary,
) -> list[Entry]:
    """Order the files of one tree (a folder or a zip): the files each DICOMDIR references,
    in its order, then the rest. ``files`` holds (components, handle, display); DICOMDIRs are
    read here and never become entries."""
    names = NameIndex()
    for comps, handle, _display in files:
        names.add(comps, handle)
    display_of = {id(h): d for _c, h, d in files}
    claimed: set[int] = set()
    listed_dirs: list[tuple[str, ...]] = []
    out: list[Entry] = []
    for comps, handle, display in files:
        if not is_dicomdir_name(comps[-1]):
            continue
        claimed.add(id(handle))
        try:
            refs = read_dir(handle)
        except Exception as exc:  # noqa: BLE001 - any parse failure: read file by file
            summary.warnings.append(
                Problem(
                    display,
                    f"DICOMDIR unreadable ({type(exc).__name__}: {exc}); "
                    "its folder was read file by file",
                )
            )
            continue
        summary.dicomdirs_used += 1
        base = comps[:-1]
        listed_dirs.append(base)
        for ref in refs:
            found = names.find(base + ref.components) if ref.components else None
            if found is None:
                out.append(Entry(f"{display} -> {show(ref.raw)}", missing=ref))
            elif id(found) not in claimed:
                claimed.add(id(found))
                out.append(_entry_for(found, display_of[id(found)]))
    for comps, handle, display in files:
        if id(handle) in claimed:
            continue
        entry = _entry_for(handle, display)
        entry.unlisted = any(comps[: len(d)] == d for d in listed_dirs)
        out.append(entry)
    return out


class DiskResolver:
    """Finds a DICOMDIR's Referenced File ID under its folder on disk, component by
    component, case-insensitively (see :func:`normalize_name`); exact names win."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._listings: dict[Path, dict[str, list[str]]] = {}

    def _listing(self, folder: Path) -> dict[str, list[str]]:
        if folder not in self._listings:
            by_norm: dict[str, list[str]] = {}
            try:
                for name in sorted(os.listdir(folder)):
                    by_norm.setdefault(normalize_name(name), []).append(name)
            except OSError:
                pass
            self._listings[folder] = by_norm
        return self._listings[folder]

    def find(self, components: tuple[str, ...]) -> Path | None:
        current = self.base
        for comp in components:
            names = self._listing(current).get(normalize_name(comp))
            if not names:
                return None
            current = current / (comp if comp in names else names[0])
        return current if current.is_file() else None


def _dicomdir_source(path: Path, summary: Summary) -> Source:
    """A DICOMDIR named on the command line: the files it references, nothing else."""
    source = Source(show(str(path)))
    try:
        refs = read_dicomdir(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure
        summary.rejected.append(
            Problem(source.display, f"DICOMDIR unreadable: {type(exc).__name__}: {exc}")
        )
        return source
    summary.dicomdirs_used += 1
    resolver = DiskResolver(path.parent)
    seen: set[Path] = set()
    for ref in refs:
        found = resolver.find(ref.components) if ref.components else None
        if found is None:
            source.entries.append(Entry(f"{source.display} -> {show(ref.raw)}", missing=ref))
        elif found not in seen:
            seen.add(found)
            source.entries.append(Entry(show(str(found)), path=found))
    return source


def _entry_for(handle: object, display: str) -> Entry:
    if isinstance(handle, zipfile.ZipInfo):
        return Entry(display, member=handle)
    return Entry(display, path=handle)  # type: ignore[arg-type]


def _walk_folder(root: Path, summary: Summary) -> tuple[list, list[Path]]:
    """Regular files under ``root`` as (components, path, display), and the zips found."""
    files: list[tuple[tuple[str, ...], object, str]] = []
    zips: list[Path] = []

    def onerror(exc: OSError) -> None:
        summary.rejected.append(Problem(show(str(exc.filename)), f"cannot list folder: {exc}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                regular = path.is_file()
            except OSError:
                regular = False
            if not regular:
                continue  # sockets, fifos, devices, broken links: never read
            if _is_zip_name(name):
                zips.append(path)
            else:
                files.append(((*rel, name), path, show(str(path))))
    return files, zips


def _zip_source(path: Path, summary: Summary) -> Source | None:
    source = Source(show(str(path)), zip_path=path)
    try:
        with zipfile.ZipFile(path) as zf:
            files = []
            for info in zf.infolist():
                if info.is_dir():
                    continue
                comps = split_components([info.filename.replace("\\", "/")]) or (info.filename,)
                files.append((comps, info, f"{source.display}!{show(info.filename)}"))

            def read_dir(info: zipfile.ZipInfo) -> list[Reference]:
                return read_dicomdir(io.BytesIO(zf.read(info)))

            source.entries = _tree_entries(files, read_dir, summary)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        summary.rejected.append(Problem(source.display, f"not a readable zip archive: {exc}"))
        return None
    return source


def plan(paths: list[Path], summary: Summary) -> list[Source]:
    """Everything that will be read, grouped by source (a folder, a DICOMDIR, a zip)."""
    sources: list[Source] = []
    for path in paths:
        if path.is_dir():
            files, zips = _walk_folder(path, summary)
            entries = _tree_entries(files, read_dicomdir, summary)
            sources.append(Source(show(str(path)), entries=entries))
            for z in zips:
                if (zs := _zip_source(z, summary)) is not None:
                    sources.append(zs)
        elif is_dicomdir_name(path.name):
            sources.append(_dicomdir_source(path, summary))
        elif path.is_file():
            if _looks_like_zip(path):
                if (zs := _zip_source(path, summary)) is not None:
                    sources.append(zs)
            else:
                sources.append(
                    Source(
                        show(str(path)), entries=[Entry(show(str(path)), path=path, explicit=True)]
                    )
                )
        else:
            summary.rejected.append(Problem(show(str(path)), "not a file nor a folder"))
    return sources


def _looks_like_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if head[128:132] == b"DICM":
            return False  # a DICOM file (its preamble may well say PK)
        return zipfile.is_zipfile(path)
    except OSError:
        return False


# -- running ------------------------------------------------------------------------------


class _Progress:
    """click's progress bar on a terminal; a line every 10 s otherwise; nothing if quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.done = 0
        self.bar = None
        self.quiet = quiet
        self.last = time.monotonic()
        if not quiet and sys.stderr.isatty():
            self.bar = click.progressbar(
                length=total,
                label="Importing",
                file=sys.stderr,
                show_pos=True,
                item_show_func=lambda item: item[-50:] if item else None,
            )
            self.bar.__enter__()

    def step(self, display: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1, display)
        elif not self.quiet and time.monotonic() - self.last >= 10:
            self.last = time.monotonic()
            click.echo(f"import: {self.done}/{self.total} files", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _read(entry: Entry, zf: zipfile.ZipFile | None) -> bytes:
    if entry.member is not None:
        assert zf is not None
        if entry.member.flag_bits & 0x1:
            raise BadFile("encrypted zip member")
        try:
            return zf.read(entry.member)
        except (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError) as exc:
            raise BadFile(f"cannot read zip member: {exc}") from None
    assert entry.path is not None
    try:
        return entry.path.read_bytes()
    except OSError as exc:
        raise BadFile(f"cannot read file: {exc}") from None


class _Stop(Exception):
    pass


def _import_entry(
    runtime: Runtime,
    entry: Entry,
    zf: zipfile.ZipFile | None,
    summary: Summary,
    kept: set[str],
) -> None:
    if entry.missing is not None:
        summary.missing.append(Problem(entry.display, "listed in the DICOMDIR but not found"))
        summary.missing_uids.append(entry.missing.sop_instance_uid)
        return
    try:
        data = _read(entry, zf)
        try:
            meta = split_part10(data)
        except NotDicom:
            if entry.member is not None and _is_zip_name(entry.member.filename):
                raise BadFile("a zip inside the zip: extract it and import it") from None
            if entry.explicit:
                raise BadFile("not a DICOM file, a DICOMDIR nor a zip archive") from None
            summary.skipped_not_dicom += 1
            return
        if meta.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            return  # a DICOMDIR under another name: never an instance
        dataset = memoryview(data)[meta.dataset_offset :]
        result = runtime.ingestor.ingest(
            Incoming(
                dataset=dataset,
                transfer_syntax_uid=meta.transfer_syntax_uid,
                source=SOURCE,
                expected_sop_class_uid=meta.sop_class_uid,
                expected_sop_instance_uid=meta.sop_instance_uid,
            )
        )
    except BadFile as exc:
        summary.rejected.append(Problem(entry.display, str(exc)))
        return
    except IngestRejected as exc:
        summary.rejected.append(Problem(entry.display, str(exc)))
        if exc.reason is Rejection.OUT_OF_RESOURCES:
            raise _Stop(f"out of resources ({exc.detail})") from None
        return
    except Exception as exc:  # one bad file must not end the run
        log.exception("import of %s failed", entry.display)
        summary.rejected.append(
            Problem(entry.display, f"processing failure: {type(exc).__name__}: {exc}")
        )
        return
    kept.add(result.header.sop_instance_uid)
    summary.bytes_kept += result.size
    if entry.unlisted:
        summary.not_in_dicomdir += 1
    if result.outcome is Outcome.STORED:
        summary.stored += 1
    elif result.outcome is Outcome.REPLACED:
        summary.replaced += 1
    elif result.outcome is Outcome.KEPT_EXISTING:
        summary.kept_existing += 1
    else:
        summary.already_present += 1


def _entries(sources: list[Source]) -> Iterator[tuple[Entry, zipfile.ZipFile | None]]:
    for source in sources:
        if source.zip_path is None:
            for entry in source.entries:
                yield entry, None
            continue
        try:
            zf = zipfile.ZipFile(source.zip_path)
        except (OSError, zipfile.BadZipFile) as exc:
            # Readable when planned, not now (media removed?): stop and say so.
            raise _Stop(f"{source.display} became unreadable: {exc}") from None
        with zf:
            for entry in source.entries:
                yield entry, zf


def import_paths(runtime: Runtime, paths: list[Path], quiet: bool = True) -> Summary:
    """Import ``paths`` with ``runtime``'s ingestor; the whole run's :class:`Summary`."""
    summary = Summary()
    if not quiet and sys.stderr.isatty():
        click.echo("Scanning " + ", ".join(show(str(p)) for p in paths) + "...", err=True)
    sources = plan(paths, summary)
    total = sum(len(s.entries) for s in sources)
    progress = _Progress(total, quiet)
    kept: set[str] = set()
    try:
        for entry, zf in _entries(sources):
            _import_entry(runtime, entry, zf, summary, kept)
            progress.step(entry.display)
    except _Stop as exc:
        summary.stopped = str(exc)
    except KeyboardInterrupt:
        summary.stopped = "interrupted"
    finally:
        progress.close()
    summary.not_processed = total - progress.done if summary.stopped else 0
    # A DICOMDIR entry whose instance came in from another file (other name, other case)
    # lost nothing: do not report it.
    summary.missing = [
        p
        for p, uid in zip(summary.missing, summary.missing_uids, strict=True)
        if not (uid and uid in kept)
    ]
    return summary


def run_import(
    settings: Settings, paths: list[Path], quiet: bool = False, as_json: bool = False
) -> int:
    """``drimbox import``: build a runtime, import, print the summary; the exit status."""
    if settings.log_level != "DEBUG":
        # stderr belongs to the progress bar: no migration chatter, no per-value warnings.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("pydicom").setLevel(logging.ERROR)
    from gateway.runtime import Runtime  # imports alembic, which logs as it loads

    try:
        runtime = Runtime.build(settings)  # removes only dead writers' staging files
    except Exception as exc:  # noqa: BLE001 - index unreachable, data dir not writable
        click.echo(f"drimbox import: cannot open the gateway's storage or index: {exc}", err=True)
        return 2
    try:
        with warnings.catch_warnings():
            # pydicom warns about each odd value it meets; the summary gives the reasons.
            warnings.simplefilter("ignore", UserWarning)
            summary = import_paths(runtime, paths, quiet=quiet)
    except KeyboardInterrupt:  # while scanning, before anything was read
        click.echo("drimbox import: interrupted while scanning; nothing imported", err=True)
        return 130
    finally:
        runtime.close()
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        click.echo(summary.text())
    return summary.exit_status
