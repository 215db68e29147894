"""A mutual-TLS front for a Source gateway in the consumer's tests (R7, R17): ``drimbox serve``
speaks plain HTTP on loopback, as behind a centre's reverse proxy; this front is that proxy.
It requires a client certificate from the test CA and relays bytes both ways to the gateway.

Faults, for the retry tests: :meth:`SourceFront.cut_next` closes the next connections once
that many bytes of the answer have passed (a Source going down in the middle of a series);
:attr:`refused_handshakes` counts TLS handshakes refused (no or a foreign client certificate).
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path


class SourceFront:
    def __init__(self, upstream_port: int, cert: Path, key: Path, client_ca: Path) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(str(client_ca))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.refused_handshakes = 0
        self.connections = 0
        self._cuts: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def cut_next(self, after_bytes: int, connections: int = 1) -> None:
        with self._lock:
            self._cuts += [after_bytes] * connections

    def clear_cuts(self) -> None:
        with self._lock:
            self._cuts.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            with self._lock:
                self.refused_handshakes += 1
            conn.close()
            return
        with self._lock:
            self.connections += 1
            limit = self._cuts.pop(0) if self._cuts else None
        try:
            up = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            tls.close()
            return
        done = threading.Event()

        def close_both() -> None:
            done.set()
            for s in (tls, up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

        def pump(src: socket.socket, dst: socket.socket, budget: int | None) -> None:
            sent = 0
            try:
                while not done.is_set():
                    data = src.recv(65536)
                    if not data:
                        break
                    if budget is not None and sent + len(data) >= budget:
                        dst.sendall(data[: max(0, budget - sent)])
                        break
                    dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            close_both()

        threading.Thread(target=pump, args=(tls, up, None), daemon=True).start()
        pump(up, tls, limit)
