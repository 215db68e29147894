#!/usr/bin/env python3
"""The consumer's pull of the DRIM-M reference series (R17, R20): Source A -> consumer B.

Sets up the world of tests/test_consumer_retrieve.py with real processes: a test PKI, a real
``drimbox dmp-sim`` (mutual TLS), a real ``drimbox psc-sim``, Source gateway A behind a
mutual-TLS front (``socat``, or the tests' Python relay with ``--front python``), consumer
gateway B (``roles = consumer``, PSC, the ANS whitelist naming 127.0.0.1). Then:

1. the 1,300-slice JPEG-LS series (``bench/drim_reference.py gen``, reused with ``--corpus``)
   is sent to A with storescu as stored; A's outbox publishes its KOS to dmp-sim;
2. each run (``--runs``, order alternating), on a fresh browser session of B (appel
   contextuel with the corpus's patient, PSC login through psc-sim's pages, httpx):

   * **pull through B**: ``GET /consumer/studies/{KOS}`` (ITI-18/43 of the KOS, then the
     retrieval starts), ``/status`` polled every 100 ms, and the series' first frame asked of
     B's consumer DICOMweb every 500 ms (and as soon as ``/status`` shows the first instance
     or the end) until it is served. Times from the page request: the
     page's answer, the first instance in B's cache (``received >= 1``), the first frame
     served to the viewer, the series complete;
   * **direct from A**: the same RetrieveURL (the KOS's), the same front, mutual TLS with the
     same client certificate, a PSC access token of the same practitioner and audience, the
     same ``KOS-SOPInstanceUID`` and ``Accept``, through the consumer's own client
     (``adapters.source.wado.SourceClient``), parts counted and dropped: time to the first
     part's start and end, time to the whole series;
   * VmRSS of A's and B's processes (main process and its children, the DICOM workers)
     sampled every 100 ms: before, peak, after; for B during the pull, RSS at each quarter of
     the series and the slope of a least-squares line of RSS against bytes received;
   * checked: every part / instance arrived, B's first frame is the source's pixels.

B's cache is purged between runs (``drimbox consumer cache purge``). Runs with the
gateway's .venv; loopback only; everything under ``--work`` (removed first).

    .venv/bin/python bench/consumer_pull.py --corpus /tmp/h10-drim-ref --runs 2 \\
        --out /tmp/consumer-pull.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path[:0] = [str(REPO), str(TESTS), str(REPO / "bench")]
os.environ["PYTHONPATH"] = str(REPO)  # the gateways, dmp-sim and psc-sim run this tree

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

CONSO_ID, CONSO_SECRET = "drimbox-conso", "conso-secret"
PRACTITIONER = "899999000002"
#: B's /status is polled this often (its page: every second); the first frame is asked of
#: B's consumer DICOMweb this often, and at once when /status shows the first instance or the
#: end (each refusal is an audited request: not polled faster).
STATUS_POLL, FRAME_POLL = 0.1, 0.5


# -- processes and their memory -------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (scan of /proc)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def vmrss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """VmRSS (KiB) of named process trees every ``period`` seconds: rows of
    (t, {name: (main, tree)})."""

    def __init__(self, roots: dict[str, int], period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.trees = {name: [pid, *children_of(pid)] for name, pid in roots.items()}
        self.period = period
        self.rows: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.halt = threading.Event()
        self.cpu: dict[str, dict] = {}

    def mark_cpu(self, label: str) -> None:
        """CPU seconds used so far by each tree's main process and by the whole tree."""
        self.cpu[label] = {name: (cpu_seconds(pids[0]), sum(cpu_seconds(p) for p in pids))
                           for name, pids in self.trees.items()}

    def cpu_used(self, name: str, start: str = "t0", end: str = "t1") -> dict:
        a, b = self.cpu[start][name], self.cpu[end][name]
        return {"main": b[0] - a[0], "tree": b[1] - a[1]}

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.perf_counter()
            row = {}
            for name, pids in self.trees.items():
                rss = [vmrss_kb(p) for p in pids]
                row[name] = (rss[0], sum(rss))
            self.rows.append((t, row))
            self.halt.wait(max(0.0, self.period - (time.perf_counter() - t)))

    def stop(self) -> None:
        self.halt.set()
        self.join()

    def series(self, name: str, which: int, t_from: float = -1e18, t_to: float = 1e18):
        return [(t, r[name][which]) for t, r in self.rows if t_from <= t <= t_to]


