"""The report workflow in process, on both index back-ends (R1, R2, R8): the hooks
where publication will be enqueued run once per study of an accepted report, never for a
refused or repeated one; a withdrawal finds its studies from the report it withdraws; when the
images carry no INS, the report's IPP must be their PatientID."""

from __future__ import annotations

import pytest
from hl7_support import CDA_G1_MAJ, INS, STUDY_G, fill, sample, with_cda

from gateway.index.engine import create_index_engine, upgrade
from gateway.index.reports import SqlReportStore
from gateway.index.store import InstanceIndex, StoredFile
from gateway.ingest.header import InstanceHeader
from gateway.reports.hl7_reader import parse
from gateway.reports.mllp import MessageProcessor, ack_summary
from gateway.reports.workflow import ReportKind, ReportWorkflow


@pytest.fixture
def index(database_url: str) -> InstanceIndex:
    engine = create_index_engine(database_url)
    upgrade(engine)
    yield InstanceIndex(engine)
    engine.dispose()


def add_study(index: InstanceIndex, *, patient_id: str = INS, ins: str = INS,
              accession: str = "ACN108", n: int = 2) -> None:
    for i in range(n):
        h = InstanceHeader(sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                           sop_instance_uid=f"1.2.999.1.{i}", study_instance_uid=STUDY_G,
                           series_instance_uid="1.2.999.1", patient_id=patient_id,
                           accession_number=accession, modality="XA", ins_matricule=ins,
                           ins_oid="1.2.250.1.213.1.4.10" if ins else "")
        index.record(h, StoredFile("1.2.840.10008.1.2.1", "a" * 64, 100, f"k/{i}", "TEST"))


def g_message(kind: str = "MDM") -> str:
    rel = f"referencement/Examen_G/CR_G1_MAJ-{kind}.abridged.hl7"
    return with_cda(sample(rel), CDA_G1_MAJ.read_bytes())


def run(processor: MessageProcessor, text: str) -> dict[str, str]:
    normalised = "\r".join(line for line in text.splitlines() if line.strip())
    return ack_summary(processor.process(normalised.encode()).decode())


def test_hooks_run_once_per_accepted_report(index: InstanceIndex) -> None:
    add_study(index)
    workflow = ReportWorkflow(SqlReportStore(index))
    ready, withdrawn = [], []
    workflow.report_ready_hooks.append(lambda r, uid: ready.append((r.id_cda, uid)))
    workflow.withdrawal_hooks.append(lambda r, uid: withdrawn.append((r.kind, uid)))
    processor = MessageProcessor(workflow)

    text, _ = fill(g_message())
    assert run(processor, text)["ack"] == "AA"
    assert run(processor, text)["ack"] == "AA"  # repeated: answered, not processed
    assert ready == [("1.2.250.1.213.4.5.4.4072", STUDY_G)]

    refused, _ = fill(sample("referencement/Examen_C/CR_C-MDM.abridged.hl7"))
    assert run(processor, refused)["ack"] == "AE"
    assert len(ready) == 1

    # MDM^T04 for the same document, without its CDA: the studies come from the report.
    t04 = "\r".join(line for line in g_message().splitlines()
                    if line.strip() and not line.startswith("OBX|1|ED"))
    t04 = t04.replace("MDM^T10^MDM_T02", "MDM^T04^MDM_T02").replace("ORC|RO|", "ORC|CA|")
    text, _ = fill(t04)
    ack = run(processor, text)
    assert ack["ack"] == "AA", ack
    assert withdrawn == [(ReportKind.WITHDRAWAL, STUDY_G)]


@pytest.mark.parametrize(("patient_id", "expected"), [("IPP101", "AA"), ("IPP999", "AE")])
def test_images_without_ins_are_matched_on_the_ipp(index: InstanceIndex, patient_id: str,
                                                   expected: str) -> None:
    add_study(index, patient_id=patient_id, ins="")
    processor = MessageProcessor(ReportWorkflow(SqlReportStore(index)))
    text, _ = fill(g_message("ORU"))
    ack = run(processor, text)
    assert ack["ack"] == expected, ack
    if expected == "AE":
        assert (ack["location"], ack["code"]) == ("PID^1^3", "204")


