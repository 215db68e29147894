"""The RIS's HL7 v2 messages over a real MLLP socket to a real
``drimbox serve`` (R1, R2, R8). The images are sent with storescu; the outcome is read back
from the ACK and from the ``reports`` table (``drimbox report show``).

What each official sample gets (the ``*.abridged.hl7`` copies lack their CDA: the marker that
replaces the base64 payload is not base64, so they are refused as the original would be if
its payload were damaged):

=========================================  ====  ======================================
sample                                     ACK   why
=========================================  ====  ======================================
Examen_{C,E,F,G,I}/*.abridged.hl7 as is    AE    ERR OBX^1^5^1^5, 102: OBX-5 not base64
Examen_G/CR_G1_MAJ-{MDM,ORU} + its CDA     AA    study ...108 indexed, INS and ACN108 agree
Examen_W/CR_W_Suppression-OMI.hl7          AA    exam cancellation of study ...124, recorded
informatif/OMI_O23-ImagingOrder.hl7        AA    an order (study ...101), recorded
drimbox-poc-test-resources/patient1.hl7    AE    ERR OBX^4, 100: a line break inside OBX-3
                                                 of OBX 4 breaks the segment (and it is
                                                 v2.3.1 with no PID)
=========================================  ====  ======================================
"""

from __future__ import annotations

import json
from pathlib import Path

import launcher
import pytest
from hl7_support import (
    ACCESSION_G,
    CDA_G1_MAJ,
    INS,
    POC_ORU,
    STUDY_G,
    fill,
    sample,
    send,
    study_g_images,
    with_cda,
)
from peers import free_port, storescu

from gateway.index.engine import create_index_engine
from gateway.index.reports import list_reports
from gateway.index.store import InstanceIndex

ABRIDGED = [
    "referencement/Examen_C/CR_C-MDM.abridged.hl7",
    "referencement/Examen_C/CR_C-ORU.abridged.hl7",
    "referencement/Examen_E/CR_E-MDM.abridged.hl7",
    "referencement/Examen_E/CR_E-ORU.abridged.hl7",
    "referencement/Examen_F/CR_F-MDM.abridged.hl7",
    "referencement/Examen_F/CR_F-ORU.abridged.hl7",
    "referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7",
    "referencement/Examen_G/CR_G1_MAJ-ORU.abridged.hl7",
    "referencement/Examen_I/CR_I_Depublication-MDM.abridged.hl7",
    "referencement/Examen_I/CR_I_Depublication-ORU.abridged.hl7",
]