def mem_summary(sampler: Sampler, name: str, t0: float, t1: float) -> dict:
    """Before (median of the samples before t0), peak between t0 and t1, after (median of the
    samples after t1), for the main process and the whole tree, in MiB."""
    out = {}
    for which, label in ((0, "main"), (1, "tree")):
        before = [v for _, v in sampler.series(name, which, t_to=t0)]
        during = [v for _, v in sampler.series(name, which, t0, t1)]
        after = [v for _, v in sampler.series(name, which, t_from=t1)]
        if not during:
            continue
        out[label] = {"before": statistics.median(before or during[:1]) / 1024,
                      "min": min(during) / 1024, "peak": max(during) / 1024,
                      "after": statistics.median(after or during[-1:]) / 1024,
                      "samples": len(during)}
    return out


# -- the world -------------------------------------------------------------------------------------


def whitelist(path: Path, host: str) -> Path:
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListeBlancheDRIM-M xmlns="https://github.com/ansforge/DRIM-M_DATA" '
        'versionFormat="1.0.0"><DateDeGeneration>2026-12-01T00:00:00Z</DateDeGeneration>'
        f"<ListeDomaines><Domaine><Identifiant>1</Identifiant><db>{host}</db><vi></vi>"
        "<Denomination>SOURCE DE BENCH</Denomination><DNCertificatOperateur>CN=localhost"
        "</DNCertificatOperateur><SupportContact>bench@example.org</SupportContact>"
        "<DateMAJ>2026-12-01T00:00:00Z</DateMAJ></Domaine></ListeDomaines>"
        "</ListeBlancheDRIM-M>\n", encoding="utf-8")
    return path