def test_flags_become_confidentiality_codes() -> None:
    """Exam C ORU flags INVISIBLE_PATIENT = Y: N + INVISIBLE_PATIENT (SPEC 2.1, R4)."""
    from gateway.reports.hl7_reader import read_message

    text, _ = fill(with_cda(sample("referencement/Examen_C/CR_C-ORU.abridged.hl7"),
                            CDA_G1_MAJ.read_bytes()))
    report = read_message(parse(text))
    assert report.flags["INVISIBLE_PATIENT"] is True and report.flags["MASQUE_PS"] is False
    assert report.flags["DESTDMP"] is True
    assert [c.code for c in report.confidentiality] == ["N", "INVISIBLE_PATIENT"]
    assert report.confidentiality[1].scheme == "1.2.250.1.213.1.1.4.13"
    assert (report.sender.person_id, report.sender.structure_id) == ("801234564895", "750803447")
    assert (report.ins.matricule, report.ipp) == (INS, "IPP101")
    assert report.patient.status.value == "VALI"


def test_publication_context_from_the_report_of_exam_g() -> None:
    """What the report adds to the KOS DocumentEntry (R4; SPEC 2.1): values of CR_G1_MAJ."""
    from gateway.manifest.xds_metadata import Author, Code, PublicationContext
    from gateway.reports.hl7_reader import read_message
    from gateway.reports.workflow import publication_context

    base = PublicationContext(healthcare_facility_type=Code("SA07", "1.2.250.1.71.4.2.4", "SA07"),
                              practice_setting=Code("X", "1.2.250.1.213.1.1.4.9", "X"),
                              author=Author(institution="CENTRE"), study_uid_authority="1.2.3")
    text, _ = fill(with_cda(sample("referencement/Examen_F/CR_F-ORU.abridged.hl7"),
                            CDA_G1_MAJ.read_bytes()))
    ctx = publication_context(read_message(parse(text)), base)
    assert ctx.healthcare_facility_type.code == "SA08"
    assert ctx.practice_setting.code == "AMBULATOIRE"
    assert ctx.author.person == "801234560801^BIDEAULT^Jacques^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    assert ctx.author.institution == ("Centre de radiologie Ambroise^^^^^&1.2.250.1.71.4.2.2&ISO"
                                      "^IDNST^^^1750803447")
    assert ctx.legal_authenticator == ctx.author.person
    assert ctx.masking_flags == ("INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX")  # exam F ORU flags
    assert [(c.code, c.scheme) for c in ctx.region_codes] == [("113257007",
                                                               "1.2.250.1.213.1.1.5.695")]
    assert {c.code for c in ctx.act_codes} == {"37174-0", "DDQH006"}
    assert (ctx.service_start, ctx.service_stop) == ("20210108102500", "20210108111700")
    assert ctx.study_uid_authority == "1.2.3"


def test_a_copy_arriving_while_the_first_is_processed_is_not_processed_twice(
        index: InstanceIndex) -> None:
    """A copy that arrives while the first is still in flight gets AR 206 (send again); a row
    left ``received`` by a process that died is taken over by the next copy."""
    from gateway.reports.hl7_reader import read_message

    add_study(index)
    text, _ = fill(g_message())
    report = read_message(parse("\r".join(text.splitlines())))
    busy = SqlReportStore(index)
    assert busy.begin(report)  # the first copy, still being processed
    outcome = ReportWorkflow(busy).handle(report)
    assert (outcome.ack.value, outcome.error.code, outcome.error.location) == ("AR", 206,
                                                                               "MSH^1^10")
    crashed = SqlReportStore(index, stale_after=0)  # the first copy's process died
    assert ReportWorkflow(crashed).handle(report).ack.value == "AA"
    assert busy.previous(report.key).ack.value == "AA"


def test_obx_set_id_in_other_digits_is_not_an_internal_error() -> None:
    """OBX-1 ``²`` passes ``str.isdigit`` but not ``int``: it used to raise ValueError (an AR 207
    "internal error, send it again" for a message that can never succeed); it is now an OBX-1
    that is not a number, so the OBX counts by its position."""
    from gateway.reports.hl7_reader import read_message

    text, _ = fill(g_message().replace("OBX|1|ED|", "OBX|\u00b2|ED|", 1))
    report = read_message(parse(text))
    assert report.cda_field == "OBX^1^5" and report.cda is not None


def test_an_unexpected_error_still_gets_an_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails while one message is handled, its sender gets an AR naming it (MSA-2)
    rather than a connection closed without an ACK."""
    import gateway.reports.mllp

    def broken(message):  # noqa: ANN001, ANN202
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.reports.mllp, "message_key", broken)
    text, control_id = fill(sample("informatif/OMI_O23-ImagingOrder.hl7").replace("|001|",
                                                                                  "|E1|"))
    ack = run(MessageProcessor(ReportWorkflow(SqlReportStore(None))), text)  # type: ignore[arg-type]
    assert (ack["ack"], ack["control_id"], ack["code"]) == ("AR", "E1", "207"), ack
    assert "send it again" in ack["message"]