def report_show(gateway, *args: str) -> list[dict]:  # noqa: ANN001
    """``drimbox report show`` (a process of its own)."""
    proc = launcher.run(["report", "show", *args], env=gateway.env, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def reports(gateway, *, study: str | None = None, msh10: str | None = None) -> list[dict]:  # noqa: ANN001
    """The same rows, read in this process (quicker)."""
    index = InstanceIndex(create_index_engine(gateway.database_url))
    try:
        return list_reports(index, study_uid=study, control_id=msh10)
    finally:
        index.engine.dispose()


def one_report(gateway, control_id: str) -> dict:  # noqa: ANN001
    rows = reports(gateway, msh10=control_id)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def hl7_gateway(gateway_factory):  # noqa: ANN001, ANN201
    gw = gateway_factory(DRIMBOX_HL7_PORT=str(free_port()))
    gw.hl7_port = int(gw.extra_env["DRIMBOX_HL7_PORT"])
    return gw.start()


def test_every_official_sample_gets_its_documented_ack(hl7_gateway, tmp_path: Path) -> None:
    gw = hl7_gateway
    storescu(study_g_images(tmp_path / "g"), gw.dicom_port)

    # The abridged samples as they are: AE naming OBX-5, recorded as refused.
    for rel in ABRIDGED:
        text, control_id = fill(sample(rel))
        ack = send(gw.hl7_port, text)
        assert (ack["ack"], ack["control_id"]) == ("AE", control_id), (rel, ack["raw"])
        assert (ack["location"], ack["code"], ack["severity"]) == ("OBX^1^5^1^5", "102", "E"), rel
        row = one_report(gw, control_id)
        assert (row["state"], row["error_location"]) == ("refused", "OBX^1^5^1^5")
        expected_type = "ORU^R01" if "ORU" in rel else (
            "MDM^T04" if "Depublication" in rel else "MDM^T10" if "MAJ" in rel else "MDM^T02")
        assert row["message_type"] == expected_type

    # Exam G with its own CDA put back: accepted, and what was read equals the sample.
    cda = CDA_G1_MAJ.read_bytes()
    for rel, sender in (("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7", "MDM^T10"),
                        ("referencement/Examen_G/CR_G1_MAJ-ORU.abridged.hl7", "ORU^R01")):
        text, control_id = fill(with_cda(sample(rel), cda))
        ack = send(gw.hl7_port, text)
        assert (ack["ack"], ack["control_id"]) == ("AA", control_id), ack["raw"]
        assert "location" not in ack
        row = one_report(gw, control_id)
        assert row["message_type"] == sender
        assert (row["kind"], row["state"]) == ("report", "accepted")
        assert row["study_instance_uid"] == STUDY_G
        assert row["id_cda"] == "1.2.250.1.213.4.5.4.4072"
        assert row["replaces_id_cda"] == "1.2.250.1.213.4.5.4.407"
        assert row["accession_number"] == ACCESSION_G
        assert row["confidentiality"] == ["N"]  # MASQUE_PS, INVISIBLE_* = N in exam G
        assert row["cda_bytes"] == len(cda)

    # The OMI^O23 samples (no CDA): an exam cancellation and an order, recorded.
    text, control_id = fill(sample("referencement/Examen_W/CR_W_Suppression-OMI.hl7"))
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["control_id"]) == ("AA", "001"), ack["raw"]
    row = report_show(gw, "--study", "1.2.250.1.213.4.5.2.1.124")[0]
    assert (row["kind"], row["accession_number"], row["state"]) == ("cancel", "ACN124", "accepted")
    text, control_id = fill(sample("informatif/OMI_O23-ImagingOrder.hl7"))
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["control_id"]) == ("AA", "001"), ack["raw"]
    row = reports(gw, study="1.2.250.1.213.4.5.2.1.101")[0]
    assert (row["kind"], row["accession_number"], row["sending_application"]) == (
        "order", "105234751", "SENDING_APPLICATION")

    # The PoC's unit-test ORU: a line break inside OBX 4 breaks the message.
    ack = send(gw.hl7_port, POC_ORU.read_text("utf-8"))
    assert (ack["ack"], ack["control_id"]) == ("AE", "104"), ack["raw"]
    assert (ack["location"], ack["code"]) == ("OBX^4", "100")


