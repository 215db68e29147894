"""``drimbox sandbox`` end to end, as a vendor uses it: started as a real subprocess on free
loopback ports, it prints "ready"; then, over real protocols only,

* flow A (publication): the sample study's KOS is in ``dmp-sim``, found by the patient's INS
  over its FHIR face with the sandbox's development PKI (mutual TLS);
* flow B (consumption): the appel contextuel POSTed to the Consumer, the clinician's PSC login
  at ``psc-sim`` (the token stays in the Consumer's session), the prior listed from the DMP,
  retrieved from the Source over mutual TLS (WADO-RS, ``KOS-SOPInstanceUID``), read back
  through the Consumer's DICOMweb (every instance the Source stores) and imported into the
  sandbox's Orthanc;
* SIGINT: the sandbox exits 0, every process it started is gone and every port is free.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from peers import require_tool
from test_dicomweb_access import sop_uids_of_multipart
from test_viewer_login import psc_answer

from gateway.sandbox import configs, sample
from gateway.sandbox.layout import HOST, SPAN, Layout

REPO = Path(__file__).resolve().parent.parent


def free_block() -> int:
    """A base port whose whole span is free (above the blocks tests/peers.py hands out)."""
    for _ in range(200):
        base = random.randrange(40000, 60000 - SPAN)
        if all(port_free(base + i) for i in range(SPAN)):
            return base
    raise RuntimeError("no free block of loopback ports")


def port_free(port: int, reuse: bool = False) -> bool:
    """Nothing listens on ``port`` (with ``reuse``, connections of a stopped server lingering
    in TIME_WAIT do not count: a new server binds with SO_REUSEADDR, as ours do)."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Running:
    """The sandbox process and what it printed."""

    def __init__(self, base: int, root: Path) -> None:
        self.layout = Layout(base, root)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "sandbox", "--base-port", str(base),
             "--dir", str(root)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == "ready":
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float) -> None:
        self._ready.wait(timeout)
        assert "ready" in self.lines, "\n".join(self.lines[-40:])

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Running]:
    require_tool("Orthanc")  # the Consumer's PACS
    require_tool("cc")       # keeps Orthanc on loopback
    running = Running(free_block(), tmp_path / "sandbox")
    try:
        running.wait_ready(600)
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.send_signal(signal.SIGINT)
            try:
                running.proc.wait(60)
            except subprocess.TimeoutExpired:
                running.proc.kill()
                running.proc.wait(10)


def printed_kos(output: str) -> str:
    m = re.search(r"published: KOS ([0-9.]+)", output)
    assert m, output
    return m.group(1)


def test_sandbox_publishes_serves_a_consumer_and_stops_clean(sandbox: Running) -> None:
    lay, out = sandbox.layout, sandbox.output
    # What it prints: every URL a vendor points their software at, and the logins.
    for url in (f"{lay.source_url}/", f"{lay.source_url}/viewer", f"{lay.consumer_url}/",
                f"{lay.consumer_url}/consumer/context", f"{lay.consumer_url}/viewer",
                lay.psc_issuer, f"{lay.dmp_url}/registry", lay.orthanc_url):
        assert url in out, url
    assert configs.STAFF_PRACTITIONER in out and configs.CONSUMER_PRACTITIONER in out
    assert str(lay.pki.resolve()) in out
    kos_uid = printed_kos(out)
    ca = ssl.create_default_context(cafile=str(lay.pki / "ca.pem"))
    mutual = ssl.create_default_context(cafile=str(lay.pki / "ca.pem"))
    mutual.load_cert_chain(str(lay.pki / "client.pem"), str(lay.pki / "client.key"))

    # Flow A: the KOS is in the DMP, under the patient's INS (the FHIR face, mutual TLS).
    with httpx.Client(verify=mutual, timeout=30) as dmp:
        found = dmp.get(f"{lay.dmp_url}/fhir/DocumentReference", params={
            "patient.identifier": f"urn:oid:{sample.INS_OID}|{sample.INS}"})
    assert found.status_code == 200, found.text
    assert f"urn:oid:{kos_uid}" in found.text
    # The Source serves it to nobody anonymous (PSC), over TLS with the sandbox's CA.
    assert httpx.get(f"{lay.source_url}/dicom-web/studies", verify=ca).status_code == 401

    # Flow B: the LPS's appel contextuel, the PSC login, the prior, its retrieval.
    c = lay.consumer_url
    with httpx.Client(timeout=60) as browser:
        r = browser.post(f"{c}/consumer/context", data=sample.APPEL_CONTEXTUEL)
        assert r.status_code == 303, r.text
        r = browser.get(f"{c}/consumer")
        assert r.status_code == 302 and "/auth/login" in r.headers["location"]
        r = browser.get(r.headers["location"])
        assert r.status_code == 302 and r.headers["location"].startswith(lay.psc_url)
        r = browser.get(psc_answer(browser, r.headers["location"],
                                   configs.CONSUMER_PRACTITIONER))
        assert r.status_code == 303, r.text
        page = browser.get(f"{c}/consumer")
        assert page.status_code == 200 and "identity-banner" in page.text
        assert f"data-document='{kos_uid}'" in page.text, page.text[-2000:]
        assert browser.get(f"{c}/consumer/studies/{kos_uid}").status_code == 200
        state = "retrieving"
        for _ in range(600):
            state = browser.get(f"{c}/consumer/studies/{kos_uid}/status").json()["state"]
            if state != "retrieving":
                break
            time.sleep(0.2)
        assert state == "complete"
        got = browser.get(f"{c}/consumer/dicom-web/studies/{sample.STUDY_UID}",
                          headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert got.status_code == 200, got.text[:300]
        assert len(sop_uids_of_multipart(got)) == sample.INSTANCES

        # Into the Consumer's PACS (Orthanc) with the page's export button.
        page = browser.get(f"{c}/consumer/studies/{kos_uid}").text
        action = re.search(r"<form method=post action='([^']+)' class=export>", page)
        csrf = re.search(r"name=csrf value='([^']+)'", page)
        assert action and csrf, page[-1500:]
        done = browser.post(action.group(1), data={"csrf": csrf.group(1)})
        assert done.status_code == 200 and "data-outcome='complete'" in done.text, done.text
    assert len(httpx.get(f"{lay.orthanc_url}/instances").json()) == sample.INSTANCES

    # SIGINT: everything it started is gone, every port free.
    started = descendants(sandbox.proc.pid)
    assert len(started) >= 5  # dmp-sim, psc-sim, Orthanc, two gateways
    sandbox.proc.send_signal(signal.SIGINT)
    assert sandbox.proc.wait(120) == 0, sandbox.output[-2000:]
    assert sandbox.lines[-1] == "stopped"
    assert [pid for pid in started if alive(pid)] == []
    assert [p for p in lay.ports.values() if not port_free(p, reuse=True)] == []
