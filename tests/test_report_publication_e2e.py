# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""The RIS's CR over a real MLLP socket publishes its
study to a real ``drimbox dmp-sim`` over mutual TLS with the CR's metadata (R1, R4, R6), new
instances after the CR replace the KOS (RPLC, R8), MDM^T04 withdraws it (ITI-57 Deprecated);
``publication_trigger = report`` (the default with ``hl7_port``) keeps stability alone from
publishing a study without a CR. The study's state is read back through ``drimbox study show
--json`` and ``GET /admin/studies/{uid}``. Both index back-ends.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from dicom_factory import make_instance
from dmp_support import Sim, pki, start_sim  # noqa: F401
from hl7_support import (
    ACCESSION_G,
    CDA_G1_MAJ,
    INS,
    INS_TEST_OID,
    STUDY_G,
    fill,
    sample,
    send,
    with_cda,
)
from peers import free_port, storescu
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from test_manifest_e2e import cli
from test_publication_e2e import IndexView, dmp_entries, dmp_env, of_study, view  # noqa: F401

from gateway.index import outbox

ID_CDA_G = "1.2.250.1.213.4.5.4.4072"
AUTHOR_G = "801234560801^BIDEAULT^Jacques^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"


@pytest.fixture
def sim(tmp_path: Path, pki) -> Sim:  # noqa: ANN001, F811
    """A simulator of this test's own: every test (and back-end) reports exam G's study."""
    (tmp_path / "dmp-sim").mkdir()
    s = start_sim(tmp_path / "dmp-sim", pki)
    yield s
    s.proc.terminate()
    try:
        s.proc.wait(10)
    except subprocess.TimeoutExpired:
        s.proc.kill()


def report_gateway(gateway_factory, sim: Sim, **extra: str):  # noqa: ANN001, ANN201
    port = free_port()
    gw = gateway_factory(**dmp_env(sim, DRIMBOX_HL7_PORT=str(port), **extra))
    gw.hl7_port = port
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    return gw.start()


def oru_g(*, invisible_patient: bool = False) -> str:
    """Exam G's ORU^R01 with its CDA put back (the official sample)."""
    text = with_cda(sample("referencement/Examen_G/CR_G1_MAJ-ORU.abridged.hl7"),
                    CDA_G1_MAJ.read_bytes())
    if invisible_patient:
        old = "INVISIBLE_PATIENT^Document Non Visible par le patient^MetaDMPMSS||N^"
        assert old in text
        text = text.replace(old, old[:-2] + "Y^")
    return text


def t04_g() -> str:
    """Exam I's MDM^T04 (un-publication) made to name exam G's CR: its CDA put back and TXA-12
    set to that CR's idCDA."""
    text = sample("referencement/Examen_I/CR_I_Depublication-MDM.abridged.hl7")
    text = text.replace("1.2.250.1.213.4.5.4.410|", f"{ID_CDA_G}|")
    return with_cda(text, CDA_G1_MAJ.read_bytes())


ACCESSION_ISSUER_G = "1.2.250.1.925.994044.27"  # the CDA's inFulfillmentOf/order root


