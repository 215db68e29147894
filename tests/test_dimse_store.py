"""C-ECHO and C-STORE through real dcmtk tools against ``drimbox serve``.

Each test runs on both index back-ends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from pathlib import Path

from dicom_factory import dataset_bytes, write_corpus
from peers import require_tool, storescu
from pydicom import dcmread

from gateway.index.engine import create_index_engine
from gateway.index.store import InstanceIndex


def open_index(url: str) -> InstanceIndex:
    return InstanceIndex(create_index_engine(url))


def test_echoscu_succeeds(gateway) -> None:
    exe = require_tool("echoscu")
    proc = subprocess.run(
        [exe, "-aec", gateway.ae_title, "127.0.0.1", str(gateway.dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def _sent_hashes(files: list[Path]) -> dict[str, str]:
    out = {}
    for f in files:
        uid = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        out[uid] = hashlib.sha256(dataset_bytes(f)).hexdigest()
    return out


def test_storescu_folder_byte_identical_and_indexed_once(gateway, tmp_path: Path) -> None:
    files = write_corpus(tmp_path / "corpus", 204, studies=3)
    transfer_syntaxes = {str(dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                         for f in files}
    assert "1.2.840.10008.1.2.5" in transfer_syntaxes  # RLE: at least one compressed syntax
    storescu(files, gateway.dicom_port)

    sent = _sent_hashes(files)
    index = open_index(gateway.database_url)
    rows = index.all_instances()
    assert len(rows) == len(files) == len({r.sop_instance_uid for r in rows})
    counts = index.counts()
    assert (counts.studies, counts.instances) == (3, 204)
    for row in rows:
        assert row.sha256 == sent[row.sop_instance_uid]
        path = gateway.data_dir / "storage" / row.storage_key
        stored = dataset_bytes(path)
        assert hashlib.sha256(stored).hexdigest() == sent[row.sop_instance_uid]
        meta = dcmread(path, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == row.sop_instance_uid
        assert meta.MediaStorageSOPClassUID == row.sop_class_uid
        assert meta.TransferSyntaxUID == row.transfer_syntax_uid
        assert meta.SourceApplicationEntityTitle == "STORESCU"

    # Sending the same folder again succeeds and stores nothing twice.
    storescu(files, gateway.dicom_port)
    assert open_index(gateway.database_url).counts() == counts
    stored_files = list((gateway.data_dir / "storage").rglob("*.dcm"))
    assert len(stored_files) == len(files)
    assert 'drimbox_instances_received_total{source="dimse"} 408.0' in gateway.metrics()


def test_four_concurrent_associations(gateway, tmp_path: Path) -> None:
    chunks = [write_corpus(tmp_path / f"c{i}", 60, studies=1, seed=1000 * i) for i in range(4)]
    errors: list[BaseException] = []

    def send(files: list[Path]) -> None:
        try:
            storescu(files, gateway.dicom_port)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    counts = open_index(gateway.database_url).counts()
    assert (counts.studies, counts.instances) == (4, 240)
    assert counts.series == 4 * 6
