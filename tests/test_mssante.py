# ruff: noqa: F811 - pytest fixtures imported from dmp_support
"""MSSanté delivery of reports (SPEC.md 1.2: DESTMSSANTEPS / DESTMSSANTEPAT): a CR sent over a
real MLLP socket to a running gateway reaches a real loopback SMTP server (aiosmtpd: STARTTLS
required, the sender's client certificate from the development PKI required) exactly once,
even when the server refuses the first attempts; the MIME structure is MSSanté's
(multipart/mixed, text body, ``IHE_XDM.ZIP``) and the attachment is the study's XDM archive
(METADATA.XML read by lxml, the KOS by pydicom, the signature checked by the XDM reader),
whose KOS is the one the DMP simulator holds.
Recipients come from the CR, else from the Annuaire Santé by RPPS; the patient's address from
the report. Both index back-ends.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import httpx
import pydicom
import pytest
from annuaire_support import API_KEY, MEDIONI, MEDIONI_MSSANTE, UNKNOWN, annuaire_sim, cda_g
from cryptography import x509
from dmp_support import Sim, pki  # noqa: F401
from hl7_support import INS, STUDY_G, fill, sample, send, with_cda
from lxml import etree
from mssante_support import Mailbox, smtp_server
from peers import free_port, storescu
from test_manifest_e2e import cli
from test_publication_e2e import dmp_entries, of_study
from test_report_publication_e2e import images_g, report_gateway, sim  # noqa: F401

from adapters.mssante.smtp import SmtpTransport, client_context
from adapters.xdm.reader import read_xdm
from gateway.config import load_settings
from gateway.mssante.message import XDM_FILENAME, build_message, new_message_id, wire_bytes
from gateway.mssante.transport import MailRefused, MailUnavailable
from gateway.reports.hl7_reader import parse, read_message

SENDER = "drimbox@centre-imagerie-test.mssante.fr"
DR_MARTIN = "claire.martin@hopital-test.mssante.fr"
PATIENT_ADDRESS = f"{INS}@patient.mssante.fr"
ID_CDA_G = "1.2.250.1.213.4.5.4.4072"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


def oru_g(cda: bytes, *, professionals: bool = True, patient: bool = False,
          read_receipt: bool = False) -> str:
    """Exam G's ORU^R01 with ``cda`` and the MSSanté flags set as asked."""
    text = with_cda(sample("referencement/Examen_G/CR_G1_MAJ-ORU.abridged.hl7"), cda)
    for flag, on in (("DESTMSSANTEPS", professionals), ("DESTMSSANTEPAT", patient),
                     ("ACK_LECTURE_MSS", read_receipt)):
        lines = [line for line in text.splitlines() if f"|{flag}^" in line]
        assert len(lines) == 1, flag
        text = text.replace(lines[0], lines[0].replace("||N^", "||Y^") if on else lines[0])
    return text


def mssante_env(pki, smtp, **extra: str) -> dict[str, str]:  # noqa: ANN001
    return dict(
        DRIMBOX_MSSANTE_SMTP_HOST=smtp.host,
        DRIMBOX_MSSANTE_SMTP_PORT=str(smtp.port),
        DRIMBOX_MSSANTE_SENDER=SENDER,
        DRIMBOX_MSSANTE_CLIENT_CERT=str(pki.client_cert),
        DRIMBOX_MSSANTE_CLIENT_KEY=str(pki.client_key),
        DRIMBOX_MSSANTE_CA_BUNDLE=str(pki.ca_cert),
        DRIMBOX_MSSANTE_TIMEOUT="10",
        DRIMBOX_MSSANTE_BACKOFF_INITIAL="0.2",
        DRIMBOX_MSSANTE_BACKOFF_MAX="0.5",
        DRIMBOX_MSSANTE_POLL_INTERVAL="0.2",
        **extra,
    )


def mssante_gateway(gateway_factory, sim: Sim, smtp, **extra: str):  # noqa: ANN001, ANN201
    """A gateway publishing to ``sim`` (the XDM archive carries the KOS as published) and
    sending MSSanté messages to ``smtp``."""
    return report_gateway(gateway_factory, sim, **mssante_env(sim.pki, smtp, **extra))


