"""Reading the RIS's HL7 v2 messages into :class:`~gateway.reports.workflow.ImagingReport` (R1).

Profile: CI-SIS *Transmission d'un document CDA-R2 en HL7v2* (``MSH-21 = 2.1^CISIS_CDA_HL7_V2``)
for ``ORU^R01`` (v2.5), ``MDM^T02`` / ``T04`` / ``T10`` (v2.6), and ``OMI^O23`` (v2.5.1) for
orders and exam cancellations. Parsing uses python-hl7 (``hl7``): it is tolerant of the
segment mix these profiles use, and it ships the asyncio MLLP streams the listener uses.
hl7apy, which validates against the standard's message structures, refuses the official
v2.5 ``ORU^R01`` samples: their ``PRT`` segment (backported by the CI-SIS profile) is not in
the v2.5 ORU_R01 structure, and its validation ends with "Missing required child
ORU_R01_ORDER_OBSERVATION.OBR". The checks that matter are made here, each naming the field
in error as an HL7 ERR location (``PID^1^3``):

* MSH-2 must be 4 (or 5) distinct delimiters; MSH-18 names the character set
  (:func:`charset_of`: UTF-8 or ISO 8859, anything else is refused naming it);
* the CDA travels base64 in OBX-5 of the ``ED`` OBX (``^TEXT^XML^Base64^<data>``);
* ``PID-3`` carries the INS (with its OID) and the IPP (``PI``), ``PID-32`` the identity status;
* MetaDMPMSS flags are OBX ``<FLAG>^<text>^MetaDMPMSS`` with OBX-5 ``Y`` or ``N``;
* ``PRT`` (PRT-4 = SB) names the sending professional and structure (PRT-8.10); a ``PRT`` with
  PRT-4 = RCT (*Results Copies To*) names a recipient of the CR (PRT-5 the professional,
  PRT-15 the MSSanté address, ``^NET^Internet^<address>``); PID-13 may carry the patient's;
* ``TXA-12`` / ``TXA-13`` (MDM) are the document id and the id it replaces;
* ``ORC-1 = CA`` means withdrawal (ORU/MDM) or exam cancellation (OMI), as does ``MDM^T04``;
* ``IPC`` (OMI) carries accession (IPC-1) and StudyInstanceUID (IPC-3).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

import hl7

from gateway.identity.codecs import ins_from_pid3
from gateway.reports.cda import CdaError, Recipient, is_mssante_address, read_cda
from gateway.reports.workflow import (
    Ack,
    ImagingReport,
    MessageKey,
    ReportKind,
    Sender,
    refuse,
)

CISIS_PROFILE = "CISIS_CDA_HL7_V2"
SUPPORTED_VERSIONS = ("2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2", "2.9")
SUPPORTED = {
    ("ORU", "R01"), ("MDM", "T02"), ("MDM", "T04"), ("MDM", "T10"), ("OMI", "O23"),
}
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")


def normalise(text: str) -> str:
    """Segments end with CR in HL7; files and some senders use CRLF or LF. Empty lines go."""
    lines = re.split(r"\r\n|\r|\n", text)
    return "\r".join(line for line in lines if line.strip())


_UTF8_NAMES = ("", "ASCII", "UNICODE", "UNICODE UTF-8")
_ISO_8859 = re.compile(r"8859/([0-9]{1,2})")
CHARSETS_READ = "UNICODE UTF-8, ASCII, UNICODE or 8859/1 to 8859/16"
"""What :func:`charset_of` accepts in MSH-18, as said to a sender it refuses."""


def charset_of(block: bytes) -> str:
    """The Python codec for MSH-18 (HL7 table 0211): UTF-8 when it is empty, ``ASCII``,
    ``UNICODE`` or ``UNICODE UTF-8`` (ASCII is a subset), ``iso8859-N`` for ``8859/N`` (any ISO
    8859 part Python has: 1 to 16 but 12). Case and surrounding spaces do not matter; of a
    repeated MSH-18 only the first repetition (the default character set) counts. Any other
    value (``8859/``, ``8859/99``, ``UNICODE UTF-16``, ``ISO IR87``...) raises
    :class:`~gateway.reports.workflow.ReportRefused`: AR, ERR ``MSH^1^18`` code 103, naming the value.
    """
    first = block.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return "utf-8"
    fields = first.split(first[3:4])
    raw = fields[17].decode("ascii", "replace") if len(fields) > 17 else ""
    repetition = first[5:6].decode("ascii", "replace") if len(first) > 5 else "~"
    value = raw.split(repetition or "~", 1)[0].strip().upper()
    if value in _UTF8_NAMES:
        return "utf-8"
    m = _ISO_8859.fullmatch(value)
    if m is not None:
        codec = f"iso8859-{int(m.group(1))}"
        try:
            codecs.lookup(codec)
        except LookupError:
            pass
        else:
            return codec
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    raise refuse("MSH^1^18", 103, f"MSH-18 character set '{shown.strip()}' is not supported "
                 f"(HL7 table 0211: {CHARSETS_READ})", Ack.REJECTED)


def _f(segment: hl7.Segment, n: int) -> str:
    """Field ``n`` as the raw text (components joined), '' when absent."""
    return str(segment[n]) if len(segment) > n else ""


def _component(value: str, n: int, sep: str = "^") -> str:
    parts = value.split(sep)
    return parts[n - 1].strip() if len(parts) >= n else ""


def message_key(message: hl7.Message) -> MessageKey:
    msh = message.segment("MSH")
    return MessageKey(_f(msh, 3), _f(msh, 4), _f(msh, 10).strip())


def message_type_of(message: hl7.Message) -> str:
    msh9 = _f(message.segment("MSH"), 9)
    return "^".join(p for p in msh9.split("^")[:2] if p)


def parse(text: str) -> hl7.Message:
    """Parse, checking MSH and every segment id; raise ReportRefused naming what is wrong."""
    text = normalise(text)
    if not text.startswith("MSH"):
        raise refuse("MSH", 100, "the message does not begin with an MSH segment", Ack.REJECTED)
    encoding = text[4:].split(text[3:4] or "|", 1)[0].split("\r", 1)[0] if len(text) > 3 else ""
    if not (4 <= len(encoding) <= 5 and len(set(encoding + text[3])) == len(encoding) + 1):
        raise refuse("MSH^1^2", 102, f"MSH-2 (encoding characters) '{encoding}' must be 4 or 5 "
                     "distinct delimiters other than MSH-1 (usually ^~\\&)", Ack.REJECTED)
    seen: dict[str, int] = {}
    previous = "MSH^1"
    for n, line in enumerate(text.split("\r"), start=1):
        seg_id = line[:3]
        if not _SEGMENT_ID.match(seg_id) or (len(line) > 3 and line[3] != text[3]):
            # ERR-2 names the last good segment: the broken line follows it (often a line
            # break inside one of its fields).
            raise refuse(previous, 100, f"line {n}, after segment {previous}, is not a valid "
                         f"HL7 segment (a 3-character id followed by '{text[3]}')")
        seen[seg_id] = seen.get(seg_id, 0) + 1
        previous = f"{seg_id}^{seen[seg_id]}"
    try:
        message = hl7.parse(text)
    except Exception as exc:  # noqa: BLE001 - python-hl7 also fails with IndexError,
        # ValueError or AssertionError (MSH-2 repeating a delimiter): all mean "unparseable".
        detail = str(exc) or type(exc).__name__
        raise refuse("MSH", 100, f"the message cannot be parsed ({detail})", Ack.REJECTED) from None
    msh = message.segment("MSH")
    if not _f(msh, 10).strip():
        raise refuse("MSH^1^10", 101, "MSH-10 (message control id) is empty", Ack.REJECTED)
    return message


def read_message(message: hl7.Message) -> ImagingReport:
    """Read a parsed message into a report or raise :class:`~gateway.reports.workflow.ReportRefused`."""
    msh = message.segment("MSH")
    msh9 = _f(msh, 9)
    code, event = _component(msh9, 1), _component(msh9, 2)
    if code not in {c for c, _ in SUPPORTED}:
        raise refuse("MSH^1^9^1^1", 200, f"message type {code!r} is not supported "
                     "(ORU^R01, MDM^T02/T04/T10, OMI^O23)", Ack.REJECTED)
    if (code, event) not in SUPPORTED:
        raise refuse("MSH^1^9^1^2", 201, f"event {code}^{event} is not supported", Ack.REJECTED)
    version = _component(_f(msh, 12), 1)
    if version not in SUPPORTED_VERSIONS:
        raise refuse("MSH^1^12", 203, f"HL7 version {version!r} is not supported (2.5 or later)",
                      Ack.REJECTED)
    if code in ("ORU", "MDM") and CISIS_PROFILE not in _f(msh, 21):
        raise refuse("MSH^1^21", 101, f"MSH-21 must name the profile 2.1^{CISIS_PROFILE}")

    segments = {str(seg[0]): seg for seg in reversed(list(message))}  # first of each kind
    pid = segments.get("PID")
    if pid is None:
        raise refuse("PID", 100, "no PID segment")
    pid3 = _f(pid, 3)
    if not pid3.strip():
        raise refuse("PID^1^3", 101, "PID-3 (patient identifiers) is empty")
    patient = ins_from_pid3(pid3, _f(pid, 32) or None)
    if patient.ins is None:
        raise refuse("PID^1^3", 102 if not patient.ins_refusal.startswith("absent") else 101,
                     f"PID-3 carries no usable INS ({patient.ins_refusal})")

    orc = segments.get("ORC")
    order_control = _component(_f(orc, 1), 1) if orc is not None else ""
    placer = _component(_f(orc, 2), 1) if orc is not None else ""
    if not placer and "OBR" in segments:
        placer = _component(_f(segments["OBR"], 2), 1)

    if code == "OMI":
        return _read_order(message, segments, patient, order_control, placer)

    kind = (ReportKind.WITHDRAWAL if (event == "T04" or order_control == "CA")
            else ReportKind.REPORT)
    document_id = replaced = ""
    if code == "MDM":
        txa = segments.get("TXA")
        if txa is None:
            raise refuse("TXA", 100, "an MDM message needs a TXA segment")
        document_id = _component(_f(txa, 12), 1)
        replaced = _component(_f(txa, 13), 1)

    cda_bytes, cda, cda_field = b"", None, "OBX^1^5"
    ed = [(n, seg) for n, seg in _obx(message) if _f(seg, 2).strip() == "ED"]
    if not ed and kind is ReportKind.REPORT:
        raise refuse("OBX", 100, "no OBX of type ED carries the CDA")
    if ed:
        n, seg = ed[0]
        cda_field = f"OBX^{n}^5"
        cda_bytes = _decode_ed(_f(seg, 5), n)
        try:
            cda = read_cda(cda_bytes)
        except CdaError as exc:
            raise refuse(f"OBX^{n}^5", 102, f"CDA {exc.xpath}: {exc.message}") from None
        if document_id and str(cda.document_id) != document_id:
            raise refuse("TXA^1^12", 102, f"TXA-12 {document_id} differs from the CDA's "
                         f"ClinicalDocument/id {cda.document_id}")
        if cda.patient.ins is not None and cda.patient.ins.matricule != patient.ins.matricule:
            raise refuse("PID^1^3", 204, "the INS in PID-3 differs from the CDA's "
                         "recordTarget/patientRole/id")

    return ImagingReport(
        key=message_key(message),
        message_type=f"{code}^{event}",
        kind=kind,
        patient=patient,
        cda=cda,
        cda_bytes=cda_bytes,
        flags=_flags(message),
        sender=_sender(next((s for s in message if str(s[0]) == "PRT"
                             and _component(_f(s, 4), 1) in ("SB", "")), None)),
        hl7_recipients=_recipients(message),
        hl7_patient_address=_patient_address(pid),
        document_id=document_id,
        replaced_document_id=replaced,
        placer_order_number=placer,
        cda_field=cda_field,
    )


def _read_order(message: hl7.Message, segments: dict, patient, order_control: str,  # noqa: ANN001
                placer: str) -> ImagingReport:
    ipc = segments.get("IPC")
    study_uid = accession = ""
    if ipc is not None:
        accession = _component(_f(ipc, 1), 1)
        study_uid = _component(_f(ipc, 3), 1)
    if order_control == "CA" and not (study_uid or accession):
        raise refuse("IPC^1^3", 101, "an exam cancellation must name the study (IPC-3) "
                     "or the accession number (IPC-1)")
    return ImagingReport(
        key=message_key(message),
        message_type="OMI^O23",
        kind=ReportKind.CANCEL if order_control == "CA" else ReportKind.ORDER,
        patient=patient,
        order_study_uid=study_uid,
        order_accession=accession,
        placer_order_number=placer,
    )


def _obx(message: hl7.Message) -> list[tuple[int, hl7.Segment]]:
    """OBX segments with their OBX-1 set id (their position when OBX-1 is empty)."""
    out = []
    for pos, seg in enumerate((s for s in message if str(s[0]) == "OBX"), start=1):
        set_id = _f(seg, 1).strip()
        out.append((int(set_id) if set_id.isascii() and set_id.isdigit() else pos, seg))
    return out


def _decode_ed(field: str, n: int) -> bytes:
    """OBX-5 of type ED: ``<source>^<type>^<subtype>^<encoding>^<data>``, encoding Base64."""
    parts = field.split("^")
    if len(parts) < 5:
        raise refuse(f"OBX^{n}^5", 102, "OBX-5 is not an ED value "
                     "(^TEXT^XML^Base64^<data>)")
    if parts[3].strip().lower() != "base64":
        raise refuse(f"OBX^{n}^5^1^4", 102, f"OBX-5 encoding {parts[3]!r} is not Base64")
    data = "".join(parts[4].split())
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise refuse(f"OBX^{n}^5^1^5", 102, "OBX-5 data is not valid base64") from None


def _flags(message: hl7.Message) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    for n, seg in _obx(message):
        obx3 = _f(seg, 3)
        if _component(obx3, 3) != "MetaDMPMSS":
            continue
        value = _component(_f(seg, 5), 1).upper()
        if value not in ("Y", "N"):
            raise refuse(f"OBX^{n}^5", 103, f"flag {_component(obx3, 1)} must be Y or N")
        flags[_component(obx3, 1)] = value == "Y"
    return flags


def _sender(prt: hl7.Segment | None) -> Sender:
    if prt is None:
        return Sender()
    person, org = _f(prt, 5), _f(prt, 8)
    return Sender(
        person_id=_component(person, 1),
        person_family=_component(person, 2),
        organization_name=_component(org, 1),
        structure_id=_component(org, 10),
    )


def _emails(xtn_field: str, repetition: str = "~") -> list[str]:
    """The e-mail addresses of an XTN field (``^NET^Internet^<address>``, repeated)."""
    out = []
    for rep in xtn_field.split(repetition):
        address = _component(rep, 4)
        if address and "@" in address and (_component(rep, 2) in ("NET", "") or
                                          _component(rep, 3) in ("Internet", "X.400")):
            out.append(address)
    return out


def _recipients(message: hl7.Message) -> tuple[Recipient, ...]:
    """PRT segments with PRT-4 = RCT: the professionals the CR is copied to."""
    out = []
    for seg in (s for s in message if str(s[0]) == "PRT"):
        if _component(_f(seg, 4), 1) != "RCT":
            continue
        person = _f(seg, 5).split("~")[0]
        ident = _component(person, 1)
        authority = _component(person, 9)
        addresses = [a for a in _emails(_f(seg, 15)) if is_mssante_address(a)]
        if ident or addresses:
            out.append(Recipient(id=ident, id_root=authority.split("&")[1] if "&" in authority
                                 else "", family=_component(person, 2),
                                 given=_component(person, 3),
                                 address=addresses[0] if addresses else ""))
    return tuple(out)


def _patient_address(pid: hl7.Segment) -> str:
    return next((a for a in _emails(_f(pid, 13)) if is_mssante_address(a)), "")