class Front:
    """The mutual-TLS front of A: ``socat`` (one process per connection, OpenSSL) or the tests'
    Python relay (tests/source_front.py) in a process of its own."""

    def __init__(self, kind: str, upstream: int, pki, log: Path) -> None:  # noqa: ANN001
        from peers import free_port

        self.kind = kind
        if kind == "socat":
            self.port = free_port()
            cmd = ["socat", "-b", "262144",
                   f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,"
                   f"cert={pki.server_cert},key={pki.server_key},cafile={pki.ca_cert},verify=1,"
                   "openssl-min-proto-version=TLS1.2",
                   f"TCP:127.0.0.1:{upstream},nodelay"]
            self.proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        else:
            code = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
                    "from pathlib import Path; from source_front import SourceFront;"
                    "f = SourceFront(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]),"
                    " Path(sys.argv[5])); print(f.port, flush=True); time.sleep(1e9)")
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, str(TESTS), str(upstream), str(pki.server_cert),
                 str(pki.server_key), str(pki.ca_cert)],
                stdout=subprocess.PIPE, stderr=log.open("ab"))
            self.port = int(self.proc.stdout.readline())
        import socket

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the {kind} front did not start")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class World:
    def __init__(self, args) -> None:  # noqa: ANN001
        work = Path(args.work)
        self.work = work
        self.procs: list = []
        self.front = None
        self.a = self.b = None
        try:
            self._start(args, work)
        except BaseException:
            self.close()
            raise

    def _start(self, args, work: Path) -> None:  # noqa: ANN001
        from access_support import gateway_psc_env, start_psc_sim
        from conftest import Gateway
        from dmp_pki import make_pki
        from dmp_support import start_sim
        from test_publication_e2e import dmp_env

        self.pki = make_pki(work / "pki")
        self.sim = start_sim(work, self.pki)
        self.procs.append(self.sim.proc)
        b_db = args.b_database_url or f"sqlite:///{work / 'b.sqlite'}"
        self.b = Gateway(work / "b-data", b_db)
        self.psc = start_psc_sim(
            f"{CONSO_ID}:{CONSO_SECRET}:{self.b.url}/auth/callback,{self.b.url}/auth/logged-out",
            test_tokens=True)  # the direct retrieve's token (/test/tokens)
        self.procs.append(self.psc.proc)
        self.a = Gateway(work / "a-data", f"sqlite:///{work / 'a.sqlite'}", **dmp_env(self.sim),
                         **gateway_psc_env(self.psc, "introspection",
                                           DRIMBOX_PSC_AUDIENCES=f'["{CONSO_ID}"]'))
        self.a.log_path = work / "a-gateway.log"
        self.b.log_path = work / "b-gateway.log"
        workers = str(args.dicom_workers)
        self.front = Front(args.front, self.a.http_port, self.pki, work / "front.log")
        self.a.extra_env.update(DRIMBOX_PUBLIC_URL=self.front.url, DRIMBOX_DICOM_WORKERS=workers,
                                DRIMBOX_LOG_LEVEL="WARNING")
        pki = self.pki
        self.b.extra_env.update(dmp_env(self.sim), **{
            "DRIMBOX_ROLES": "consumer", "DRIMBOX_AUTO_PUBLISH": "false",
            "DRIMBOX_DICOMWEB_AUTH": "psc", "DRIMBOX_PSC_ISSUER": self.psc.issuer,
            "DRIMBOX_PSC_CLIENT_ID": CONSO_ID, "DRIMBOX_PSC_CLIENT_SECRET": CONSO_SECRET,
            "DRIMBOX_WHITELIST_SOURCE": str(whitelist(work / "whitelist.xml", "127.0.0.1")),
            "DRIMBOX_WHITELIST_INSECURE_ALLOW_UNSIGNED": "true",
            "DRIMBOX_CONSUMER_SOURCE_CLIENT_CERT": str(pki.client_cert),
            "DRIMBOX_CONSUMER_SOURCE_CLIENT_KEY": str(pki.client_key),
            "DRIMBOX_CONSUMER_SOURCE_CA_BUNDLE": str(pki.ca_cert),
            "DRIMBOX_DICOM_WORKERS": workers, "DRIMBOX_LOG_LEVEL": "WARNING"})
        self.a.start(timeout=180)  # a loaded machine starts a gateway slowly
        self.b.start(timeout=180)

    def close(self) -> None:
        for gw in (self.b, self.a):
            if gw is not None and gw.proc is not None:
                gw.stop()
        if self.front is not None:
            self.front.close()
        for p in self.procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


# -- the consumer's browser -----------------------------------------------------------------------


def appel_contextuel(first: pydicom.Dataset) -> dict[str, str]:
    """The LPS's POST for the corpus's patient (INS, names, birth date, sex from its header)."""
    family, _, given = str(first.PatientName).partition("^")
    oid = str(first.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID)
    d = str(first.PatientBirthDate)
    return {"Patient.identifier.value": str(first.PatientID),
            "Patient.identifier.system": f"urn:oid:{oid}",
            "Patient.name.family": family, "Patient.name.given": given.replace("^", " "),
            "Patient.gender": {"M": "male", "F": "female"}.get(str(first.PatientSex), "other"),
            "Patient.birthDate": f"{d[:4]}-{d[4:6]}-{d[6:8]}", "Address.district": "51215",
            "InformationEtConsentement": "true", "PatientID": "IPP-BENCH-1",
            "PatientIDIssuer": "CH TEST&1.2.250.1.999.1.1&ISO"}


