"""A private Orthanc for tests: the real peer that plays the centre's PACS.

:class:`Orthanc` runs Debian's ``/usr/sbin/Orthanc`` with its DICOMweb plugin on free
loopback ports, with a JSON configuration and storage of its own under a temporary folder,
never the system service. Orthanc 1.10 binds the wildcard address and has no option to
change it, so ``loopback_bind.c`` (built here with ``cc``, LD_PRELOAD'ed) turns those binds
into loopback binds: nothing outside this machine can reach it.

``dicomweb_servers`` becomes ``DicomWeb.Servers`` (e.g. our gateway as ``drimbox``) and
``modalities`` becomes ``DicomModalities``, so the same fixture serves the DICOMweb interop
tests and, later, DIMSE query/retrieve against "the PACS".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from peers import free_port, in_ci, require_tool

PLUGIN_DIRS = [Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins")]
SHIM_SOURCE = Path(__file__).resolve().parent.parent / "gateway" / "sandbox" / "loopback_bind.c"


def dicomweb_plugin() -> Path:
    for d in PLUGIN_DIRS:
        p = d / "libOrthancDicomWeb.so"
        if p.exists():
            return p
    msg = "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


class Orthanc:
    """One private Orthanc process. Use :meth:`start` / :meth:`stop` (or the fixture)."""

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        dicomweb_servers: dict[str, str] | None = None,
        modalities: dict[str, tuple[str, str, int]] | None = None,
    ) -> None:
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.dicomweb_servers = dicomweb_servers or {}
        self.modalities = modalities or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "orthanc.log"
        self.config_path = workdir / "orthanc.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        storage = str(self.workdir / "db")
        return {
            "Name": f"test-orthanc-{self.http_port}",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "StorageCompression": False,
            "Plugins": [str(dicomweb_plugin())],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "HttpDescribeErrors": True,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "OrthancPeers": {},
            "SaveJobs": False,
            "StorageAccessOnFind": "Always",
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Ssl": False,
                "Servers": {name: [url] for name, url in self.dicomweb_servers.items()},
            },
        }

    def _shim(self) -> str | None:
        cc = shutil.which("cc")
        if cc is None:
            msg = "cc is needed to keep the test Orthanc on loopback (apt-get install gcc)"
            if in_ci():
                pytest.fail(msg)
            pytest.skip(msg)
        so = self.workdir / "loopback_bind.so"
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(so), str(SHIM_SOURCE), "-ldl"],
                       check=True, capture_output=True, timeout=120)
        return str(so)

    def start(self, timeout: float = 60) -> Orthanc:
        exe = require_tool("Orthanc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        env["LD_PRELOAD"] = self._shim() or ""
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open by the child
        self.proc = subprocess.Popen([exe, str(self.config_path)], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1) as http:  # one client (and TLS context) for the poll
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"Orthanc exited at start-up:\n{self.log()}")
                try:
                    if http.get(f"{self.url}/system").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def listening_addresses(self) -> set[str]:
        """Local addresses of the TCP sockets Orthanc listens on (from /proc/net/tcp*)."""
        assert self.proc is not None
        inodes = set()
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        found = set()
        for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    found.add(cols[1][:width] + ":" + str(int(cols[1].split(":")[1], 16)))
        return found

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", timeout=kw.pop("timeout", 120), **kw)

    def upload(self, part10: bytes) -> str:
        """Store a Part 10 file through Orthanc's REST API; return its Orthanc instance id."""
        r = self.post("/instances", content=part10)
        r.raise_for_status()
        return r.json()["ID"]

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