def test_malformed_input_is_refused_naming_the_field(hl7_gateway, tmp_path: Path) -> None:
    gw = hl7_gateway
    storescu(study_g_images(tmp_path / "g"), gw.dicom_port)
    good = with_cda(sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
                    CDA_G1_MAJ.read_bytes())
    text, accepted_id = fill(good)
    assert send(gw.hl7_port, text)["ack"] == "AA"

    pid = next(line for line in good.splitlines() if line.startswith("PID|"))
    pid_without_3 = pid.split("|")
    pid_without_3[3] = ""
    cases = [
        # (what, message, ACK, ERR-2, ERR-3)
        ("broken segment", good.replace("PV1|", "P V1|", 1), "AE", "PID^1", "100"),
        ("missing PID-3", good.replace(pid, "|".join(pid_without_3)), "AE", "PID^1^3", "101"),
        ("INS with a wrong key", good.replace("279035121518989^", "279035121518988^", 1),
         "AE", "PID^1^3", "102"),
        ("OBX-5 not base64", sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
         "AE", "OBX^1^5^1^5", "102"),
        ("CDA not well-formed",
         with_cda(sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
                  CDA_G1_MAJ.read_bytes()[:5000]), "AE", "OBX^1^5", "102"),
        ("TXA-12 not the CDA id", good.replace("1.2.250.1.213.4.5.4.4072|", "1.2.9|", 1),
         "AE", "TXA^1^12", "102"),
        ("unknown study, no PACS",
         with_cda(sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
                  CDA_G1_MAJ.read_bytes().replace(STUDY_G.encode(), b"1.2.250.1.999.404")),
         "AE", "OBX^1^5", "204"),
        ("unsupported event", good.replace("MDM^T10^MDM_T02", "MDM^T01^MDM_T01", 1),
         "AR", "MSH^1^9^1^2", "201"),
        ("unsupported version", good.replace("|P|2.6|", "|P|2.3.1|", 1), "AR", "MSH^1^12", "203"),
    ]
    for what, message, code, location, err in cases:
        text, control_id = fill(message)
        ack = send(gw.hl7_port, text)
        assert (ack["ack"], ack["control_id"]) == (code, control_id), (what, ack["raw"])
        assert (ack["location"], ack["code"]) == (location, err), (what, ack["raw"])
        assert ack["message"], what

    # The images of study G with another INS: the report's INS disagrees with them.
    other = "1" + INS[1:13]
    from gateway.identity.ins import check_key
    other_ins = other + f"{check_key(other):02d}"
    storescu(study_g_images(tmp_path / "x", patient_id=other_ins, study_uid="1.2.250.1.999.77"),
             gw.dicom_port)
    text, control_id = fill(with_cda(sample("referencement/Examen_G/CR_G1_MAJ-ORU.abridged.hl7"),
                                     CDA_G1_MAJ.read_bytes().replace(STUDY_G.encode(),
                                                                     b"1.2.250.1.999.77")))
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["location"], ack["code"]) == ("AE", "PID^1^3", "204"), ack["raw"]
    assert "INS" in ack["message"]

    # An accession number that is not the images': refused, naming the CDA element.
    text, control_id = fill(with_cda(sample("referencement/Examen_G/CR_G1_MAJ-ORU.abridged.hl7"),
                                     CDA_G1_MAJ.read_bytes().replace(b'extension="ACN108"',
                                                                     b'extension="ACN999"')))
    ack = send(gw.hl7_port, text)
    assert (ack["ack"], ack["location"], ack["code"]) == ("AE", "OBX^1^5", "204"), ack["raw"]
    assert "accessionNumber" in ack["message"]

    # Nothing stored before was lost: the accepted report and the images are still there.
    row = one_report(gw, accepted_id)
    assert (row["state"], row["ack"]) == ("accepted", "AA")
    from test_manifest_e2e import stored_instances
    assert len(stored_instances(gw, STUDY_G)) == 3


def test_a_repeated_message_is_acknowledged_again_and_processed_once(hl7_gateway,
                                                                       tmp_path: Path) -> None:
    gw = hl7_gateway
    storescu(study_g_images(tmp_path / "g"), gw.dicom_port)
    text, control_id = fill(with_cda(sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
                                     CDA_G1_MAJ.read_bytes()))
    first = send(gw.hl7_port, text)
    assert first["ack"] == "AA"
    row = one_report(gw, control_id)
    second = send(gw.hl7_port, text)
    assert (second["ack"], second["control_id"]) == ("AA", control_id)
    again = one_report(gw, control_id)
    assert again["processed_at"] == row["processed_at"]  # not processed a second time

    # A refused message repeated: the same AE and ERR.
    bad, bad_id = fill(sample("referencement/Examen_C/CR_C-MDM.abridged.hl7"))
    a, b = send(gw.hl7_port, bad), send(gw.hl7_port, bad)
    assert (a["ack"], a["location"], a["code"]) == (b["ack"], b["location"], b["code"]) == (
        "AE", "OBX^1^5^1^5", "102")
    assert len(reports(gw, msh10=bad_id)) == 1

    # Same MSH-10 from another sending application is another message.
    other = text.replace("RIS_TEST", "RIS_OTHER", 1)
    assert send(gw.hl7_port, other)["ack"] == "AA"
    assert len(reports(gw, msh10=control_id)) == 2


