"""Headless Chromium driven through the Chrome DevTools Protocol (CDP), for viewer tests.

:class:`Browser` starts Debian's ``chromium`` with a private profile and a DevTools port
chosen by Chromium itself, attaches to its page over a WebSocket (``websocket-client``), and
records every HTTP response and page error so a test can assert on them. Tests wait on
conditions evaluated in the page (:meth:`Browser.wait_for`), never on fixed sleeps.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import websocket
from peers import require_tool

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--enable-unsafe-swiftshader",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class Browser:
    def __init__(self, profile: Path, timeout: float = 30) -> None:
        exe = require_tool("chromium")
        profile.mkdir(parents=True, exist_ok=True)
        self.log_path = profile.parent / "chromium.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.responses: list[tuple[str, int]] = []
        self.failures: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._id = 0
        self._pending: dict[int, dict] = {}
        self._cond = threading.Condition()
        port = self._devtools_port(timeout)
        page = self._page_target(port, timeout)
        self.ws = websocket.create_connection(page, timeout=timeout, suppress_origin=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Network.enable")

    # -- start-up ---------------------------------------------------------------------------

    def _devtools_port(self, timeout: float) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited ({self.proc.returncode})")
                continue
            self._log.write(line)
            m = re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                threading.Thread(target=self._drain_stderr, daemon=True).start()
                return int(m.group(1))
        raise RuntimeError("chromium did not open its DevTools port")

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)

    @staticmethod
    def _page_target(port: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            for t in targets:
                if t.get("type") == "page":
                    return t["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise RuntimeError("no page target in chromium")

    # -- protocol ---------------------------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                msg = json.loads(self.ws.recv())
            except Exception:
                return
            if "id" in msg:
                with self._cond:
                    self._pending[msg["id"]] = msg
                    self._cond.notify_all()
                continue
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Network.responseReceived":
                r = params["response"]
                self.responses.append((r["url"], int(r["status"])))
            elif method == "Network.loadingFailed":
                if not params.get("canceled"):
                    self.failures.append((params.get("requestId", ""), params.get("errorText", "")))
            elif method == "Runtime.exceptionThrown":
                d = params["exceptionDetails"]
                self.errors.append(d.get("exception", {}).get("description") or d.get("text", ""))

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict:
        with self._cond:
            self._id += 1
            mid = self._id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {method}")
                self._cond.wait(left)
            msg = self._pending.pop(mid)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    # -- what tests use ---------------------------------------------------------------------

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll ``expression`` in the page until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(
            f"timed out after {timeout:.0f} s waiting for {what}; last value {value!r}; "
            f"page errors: {self.errors[-5:]}; HTTP errors: {self.http_errors()[-10:]}"
        )

    def http_errors(self) -> list[tuple[str, int]]:
        return [(u, s) for u, s in self.responses if s >= 400]

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