def browser(b_url: str, context: dict[str, str]) -> httpx.Client:
    """The clinician's browser on B: appel contextuel, PSC login (psc-sim's pages)."""
    from test_viewer_login import psc_answer

    c = httpx.Client(timeout=120)
    r = c.post(f"{b_url}/consumer/context", data=context)
    assert r.status_code == 303, r.text
    r = c.get(f"{b_url}/consumer")
    assert r.status_code == 302 and "/auth/login" in r.headers["location"], r.text
    r = c.get(r.headers["location"])
    assert r.status_code == 302, r.text
    r = c.get(psc_answer(c, r.headers["location"], PRACTITIONER))
    assert r.status_code == 303, r.text
    page = c.get(f"{b_url}/consumer")
    assert page.status_code == 200 and "identity-banner" in page.text, page.text[:500]
    return c


# -- the measures ------------------------------------------------------------------------------------


def pull_through_b(w: World, ref: SimpleNamespace, context: dict, sampler_roots: dict,
                   py_spy: str | None = None, label: str = "") -> dict:
    b = w.b.url
    client = browser(b, context)
    spy = None
    if py_spy:  # B's main process (the retrieval threads and uvicorn) sampled during the pull
        spy = subprocess.Popen([py_spy, "record", "--pid", str(w.b.proc.pid), "--rate", "200",
                                "--format", "raw", "--threads", "--nonblocking",
                                "-o", str(w.work / f"b-pull{label}.pyspy.txt")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    frame_url = (f"{b}/consumer/dicom-web/studies/{ref.study}/series/{ref.series}/instances/"
                 f"{ref.first_sop}/frames/1")
    sampler = Sampler(sampler_roots)
    sampler.start()
    time.sleep(1.0)
    got: dict = {"timeline": []}
    done, kick = threading.Event(), threading.Event()

    def frames() -> None:  # the viewer asking for the first image
        with httpx.Client(timeout=60, cookies=client.cookies) as viewer:
            while not done.is_set():
                t = time.perf_counter()
                r = viewer.get(frame_url)
                if r.status_code == 200:
                    got["first_frame"] = time.perf_counter()
                    got["first_frame_request_s"] = time.perf_counter() - t
                    got["first_frame_bytes"] = r.content
                    got["first_frame_type"] = r.headers.get("content-type", "")
                    return
                kick.wait(FRAME_POLL)
                kick.clear()

    sampler.mark_cpu("t0")
    t0 = time.perf_counter()
    page = client.get(f"{b}/consumer/studies/{ref.kos}")
    got["page"] = time.perf_counter()
    assert page.status_code == 200, page.text[:500]
    viewer = threading.Thread(target=frames, daemon=True)
    viewer.start()
    status: dict = {}
    while True:
        r = client.get(f"{b}/consumer/studies/{ref.kos}/status")
        now = time.perf_counter()
        status = r.json()
        (s,) = status["series"]
        got["timeline"].append((now - t0, s["received"], s["bytes"]))
        if s["received"] >= 1 and "first_instance" not in got:
            got["first_instance"] = now
            kick.set()
        if status["state"] != "retrieving":
            got["complete"] = now
            sampler.mark_cpu("t1")
            kick.set()
            break
        time.sleep(STATUS_POLL)
    viewer.join(60)
    done.set()
    if spy is not None:
        spy.send_signal(2)
        spy.wait(30)
    time.sleep(1.0)
    sampler.stop()
    client.close()
    t1 = got["complete"]
    rel = {k: got[k] - t0 for k in ("page", "first_instance", "first_frame", "complete")
           if k in got}
    out = {"state": status["state"], "received": s["received"], "expected": s["expected"],
           "bytes": s["bytes"], "attempts": s["attempts"], "message": s["message"],
           "seconds": rel, "first_frame_request_s": got.get("first_frame_request_s"),
           "mb_per_s": s["bytes"] / 1e6 / rel["complete"],
           "mem_b": mem_summary(sampler, "B", t0, t1), "mem_a": mem_summary(sampler, "A", t0, t1),
           "cpu_s": {"A": sampler.cpu_used("A"), "B": sampler.cpu_used("B")}}
    if "first_frame_bytes" in got:
        out["first_frame_pixels_equal"] = frame_equals(got["first_frame_bytes"],
                                                       got["first_frame_type"], ref)
    out["b_rss_by_progress"] = rss_by_progress(sampler, got["timeline"], t0, ref.bytes)
    return out


def frame_equals(body: bytes, ctype: str, ref: SimpleNamespace) -> bool:
    """The first frame B served (multipart, JPEG-LS as stored) decodes to the source's pixels."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    boundary = ctype.split("boundary=", 1)[1].split(";")[0].strip('"').encode()
    part = body.split(b"--" + boundary)[1]
    data = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    ds = pydicom.dcmread(ref.first_path)
    ds.PixelData = encapsulate([data])
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return bool(np.array_equal(ds.pixel_array, ref.first_pixels))


def rss_by_progress(sampler: Sampler, timeline: list, t0: float, total: int) -> dict:
    """B's main-process RSS (MiB) when 0, 25, 50, 75 and 100 % of the series' bytes had
    arrived, and the least-squares slope of RSS against bytes received (MiB per 100 MB)."""
    pts = [(t0 + t, nbytes) for t, _, nbytes in timeline]
    if len(pts) < 2:
        return {}
    samples = sampler.series("B", 0, pts[0][0], pts[-1][0])
    xs, ys = [], []
    for t, kb in samples:  # bytes received at t, linear between polls
        nb = np.interp(t, [p[0] for p in pts], [p[1] for p in pts])
        xs.append(nb)
        ys.append(kb / 1024)
    out = {}
    for q in (0, 25, 50, 75, 100):
        target = total * q / 100
        i = min(range(len(xs)), key=lambda k: abs(xs[k] - target)) if xs else None
        if i is not None:
            out[f"{q}%"] = ys[i]
    if len(xs) > 2 and max(xs) > min(xs):
        slope = np.polyfit(np.array(xs) / 1e8, np.array(ys), 1)[0]
        out["slope_mib_per_100mb"] = float(slope)
    return out


def direct_from_a(w: World, ref: SimpleNamespace, sampler_roots: dict) -> dict:
    """The same series straight from A through the consumer's WADO-RS client."""
    from adapters.source.wado import SourceClient, SourceTls

    token = w.psc.token(subject=PRACTITIONER, client_id=CONSO_ID)
    client = SourceClient(SourceTls(w.pki.ca_cert, w.pki.client_cert, w.pki.client_key), 120)
    got: dict = {"parts": 0, "bytes": 0}

    def on_part(headers: dict, chunks) -> None:  # noqa: ANN001
        first = got["parts"] == 0
        if first:
            got["first_start"] = time.perf_counter()
        buf = bytearray() if first else None
        for c in chunks:
            got["bytes"] += len(c)
            if buf is not None:
                buf += c
        got["parts"] += 1
        if first:
            got["first_end"] = time.perf_counter()
            got["first_part"] = bytes(buf)

    sampler = Sampler(sampler_roots)
    sampler.start()
    time.sleep(1.0)
    sampler.mark_cpu("t0")
    c0 = time.process_time()
    t0 = time.perf_counter()
    client.retrieve(ref.retrieve_url, token, ref.kos, on_part)
    t1 = time.perf_counter()
    client_cpu = time.process_time() - c0
    sampler.mark_cpu("t1")
    time.sleep(1.0)
    sampler.stop()
    client.close()
    ds = pydicom.dcmread(io.BytesIO(got["first_part"]))
    return {"parts": got["parts"], "bytes": got["bytes"],
            "seconds": {"first_part_start": got["first_start"] - t0,
                        "first_part_end": got["first_end"] - t0, "complete": t1 - t0},
            "mb_per_s": got["bytes"] / 1e6 / (t1 - t0),
            "first_part_ts": str(ds.file_meta.TransferSyntaxUID),
            "first_part_pixels_equal": bool(np.array_equal(ds.pixel_array, ref.first_pixels)),
            "mem_a": mem_summary(sampler, "A", t0, t1), "mem_b": mem_summary(sampler, "B", t0, t1),
            "cpu_s": {"A": sampler.cpu_used("A"), "client": client_cpu}}


# -- main ----------------------------------------------------------------------------------------


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                  if ln.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": model,
            "mem_total_mib": int(next(ln.split()[1] for ln in open("/proc/meminfo")
                                      if ln.startswith("MemTotal"))) // 1024}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ensure_corpus(d: Path, n: int) -> dict:
    """The series, generated when absent. A corpus written before ``gen`` added the accession
    number's issuer gets it here, in place (without it A cannot publish the KOS)."""
    import drim_reference

    if not (d / "series.json").exists():
        drim_reference.gen(SimpleNamespace(out=str(d), n=n))
    if "IssuerOfAccessionNumberSequence" not in pydicom.dcmread(d / "IM00001.dcm",
                                                                stop_before_pixels=True):
        print(f"{d}: adding the accession number's issuer to every file", flush=True)
        for path in sorted(d.glob("IM*.dcm")):
            ds = pydicom.dcmread(path)
            ds.IssuerOfAccessionNumberSequence = [drim_reference.accession_issuer()]
            ds.save_as(path, enforce_file_format=True)
        info = json.loads((d / "series.json").read_text())
        info["bytes"] = sum(p.stat().st_size for p in d.glob("IM*.dcm"))
        (d / "series.json").write_text(json.dumps(info, indent=1))
    return json.loads((d / "series.json").read_text())


def wait_published(view, study: str, timeout: float = 900):  # noqa: ANN001, ANN201
    """A's outbox row of the study once done; fails at once when A refuses to publish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = view.rows(study)
        done = [r for r in rows if r.state == "done"]
        if done:
            return done[0]
        bad = [r for r in rows if r.state == "refused"]
        if bad:
            raise RuntimeError(f"A refused to publish: {bad[0].last_error}")
        with view.index.read() as s:
            from sqlalchemy import select

            from gateway.index.models import Study

            st = s.scalar(select(Study).where(Study.study_instance_uid == study))
        if st is not None and st.stable_at is not None and not rows:
            from gateway.index.models import PublicationEvent

            with view.index.read() as s:
                ev = s.scalars(select(PublicationEvent)
                               .where(PublicationEvent.study_instance_uid == study)).all()
            if any(e.event == "not_publishable" for e in ev):
                raise RuntimeError("A will not publish the study: "
                                   + "; ".join(e.detail for e in ev))
        time.sleep(0.2)
    raise RuntimeError(f"not published within {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/tmp/drim-ref",
                    help="the series (bench/drim_reference.py gen); generated when absent")
    ap.add_argument("--n", type=int, default=1300, help="slices, when generating")
    ap.add_argument("--work", default="/tmp/consumer-pull", help="scratch (emptied first)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--front", choices=("socat", "python"), default="socat")
    ap.add_argument("--dicom-workers", type=int, default=2,
                    help="dicom_workers of A and B (2: the product's default)")
    ap.add_argument("--b-database-url", help="B's index (default SQLite under --work)")
    ap.add_argument("--src", help="source tree A and B run (e.g. a `git archive` of another "
                                  "commit; default: this checkout)")
    ap.add_argument("--py-spy", metavar="PATH",
                    help="py-spy binary: B's main process sampled during each pull "
                         "(--work/b-pullN.pyspy.txt, collapsed stacks)")
    ap.add_argument("--out", help="JSON of every figure")
    ap.add_argument("--keep", action="store_true", help="leave the world up (Ctrl-C ends it)")
    args = ap.parse_args()

    if args.src:
        os.environ["PYTHONPATH"] = str(Path(args.src).resolve())
    corpus = Path(args.corpus)
    info = ensure_corpus(corpus, args.n)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    first_path = corpus / "IM00001.dcm"
    first = pydicom.dcmread(first_path)
    report: dict = {"command": " ".join(sys.argv), "machine": machine(), "series": info,
                    "src": os.environ["PYTHONPATH"],
                    "front": args.front, "load_start": loadavg(), "runs": []}
    print(f"machine: {report['machine']}  load {report['load_start']}", flush=True)
    w = World(args)
    try:
        import drim_reference
        from test_consumer_flow import retrieve_urls
        from test_publication_e2e import IndexView

        t = time.perf_counter()
        drim_reference.load(SimpleNamespace(dir=str(corpus), scp=f"127.0.0.1:{w.a.dicom_port}",
                                            aet=w.a.ae_title))
        view = IndexView(w.a.database_url)
        try:
            row = wait_published(view, info["StudyInstanceUID"])
            kos = pydicom.dcmread(io.BytesIO(view.kos_bytes(row.id)))
        finally:
            view.close()
        print(f"stored on A and published (KOS {row.kos_uid}) in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        ref = SimpleNamespace(
            study=info["StudyInstanceUID"], series=info["SeriesInstanceUID"], kos=row.kos_uid,
            retrieve_url=retrieve_urls(kos)[info["SeriesInstanceUID"]], n=info["n"],
            bytes=info["bytes"], first_sop=str(first.SOPInstanceUID), first_path=first_path,
            first_pixels=first.pixel_array)
        roots = {"A": w.a.proc.pid, "B": w.b.proc.pid}
        context = appel_contextuel(first)
        from test_manifest_e2e import cli

        for i in range(args.runs):
            run: dict = {"run": i + 1, "load_before": loadavg()}
            order = ("direct", "pull") if i % 2 == 0 else ("pull", "direct")
            for what in order:
                if what == "direct":
                    run["direct"] = d = direct_from_a(w, ref, roots)
                    print(f"run {i + 1} direct from A: first part "
                          f"{d['seconds']['first_part_end'] * 1000:.0f} ms, whole "
                          f"{d['seconds']['complete']:.2f} s ({d['mb_per_s']:.0f} MB/s), parts "
                          f"{d['parts']}/{ref.n}, pixels equal {d['first_part_pixels_equal']}; "
                          f"CPU s A {d['cpu_s']['A']['tree']:.2f} client "
                          f"{d['cpu_s']['client']:.2f}; A RSS {fmt_mem(d['mem_a'])}", flush=True)
                else:
                    run["pull"] = p = pull_through_b(w, ref, context, roots, args.py_spy,
                                                     str(i + 1))
                    s = p["seconds"]
                    print(f"run {i + 1} pull through B: {p['state']} {p['received']}/"
                          f"{p['expected']}, page {s['page'] * 1000:.0f} ms, first instance "
                          f"{s.get('first_instance', float('nan')) * 1000:.0f} ms, first frame "
                          f"served {s.get('first_frame', float('nan')):.2f} s, complete "
                          f"{s['complete']:.2f} s ({p['mb_per_s']:.0f} MB/s), pixels equal "
                          f"{p.get('first_frame_pixels_equal')}; CPU s A "
                          f"{p['cpu_s']['A']['tree']:.2f} B {p['cpu_s']['B']['main']:.2f}; "
                          f"B RSS {fmt_mem(p['mem_b'])}; "
                          f"by progress {fmt_progress(p['b_rss_by_progress'])}; "
                          f"A RSS {fmt_mem(p['mem_a'])}", flush=True)
                    purge = cli(w.b, "consumer", "cache", "purge")
                    assert purge.returncode == 0, purge.stderr
            run["load_after"] = loadavg()
            report["runs"].append(run)
            print(f"run {i + 1}: load {run['load_before']} -> {run['load_after']}", flush=True)
        if args.keep:
            print(f"A {w.a.url} (front {w.front.url}), B {w.b.url}; Ctrl-C ends", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        w.close()
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))


def fmt_mem(m: dict) -> str:
    return "; ".join(f"{k} {v['before']:.0f} -> peak {v['peak']:.0f} -> {v['after']:.0f} MiB"
                     for k, v in m.items())


def fmt_progress(p: dict) -> str:
    parts = [f"{k} {v:.0f}" for k, v in p.items() if k.endswith("%")]
    if "slope_mib_per_100mb" in p:
        parts.append(f"slope {p['slope_mib_per_100mb']:+.2f} MiB/100 MB")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
