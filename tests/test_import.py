"""``drimbox import``: folders, CDs (DICOMDIR) and zips, run as the real
command in a subprocess against both index back-ends, plus unit tests of the helpers that
find files on a disc and split Part 10 files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import launcher
import pytest
from dicom_factory import MIX, dataset_bytes, iter_corpus, make_instance, to_bytes, write_corpus
from peers import storescu
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import RLELossless

from gateway.index.engine import create_index_engine
from gateway.index.store import InstanceIndex
from gateway.ingest.completeness import DatasetDefect, check_complete
from gateway.ingest.importer import (
    BadFile,
    DiskResolver,
    NameIndex,
    NotDicom,
    normalize_name,
    split_components,
    split_part10,
)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


def drimbox_import(
    args: list[str], data_dir: Path, database_url: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(DRIMBOX_DATA_DIR=str(data_dir), DRIMBOX_DATABASE_URL=database_url)
    return launcher.run(["import", *args], env=env, cwd=cwd, timeout=300)


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON summary:\n{proc.stdout}\n{proc.stderr[-3000:]}") from None


def open_index(url: str) -> InstanceIndex:
    return InstanceIndex(create_index_engine(url))


def expected_hashes(files: list[Path]) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of the bytes after the File Meta Information."""
    out = {}
    for f in files:
        uid = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        out[uid] = hashlib.sha256(dataset_bytes(f)).hexdigest()
    return out


