"""HL7 v2 over MLLP: the listener the RIS sends reports to, its ACKs, and a small client (R1).

:class:`Hl7Listener` runs an asyncio MLLP server (python-hl7's ``hl7.mllp`` streams) in a
thread of its own, started by ``drimbox serve`` when ``hl7_port`` is set. Each message gets
one original-mode ACK, on the same connection, after the message is durably recorded:

* ``MSA-1`` = ``AA`` accepted, ``AE`` the content is wrong (fix and send a new message),
  ``AR`` not processed (unsupported message or version, or a temporary failure: send again);
  ``MSA-2`` = the message's MSH-10;
* on AE / AR an ``ERR`` segment: ERR-2 the location (``PID^1^3``), ERR-3 the HL7 table 0357
  code, ERR-4 the severity, ERR-8 a message for the sender's operator.

A repeated message (same MSH-3, MSH-4, MSH-10) is answered with the same ACK and not processed
again (the ``reports`` table). No message ends its connection without an ACK: an MSH-18 we do
not read is AR ``MSH^1^18`` (the ACK in UTF-8, saying so in its MSH-18), and anything
unexpected is AR 207; the connection then serves the next message. Logs name the message
type, MSH-10 and the outcome, never a patient name or INS.

MLLP over TLS (``hl7_tls``, R12): the connection is TLS 1.2+ with our ``tls_cert`` before the
first block; the RIS's client certificate is required by default (``hl7_tls_client_auth``).
``drimbox hl7 send --tls-ca ... [--tls-cert ... --tls-key ...]`` is a client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import uuid
from datetime import datetime

import hl7
from hl7.mllp import InvalidBlockError, start_hl7_server

from gateway.config import Settings
from gateway.reports.hl7_reader import charset_of, message_key, message_type_of, parse, read_message
from gateway.reports.workflow import (
    Ack,
    FieldError,
    MessageKey,
    Outcome,
    ReportHandler,
    ReportRefused,
    ReportWorkflow,
)
from gateway.tls import handshake_failure, listener_context, peer_subject

log = logging.getLogger(__name__)

START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"


def escape(text: str) -> str:
    """HL7 escape sequences for the default delimiters (in ERR-8 free text)."""
    out = text.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return out.replace("\r", " ").replace("\n", " ")


def build_ack(message: hl7.Message | None, outcome: Outcome, *, application: str,
              facility: str, charset: str | None = None) -> str:
    """The ACK for ``message`` (None when it could not be parsed) with ``outcome``. Its MSH-18
    is ``charset`` when given (the ACK is not in the message's character set), else the
    message's own (first repetition), else ``UNICODE UTF-8``."""
    msh = message.segment("MSH") if message is not None else None

    def f(n: int) -> str:
        return str(msh[n]) if msh is not None and len(msh) > n else ""

    event = f(9).split("^")[1] if "^" in f(9) else ""
    charset = charset or f(18).split("~", 1)[0] or "UNICODE UTF-8"
    version = f(12) or "2.5"
    now = datetime.now().strftime("%Y%m%d%H%M%S")
    control = uuid.uuid4().hex[:20]
    segments = [
        "|".join(["MSH", "^~\\&", application, facility, f(3), f(4), now, "",
                  f"ACK^{event}^ACK" if event else "ACK", control, f(11) or "P", version,
                  "", "", "", "", "", charset]),
        f"MSA|{outcome.ack.value}|{f(10)}",
    ]
    if outcome.error is not None:
        e = outcome.error
        segments.append(
            f"ERR||{e.location}|{e.code}^{_ERROR_TEXT.get(e.code, 'Error')}^HL70357|{e.severity}"
            f"||||{escape(e.message)}"
        )
    return "\r".join(segments) + "\r"


_ERROR_TEXT = {
    100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
    103: "Table value not found", 104: "Value too long", 200: "Unsupported message type",
    201: "Unsupported event code", 202: "Unsupported processing id",
    203: "Unsupported version id", 204: "Unknown key identifier",
    205: "Duplicate key identifier", 206: "Application record locked",
    207: "Application internal error",
}


class MessageProcessor:
    """From the bytes of one MLLP block to the bytes of its ACK (blocking: runs in a thread)."""

    def __init__(self, handler: ReportHandler, *, application: str = "DRIMBOX",
                 facility: str = "") -> None:
        self.handler = handler
        self.application = application
        self.facility = facility

    def process(self, block: bytes) -> bytes:
        """The ACK for ``block``. Never raises: whatever goes wrong with one message, its
        sender gets an ACK (AR 207 for the unexpected) and the connection stays usable."""
        try:
            return self._process(block)
        except Exception:  # a bug on some input: the sender still gets an answer
            log.exception("HL7 message: internal error before the ACK")
            outcome = Outcome(Ack.REJECTED, FieldError(
                "MSH", 207, "internal error, the message was not processed: send it again"))
            return self._ack(_header_only(block.decode("utf-8", "replace")), outcome, "utf-8",
                             "UNICODE UTF-8")

    def _process(self, block: bytes) -> bytes:
        try:
            charset = charset_of(block)
        except ReportRefused as refused:  # unknown MSH-18: answered in UTF-8, saying so
            log.warning("HL7 message refused before reading: AR MSH^1^18 (character set)")
            return self._ack(_header_only(block.decode("utf-8", "replace")), refused.outcome,
                             "utf-8", "UNICODE UTF-8")
        message: hl7.Message | None = None
        text = ""
        try:
            try:
                text = block.decode(charset)
            except UnicodeDecodeError:
                text = block.decode(charset, "replace")  # for the ACK's MSA-2 only
                raise ReportRefused(Ack.ERROR, FieldError(
                    "MSH^1^18", 102, f"the message is not valid {charset} (MSH-18)")) from None
            message = parse(text)
        except ReportRefused as refused:
            log.warning("HL7 message refused before reading: %s %s", refused.outcome.ack.value,
                        refused.outcome.error.location if refused.outcome.error else "")
            return self._ack(message or _header_only(text), refused.outcome, charset)
        key = message_key(message)
        mtype = message_type_of(message)
        try:
            previous = self.handler.previous(key)
            if previous is not None:
                log.info("HL7 %s %s repeated: answered %s again", mtype, key.control_id,
                         previous.ack.value)
                return self._ack(message, previous, charset)
            try:
                report = read_message(message)
            except ReportRefused as refused:
                outcome = self.handler.refuse_unreadable(key, mtype, refused.outcome)
            else:
                outcome = self.handler.handle(report)
        except Exception:  # the database or a bug: the sender must send again later
            log.exception("HL7 %s %s: internal error", mtype, key.control_id)
            outcome = Outcome(Ack.REJECTED, FieldError(
                "MSH^1^10", 207, "internal error, the message was not processed: send it again"))
        err = outcome.error
        log.info("HL7 %s %s: %s%s", mtype, key.control_id, outcome.ack.value,
                 f" {err.location} {err.code}" if err else "")
        return self._ack(message, outcome, charset)

    def _ack(self, message: hl7.Message | None, outcome: Outcome, codec: str,
             charset: str | None = None) -> bytes:
        ack = build_ack(message, outcome, application=self.application, facility=self.facility,
                        charset=charset)
        return ack.encode(codec, "replace")


def _header_only(text: str) -> hl7.Message | None:
    """The MSH segment alone, when the rest of the message cannot be parsed: the ACK still
    names the message (MSA-2) and its sender."""
    first = text.replace("\r\n", "\r").replace("\n", "\r").split("\r", 1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        return None
    try:
        return hl7.parse(first)
    except Exception:  # noqa: BLE001 - MSH-2 unusable (a delimiter twice...): read the fields
        pass          # with the standard encoding characters instead
    sep = first[3]
    fields = first.split(sep)
    try:
        return hl7.parse(sep.join(["MSH", "^~\\&", *fields[2:]]))
    except Exception:  # noqa: BLE001 - then the ACK names no message
        return None


#: Seconds a client has to complete the TLS handshake (MLLP over TLS).
HANDSHAKE_TIMEOUT = 30.0


class Hl7Listener:
    """The MLLP server, in a thread with its own event loop (``start`` / ``stop``).

    With ``ssl_context`` (``hl7_tls``, R12) each connection is TLS: the handshake runs in the
    connection's coroutine (``StreamWriter.start_tls``) rather than in the server, so that a
    refused client (plain TCP, a certificate from another CA, an expired one) is logged with
    its address and the reason; asyncio's own server-side TLS drops them without a word."""

    def __init__(self, processor: MessageProcessor, host: str, port: int, *,
                 max_message_bytes: int = 16 * 1024 * 1024, idle_timeout: float = 300.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.processor = processor
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hl7-mllp", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(start_hl7_server(
                self._client, self.host, self.port, limit=self.max_message_bytes,
                reuse_address=True, family=socket.AF_INET if ":" not in self.host else 0,
            ))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        log.info("HL7 MLLP on %s:%d (%s)", self.host, self.port,
                 "TLS" if self.ssl_context is not None else "plain TCP")
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _client(self, reader, writer) -> None:  # noqa: ANN001
        peer = writer.get_extra_info("peername")
        if self.ssl_context is not None:
            try:
                await writer.start_tls(self.ssl_context,
                                       ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                log.warning("MLLP TLS handshake with %s failed, connection closed: %s",
                            peer[0] if isinstance(peer, tuple) else peer,
                            handshake_failure(exc))
                writer.transport.abort()
                return
            subject = peer_subject(writer.get_extra_info("ssl_object"))
            if subject:
                log.info("MLLP over TLS from %s, certificate %s", peer[0], subject)
        try:
            while True:
                try:
                    block = await asyncio.wait_for(reader.readblock(), self.idle_timeout)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    break
                except InvalidBlockError:
                    log.warning("MLLP from %s: data outside a <VT>...<FS><CR> block, closing", peer)
                    break
                except ValueError:  # larger than max_message_bytes: one AR, then the
                    # stream is out of step (the rest of the message is still coming): close.
                    log.warning("MLLP from %s: message larger than %d bytes, refused", peer,
                                self.max_message_bytes)
                    outcome = Outcome(Ack.REJECTED, FieldError(
                        "MSH", 100, f"message larger than {self.max_message_bytes} bytes"))
                    writer.write(START_BLOCK + build_ack(
                        None, outcome, application=self.processor.application,
                        facility=self.processor.facility).encode() + END_BLOCK)
                    await writer.drain()
                    break
                ack = await asyncio.to_thread(self.processor.process, block)
                writer.write(START_BLOCK + ack + END_BLOCK)
                await writer.drain()
        finally:
            writer.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def _close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            loop.stop()

        if loop.is_running():
            asyncio.run_coroutine_threadsafe(_close(), loop)
        self._thread.join(10)


# -- client -----------------------------------------------------------------------------


def client_context(ca_bundle: str | None, cert: str | None = None,
                   key: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ client context for MLLP over TLS: the server is checked against
    ``ca_bundle`` (the system's CAs when ``None``); ``cert``/``key``: our client certificate."""
    ctx = ssl.create_default_context(cafile=ca_bundle)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def send_message(text: str, host: str, port: int, *, timeout: float = 60.0,
                 encoding: str = "utf-8", ssl_context: ssl.SSLContext | None = None) -> str:
    """Send one message over MLLP (over TLS with ``ssl_context``) and return the ACK text
    (segments separated by CR)."""
    data = START_BLOCK + text.encode(encoding) + END_BLOCK
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = (ssl_context.wrap_socket(raw, server_hostname=host) if ssl_context is not None
                else raw)
        with sock:
            sock.sendall(data)
            buf = b""
            while END_BLOCK not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the peer closed the connection before acknowledging")
                buf += chunk
    start = buf.find(START_BLOCK)
    return buf[start + 1 : buf.index(END_BLOCK)].decode(encoding, "replace")


def ack_summary(ack_text: str) -> dict[str, str]:
    """MSA-1, MSA-2 and the ERR fields of an ACK, for callers and tests."""
    out: dict[str, str] = {}
    for seg in ack_text.replace("\r\n", "\r").split("\r"):
        fields = seg.split("|")
        if fields[0] == "MSA":
            out["ack"] = fields[1] if len(fields) > 1 else ""
            out["control_id"] = fields[2] if len(fields) > 2 else ""
        elif fields[0] == "ERR":
            out["location"] = fields[2] if len(fields) > 2 else ""
            out["code"] = fields[3].split("^")[0] if len(fields) > 3 else ""
            out["severity"] = fields[4] if len(fields) > 4 else ""
            out["message"] = fields[8] if len(fields) > 8 else ""
    return out


__all__ = ["Hl7Listener", "MessageKey", "MessageProcessor", "ack_summary", "build_ack",
           "client_context", "send_message"]


def build_hl7_listener(settings: Settings, workflow: ReportWorkflow) -> Hl7Listener | None:
    """The listener ``drimbox serve`` starts when ``hl7_port`` is set (else ``None``)."""
    if not settings.hl7_port:
        return None
    processor = MessageProcessor(workflow, application=settings.hl7_application,
                                 facility=settings.structure_id)
    return Hl7Listener(processor, settings.effective_hl7_host, settings.hl7_port,
                       max_message_bytes=settings.hl7_max_message_bytes,
                       ssl_context=listener_context(settings, "hl7"))
