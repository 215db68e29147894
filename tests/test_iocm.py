# ruff: noqa: F811 - pytest fixtures imported from dmp_support / the report tests
"""An IOCM rejection note (IHE RAD IOCM: a Key Object
Selection titled (113001, DCM) "Rejected for Quality Reasons", ...) sent with a real storescu
removes the instances it references from the index, is kept aside and never served, and the
study's KOS in the real ``drimbox dmp-sim`` is replaced (RPLC) without them, or withdrawn when
nothing remains (R8). Both index back-ends.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from dmp_support import Sim, pki  # noqa: F401
from hl7_support import STUDY_G
from peers import storescu
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_manifest_e2e import stored_instances
from test_publication_e2e import IndexView, dmp_entries, dmp_env, of_study, view  # noqa: F401
from test_report_publication_e2e import images_g, sim  # noqa: F401

from gateway.manifest.kos import referenced_instances

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def rejection_note(folder: Path, rejected: list[Path], *, reason: tuple[str, str] = (
        "113001", "Rejected for Quality Reasons")) -> Path:
    """An IOCM rejection note for ``rejected`` (all of one study), as a modality sends it."""
    first = dcmread(rejected[0])
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = KOS, generate_uid()
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 999, 1
    ds.Modality = "KO"
    ds.PatientID, ds.PatientName = first.PatientID, first.PatientName
    ds.PatientBirthDate, ds.PatientSex = first.get("PatientBirthDate", ""), first.get("PatientSex", "")
    ds.StudyDate, ds.StudyTime = first.get("StudyDate", ""), first.get("StudyTime", "")
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = first.AccessionNumber, "", "1"
    ds.Manufacturer = "TEST"
    ds.ContentDate, ds.ContentTime = "20261123", "120000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [code(reason[0], "DCM", reason[1])]
    tmpl = Dataset()
    tmpl.MappingResource, tmpl.TemplateIdentifier = "DCMR", "2010"
    ds.ContentTemplateSequence = [tmpl]
    by_series: dict[str, list[Dataset]] = {}
    content = []
    for path in rejected:
        inst = dcmread(path, stop_before_pixels=True)
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = (inst.SOPClassUID,
                                                                   inst.SOPInstanceUID)
        by_series.setdefault(str(inst.SeriesInstanceUID), []).append(ref)
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        item.ReferencedSOPSequence = [ref]
        content.append(item)
    ds.ContentSequence = content
    series_items = []
    for series_uid, refs in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID, item.ReferencedSOPSequence = series_uid, refs
        series_items.append(item)
    study_item = Dataset()
    study_item.StudyInstanceUID = first.StudyInstanceUID
    study_item.ReferencedSeriesSequence = series_items
    ds.CurrentRequestedProcedureEvidenceSequence = [study_item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = KOS
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"reject-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def sop(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_rejection_note_removes_instances_and_replaces_the_kos(
        gateway_factory, sim: Sim, view: IndexView, tmp_path: Path) -> None:
    gw = gateway_factory(**dmp_env(sim, DRIMBOX_DICOMWEB_AUTH="none"))
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    gw.start()
    files = images_g(tmp_path / "g", 3)
    storescu(files, gw.dicom_port)
    (first,) = view.wait_done(STUDY_G)  # publication_trigger = stable: no HL7 port here
    assert len(referenced_instances(dcmread_bytes(view.kos_bytes(first.id), tmp_path))) == 3

    # One instance rejected for quality reasons: gone from the index and from DICOMweb.
    note = rejection_note(tmp_path / "notes", files[:1])
    storescu([note], gw.dicom_port)
    kept = {sop(p) for p in files[1:]}
    assert stored_instances(gw, STUDY_G) == kept  # the note is not an instance of the study
    r = httpx.get(f"{gw.url}/dicom-web/studies/{STUDY_G}/instances", timeout=30)
    assert {i["00080018"]["Value"][0] for i in r.json()} == kept
    area = gw.data_dir / "rejected" / STUDY_G / sop(note)
    assert sorted(p.name for p in area.iterdir()) == sorted(
        [f"{sop(files[0])}.dcm", "rejection-note.dcm"])
    assert dcmread(area / "rejection-note.dcm").ConceptNameCodeSequence[0].CodeValue == "113001"

    # The published KOS is replaced (RPLC) by one without it.
    rows = view.wait_done(STUDY_G, count=2)
    second = rows[0]
    assert (second.kind, second.replaces_kos_uid) == ("replace", first.kos_uid)
    assert referenced_instances(dcmread_bytes(view.kos_bytes(second.id), tmp_path)) == kept
    found = {(e.unique_id, e.status) for e in of_study(dmp_entries(sim), STUDY_G)}
    assert found == {(first.kos_uid, "Deprecated"), (second.kos_uid, "Approved")}

    # The rest rejected (patient safety): nothing remains, the study is withdrawn.
    storescu([rejection_note(tmp_path / "notes", files[1:],
                             reason=("113037", "Rejected for Patient Safety Reasons"))],
             gw.dicom_port)
    assert stored_instances(gw, STUDY_G) == set()
    rows = view.wait_done(STUDY_G, count=3)
    assert (rows[0].kind, rows[0].kos_uid) == ("withdraw", second.kos_uid)
    assert {e.status for e in of_study(dmp_entries(sim), STUDY_G)} == {"Deprecated"}
    with view.index.read() as s:
        from gateway.index import outbox
        history = [(e.event, e.detail) for e in outbox.history(s, STUDY_G)]
    rejections = [d for e, d in history if e == "iocm_rejection"]
    assert len(rejections) == 2 and "113037" in rejections[1] and "2 instance(s)" in rejections[1]


def test_other_kos_is_an_instance_and_a_misdirected_note_is_refused(
        gateway_factory, tmp_path: Path) -> None:
    gw = gateway_factory(DRIMBOX_DICOMWEB_AUTH="none").start()
    files = images_g(tmp_path / "g", 2)
    storescu(files, gw.dicom_port)
    note = rejection_note(tmp_path / "notes", files[:1], reason=("113000", "Of Interest"))
    storescu([note], gw.dicom_port)
    assert stored_instances(gw, STUDY_G) == {sop(p) for p in files} | {sop(note)}
    assert not (gw.data_dir / "rejected").exists()

    # A rejection note naming another patient: refused whole (0x0110, a precise comment),
    # nothing removed, the note not kept.
    from dimse_client import associate, store_dataset

    misdirected = dcmread(rejection_note(tmp_path / "bad", files[1:]))
    misdirected.PatientID = "OTHER-PATIENT"
    assoc = associate(gw.dicom_port, [KOS])
    try:
        rsp = store_dataset(assoc, misdirected)
    finally:
        assoc.release()
    assert rsp.Status == 0x0110
    assert rsp.ErrorComment == "rejection note references another patient's instances"
    assert stored_instances(gw, STUDY_G) == {sop(p) for p in files} | {sop(note)}
    assert not any((gw.data_dir / "rejected").rglob("*.dcm"))


def dcmread_bytes(data: bytes, tmp: Path):  # noqa: ANN201
    path = tmp / "kos-read.dcm"
    path.write_bytes(data)
    return dcmread(path)