def images_g(folder: Path, n: int, *, first: int = 0) -> list[Path]:
    """Instances of exam G with its INS and its accession number's issuer (R4's
    referenceIdList needs it); ``first`` numbers (and seeds) them apart."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(first, first + n):
        ds = make_instance(study_uid=STUDY_G, patient_id=INS, ins_oid=INS_TEST_OID,
                           accession=ACCESSION_G, instance_number=1 + i, series_number=1 + i // 10,
                           transfer_syntax=ExplicitVRLittleEndian, seed=700 + i)
        issuer = Dataset()
        issuer.UniversalEntityID = ACCESSION_ISSUER_G
        issuer.UniversalEntityIDType = "ISO"
        ds.IssuerOfAccessionNumberSequence = [issuer]
        path = folder / f"G{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def events(view: IndexView, study: str) -> list[str]:
    with view.index.read() as s:
        return [e.event for e in outbox.history(s, study)]


def show(gw, study: str) -> dict:  # noqa: ANN001
    proc = cli(gw, "study", "show", study, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_report_publishes_replaces_and_withdraws(gateway_factory, sim: Sim, view: IndexView,
                                                tmp_path: Path) -> None:
    gw = report_gateway(gateway_factory, sim)
    storescu(images_g(tmp_path / "g", 3), gw.dicom_port)

    # publication_trigger = report (default with hl7_port): stable, but no CR, no publication.
    view.wait(lambda: "waiting_for_report" in events(view, STUDY_G), "the stable study")
    assert view.rows(STUDY_G) == []
    assert show(gw, STUDY_G)["report"] is None

    # The CR: published with its author, legal authenticator and masking flag (R4, R6).
    text, control_id = fill(oru_g(invisible_patient=True))
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["control_id"]) == ("AA", control_id), ack["raw"]
    (first,) = view.wait_done(STUDY_G)
    assert first.kind == "publish"
    (entry,) = of_study(dmp_entries(sim), STUDY_G)
    assert (entry.unique_id, entry.entry_uuid, entry.status) == (
        first.kos_uid, first.entry_uuid, "Approved")
    assert entry.author_persons == (AUTHOR_G,)
    assert entry.legal_authenticator == AUTHOR_G
    assert {c.code for c in entry.confidentiality_codes} == {"N", "INVISIBLE_PATIENT"}

    state = show(gw, STUDY_G)
    assert state["report"]["id_cda"] == ID_CDA_G
    assert state["report"]["message_type"] == "ORU^R01"
    assert state["viewer_link"] == f"{gw.url}/viewer/source?studyUID={STUDY_G}&idCDA={ID_CDA_G}"
    pub = state["publication"]
    assert (pub["state"], pub["current_kos_uid"], pub["current_entry_uuid"]) == (
        "published", first.kos_uid, first.entry_uuid)
    assert [h["event"] for h in pub["history"]][-4:] == ["report", "built", "queued", "published"]
    assert ID_CDA_G in pub["history"][-4]["detail"]
    text_show = cli(gw, "study", "show", STUDY_G).stdout
    assert f"report       CR {ID_CDA_G} (ORU^R01" in text_show
    assert f"viewer link  {gw.url}/viewer/source?studyUID={STUDY_G}&idCDA={ID_CDA_G}" in text_show

    # New instances after the CR: re-published on the next stability, a replacement (RPLC).
    storescu(images_g(tmp_path / "more", 2, first=10), gw.dicom_port)
    rows = view.wait_done(STUDY_G, count=2)
    second = rows[0]
    assert (second.kind, second.replaces_kos_uid) == ("replace", first.kos_uid)
    found = {(e.unique_id, e.status): e for e in of_study(dmp_entries(sim), STUDY_G)}
    assert set(found) == {(first.kos_uid, "Deprecated"), (second.kos_uid, "Approved")}
    assert found[(second.kos_uid, "Approved")].author_persons == (AUTHOR_G,)  # the CR's still

    # MDM^T10, the CR replaced (now masked to professionals): same images, new metadata, so
    # the KOS is replaced too.
    mdm = with_cda(sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
                   CDA_G1_MAJ.read_bytes())
    masked = "MASQUE_PS^Masqué aux professionnels de Santé^MetaDMPMSS||"
    assert masked + "N^" in mdm
    text, control_id = fill(mdm.replace(masked + "N^", masked + "Y^"))
    assert send(gw.hl7_port, text)["ack"] == "AA"
    rows = view.wait_done(STUDY_G, count=3)
    third = rows[0]
    assert (third.kind, third.replaces_kos_uid) == ("replace", second.kos_uid)
    (entry,) = of_study(dmp_entries(sim, ("Approved",)), STUDY_G)
    assert entry.unique_id == third.kos_uid
    assert {c.code for c in entry.confidentiality_codes} == {"N", "MASQUE_PS"}
    assert show(gw, STUDY_G)["report"]["message_type"] == "MDM^T10"

    # MDM^T04: the study is un-published (ITI-57 Deprecated), its access closed.
    text, control_id = fill(t04_g())
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["control_id"]) == ("AA", control_id), ack["raw"]
    rows = view.wait_done(STUDY_G, count=4)
    assert rows[0].kind == "withdraw" and rows[0].kos_uid == third.kos_uid
    assert {e.status for e in of_study(dmp_entries(sim), STUDY_G)} == {"Deprecated"}
    state = show(gw, STUDY_G)
    assert state["publication"]["state"] == "withdrawn"
    assert state["report"] is None and state["viewer_link"] is None
    assert [m["message_type"] for m in state["report_messages"]] == [
        "ORU^R01", "MDM^T10", "MDM^T04"]

    # A new CR (the same study reported again): published anew.
    text, control_id = fill(oru_g())
    assert send(gw.hl7_port, text)["ack"] == "AA"
    rows = view.wait_done(STUDY_G, count=5)
    assert rows[0].kind == "publish"
    approved = of_study(dmp_entries(sim, ("Approved",)), STUDY_G)
    assert [(e.unique_id, e.confidentiality_codes[0].code) for e in approved] == [
        (rows[0].kos_uid, "N")]

    # An order (OMI^O23 NW) for the published study: recorded, nothing re-published.
    omi = (sample("referencement/Examen_W/CR_W_Suppression-OMI.hl7")
           .replace("1.2.250.1.213.4.5.2.1.124|", f"{STUDY_G}|").replace("ACN124", ACCESSION_G))
    text, control_id = fill(omi.replace("ORC|CA|", "ORC|NW|").replace("|001|P|", "|ORD7|P|"))
    assert (send(gw.hl7_port, text)["ack"], control_id) == ("AA", "ORD7")
    assert "order" in events(view, STUDY_G) and len(view.rows(STUDY_G)) == 5
    # The exam cancelled (OMI^O23, ORC-1 CA, the official sample made to name exam G).
    text, control_id = fill(omi.replace("|001|P|", "|CAN7|P|"))
    assert (send(gw.hl7_port, text)["ack"], control_id) == ("AA", "CAN7")
    rows = view.wait_done(STUDY_G, count=6)
    assert rows[0].kind == "withdraw"
    assert {e.status for e in of_study(dmp_entries(sim), STUDY_G)} == {"Deprecated"}


def test_report_fetches_from_the_pacs_then_publishes(gateway_factory, sim: Sim, view: IndexView,
                                                     tmp_path: Path) -> None:
    """R2 then R4: exam G is only in the centre's PACS (a real Orthanc started here); the CR
    makes the gateway C-FIND and C-MOVE it, and then publish it to the DMP."""
    from dicom_factory import to_bytes
    from pydicom import dcmread
    from test_manifest_e2e import stored_instances
    from test_pacs_retrieve import centre_pacs, sources

    port = free_port()
    gw = gateway_factory(**dmp_env(sim, DRIMBOX_HL7_PORT=str(port)))
    gw.hl7_port = port
    gw.extra_env["DRIMBOX_PUBLIC_URL"] = gw.url
    pacs = centre_pacs(gw, tmp_path / "orthanc")
    pacs.start()
    try:
        gw.start()
        files = images_g(tmp_path / "g", 4)
        for path in files:
            pacs.upload(to_bytes(dcmread(path)))
        assert stored_instances(gw, STUDY_G) == set()

        text, control_id = fill(oru_g())
        ack = send(gw.hl7_port, text)
        assert (ack["ack"], ack["control_id"]) == ("AA", control_id), ack["raw"]
        sops = {str(dcmread(p).SOPInstanceUID) for p in files}
        assert stored_instances(gw, STUDY_G) == sops and sources(gw, STUDY_G) == {"PACS"}
        (row,) = view.wait_done(STUDY_G)
        assert row.kind == "publish"
        (entry,) = of_study(dmp_entries(sim), STUDY_G)
        assert (entry.unique_id, entry.status, entry.author_persons) == (
            row.kos_uid, "Approved", (AUTHOR_G,))
    finally:
        pacs.stop()