def test_hl7_send_command(hl7_gateway, tmp_path: Path) -> None:
    """``drimbox hl7 send`` fills the sample placeholders and prints the ACK."""
    gw = hl7_gateway
    path = tmp_path / "omi.hl7"
    path.write_text(sample("referencement/Examen_W/CR_W_Suppression-OMI.hl7"))
    proc = launcher.run(
        ["hl7", "send", str(path), "--port", str(gw.hl7_port),
         "--set", "applicationSupplier=RIS_CLI", "--set", "facilitySupplier=C"],
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "MSA|AA|001" in proc.stdout
    path.write_text(sample("referencement/Examen_C/CR_C-ORU.abridged.hl7"))
    proc = launcher.run(
        ["hl7", "send", str(path), "--port", str(gw.hl7_port),
         "--set", "idMessage=CLI2"], timeout=60)
    assert proc.returncode == 1
    assert "MSA|AE|CLI2" in proc.stdout and "ERR||OBX^1^5^1^5|102" in proc.stdout
    # A file whose MSH-18 we do not read goes as it is: the listener's AR is printed.
    path.write_bytes(_msh18(sample("informatif/OMI_O23-ImagingOrder.hl7"), "8859/99",
                            "CLI3").encode())
    proc = launcher.run(
        ["hl7", "send", str(path), "--port", str(gw.hl7_port)],
        timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "MSA|AR|CLI3" in proc.stdout and "ERR||MSH^1^18|103" in proc.stdout, proc.stdout


def _mllp(sock, text: str) -> None:  # noqa: ANN001
    body = "\r".join(line for line in text.splitlines() if line.strip()) + "\r"
    sock.sendall(b"\x0b" + body.encode() + b"\x1c\r")


def _read_ack(sock) -> str | None:  # noqa: ANN001
    buf = b""
    while b"\x1c\r" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    return buf[1:buf.index(b"\x1c\r")].decode()


def test_mllp_connections(gateway_factory) -> None:  # noqa: ANN001
    """Several messages on one connection; a message over the size limit gets one AR and the
    connection closes; bytes outside MLLP framing close it; the listener keeps serving."""
    import socket

    from gateway.reports.mllp import ack_summary

    port = free_port()
    gw = gateway_factory(DRIMBOX_HL7_PORT=str(port), DRIMBOX_HL7_MAX_MESSAGE_BYTES="4096").start()
    order, _ = fill(sample("informatif/OMI_O23-ImagingOrder.hl7"))
    cancel, _ = fill(sample("referencement/Examen_W/CR_W_Suppression-OMI.hl7"))
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        _mllp(sock, order)
        _mllp(sock, cancel)
        first, second = ack_summary(_read_ack(sock)), ack_summary(_read_ack(sock))
        assert (first["ack"], second["ack"]) == ("AA", "AA")
        big, _ = fill(with_cda(sample("referencement/Examen_G/CR_G1_MAJ-MDM.abridged.hl7"),
                               CDA_G1_MAJ.read_bytes()))
        _mllp(sock, big)
        ack = ack_summary(_read_ack(sock))
        assert (ack["ack"], ack["code"]) == ("AR", "100")
        assert "larger than 4096" in ack["message"]
        sock.settimeout(10)
        assert _read_ack(sock) is None  # closed
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x1c\r")
        sock.settimeout(10)
        assert _read_ack(sock) is None
    again, control_id = fill(sample("informatif/OMI_O23-ImagingOrder.hl7").replace("|001|", "|002|"))
    assert send(port, again)["ack"] == "AA"
    assert gw.proc.poll() is None


def _msh18(text: str, value: str, control_id: str) -> str:
    """``text`` with MSH-18 set to ``value`` and MSH-10 to ``control_id``."""
    lines = [line for line in text.splitlines() if line.strip()]
    fields = lines[0].split("|")
    fields += [""] * (18 - len(fields))
    fields[9], fields[17] = control_id, value
    return "\r".join(["|".join(fields), *lines[1:]]) + "\r"


def test_bad_msh_header_gets_an_ack_and_the_connection_stays_usable(hl7_gateway) -> None:  # noqa: ANN001
    """MSH-18 naming no character set we read (``8859/``, ``8859/99``...), or MSH-2 repeating a
    delimiter, used to end the MLLP task with no ACK (IndexError, LookupError, AssertionError)
    and close the connection: now an AR naming the field and the value, and the next message on
    the same connection is processed as usual."""
    import socket

    from gateway.reports.mllp import ack_summary

    gw = hl7_gateway
    order = sample("informatif/OMI_O23-ImagingOrder.hl7")
    cases = [
        # (MSH-18, MSH-2 replacement or None, ERR-2, ERR-3, words ERR-8 must hold)
        ("8859/", None, "MSH^1^18", "103", ["MSH-18", "'8859/'"]),
        ("8859/99", None, "MSH^1^18", "103", ["MSH-18", "'8859/99'"]),
        ("8859/12", None, "MSH^1^18", "103", ["MSH-18", "'8859/12'"]),
        ("8859/1 8859/2", None, "MSH^1^18", "103", ["MSH-18"]),
        ("UNICODE UTF-16", None, "MSH^1^18", "103", ["MSH-18", "UTF-16"]),
        ("8859/abc~UNICODE UTF-8", None, "MSH^1^18", "103", ["MSH-18", "8859/abc"]),
        ("", "^^^^", "MSH^1^2", "102", ["MSH-2"]),
        ("", "^~", "MSH^1^2", "102", ["MSH-2"]),
    ]
    with socket.create_connection(("127.0.0.1", gw.hl7_port), timeout=60) as sock:
        for n, (charset, msh2, location, code, words) in enumerate(cases):
            control_id = f"BAD{n}"
            text = _msh18(order, charset, control_id)
            if msh2 is not None:
                text = text.replace("MSH|^~\\&|", f"MSH|{msh2}|", 1)
            sock.sendall(b"\x0b" + text.encode() + b"\x1c\r")
            raw = _read_ack(sock)
            assert raw is not None, (charset, msh2, gw.log())  # the connection was closed
            ack = ack_summary(raw)
            assert (ack["ack"], ack["control_id"]) == ("AR", control_id), (charset, msh2, raw)
            assert (ack["location"], ack["code"]) == (location, code), (charset, msh2, raw)
            for word in words:
                assert word in ack["message"], (word, raw)
            assert raw.split("\r")[0].split("|")[17] == "UNICODE UTF-8", raw  # how it is sent

        # The same connection still serves: an ISO 8859-15 message (the first repetition of
        # MSH-18 counts), then a UTF-8 one; both accepted.
        latin = _msh18(order.replace("Doe^John", "Doé^Jöhn"), "8859/15~ISO IR87", "GOOD1")
        sock.sendall(b"\x0b" + latin.encode("iso8859-15") + b"\x1c\r")
        raw = _read_ack(sock)
        assert raw is not None, gw.log()
        assert (ack_summary(raw)["ack"], ack_summary(raw)["control_id"]) == ("AA", "GOOD1"), raw
        assert raw.split("\r")[0].split("|")[17] == "8859/15", raw
        sock.sendall(b"\x0b" + _msh18(order, "UNICODE UTF-8", "GOOD2").encode() + b"\x1c\r")
        raw = _read_ack(sock)
        assert raw is not None and ack_summary(raw)["ack"] == "AA", raw
    assert sorted(r["msh10"] for r in reports(gw)) == ["GOOD1", "GOOD2"]  # the ARs: not recorded
    assert "Task exception was never retrieved" not in gw.log()
    assert gw.proc.poll() is None