def assert_stored_exactly(data_dir: Path, database_url: str, expected: dict[str, str]) -> None:
    """The index holds exactly ``expected`` (once each), and every stored file carries the
    very dataset bytes of its source after our own meta information."""
    index = open_index(database_url)
    try:
        rows = index.all_instances()
    finally:
        index.engine.dispose()
    assert sorted(r.sop_instance_uid for r in rows) == sorted(expected)
    for row in rows:
        assert row.sop_class_uid != MEDIA_STORAGE_DIRECTORY
        assert row.sha256 == expected[row.sop_instance_uid]
        path = data_dir / "storage" / row.storage_key
        assert hashlib.sha256(dataset_bytes(path)).hexdigest() == row.sha256
        meta = dcmread(path, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == row.sop_instance_uid
        assert meta.TransferSyntaxUID == row.transfer_syntax_uid
        assert meta.SourceApplicationEntityTitle == "import"
    assert len(list((data_dir / "storage").rglob("*.dcm"))) == len(expected)


def write_cd(root: Path, n: int, seed: int) -> list[Path]:
    """A disc as CD writers make it: DICOMDIR + PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx (pydicom
    FileSet), plus what else burns onto patient CDs. Returns the instance files."""
    fs = FileSet()
    for ds in iter_corpus(n, studies=2, seed=seed):
        fs.add(ds)
    fs.write(root)
    (root / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER\\VIEWER.EXE\n")
    (root / "README.TXT").write_text("Examen d'imagerie. Ouvrir INDEX.HTM.\n")
    (root / "INDEX.HTM").write_text("<html><body>Visionneuse</body></html>\n")
    (root / "VIEWER").mkdir()
    (root / "VIEWER" / "VIEWER.EXE").write_bytes(b"MZ\x90\x00" + bytes(range(256)) * 8)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name.startswith("SE"))


# -- the command, end to end --------------------------------------------------------------


def test_folder_import_is_byte_identical_and_idempotent(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = write_corpus(tmp_path / "backlog" / "a", 18, studies=2)
    files += write_corpus(tmp_path / "backlog" / "b" / "c", 12, studies=1, seed=100)
    (tmp_path / "backlog" / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "backlog" / "b" / "viewer.jar").write_bytes(b"PK\x03\x04" + bytes(100))
    # Meta information without preamble nor "DICM": accepted, the meta gives the syntax.
    bare = to_bytes(make_instance(seed=77))
    (tmp_path / "backlog" / "NOPREAMBLE").write_bytes(bare[132:])
    bare_dataset = bare[144 + int.from_bytes(bare[140:144], "little") :]
    bare_uid = str(dcmread(io.BytesIO(bare), stop_before_pixels=True).SOPInstanceUID)
    expected = expected_hashes(files) | {bare_uid: hashlib.sha256(bare_dataset).hexdigest()}
    ts = {str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2"} <= ts
    # A file in flight for a `drimbox serve` sharing the data dir (a live writer, named by its
    # pid): import must not touch it; a dead writer's leftover goes.
    (data / "staging").mkdir(parents=True)
    writer = subprocess.Popen(["sleep", "600"])
    in_flight = data / "staging" / f"{writer.pid}-0123abcd.tmp"
    in_flight.write_bytes(b"partial")
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = data / "staging" / f"{dead.pid}-0123abcd.tmp"
    leftover.write_bytes(b"crash")

    try:
        proc = drimbox_import(["--json", str(tmp_path / "backlog")], data, database_url)
    finally:
        writer.kill()
        writer.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = summary_of(proc)
    assert summary["stored"] == 31
    assert summary["already_present"] == summary["replaced"] == 0
    assert summary["skipped_not_dicom"] == 2
    assert summary["rejected"] == summary["missing"] == []
    assert_stored_exactly(data, database_url, expected)
    assert in_flight.read_bytes() == b"partial"
    assert not leftover.exists()

    # Again, text summary: everything already present, nothing stored twice.
    proc = drimbox_import([str(tmp_path / "backlog")], data, database_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "stored:               0" in lines
    assert "already present:      31" in lines
    assert "skipped (not DICOM):  2" in lines
    assert "rejected:             0" in lines
    assert_stored_exactly(data, database_url, expected)


def test_cd_with_dicomdir(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cd = tmp_path / "cd"
    files = write_cd(cd, 12, seed=0)
    # What discs read on other systems look like: other case, ISO 9660 version suffixes.
    lower = files[0].with_name(files[0].name.lower())
    files[0].rename(lower)
    versioned = files[1].with_name(files[1].name + ";1")
    files[1].rename(versioned)
    series_dir = files[2].parent
    renamed_dir = series_dir.with_name(series_dir.name.lower())
    series_dir.rename(renamed_dir)
    # A name the DICOMDIR does not match at all: found by the walk, so not reported missing.
    files[3].rename(files[3].with_name(files[3].name + ".DCM"))
    # A file the DICOMDIR does not list: imported too.
    (cd / "EXTRA").mkdir()
    make_instance(seed=99).save_as(cd / "EXTRA" / "IM000000", enforce_file_format=True)
    files = sorted(
        p for p in cd.rglob("*") if p.is_file() and p.parent.name.upper()[:2] in ("SE", "EX")
    )
    assert lower in files and versioned in files and len(files) == 13

    proc = drimbox_import(["--json", str(cd)], data, database_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = summary_of(proc)
    assert summary["stored"] == 13
    assert summary["skipped_not_dicom"] == 4  # AUTORUN.INF, README.TXT, INDEX.HTM, VIEWER.EXE
    assert summary["dicomdirs_used"] == 1
    assert summary["not_in_dicomdir"] == 2  # the renamed one and EXTRA/IM000000
    assert summary["rejected"] == summary["missing"] == summary["warnings"] == []
    assert_stored_exactly(data, database_url, expected_hashes(files))


def test_dicomdir_with_a_missing_file(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    cd = tmp_path / "damaged"
    files = write_cd(cd, 6, seed=50)
    gone = files.pop(3)
    gone.unlink()

    proc = drimbox_import([str(cd / "DICOMDIR")], data, database_url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "stored:               5" in proc.stdout.splitlines()
    ref = "\\".join(gone.relative_to(cd).parts)
    assert f"  {cd / 'DICOMDIR'} -> {ref}: listed in the DICOMDIR but not found" in proc.stdout
    assert_stored_exactly(data, database_url, expected_hashes(files))


def test_zip_import_never_writes_member_paths(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    loose = write_corpus(tmp_path / "src", 6, studies=1, seed=200)
    evil = make_instance(seed=7)
    evil_path = tmp_path / "src-evil" / "evil.dcm"
    evil_path.parent.mkdir()
    evil.save_as(evil_path, enforce_file_format=True)
    cd_files = write_cd(tmp_path / "cdsrc", 6, seed=300)

    archive = tmp_path / "in" / "exams.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in loose:
            zf.write(f, f"export/study/{f.name}")
        zf.writestr("../../evil.dcm", evil_path.read_bytes())
        zf.writestr("notes.txt", "see attached images")
        for f in (tmp_path / "cdsrc").rglob("*"):
            if f.is_file():
                zf.write(f, "CD1/" + f.relative_to(tmp_path / "cdsrc").as_posix())
    workdir = tmp_path / "w1" / "w2"
    workdir.mkdir(parents=True)

    proc = drimbox_import(["--json", str(archive)], data, database_url, cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = summary_of(proc)
    assert summary["stored"] == 6 + 1 + 6
    assert summary["dicomdirs_used"] == 1
    assert summary["skipped_not_dicom"] == 1 + 4
    assert summary["rejected"] == summary["missing"] == []
    # Nothing was extracted anywhere: no file named after a member outside the data dir.
    assert [p for p in tmp_path.rglob("evil.dcm") if p != evil_path] == []
    assert list(workdir.iterdir()) == []
    assert_stored_exactly(data, database_url, expected_hashes([*loose, evil_path, *cd_files]))


def test_corrupt_files_are_rejected_with_reasons(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = tmp_path / "mixed"
    good = write_corpus(folder, 6, studies=1, seed=400)
    truncated = folder / "TRUNC.dcm"
    truncated.write_bytes(to_bytes(make_instance(seed=9))[:-700])
    cut_header = folder / "CUTHDR.dcm"
    cut_header.write_bytes(to_bytes(make_instance(seed=10))[:300])
    rle_cut = folder / "RLECUT.dcm"
    # Only the sequence delimiter lost: every fragment is whole, the pixel data is not.
    rle_cut.write_bytes(to_bytes(make_instance(transfer_syntax=RLELossless, seed=11))[:-8])
    bad_uid = folder / "BADUID.dcm"
    with pytest.warns(UserWarning):
        make_instance(sop_uid="1.2.abc", seed=12).save_as(bad_uid, enforce_file_format=True)
    raw = folder / "RAW.dcm"  # a dataset without File Meta Information
    raw_ds = make_instance(seed=13)
    del raw_ds.file_meta
    raw_ds.save_as(raw, implicit_vr=True, little_endian=True)

    proc = drimbox_import(["--json", str(folder)], data, database_url)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = summary_of(proc)
    assert summary["stored"] == 6
    reasons = {Path(p["path"]).name: p["reason"] for p in summary["rejected"]}
    assert set(reasons) == {"TRUNC.dcm", "CUTHDR.dcm", "RLECUT.dcm", "BADUID.dcm", "RAW.dcm"}
    assert "element (7FE0,0010) declares" in reasons["TRUNC.dcm"]
    assert "truncated" in reasons["CUTHDR.dcm"]
    assert "encapsulated (7FE0,0010) is not terminated" in reasons["RLECUT.dcm"]
    assert reasons["BADUID.dcm"] == "a UID is malformed: SOPInstanceUID '1.2.abc' is not a UID"
    assert reasons["RAW.dcm"].startswith("no File Meta Information")
    # Nothing else affected: exactly the good files stored, no leftovers in staging.
    assert_stored_exactly(data, database_url, expected_hashes(good))
    assert list((data / "staging").iterdir()) == []

    proc = drimbox_import([str(folder)], data, database_url)
    assert proc.returncode == 1
    assert f"  {truncated}: dataset is truncated or corrupt: element (7FE0,0010)" in proc.stdout


def test_import_while_serve_receives(gateway, tmp_path: Path) -> None:
    """`drimbox import` next to a running `drimbox serve` on the same data dir and index: a
    modality keeps pushing (storescu, association after association) for the whole life of
    the import process."""
    pushed = write_corpus(tmp_path / "modality", 30, studies=2, seed=500)
    backlog = write_corpus(tmp_path / "backlog", 60, studies=2, seed=600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(DRIMBOX_DATA_DIR=str(gateway.data_dir), DRIMBOX_DATABASE_URL=gateway.database_url)
    out_path, err_path = tmp_path / "import.out", tmp_path / "import.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        importer = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "import", "--json", str(tmp_path / "backlog")],
            env=env,
            stdout=out,
            stderr=err,
        )
        rounds = 0
        while rounds == 0 or importer.poll() is None:
            storescu(pushed, gateway.dicom_port)  # raises unless every C-STORE succeeded
            rounds += 1
        importer.wait(timeout=300)
    proc = subprocess.CompletedProcess(
        importer.args, importer.returncode, out_path.read_text(), err_path.read_text()
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary_of(proc)["stored"] == 60
    expected = expected_hashes(pushed) | expected_hashes(backlog)
    index = open_index(gateway.database_url)
    try:
        assert index.counts().instances == 90
        assert {r.sop_instance_uid: r.sha256 for r in index.all_instances()} == expected
    finally:
        index.engine.dispose()
    assert f'drimbox_instances_received_total{{source="dimse"}} {30.0 * rounds}' in (
        gateway.metrics()
    )


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = drimbox_import([str(tmp_path / "nowhere")], tmp_path / "data", "sqlite://")
    assert proc.returncode == 2
    proc = drimbox_import([str(tmp_path)], tmp_path / "data", "mysql://x")
    assert proc.returncode == 2
    assert "database_url" in proc.stderr
    proc = drimbox_import([str(tmp_path)], tmp_path / "data", "postgresql://u@127.0.0.1:1/x")
    assert proc.returncode == 2
    assert "cannot open the gateway's storage or index" in proc.stderr


# -- helpers (no database) -----------------------------------------------------------------


def test_normalize_name_and_components() -> None:
    assert normalize_name("im000001;1") == "IM000001"
    assert normalize_name("IM000001.") == "IM000001"
    assert normalize_name("DicomDir;1") == "DICOMDIR"
    assert split_components(["DICOM", "ST000000", "IM1"]) == ("DICOM", "ST000000", "IM1")
    assert split_components(["DICOM\\ST0/IM1"]) == ("DICOM", "ST0", "IM1")
    assert split_components(["..", "etc", "passwd"]) is None
    assert split_components(["C:", "X"]) is None
    assert split_components([""]) is None


def test_disk_resolver_finds_cd_names(tmp_path: Path) -> None:
    (tmp_path / "dicom" / "st000000").mkdir(parents=True)
    (tmp_path / "dicom" / "st000000" / "im000001;1").write_bytes(b"x")
    (tmp_path / "dicom" / "st000000" / "IM000002.").write_bytes(b"x")
    (tmp_path / "dicom" / "st000000" / "IM000003").write_bytes(b"x")
    (tmp_path / "dicom" / "st000000" / "im000003").write_bytes(b"y")
    (tmp_path / "dicom" / "st000000" / "IM000004").mkdir()
    r = DiskResolver(tmp_path)
    base = tmp_path / "dicom" / "st000000"
    assert r.find(("DICOM", "ST000000", "IM000001")) == base / "im000001;1"
    assert r.find(("DICOM", "ST000000", "IM000002")) == base / "IM000002."
    assert r.find(("DICOM", "ST000000", "IM000003")) == base / "IM000003"  # exact wins
    assert r.find(("DICOM", "ST000000", "im000003")) == base / "im000003"
    assert r.find(("DICOM", "ST000000", "IM000004")) is None  # a folder is not a file
    assert r.find(("DICOM", "ST000000", "IM000009")) is None


def test_name_index_for_zip_members() -> None:
    names = NameIndex()
    names.add(("cd", "dicom", "im1;1"), "a")
    names.add(("CD", "DICOM", "IM2"), "b")
    names.add(("CD", "DICOM", "im2"), "c")
    assert names.find(("CD", "DICOM", "IM1")) == "a"
    assert names.find(("CD", "DICOM", "im2")) == "c"
    assert names.find(("cd", "dicom", "IM2")) == "b"
    assert names.find(("CD", "DICOM", "IM3")) is None


@pytest.mark.parametrize(("sop_class", "ts"), MIX)
def test_split_part10_with_and_without_preamble(sop_class: str, ts: str) -> None:
    data = to_bytes(make_instance(sop_class=sop_class, transfer_syntax=ts))
    group_len = int.from_bytes(data[140:144], "little")
    dataset = data[144 + group_len :]
    for variant, shift in ((data, 0), (data[128:], 128), (data[132:], 132)):
        meta = split_part10(variant)
        assert meta.transfer_syntax_uid == ts
        assert meta.sop_class_uid == sop_class
        assert variant[meta.dataset_offset :] == dataset
        assert meta.dataset_offset == 144 + group_len - shift
        check_complete(dataset, ts)
    # (Not 1: a deflated dataset may end with a pad byte to even length.)
    for cut in (2, 50, len(dataset) // 2):
        with pytest.raises(DatasetDefect):
            check_complete(dataset[:-cut], ts)


def test_split_part10_refuses_what_is_not_part10() -> None:
    with pytest.raises(NotDicom):
        split_part10(b"[autorun]\r\nopen=viewer.exe\r\n")
    with pytest.raises(NotDicom):
        split_part10(b"MZ" + bytes(300))
    with pytest.raises(BadFile, match="truncated"):
        split_part10(to_bytes(make_instance())[:150])


def test_on_conflict_keeps_replaces_or_refuses(tmp_path: Path, database_url: str) -> None:
    """An old CD holding a SOP Instance UID already stored with other bytes (the PACS sent a
    corrected copy since): ``--on-conflict keep`` (default) leaves the stored copy, ``replace``
    swaps it, ``refuse`` rejects the file (exit 1); the store never holds two copies."""
    data = tmp_path / "data"
    uids = {"study_uid": "2.25.71001", "series_uid": "2.25.71002", "sop_uid": "2.25.71003"}
    corrected = make_instance(patient_name="DUPONT^JEAN^CORRIGE", **uids)
    old = make_instance(patient_name="DUPONT^JEAN", **uids)
    (tmp_path / "pacs").mkdir()
    (tmp_path / "cd").mkdir()
    corrected.save_as(tmp_path / "pacs" / "IM1.dcm", enforce_file_format=True)
    old.save_as(tmp_path / "cd" / "IM1.dcm", enforce_file_format=True)
    new_hashes = expected_hashes([tmp_path / "pacs" / "IM1.dcm"])
    old_hashes = expected_hashes([tmp_path / "cd" / "IM1.dcm"])
    assert new_hashes != old_hashes

    assert drimbox_import(["--quiet", str(tmp_path / "pacs")], data, database_url).returncode == 0

    proc = drimbox_import(["--json", str(tmp_path / "cd")], data, database_url)
    summary = summary_of(proc)
    assert proc.returncode == 0
    assert (summary["kept_existing"], summary["stored"], summary["replaced"]) == (1, 0, 0)
    assert_stored_exactly(data, database_url, new_hashes)

    proc = drimbox_import(["--json", "--on-conflict", "refuse", str(tmp_path / "cd")], data,
                          database_url)
    summary = summary_of(proc)
    assert proc.returncode == 1
    assert len(summary["rejected"]) == 1 and "other content" in summary["rejected"][0]["reason"]
    assert_stored_exactly(data, database_url, new_hashes)

    proc = drimbox_import(["--json", "--on-conflict", "replace", str(tmp_path / "cd")], data,
                          database_url)
    summary = summary_of(proc)
    assert proc.returncode == 0
    assert summary["replaced"] == 1
    assert_stored_exactly(data, database_url, old_hashes)


def test_store_check_finds_orphans_missing_and_damaged_files(tmp_path: Path,
                                                             database_url: str) -> None:
    """``drimbox store check``: after an import, the store is clean; a file no row names (what
    a crash between durable write and index commit leaves) is an orphan that ``--repair``
    deletes; a file gone or altered is reported and never repaired by dropping its row."""
    data = tmp_path / "data"
    files = write_corpus(tmp_path / "in", 4, studies=1, seed=11)
    assert drimbox_import(["--quiet", str(tmp_path / "in")], data, database_url).returncode == 0

    def check(*args: str) -> tuple[int, dict]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
        env.update(DRIMBOX_DATA_DIR=str(data), DRIMBOX_DATABASE_URL=database_url)
        proc = launcher.run(["store", "check", "--json",
                               *args], env=env, timeout=120)
        return proc.returncode, json.loads(proc.stdout)

    rc, report = check()
    assert rc == 0 and report["clean"] and report["files"] == report["rows"] == 4

    stored = sorted((data / "storage").rglob("*.dcm"))
    orphan = stored[0].with_name("2.25.999.0123456789ab.dcm")
    orphan.write_bytes(stored[0].read_bytes())
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    stored[1].unlink()
    damaged = bytearray(stored[2].read_bytes())
    damaged[-1] ^= 0xFF
    stored[2].write_bytes(bytes(damaged))

    rc, report = check("--verify")
    assert rc == 1
    assert report["orphans"] == [orphan.relative_to(data / "storage").as_posix()]
    assert len(report["missing"]) == 1 and stored[1].name in report["missing"][0]
    assert len(report["damaged"]) == 1 and stored[2].name in report["damaged"][0]

    rc, report = check("--repair")
    assert rc == 1 and report["orphans_removed"] == 1 and not orphan.exists()
    rc, report = check()
    assert report["orphans"] == [] and len(report["missing"]) == 1
    assert len(list((data / "storage").rglob("*.dcm"))) == 3
    assert len(files) == 4


def test_store_check_verify_finds_a_cut_copy_an_earlier_version_kept(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy cut short inside its Pixel Data that an earlier version acknowledged (before every
    ingest path checked completeness) has a hash that matches its index row; ``store check
    --verify`` still reports it damaged, naming what is missing, and leaves it in place."""
    from gateway.index.engine import upgrade
    from gateway.ingest import ingestor as ingest
    from gateway.ingest.storage import FileStore

    data = tmp_path / "data"
    whole = to_bytes(make_instance())
    cut = dataset_bytes_of_part10(whole)[:-500]
    monkeypatch.setattr(ingest, "check_complete", lambda *args: None)  # the earlier version
    engine = create_index_engine(database_url)
    upgrade(engine)
    index = InstanceIndex(engine)
    try:
        store = FileStore(data)
        store.prepare(clear_staging=False)
        result = ingest.Ingestor(store, index).ingest(ingest.Incoming(
            dataset=cut, transfer_syntax_uid="1.2.840.10008.1.2.1", source="OLDSCU"))
        assert result.outcome is ingest.Outcome.STORED
    finally:
        index.engine.dispose()

    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
    env.update(DRIMBOX_DATA_DIR=str(data), DRIMBOX_DATABASE_URL=database_url)
    run = ["store", "check", "--json"]
    plain = launcher.run(run, env=env, timeout=120)
    assert plain.returncode == 0, plain.stderr  # sizes agree: only --verify reads the bytes
    proc = launcher.run([*run, "--verify"], env=env, timeout=120)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and not report["clean"]
    assert len(report["damaged"]) == 1, report
    assert "incomplete" in report["damaged"][0] and "(7FE0,0010)" in report["damaged"][0]
    assert len(list((data / "storage").rglob("*.dcm"))) == 1  # reported, not removed


def dataset_bytes_of_part10(part10: bytes) -> bytes:
    from gateway.ingest.part10 import split_part10

    return part10[split_part10(part10).dataset_offset:]
