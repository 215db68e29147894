"""Odd but readable DICOM files through every route: never a 5xx.

Every file of the DICOM test data that ships inside the installed packages (pydicom's
``data/test_files``, DICOMDIR trees included, and pynetdicom's ``tests/dicom_files``) goes
through STOW-RS into one gateway, as is: missing Type 1 image attributes, 1-bit and 12-bit
data, YBR (native and JPEG), palette colour, multi-frame with functional groups, signed data,
big endian, deflated, JPEG / JPEG-LS / JPEG 2000 / RLE, non-DICOM files. Then each stored
instance through every retrieve route: WADO-RS instance (as stored and transcoded to Explicit
VR Little Endian), study / series / instance metadata, frame 1 (as stored and decoded),
rendered (instance and frame), thumbnail (instance, series, study) and every BulkDataURI its
metadata holds.

What must hold: no 5xx anywhere; a 4xx names its problem; a refused file is refused with a
STOW 409 and a precise Failure Reason (PS3.18 10.5.3, the C-STORE status of the same
rejection), never a processing failure. The same files, those whose transfer syntax a
storescu can propose, go through C-STORE too: no 0x0110 / 0xA7xx answer.

Files are sent one at a time, and each stored instance is read back through every route
before the next file is sent: several of pydicom's files share their SOP Instance UID (the
same MR slice in every transfer syntax), and ``duplicate_policy = replace`` swaps them.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import Gateway, module_gateway

STUDIES = "/dicom-web/studies"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_ELE = 'multipart/related; type="application/dicom"'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
OCTETS = 'multipart/related; type="application/octet-stream"'
FRAME_AS_STORED = "multipart/related; type=*/*; transfer-syntax=*"
# A 4xx whose body says nothing more than its status phrase names nothing.
_BARE = re.compile(r'^\{"detail":"(Not Found|Bad Request|Not Acceptable|Unprocessable Entity)"\}$')
# Failure Reasons a refusal may carry (gateway.ingest.dimse.STATUS_FOR_REJECTION): anything
# but a processing failure (0x0110) or out of resources (0xA7xx).
_PRECISE_REFUSALS = {0xC000, 0xC001, 0xC002, 0xC003, 0xA900, 0xC004, 0xC005, 0xC006, 0x0111}


def _package_dir(module: str) -> Path | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return Path(mod.__file__).parent


def odd_files() -> list[Path]:
    """Every file of the packaged DICOM test data (non-DICOM neighbours included: a README,
    JSON, a gzip must be refused as cleanly as a broken dataset)."""
    roots = [(_package_dir("pydicom"), "data/test_files"),
             (_package_dir("pynetdicom"), "tests/dicom_files")]
    out = []
    for pkg, sub in roots:
        if pkg is not None and (pkg / sub).is_dir():
            out += sorted(p for p in (pkg / sub).rglob("*")
                          if p.is_file() and p.suffix not in (".py", ".pyc"))
    return out


@dataclass
class Tally:
    stored: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    routes: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    server_errors: list[str] = field(default_factory=list)
    vague: list[str] = field(default_factory=list)
    imprecise_refusals: list[str] = field(default_factory=list)
    dimse: Counter = field(default_factory=Counter)
    dimse_failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.stored)} stored, {len(self.refused)} refused "
                 f"({', '.join(f'0x{s:04X}' for s in sorted(set(self.refused.values())))})"]
        for route, c in sorted(self.routes.items()):
            lines.append(f"  {route:<22} " + " ".join(f"{k}:{v}" for k, v in sorted(c.items())))
        if self.dimse:
            lines.append("  C-STORE " + " ".join(f"{k}:{v}" for k, v in sorted(self.dimse.items())))
        return "\n".join(lines)


def _multipart(body: bytes) -> tuple[bytes, str]:
    boundary = f"odd-{uuid.uuid4().hex}"
    data = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + body
            + f"\r\n--{boundary}--\r\n".encode())
    return data, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _bulk_uris(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if "BulkDataURI" in node:
            yield node["BulkDataURI"]
        for v in node.values():
            yield from _bulk_uris(v)
    elif isinstance(node, list):
        for v in node:
            yield from _bulk_uris(v)


class Runner:
    def __init__(self, gw: Gateway, tally: Tally) -> None:
        self.gw, self.tally = gw, tally
        self.http = gw.http

    def check(self, route: str, what: str, r: httpx.Response) -> httpx.Response:
        body = r.content  # streamed multipart bodies are read whole here
        kind = f"{r.status_code // 100}xx"
        if os.environ.get("ODD_FILES_TRACE"):
            with open(os.environ["ODD_FILES_TRACE"], "a") as f:
                f.write(f"{r.status_code} {route} | {what} | {body[:160]!r}\n")
        self.tally.routes[route][kind if r.status_code != 406 else "406"] += 1
        if r.status_code >= 500:
            self.tally.server_errors.append(f"{route} {what}: {r.status_code} {body[:300]!r}")
        elif 400 <= r.status_code < 500 and (not body or _BARE.match(body.decode(errors="replace"))):
            self.tally.vague.append(f"{route} {what}: {r.status_code} {body[:200]!r}")
        return r

    def get(self, route: str, what: str, url: str, accept: str | None = None,
            **params: str) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        try:
            r = self.http.get(url, headers=headers, params=params or None)
        except httpx.TransportError as exc:  # a stream cut after the status line, a reset
            self.tally.routes[route]["cut"] += 1
            if os.environ.get("ODD_FILES_TRACE"):
                with open(os.environ["ODD_FILES_TRACE"], "a") as f:
                    f.write(f"599 {route} | {what} | {exc}\n")
            self.tally.server_errors.append(f"{route} {what}: {type(exc).__name__} ({exc})")
            return httpx.Response(599)
        return self.check(route, what, r)

    def stow(self, path: Path) -> list[tuple[str, str, str]]:
        body, ctype = _multipart(path.read_bytes())
        r = self.http.post(STUDIES, content=body, timeout=120,
                           headers={"Content-Type": ctype, "Accept": "application/dicom+json"})
        name = path.name
        self.check("STOW", name, r)
        if r.status_code == 409:
            reasons = [i["00081197"]["Value"][0] for i in r.json()["00081198"]["Value"]]
            self.tally.refused[name] = reasons[0]
            if not set(reasons) <= _PRECISE_REFUSALS:
                self.tally.imprecise_refusals.append(f"{name}: {reasons}")
            return []
        if r.status_code != 200:
            return []
        out = []
        for item in r.json()["00081199"]["Value"]:
            url = item["00081190"]["Value"][0]
            m = re.search(r"/studies/([^/]+)/series/([^/]+)/instances/([^/]+)$", url)
            assert m, url
            out.append(m.groups())
        self.tally.stored.append(name)
        return out

    def retrieve(self, name: str, study: str, series: str, sop: str) -> None:
        st, se = f"{STUDIES}/{study}", f"{STUDIES}/{study}/series/{series}"
        inst = f"{se}/instances/{sop}"
        what = name
        self.get("instance as stored", what, inst, DICOM_ANY)
        self.get("instance EVRLE", what, inst, f"{DICOM_ELE}; transfer-syntax={EXPLICIT_LE}")
        self.get("metadata study", what, f"{st}/metadata")
        self.get("metadata series", what, f"{se}/metadata")
        meta = self.get("metadata instance", what, f"{inst}/metadata")
        self.get("frame 1 as stored", what, f"{inst}/frames/1", FRAME_AS_STORED)
        self.get("frame 1 decoded", what, f"{inst}/frames/1", OCTETS)
        self.get("rendered", what, f"{inst}/rendered", "image/jpeg")
        self.get("frame 1 rendered", what, f"{inst}/frames/1/rendered", "image/png")
        self.get("thumbnail", what, f"{inst}/thumbnail", "image/jpeg")
        self.get("series thumbnail", what, f"{se}/thumbnail", "image/jpeg")
        self.get("study thumbnail", what, f"{st}/thumbnail", "image/jpeg")
        if meta.status_code == 200:
            for uri in sorted(set(_bulk_uris(meta.json()))):
                path = uri[uri.index("/dicom-web/"):]
                self.get("bulkdata", f"{what} {path.rsplit('/bulkdata/', 1)[-1]}", path,
                         "multipart/related; type=*/*; transfer-syntax=*")


@pytest.fixture(scope="module")
def tally(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tally]:
    tmp = tmp_path_factory.mktemp("odd-files")
    result = Tally()
    with module_gateway("sqlite", tmp) as gw:
        runner = Runner(gw, result)
        for path in odd_files():
            for study, series, sop in runner.stow(path):
                runner.retrieve(path.name, study, series, sop)
        yield result
    print("\n" + result.summary())


def test_packaged_test_data_is_there() -> None:
    files = odd_files()
    assert len(files) > 150, f"only {len(files)} packaged test files found"


def test_no_server_error_on_any_route(tally: Tally) -> None:
    assert not tally.server_errors, "\n".join(tally.server_errors) + "\n" + tally.summary()


def test_client_errors_name_their_problem(tally: Tally) -> None:
    assert not tally.vague, "\n".join(tally.vague) + "\n" + tally.summary()


def test_refusals_are_precise(tally: Tally) -> None:
    assert not tally.imprecise_refusals, "\n".join(tally.imprecise_refusals)
    assert tally.stored and tally.refused, tally.summary()


if os.environ.get("ODD_FILES_SUMMARY"):
    def test_summary(tally: Tally) -> None:
        print(tally.summary())
