"""Real DICOM peers for tests: dcmtk tools and the checks around them.

A test that needs a peer calls :func:`require_tool`; when the tool is missing it fails under
CI (``CI=true``: .ci/run installs every peer, so a missing one is a broken set-up) and skips
otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (apt-get install dcmtk orthanc orthanc-dicomweb dicom3tools)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


#: Ports handed out by :func:`free_port`: below Linux's ephemeral range (32768-60999), so that
#: no outgoing connection takes one between free_port() and the child's bind, and split in one
#: block per pytest-xdist worker (gw0, gw1, ...), so that two workers never hand out the same.
PORT_BASE, PORT_BLOCK, PORT_BLOCKS = 20000, 1500, 8


def _port_candidates() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) % PORT_BLOCKS if worker[2:].isdigit() else 0
    first = PORT_BASE + index * PORT_BLOCK
    # A random start keeps two test runs of the same machine (same worker names) apart.
    start = random.randrange(PORT_BLOCK)
    while True:
        for i in range(PORT_BLOCK):
            yield first + (start + i) % PORT_BLOCK


_ports = _port_candidates()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A loopback TCP port nobody listens on, not handed out before by this process (until its
    block wraps round)."""
    with _ports_lock:
        for _ in range(PORT_BLOCK):
            port = next(_ports)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))  # no SO_REUSEADDR: TIME_WAIT ports are passed over
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port in this worker's block of {PORT_BLOCK}")


def storescu_profile(files: list[Path], path: Path) -> None:
    """A dcmtk association profile ('Test') proposing each file's SOP class with its own
    transfer syntax, so that compressed files are sent as stored (never converted)."""
    pairs: dict[str, set[str]] = {}
    for f in files:
        meta = dcmread(f, stop_before_pixels=True).file_meta
        pairs.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(str(meta.TransferSyntaxUID))
    ts_sets: list[tuple[str, ...]] = []
    contexts: list[tuple[str, int]] = []
    for sop, tss in sorted(pairs.items()):
        for ts in sorted(tss):
            key = (ts,)
            if key not in ts_sets:
                ts_sets.append(key)
            contexts.append((sop, ts_sets.index(key)))
    lines = ["[[TransferSyntaxes]]"]
    for i, tss in enumerate(ts_sets):
        lines.append(f"[TS{i}]")
        lines += [f"TransferSyntax{k + 1} = {ts}" for k, ts in enumerate(tss)]
    lines += ["", "[[PresentationContexts]]", "[PC]"]
    lines += [f"PresentationContext{k + 1} = {sop}\\TS{i}" for k, (sop, i) in enumerate(contexts)]
    lines += ["", "[[Profiles]]", "[Test]", "PresentationContexts = PC", ""]
    path.write_text("\n".join(lines))


def storescu(
    files: list[Path],
    port: int,
    aec: str = "DRIMBOX",
    aet: str = "STORESCU",
    workdir: Path | None = None,
    extra: list[str] | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with dcmtk storescu in one association, as stored."""
    exe = require_tool("storescu")
    workdir = workdir or files[0].parent
    profile = workdir / f"storescu-{os.getpid()}-{id(files)}.cfg"
    storescu_profile(files, profile)
    cmd = [exe, "-xf", str(profile), "Test", "-aet", aet, "-aec", aec, "-to", "30", "-ts", "60",
           *(extra or []), "127.0.0.1", str(port), *map(str, files)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"storescu failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
