"""A study's instances as DICOM media (PS3.10 File-set, PS3.11 General Purpose): the DICOMDIR
read back by pydicom and by dcmtk, every instance referenced, the files byte for byte as stored,
in a folder, in a zip and in a streamed zip."""

from __future__ import annotations

import io
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from gateway.imaging.media import (
    MediaError,
    add_study_media_to_zip,
    stream_study_media_zip,
    write_study_media,
)
from tests.dicom_factory import TEST_ROOT, make_instance, to_bytes
from tests.peers import require_tool

FILE_ID_COMPONENT = re.compile(r"^[A-Z0-9_]{1,8}$")


def _study(tmp_path: Path) -> dict[str, bytes]:
    """A mixed study on disk: explicit/implicit/RLE/deflate, a PDF, and an instance without
    Study ID nor Series Number (the record invents them; the file stays as stored)."""
    study = generate_uid(TEST_ROOT)
    kinds = [
        (CTImageStorage, ExplicitVRLittleEndian),
        (CTImageStorage, ImplicitVRLittleEndian),
        (MRImageStorage, RLELossless),
        (ComputedRadiographyImageStorage, DeflatedExplicitVRLittleEndian),
        (EncapsulatedPDFStorage, ExplicitVRLittleEndian),
    ]
    out: dict[str, bytes] = {}
    for i, (sop_class, ts) in enumerate(kinds):
        ds = make_instance(sop_class=sop_class, transfer_syntax=ts, study_uid=study,
                           series_number=i + 1, instance_number=i + 1, seed=i)
        out[str(ds.SOPInstanceUID)] = to_bytes(ds)
    ds = make_instance(study_uid=study, seed=9)
    del ds.StudyID
    del ds.SeriesNumber
    out[str(ds.SOPInstanceUID)] = to_bytes(ds)
    folder = tmp_path / "stored"
    folder.mkdir()
    for uid, data in out.items():
        (folder / f"{uid}.dcm").write_bytes(data)
    return out


def _check_file_set(root: Path, expected: dict[str, bytes]) -> None:
    fs = FileSet(dcmread(root / "DICOMDIR"))
    seen = {}
    for instance in fs:
        parts = Path(instance.FileID).parts
        assert 1 <= len(parts) <= 8
        assert all(FILE_ID_COMPONENT.match(p) for p in parts), parts
        seen[str(instance.SOPInstanceUID)] = Path(instance.path).read_bytes()
        assert instance.TransferSyntaxUID == dcmread(instance.path).file_meta.TransferSyntaxUID
    assert seen.keys() == expected.keys()
    for uid, data in expected.items():
        assert seen[uid] == data, f"{uid} was not written as stored"


def test_folder_from_paths_and_bytes(tmp_path: Path) -> None:
    expected = _study(tmp_path)
    paths = sorted((tmp_path / "stored").iterdir())
    sources = [p if i % 2 else p.read_bytes() for i, p in enumerate(paths)]
    layout = write_study_media(sources, tmp_path / "cd", prefix="")
    assert len(layout.entries) == len(expected)
    _check_file_set(tmp_path / "cd", expected)
    # dcmtk reads the DICOMDIR; dciodvfy checks it against the Basic Directory IOD.
    dicomdir = str(tmp_path / "cd" / "DICOMDIR")
    dump = subprocess.run([require_tool("dcmdump"), "-q", dicomdir],
                          capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.count("DirectoryRecordType") >= len(expected)
    check = subprocess.run([require_tool("dciodvfy"), dicomdir],
                           capture_output=True, text=True, timeout=60)
    assert "BasicDirectory" in check.stdout + check.stderr
    assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr


def test_prefix_and_zip(tmp_path: Path) -> None:
    expected = _study(tmp_path)
    paths = sorted((tmp_path / "stored").iterdir())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("README.TXT", "hello")
        add_study_media_to_zip(archive, paths, prefix="IMAGES")
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as archive:
        assert archive.testzip() is None
        assert "IMAGES/DICOMDIR" in archive.namelist()
        archive.extractall(tmp_path / "unzipped")
    _check_file_set(tmp_path / "unzipped" / "IMAGES", expected)


def test_streamed_zip(tmp_path: Path) -> None:
    expected = _study(tmp_path)
    paths = sorted((tmp_path / "stored").iterdir())
    chunks = list(stream_study_media_zip(paths))
    assert len(chunks) > 2  # really streamed, not one buffer
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.testzip() is None
        archive.extractall(tmp_path / "unzipped")
    _check_file_set(tmp_path / "unzipped", expected)


def test_duplicates_kept_once_and_refusals(tmp_path: Path) -> None:
    expected = _study(tmp_path)
    paths = sorted((tmp_path / "stored").iterdir())
    layout = write_study_media(paths + paths[:2], tmp_path / "cd")
    assert len(layout.entries) == len(expected)
    with pytest.raises(MediaError, match="not a DICOM"):
        write_study_media([b"not dicom at all" * 20], tmp_path / "bad")
    with pytest.raises(MediaError, match="no instance"):
        write_study_media([], tmp_path / "empty")