def show(gw, study: str) -> dict:  # noqa: ANN001
    proc = cli(gw, "study", "show", study, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_messages(gw, study: str, count: int, timeout: float = 90) -> list[dict]:  # noqa: ANN001
    """The study's MSSanté messages once ``count`` of them are sent or refused."""
    deadline = time.monotonic() + timeout
    while True:
        state = show(gw, study)
        done = [m for m in state["mssante"] if m["state"] in ("sent", "refused")]
        if len(done) >= count:
            return state["mssante"]
        if time.monotonic() > deadline:
            pytest.fail(f"{count} MSSanté message(s) not sent in {timeout} s: {state['mssante']}"
                        f"\n{gw.log()}")
        time.sleep(0.3)


def check_xdm(data: bytes, ca_cert: Path, cda: bytes) -> str:
    """The attachment is the study's XDM archive: METADATA.XML (lxml) names the KOS and the CR,
    the KOS is a DICOM KOS of exam G (pydicom), the CR is the one sent, the signature holds.
    Returns the KOS's SOP Instance UID."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = set(z.namelist())
        assert {"README.TXT", "INDEX.HTM", "IHE_XDM/SUBSET01/METADATA.XML",
                "IHE_XDM/SUBSET01/KOS_1.DCM", "IHE_XDM/SUBSET01/CR_1.XML"} <= names, names
        metadata = etree.fromstring(z.read("IHE_XDM/SUBSET01/METADATA.XML"))
        kos = pydicom.dcmread(io.BytesIO(z.read("IHE_XDM/SUBSET01/KOS_1.DCM")))
        assert z.read("IHE_XDM/SUBSET01/CR_1.XML") == cda
    uris = {eo.get("mimeType"): [s.findtext(f"{{{RIM}}}ValueList/{{{RIM}}}Value")
                                 for s in eo.findall(f"{{{RIM}}}Slot") if s.get("name") == "URI"]
            for eo in metadata.iter(f"{{{RIM}}}ExtrinsicObject")}
    assert uris["application/dicom"] == ["KOS_1.DCM"]
    assert uris["text/xml"][0] in ("CR_1.XML", "SIGN_1.XML")
    assert (kos.SOPClassUID, kos.StudyInstanceUID, kos.PatientID) == (KOS_CLASS, STUDY_G, INS)
    package = read_xdm(data, trusted_cas=[x509.load_pem_x509_certificate(ca_cert.read_bytes())])
    assert package.kos.entry.unique_id == kos.SOPInstanceUID
    assert package.report is not None and package.report.data == cda
    return str(kos.SOPInstanceUID)


def test_flagged_report_reaches_the_smtp_server_exactly_once_despite_refusals(
        gateway_factory, sim: Sim, pki, tmp_path: Path) -> None:  # noqa: ANN001, F811
    mailbox = Mailbox(refusals=2)  # 451 twice, then taken
    with smtp_server(pki, mailbox) as smtp:
        gw = mssante_gateway(gateway_factory, sim, smtp)
        storescu(images_g(tmp_path / "g", 2), gw.dicom_port)
        cda = cda_g(recipients=(("", DR_MARTIN),))
        text, control_id = fill(oru_g(cda))
        ack = send(gw.hl7_port, text)
        assert (ack["ack"], ack["control_id"]) == ("AA", control_id), ack["raw"]

        (row,) = wait_messages(gw, STUDY_G, 1)
        assert (row["state"], row["recipient_kind"], row["address"]) == (
            "sent", "professional", DR_MARTIN)
        assert row["attempts"] >= 3  # (and those that waited for the DMP publication)
        assert row["smtp_reply"].startswith("250")
        # Exactly one message reached the server; the two refusals were retried, nothing more.
        assert mailbox.data_commands == 3
        (got,) = mailbox.received
        # The same message later: nothing is sent again.
        time.sleep(1.5)
        assert len(mailbox.received) == 1 and mailbox.data_commands == 3
        assert 'drimbox_mssante_messages{state="sent"} 1.0' in gw.metrics()

    assert (got.mail_from, got.rcpt_tos) == (SENDER, [DR_MARTIN])
    assert "CN=DRIMbox" in got.peer_subject.replace("commonName=", "CN=")  # our certificate
    msg = got.message
    assert msg["Message-ID"] == row["message_id"]
    assert (msg["From"], msg["To"]) == (SENDER, DR_MARTIN)
    assert msg.get_content_type() == "multipart/mixed"
    assert msg["Disposition-Notification-To"] is None  # ACK_LECTURE_MSS = N
    body, attachment = list(msg.iter_parts())
    assert body.get_content_type() == "text/plain"
    assert ID_CDA_G in body.get_content()
    assert f"{gw.url}/viewer/source?studyUID={STUDY_G}&idCDA={ID_CDA_G}" in body.get_content()
    assert INS not in msg["Subject"] and INS not in body.get_content()
    assert attachment.get_content_type() == "application/zip"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == XDM_FILENAME == "IHE_XDM.ZIP"
    kos_uid = check_xdm(attachment.get_content(), pki.ca_cert, cda)
    # The archive's KOS is the one the DMP holds (a consumer retrieves with it, R10).
    (entry,) = of_study(dmp_entries(sim), STUDY_G)
    assert (entry.unique_id, entry.status) == (kos_uid, "Approved")

    history = show(gw, STUDY_G)["publication"]["history"]
    events = [h["event"] for h in history if h["event"].startswith("mssante")]
    assert events[0] == "mssante_queued" and events[-1] == "mssante_sent"
    assert set(events[1:-1]) == {"mssante_error"}
    assert any("451" in h["detail"] for h in history if h["event"] == "mssante_error")
    text_show = cli(gw, "study", "show", STUDY_G).stdout
    assert f"MSSanté      #{row['id']} professional {DR_MARTIN}: sent {row['message_id']}" \
        in text_show


def test_recipients_from_the_annuaire_and_the_patient_unknown_rpps_said(
        gateway_factory, sim: Sim, pki, tmp_path: Path) -> None:  # noqa: ANN001, F811
    with smtp_server(pki) as smtp, annuaire_sim(tmp_path) as annuaire:
        gw = mssante_gateway(gateway_factory, sim, smtp, DRIMBOX_ANNUAIRE_URL=annuaire.url,
                             DRIMBOX_ANNUAIRE_API_KEY=API_KEY, DRIMBOX_CONSOLE_AUTH="none")
        storescu(images_g(tmp_path / "g", 1), gw.dicom_port)
        cda = cda_g(recipients=((MEDIONI, ""), (UNKNOWN, "")))
        text, _ = fill(oru_g(cda, patient=True, read_receipt=True))
        assert send(gw.hl7_port, text)["ack"] == "AA"
        rows = wait_messages(gw, STUDY_G, 2)
        received = {r.rcpt_tos[0]: r for r in smtp.mailbox.received}
        assert set(received) == {MEDIONI_MSSANTE, PATIENT_ADDRESS}
        assert len(smtp.mailbox.received) == 2

    state = show(gw, STUDY_G)
    by_kind = {r["recipient_kind"]: r for r in rows}
    assert by_kind["professional"]["recipient_id"] == MEDIONI
    assert by_kind["professional"]["address"] == MEDIONI_MSSANTE  # from the Annuaire
    assert by_kind["patient"]["address"] == f"{INS[:5]}**********@patient.mssante.fr"
    assert state["problems"] == [f"recipient {UNKNOWN} is not in the Annuaire Santé: no "
                                 "MSSanté address, nothing sent to them"]
    patient_msg = received[PATIENT_ADDRESS].message
    assert patient_msg["Disposition-Notification-To"] == SENDER  # ACK_LECTURE_MSS = Y
    body = next(patient_msg.iter_parts()).get_content()
    assert "/viewer/source" not in body  # the viewer is for professionals (PSC)
    assert f"recipient {UNKNOWN} is not in the Annuaire Santé" in gw.log()
    assert INS not in gw.log()  # the patient's address is the INS: never logged
    # The operator console's study page shows the messages and the problem too.
    page = httpx.get(f"{gw.url}/console/studies/{STUDY_G}", timeout=30).text
    assert "<table id=mssante>" in page and MEDIONI_MSSANTE in page
    assert f"<li class=bad>recipient {UNKNOWN} is not in the Annuaire Santé" in page
    assert f"{INS[:5]}**********@patient.mssante.fr" in page


def test_flag_without_recipient_address_or_dmp_is_a_problem_not_a_message(
        gateway_factory, pki, tmp_path: Path) -> None:  # noqa: ANN001, F811
    """No Annuaire to find a recipient's address, no patient address, and no DMP to publish
    the KOS the archive must carry: each is said, nothing is queued or sent."""
    with smtp_server(pki) as smtp:
        port = free_port()
        gw = gateway_factory(DRIMBOX_HL7_PORT=str(port), DRIMBOX_REPOSITORY_OID="1.2.250.1.999.1.1",
                             DRIMBOX_HEALTHCARE_FACILITY_TYPE="SA07",
                             **mssante_env(pki, smtp)).start()
        storescu(images_g(tmp_path / "g", 1), gw.dicom_port)
        cda = cda_g(recipients=((MEDIONI, ""), ("", DR_MARTIN)), patient_mailto=False)
        text, _ = fill(oru_g(cda, patient=True))
        assert send(port, text)["ack"] == "AA"
        state = show(gw, STUDY_G)
        assert state["mssante"] == []
        assert state["problems"] == [
            f"recipient {MEDIONI}: the CR gives no MSSanté address and no Annuaire Santé is "
            "configured (annuaire_url) to find one",
            "DESTMSSANTEPAT = Y but the report gives no MSSanté address of the patient "
            "(recordTarget/patientRole/telecom, PID-13)",
            "the CR asks for MSSanté delivery, whose XDM archive carries the study's KOS as "
            "published in the DMP (a Source serves only a published KOS, R10), and no DMP is "
            "configured: nothing sent"]
        assert smtp.mailbox.received == []


# -- the SMTP transport and the message, without a gateway ---------------------------------


def test_smtp_transport_needs_starttls_and_a_certificate_and_refuses_on_5xx(pki) -> None:  # noqa: ANN001, F811
    message = b"Subject: test\r\n\r\nhello\r\n"
    with smtp_server(pki, Mailbox(refusals=1)) as smtp:
        ours = SmtpTransport(smtp.host, smtp.port, client_context(
            pki.ca_cert, pki.client_cert, pki.client_key), timeout=10)
        with pytest.raises(MailUnavailable, match="451"):
            ours.send(SENDER, [DR_MARTIN], message)
        assert ours.send(SENDER, [DR_MARTIN], message).startswith("250")
        # No client certificate: the server ends the handshake, nothing is taken.
        anonymous = SmtpTransport(smtp.host, smtp.port, client_context(pki.ca_cert, None, None),
                                  timeout=10)
        with pytest.raises(MailUnavailable):
            anonymous.send(SENDER, [DR_MARTIN], message)
        # A server we do not trust (the system CAs do not know the test CA): nothing sent.
        untrusting = SmtpTransport(smtp.host, smtp.port, client_context(
            None, pki.client_cert, pki.client_key), timeout=10)
        with pytest.raises(MailUnavailable, match="TLS|certificate"):
            untrusting.send(SENDER, [DR_MARTIN], message)
        smtp.mailbox.refusals, smtp.mailbox.refusal = 1, "550 5.1.1 Mailbox unknown"
        with pytest.raises(MailRefused) as refused:
            ours.send(SENDER, [DR_MARTIN], message)
        assert refused.value.code == "550" and "Mailbox unknown" in refused.value.text
        assert len(smtp.mailbox.received) == 1


def test_message_is_multipart_mixed_with_the_xdm_attachment() -> None:
    mid = new_message_id(SENDER)
    assert mid.startswith("<") and mid.endswith("@centre-imagerie-test.mssante.fr>")
    msg = build_message(sender=SENDER, recipient=DR_MARTIN, message_id=mid, subject="CR",
                        body="Bonjour, compte rendu ci-joint.\n", attachment=b"PK\x03\x04zip",
                        read_receipt=True)
    assert msg.get_content_type() == "multipart/mixed"
    assert msg["Message-ID"] == mid and msg["Disposition-Notification-To"] == SENDER
    text, zipped = list(msg.iter_parts())
    assert (text.get_content_type(), text.get_content_charset()) == ("text/plain", "utf-8")
    assert (zipped.get_content_type(), zipped.get_filename()) == ("application/zip",
                                                                 "IHE_XDM.ZIP")
    assert zipped["Content-Transfer-Encoding"] == "base64"
    assert zipped.get_content() == b"PK\x03\x04zip"
    wire = wire_bytes(msg)  # as SMTP carries it: CRLF lines, none over 78 characters
    assert b"\n" not in wire.replace(b"\r\n", b"")
    assert max(len(line) for line in wire.split(b"\r\n")) <= 78


def test_settings_and_start_up_refuse_an_unusable_mssante_configuration(
        gateway_factory, pki, tmp_path: Path) -> None:  # noqa: ANN001, F811
    with pytest.raises(Exception, match="mssante_smtp_host and mssante_sender go together"):
        load_settings(None, mssante_smtp_host="smtp.example.mssante.fr")
    with pytest.raises(Exception, match="mssante_client_cert and mssante_client_key go together"):
        load_settings(None, mssante_client_cert=pki.client_cert)
    with pytest.raises(Exception, match="not an e-mail address"):
        load_settings(None, mssante_smtp_host="h", mssante_sender="drimbox")
    # A certificate that cannot be read stops `drimbox serve` at start-up (exit 2), naming it.
    with smtp_server(pki) as smtp:
        gw = gateway_factory(DRIMBOX_HL7_PORT=str(free_port()),
                             DRIMBOX_MSSANTE_SMTP_HOST=smtp.host,
                             DRIMBOX_MSSANTE_SMTP_PORT=str(smtp.port),
                             DRIMBOX_MSSANTE_SENDER=SENDER,
                             DRIMBOX_MSSANTE_CLIENT_CERT=str(tmp_path / "missing.pem"),
                             DRIMBOX_MSSANTE_CLIENT_KEY=str(pki.client_key))
        with pytest.raises(RuntimeError, match="exited at start-up") as failed:
            gw.start()
        assert "MSSanté configuration: mssante_client_cert" in str(failed.value)
        assert gw.proc.returncode == 2


def test_recipients_are_read_from_the_cda_and_the_hl7_prt_rct_segments() -> None:
    """The CR's recipients: the CDA's informationRecipient and the PRT segments with PRT-4 =
    RCT (PRT-5 the professional, PRT-15 the MSSanté address); the patient's address from the
    CDA's telecom, else PID-13. One recipient per identifier or address."""
    cda = cda_g(recipients=((MEDIONI, ""), ("", DR_MARTIN)), patient_mailto=False)
    text = oru_g(cda)
    prt = ("PRT||UC||RCT^Result Copies To^HL70912|801234567897^MEDIONI^Stephane^^^^^^"
           "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^RPPS||||||||||^NET^Internet^"
           f"{MEDIONI_MSSANTE}")
    other = ("PRT||UC||RCT^Result Copies To^HL70912|899700111111^DURAND^Anne^^^^^^"
             "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^RPPS")
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("PRT"))
    lines[at + 1:at + 1] = [prt, other]
    pid = next(i for i, line in enumerate(lines) if line.startswith("PID"))
    fields = lines[pid].split("|")
    fields[13] = f"^NET^Internet^{PATIENT_ADDRESS}"
    lines[pid] = "|".join(fields)
    report = read_message(parse(fill("\r".join(lines))[0]))
    assert report.flags["DESTMSSANTEPS"] is True
    assert [(r.id, r.address) for r in report.recipients] == [
        (MEDIONI, MEDIONI_MSSANTE), ("", DR_MARTIN), ("899700111111", "")]
    assert report.patient_address == PATIENT_ADDRESS
    assert report.sender.person_id == "801234564895"  # still the PRT with PRT-4 = SB
