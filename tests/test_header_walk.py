"""The header's fast walk (``gateway.ingest.header``) answers exactly what pydicom answers.

Every C-STORE's header is read by a walk over the raw bytes for the common case (little
endian, plain ASCII values), with pydicom only for the patient-identifier sequences; the
pydicom reading is the reference (R19: the INS the images carry is indexed as they carry it).
Each dataset here is read both ways and the two :class:`InstanceHeader` must be equal; the
plain ones must not fall back to pydicom, the unusual ones must.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
from dicom_factory import dataset_bytes, make_instance, write_corpus
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)

import gateway.ingest.header as header_module
from gateway.ingest.completeness import DatasetDefect, check_complete
from gateway.ingest.header import (
    HeaderError,
    InstanceHeader,
    read_header,
    read_header_pydicom,
)


def _both(raw: bytes, ts: str, monkeypatch: pytest.MonkeyPatch, *, plain: bool) -> None:
    reference = read_header_pydicom(raw, ts)
    if plain:  # the walk alone must answer: pydicom is not asked
        with monkeypatch.context() as m:
            m.setattr(header_module, "read_header_pydicom",
                      lambda *_: pytest.fail("fell back to pydicom"))
            assert read_header(raw, ts) == reference
    else:
        assert read_header(raw, ts) == reference


def _with_ins_in_other_ids(ds: Dataset) -> Dataset:
    ds.PatientID = "IPP-0042"
    ds.IssuerOfPatientID = "CHU-TEST"
    other = Dataset()
    other.PatientID = "248092700000000"
    other.IssuerOfPatientID = "ASIP-SANTE-INS-NIR"
    ds.OtherPatientIDsSequence = [other]
    return ds


def _with_accession_issuer(ds: Dataset) -> Dataset:
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "RIS-CENTRE"
    ds.IssuerOfAccessionNumberSequence = [issuer]
    return ds


def _with_undefined_length_sequences(ds: Dataset) -> Dataset:
    """Sequences of undefined length (and a nested one) before the last tag read."""
    code = Dataset()
    code.CodeValue = "ZCT1"
    code.CodingSchemeDesignator = "99TEST"
    code.CodeMeaning = "CT thorax"
    ds.ProcedureCodeSequence = [code]
    ref = Dataset()
    ref.ReferencedSOPClassUID = MRImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5"
    inner = Dataset()
    inner.CodeValue = "X"
    inner.CodingSchemeDesignator = "99TEST"
    inner.CodeMeaning = "nested"
    ref.PurposeOfReferenceCodeSequence = [inner]
    ds.ReferencedImageSequence = [ref]
    for keyword in ("ProcedureCodeSequence", "ReferencedImageSequence"):
        ds[keyword].is_undefined_length = True
        for item in ds[keyword].value:
            item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence[0]["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    ds.PerformedProcedureStepStartDate = "20261119"
    ds.PerformedProcedureStepStartTime = "093000"
    ds.NumberOfFrames = 1
    return ds


PLAIN = {
    "ins in the issuer qualifiers": lambda: make_instance(ins_oid="1.2.250.1.213.1.4.10"),
    "ins by issuer name": lambda: make_instance(),
    "ins in OtherPatientIDsSequence": lambda: _with_ins_in_other_ids(make_instance()),
    "no ins": lambda: make_instance(issuer="CHU-TEST", patient_id="IPP77"),
    "accession issuer": lambda: _with_accession_issuer(make_instance()),
    "undefined-length sequences": lambda: _with_undefined_length_sequences(make_instance()),
    "encapsulated document": lambda: make_instance(sop_class=EncapsulatedPDFStorage),
}


@pytest.mark.parametrize(("case", "ts"), [
    (case, ts) for case in sorted(PLAIN)
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless)
    if not (ts == RLELossless and case == "encapsulated document")  # no pixels to compress
])
def test_the_walk_answers_as_pydicom(case: str, ts: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _both(encoded(PLAIN[case](), ts, tmp_path), ts, monkeypatch, plain=True)


def encoded(ds: Dataset, ts: str, tmp_path: Path) -> bytes:
    """The dataset as a C-STORE carries it (no Part 10 header), in ``ts``."""
    if ts == RLELossless:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    else:
        ds.file_meta.TransferSyntaxUID = ts
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian,
               little_endian=True)
    return dataset_bytes(path)


NATIONAL = {
    # names as French centres send them, in the two character sets read by the walk
    "utf-8 name": {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "LEFÈVRE^HÉLÈNE",
                   "StudyDescription": "SCANNER THORACO-ABDOMINO-PELVIEN INJECTÉ"},
    "latin-1 name": {"PatientName": "BOYER^FRANÇOISE", "ReferringPhysicianName": "NOËL^JOËL"},
}

UNUSUAL = {
    "greek (another character set)": {"SpecificCharacterSet": "ISO_IR 126",
                                      "PatientName": "Διονυσιος"},
    "latin-1 bytes without a character set": {"SpecificCharacterSet": None,
                                              "PatientName": "MÜLLER^JOËL"},
    "two values": {"StudyDescription": "A\\B"},
    "non-ASCII in a code string": {"Modality": "CTÉ"},
}


def _changed(case: dict, tmp_path: Path) -> bytes:
    ds = make_instance(ins_oid="1.2.250.1.213.1.4.10")
    for keyword, value in case.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    return encoded(ds, ExplicitVRLittleEndian, tmp_path)


@pytest.mark.parametrize("case", sorted(NATIONAL))
def test_french_names_are_read_by_the_walk(case: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _changed(NATIONAL[case], tmp_path)
    _both(raw, ExplicitVRLittleEndian, monkeypatch, plain=True)
    assert not read_header(raw, ExplicitVRLittleEndian).patient_name.isascii()


@pytest.mark.parametrize("case", sorted(UNUSUAL))
def test_unusual_values_go_to_pydicom(case: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _changed(UNUSUAL[case], tmp_path)
    asked: list[bool] = []
    real = header_module.read_header_pydicom
    monkeypatch.setattr(header_module, "read_header_pydicom",
                        lambda *a: asked.append(True) or real(*a))
    assert read_header(raw, ExplicitVRLittleEndian) == real(raw, ExplicitVRLittleEndian)
    assert asked, "an unusual value was read without pydicom"


def test_the_test_corpus_reads_alike(tmp_path: Path) -> None:
    """The suite's mixed corpus (CT, MR, CR, secondary capture, PDF; explicit, implicit,
    RLE and deflated): the walk where it applies, pydicom elsewhere, the same headers."""
    paths = write_corpus(tmp_path, 24, studies=3)
    for path in paths:
        ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        raw = dataset_bytes(path)
        assert read_header(raw, ts) == read_header_pydicom(raw, ts), path.name


def _same(ours: object, reference: object) -> bool:
    """Equal; or, when neither finds an INS in damaged identifiers, equal but for the
    wording of the refusal."""
    if ours == reference:
        return True
    if not (isinstance(ours, InstanceHeader) and isinstance(reference, InstanceHeader)):
        return False
    return (not ours.ins_matricule and not reference.ins_matricule
            and replace(ours, ins_refusal="") == replace(reference, ins_refusal=""))


def test_damaged_headers_are_never_read_differently(tmp_path: Path) -> None:
    """Bytes changed at random in the header: where pydicom reads a header the walk reads
    the same one; where pydicom cannot, the walk's answer is refused by the completeness
    check that the ingest runs next, or the walk refuses too."""
    ds = _with_undefined_length_sequences(make_instance(ins_oid="1.2.250.1.213.1.4.10"))
    good = encoded(ds, ExplicitVRLittleEndian, tmp_path)
    head = good.index(bytes.fromhex("e07f1000"))  # up to Pixel Data
    rng = random.Random(7)
    differences = []
    for _ in range(600):
        raw = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(head)] = rng.getrandbits(8)
        data = bytes(raw)
        try:
            reference = read_header_pydicom(data, ExplicitVRLittleEndian)
        except HeaderError:
            reference = None
        try:
            ours = read_header(data, ExplicitVRLittleEndian)
        except HeaderError:
            ours = None
        if reference is not None:
            if not _same(ours, reference):
                differences.append((ours, reference))
        elif ours is not None:
            with pytest.raises(DatasetDefect):
                check_complete(data, ExplicitVRLittleEndian)
    assert not differences, differences[:2]


def test_large_identifier_sequences_are_read_but_not_kept(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The identifier sequences are cached per study only when small: a peer sending a
    patient with thousands of other identifiers gets the same header, nothing kept."""
    ds = _with_ins_in_other_ids(make_instance())
    for n in range(400):
        other = Dataset()
        other.PatientID = f"LOCAL-{n:05d}"
        other.IssuerOfPatientID = "CHU-TEST"
        ds.OtherPatientIDsSequence.append(other)
    raw = encoded(ds, ExplicitVRLittleEndian, tmp_path)
    header_module._identifiers.cache_clear()
    _both(raw, ExplicitVRLittleEndian, monkeypatch, plain=True)
    assert header_module._identifiers.cache_info().currsize == 0
    small = encoded(make_instance(ins_oid="1.2.250.1.213.1.4.10"), ExplicitVRLittleEndian,
                    tmp_path)
    read_header(small, ExplicitVRLittleEndian)
    assert header_module._identifiers.cache_info().currsize == 1
