"""The study a report names is only in the centre's PACS, a real
Orthanc started here; the report makes the gateway C-FIND it (STUDY, then IMAGE level) and
C-MOVE it to our own AE title, and the instances end up indexed by us before the ACK.
Orthanc knows our gateway as a DICOM modality (``DicomModalities``), as a real PACS must.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_factory import to_bytes
from hl7_support import CDA_G1_MAJ, STUDY_G, fill, sample, send, study_g_images
from orthanc import Orthanc
from peers import free_port
from pydicom import dcmread
from sqlalchemy import select
from test_hl7_reports import one_report
from test_manifest_e2e import stored_instances

from gateway.index.engine import create_index_engine
from gateway.index.models import Instance, Series, Study
from gateway.index.store import InstanceIndex


def sources(gateway, study: str) -> set[str]:  # noqa: ANN001
    """The calling AE titles the study's instances came from (``instances.source``)."""
    index = InstanceIndex(create_index_engine(gateway.database_url))
    try:
        with index.read() as s:
            return set(s.scalars(
                select(Instance.source).join(Series).join(Study)
                .where(Study.study_instance_uid == study)))
    finally:
        index.engine.dispose()


def centre_pacs(gw, folder: Path) -> Orthanc:  # noqa: ANN001 - a conftest Gateway
    """A real Orthanc as the centre's PACS (AE ``PACS``) that knows ``gw`` as a C-MOVE
    destination, and ``gw`` (not yet started) configured to query it."""
    pacs = Orthanc(folder, aet="PACS",
                   modalities={"drimbox": (gw.ae_title, "127.0.0.1", gw.dicom_port)})
    gw.extra_env.update(DRIMBOX_PACS_AE_TITLE="PACS", DRIMBOX_PACS_HOST="127.0.0.1",
                        DRIMBOX_PACS_PORT=str(pacs.dicom_port),
                        DRIMBOX_PACS_RETRIEVE_TIMEOUT="60")
    return pacs


@pytest.fixture
def centre(gateway_factory, tmp_path: Path) -> Iterator[tuple]:
    gw = gateway_factory(DRIMBOX_HL7_PORT=str(free_port()))
    gw.hl7_port = int(gw.extra_env["DRIMBOX_HL7_PORT"])
    pacs = centre_pacs(gw, tmp_path / "orthanc")
    pacs.start()
    try:
        yield gw.start(), pacs
    finally:
        pacs.stop()


def test_report_fetches_its_study_from_the_pacs(centre, tmp_path: Path) -> None:
    from hl7_support import with_cda

    gw, pacs = centre
    files = study_g_images(tmp_path / "g", n=4)
    for path in files:
        pacs.upload(to_bytes(dcmread(path)))
    sops = {str(dcmread(p).SOPInstanceUID) for p in files}
    assert stored_instances(gw, STUDY_G) == set()

    text, control_id = fill(with_cda(sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
                                     CDA_G1_MAJ.read_bytes()))
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["control_id"]) == ("AA", control_id), (ack["raw"], gw.log())
    assert stored_instances(gw, STUDY_G) == sops  # indexed before the ACK left
    row = one_report(gw, control_id)
    assert (row["state"], row["study_instance_uid"]) == ("accepted", STUDY_G)
    assert sources(gw, STUDY_G) == {"PACS"}  # sent by the PACS (calling AE), i.e. C-MOVE

    # A study the PACS does not have either: AE 204 after the search (which says where the
    # PACS files the report's accession number), nothing lost.
    text, control_id = fill(with_cda(sample("referencement/Examen_G/CR_G1_MAJ-ORU.abridged.hl7"),
                                     CDA_G1_MAJ.read_bytes().replace(STUDY_G.encode(),
                                                                     b"1.2.250.1.999.404")))
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["location"], ack["code"]) == ("AE", "OBX^1^5", "204"), ack["raw"]
    assert "neither in the gateway nor in the PACS" in ack["message"]
    assert f"accession ACN108 under study {STUDY_G}" in ack["message"]
    assert stored_instances(gw, STUDY_G) == sops


def test_pacs_that_cannot_be_reached_gives_ar_and_a_resend_is_processed(
        gateway_factory, tmp_path: Path) -> None:
    """AR (temporary failure) is not final: the same message sent again is processed again."""
    from hl7_support import with_cda

    dead_port = free_port()
    gw = gateway_factory(DRIMBOX_HL7_PORT=str(free_port()), DRIMBOX_PACS_AE_TITLE="PACS",
                         DRIMBOX_PACS_HOST="127.0.0.1", DRIMBOX_PACS_PORT=str(dead_port))
    gw.hl7_port = int(gw.extra_env["DRIMBOX_HL7_PORT"])
    gw.start()
    text, control_id = fill(with_cda(sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
                                     CDA_G1_MAJ.read_bytes()))
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["code"]) == ("AR", "207"), ack["raw"]
    assert one_report(gw, control_id)["state"] == "failed"

    from peers import storescu
    storescu(study_g_images(tmp_path / "g"), gw.dicom_port)  # the images arrive meanwhile
    ack = send(gw.hl7_port, text)
    assert ack["ack"] == "AA", ack["raw"]
    assert one_report(gw, control_id)["state"] == "accepted"
