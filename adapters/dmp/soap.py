"""SOAP 1.2 envelopes with WS-Addressing and WS-Security, and MTOM/XOP packaging (ITI TF-2x V).

* :func:`envelope` — ``soap:Envelope`` with ``wsa:MessageID`` / ``wsa:To`` / ``wsa:Action``
  (``mustUnderstand``) and, when given, a ``wsse:Security`` header carrying the VIHF (R6).
* :func:`pack_mtom` / :func:`unpack_mtom` — ``multipart/related; type="application/xop+xml"``
  with the envelope as the root part and one binary part per ``xop:Include`` (written by
  hand, binary-safe: no base64 inside the MIME parts). :func:`unpack_mtom` also reads a plain
  ``application/soap+xml`` body (XOP-less, documents inline in base64).
* :func:`fault` / :func:`parse_fault` — SOAP 1.2 faults (``Sender``/``Receiver`` + subcode).
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass

from lxml import etree

from adapters.dmp.ns import SOAP12, WSA, WSSE, XOP, q

SOAP_CONTENT_TYPE = "application/soap+xml"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True,
                          remove_blank_text=False)


class SoapError(ValueError):
    """The message is not a well-formed SOAP 1.2 / MTOM message; the text says why."""


def new_message_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def envelope(action: str, to: str, body: etree._Element, security: etree._Element | None = None,
             message_id: str | None = None, relates_to: str | None = None) -> etree._Element:
    """A SOAP 1.2 envelope addressed with WS-Addressing."""
    env = etree.Element(q(SOAP12, "Envelope"), nsmap={"soap": SOAP12, "wsa": WSA})
    header = etree.SubElement(env, q(SOAP12, "Header"))
    act = etree.SubElement(header, q(WSA, "Action"))
    act.set(q(SOAP12, "mustUnderstand"), "true")
    act.text = action
    etree.SubElement(header, q(WSA, "MessageID")).text = message_id or new_message_id()
    if relates_to:
        etree.SubElement(header, q(WSA, "RelatesTo")).text = relates_to
    if to:
        etree.SubElement(header, q(WSA, "To")).text = to
    if security is not None:
        sec = etree.SubElement(header, q(WSSE, "Security"), nsmap={"wsse": WSSE})
        sec.set(q(SOAP12, "mustUnderstand"), "true")
        sec.append(security)
    etree.SubElement(env, q(SOAP12, "Body")).append(body)
    return env


def parse_envelope(data: bytes) -> etree._Element:
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapError(f"not well-formed XML: {exc}") from exc
    if root.tag != q(SOAP12, "Envelope"):
        raise SoapError(f"root element is {root.tag}, not a SOAP 1.2 Envelope")
    if root.find(q(SOAP12, "Body")) is None:
        raise SoapError("the envelope has no soap:Body")
    return root


def header_value(env: etree._Element, local: str) -> str | None:
    el = env.find(f"{q(SOAP12, 'Header')}/{q(WSA, local)}")
    return el.text.strip() if el is not None and el.text else None


def body_payload(env: etree._Element) -> etree._Element:
    body = env.find(q(SOAP12, "Body"))
    children = [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1:
        raise SoapError(f"soap:Body must hold exactly one element, found {len(children)}")
    return children[0]


# ---------------------------------------------------------------------------------------- MTOM

@dataclass(frozen=True, slots=True)
class MtomMessage:
    envelope: etree._Element
    attachments: dict[str, bytes]
    """Content-ID (without ``<>``) → bytes."""


def xop_include(parent: etree._Element, cid: str) -> None:
    inc = etree.SubElement(parent, q(XOP, "Include"), nsmap={"xop": XOP})
    inc.set("href", f"cid:{cid}")


def pack_mtom(env: etree._Element, attachments: dict[str, bytes], action: str) -> tuple[str, bytes]:
    """Serialise ``env`` and its attachments as an MTOM message: (Content-Type, body)."""
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    root_cid = f"root.message.{uuid.uuid4().hex}@drimbox"
    xml = etree.tostring(env, xml_declaration=True, encoding="UTF-8")
    parts = [
        (
            f"Content-Type: application/xop+xml; charset=UTF-8; type=\"{SOAP_CONTENT_TYPE}\"; "
            f"action=\"{action}\"\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{root_cid}>\r\n\r\n"
        ).encode() + xml
    ]
    for cid, data in attachments.items():
        parts.append(
            (f"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
             f"Content-ID: <{cid}>\r\n\r\n").encode() + data
        )
    delim = f"--{boundary}".encode()
    body = b"".join(delim + b"\r\n" + p + b"\r\n" for p in parts) + delim + b"--\r\n"
    content_type = (
        f'multipart/related; type="application/xop+xml"; boundary="{boundary}"; '
        f'start="<{root_cid}>"; start-info="{SOAP_CONTENT_TYPE}"; action="{action}"'
    )
    return content_type, body


def _params(content_type: str) -> tuple[str, dict[str, str]]:
    main, _, rest = content_type.partition(";")
    params = {}
    for m in re.finditer(r'\s*([A-Za-z0-9_-]+)\s*=\s*("([^"]*)"|[^;]*)\s*;?', rest):
        params[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2).strip()
    return main.strip().lower(), params


def _split_part(part: bytes) -> tuple[dict[str, str], bytes]:
    head, sep, content = part.partition(b"\r\n\r\n")
    if not sep:
        raise SoapError("a MIME part has no header/body separator")
    headers = {}
    for line in head.decode("ascii", "replace").split("\r\n"):
        if ":" in line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return headers, content


def unpack_mtom(content_type: str, body: bytes) -> MtomMessage:
    """Read an MTOM (or plain SOAP 1.2) message; raise :class:`SoapError` when malformed."""
    main, params = _params(content_type or "")
    if main == SOAP_CONTENT_TYPE:
        return MtomMessage(parse_envelope(body), {})
    if main != "multipart/related":
        raise SoapError(f"unexpected Content-Type {main!r}")
    if params.get("type", "").lower() != "application/xop+xml":
        raise SoapError('multipart/related without type="application/xop+xml"')
    boundary = params.get("boundary")
    if not boundary:
        raise SoapError("multipart/related without a boundary")
    delim = b"--" + boundary.encode()
    chunks = (b"\r\n" + body).split(b"\r\n" + delim)
    parts: list[tuple[dict[str, str], bytes]] = []
    closed = False
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            closed = True
            break
        parts.append(_split_part(chunk.removeprefix(b"\r\n")))
    if not closed:
        raise SoapError("the multipart body has no closing boundary")
    if not parts:
        raise SoapError("the multipart body has no part")
    start = params.get("start", "").strip("<>")
    root_index = 0
    if start:
        ids = [h.get("content-id", "").strip("<>") for h, _ in parts]
        if start not in ids:
            raise SoapError(f"start part <{start}> is missing")
        root_index = ids.index(start)
    root_headers, root_body = parts[root_index]
    if not root_headers.get("content-type", "").lower().startswith("application/xop+xml"):
        raise SoapError("the root part is not application/xop+xml")
    attachments = {}
    for i, (h, content) in enumerate(parts):
        if i == root_index:
            continue
        cid = h.get("content-id", "").strip("<>")
        if not cid:
            raise SoapError("an attachment has no Content-ID")
        if h.get("content-transfer-encoding", "binary").lower() == "base64":
            content = base64.b64decode(content)
        attachments[cid] = content
    return MtomMessage(parse_envelope(root_body.strip()), attachments)


def element_bytes(el: etree._Element, attachments: dict[str, bytes]) -> bytes:
    """The binary content of an ``xs:base64Binary`` element: its xop:Include part, or inline
    base64. Raises :class:`SoapError` when the referenced part is missing."""
    inc = el.find(q(XOP, "Include"))
    if inc is not None:
        href = inc.get("href", "")
        if not href.startswith("cid:"):
            raise SoapError(f"xop:Include href {href!r} is not a cid: URL")
        from urllib.parse import unquote
        cid = unquote(href[4:])
        if cid not in attachments:
            raise SoapError(f"xop:Include refers to a missing MIME part <{cid}>")
        return attachments[cid]
    try:
        return base64.b64decode((el.text or "").strip(), validate=True)
    except ValueError as exc:
        raise SoapError("inline document is not valid base64") from exc


# -------------------------------------------------------------------------------------- faults

def fault(code: str, subcode: str, reason: str, action: str = "http://www.w3.org/2005/08/addressing/soap/fault",
          relates_to: str | None = None) -> etree._Element:
    """A SOAP 1.2 Fault: ``code`` is ``Sender`` or ``Receiver``; ``subcode`` a QName like
    ``wsse:FailedCheck`` (empty: no subcode)."""
    f = etree.Element(q(SOAP12, "Fault"), nsmap={"soap": SOAP12, "wsse": WSSE})
    c = etree.SubElement(f, q(SOAP12, "Code"))
    etree.SubElement(c, q(SOAP12, "Value")).text = f"soap:{code}"
    if subcode:
        sc = etree.SubElement(c, q(SOAP12, "Subcode"))
        etree.SubElement(sc, q(SOAP12, "Value")).text = subcode
    r = etree.SubElement(f, q(SOAP12, "Reason"))
    t = etree.SubElement(r, q(SOAP12, "Text"))
    t.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    t.text = reason
    return envelope(action, "", f, relates_to=relates_to)


@dataclass(frozen=True, slots=True)
class Fault:
    code: str
    subcode: str
    reason: str


def parse_fault(env: etree._Element) -> Fault | None:
    f = env.find(f"{q(SOAP12, 'Body')}/{q(SOAP12, 'Fault')}")
    if f is None:
        return None
    code = f.findtext(f"{q(SOAP12, 'Code')}/{q(SOAP12, 'Value')}", "") or ""
    sub = f.findtext(f"{q(SOAP12, 'Code')}/{q(SOAP12, 'Subcode')}/{q(SOAP12, 'Value')}", "") or ""
    reason = f.findtext(f"{q(SOAP12, 'Reason')}/{q(SOAP12, 'Text')}", "") or ""
    return Fault(code.split(":")[-1], sub.strip(), reason.strip())
