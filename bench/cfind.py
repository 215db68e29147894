#!/usr/bin/env python3
"""C-FIND at STUDY level (Study Root, PS3.4 C.6.2): the gateway against Orthanc in one run.

One seeded corpus (``--patients`` patients, ``--studies`` studies of 1-3 series of 1-3 small
CT/MR/CR/US instances, StudyDate spread over two years, PatientID with IssuerOfPatientID: the
French INS OID for most patients, a local issuer for one in five) is generated once, then
stored with dcmtk ``storescu`` into

* a private Orthanc (Debian's ``/usr/sbin/Orthanc``, its own configuration and storage under
  ``--work``, DICOM and REST on free loopback ports, kept on loopback by ``gateway/sandbox/loopback_bind.c``
  LD_PRELOAD'ed, ``TCP_NODELAY=1`` as in the other benchmarks, the bench's AE title declared in
  ``DicomModalities`` so that it may query), and
* a private gateway (``drimbox serve`` from a ``git archive`` of ``--ref``, SQLite in its data
  dir or ``--database-url`` PostgreSQL, product defaults otherwise: 2 DICOM workers; the bench's
  AE title in ``peers`` at 127.0.0.1, so ``query_retrieve_callers`` allows it).

Both are checked to hold every study and instance (a universal C-FIND, the sum of
NumberOfStudyRelatedInstances). Then, on one persistent pynetdicom association per server
(TCP_NODELAY on the client socket), C-FIND requests of each shape alternate between the two
servers request by request (A B, B A, A B ...), so that a change of load on the shared machine
hits both alike:

=============  ===========================================================================
``pid``        PatientID (single value)
``pid_issuer`` PatientID + IssuerOfPatientID
``pid_30d``    PatientID + StudyDate range of 30 days
``range_30d``  StudyDate range of 30 days
``range_365d`` StudyDate range of 365 days
=============  ===========================================================================

each returning StudyInstanceUID, StudyDate, PatientName, PatientID, ModalitiesInStudy,
NumberOfStudyRelatedInstances, AccessionNumber. The latency of one request is from the
C-FIND-RQ to the final response (all pending responses received and decoded by pynetdicom, the
same client work for both servers). Every request's answers must be the same on both servers
(studies, and per study date, name, modalities, instance count, accession): any difference
stops the benchmark. Per shape and round: p50 / p95 per server, their ratio (gateway /
Orthanc), the CPU seconds each server process (the gateway: with its workers) spent per
request, and the load average.

The cost of an association: pynetdicom associate + release, alternating; and dcmtk ``findscu``
(one process and one association per query, ``TCP_NODELAY=1``) for ``--findscu-rounds`` rounds
of each shape, its wall time per query.

    /work/main/.venv/bin/python bench/cfind.py --work /tmp/cfind-bench --out /tmp/cfind.json

``--keep`` leaves both servers running (PIDs printed, e.g. for py-spy); ``--src DIR`` runs the
gateway from another tree. Needs Orthanc, dcmtk, cc; PostgreSQL only with ``--database-url``
(its database is dropped and re-created; the name must start with ``h3bench``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND_MODEL  # type: ignore[attr-defined]

ROOT = Path(__file__).resolve().parents[1]
# The client formats each match for a log line by default: off, so that less of what is
# measured is the client's own work (the same for both servers).
_config.LOG_RESPONSE_IDENTIFIERS = _config.LOG_REQUEST_IDENTIFIERS = False
SCU_AET = "BENCHSCU"
INS_OID = "1.2.250.1.213.1.4.8"
LOCAL_ISSUER = "CHU_BENCH"
SOP = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
       "CR": "1.2.840.10008.5.1.4.1.1.1", "US": "1.2.840.10008.5.1.4.1.1.6.1"}
LAST = ["MARTIN", "BERNARD", "THOMAS", "PETIT", "ROBERT", "RICHARD", "DURAND", "DUBOIS",
        "MOREAU", "LAURENT", "SIMON", "MICHEL", "LEFÈVRE", "LEROY", "ROUX", "DAVID",
        "BERTRAND", "MOREL", "FOURNIER", "GIRARD", "BONNET", "DUPONT", "LAMBERT", "FONTAINE"]
FIRST = ["JEAN", "PIERRE", "MICHEL", "ANDRÉ", "FRANÇOIS", "HÉLÈNE", "MARIE", "CHLOÉ",
         "LÉA", "ZOÉ", "LOUISE", "CAMILLE", "THÉO", "HUGO", "LUC", "EMMA"]
RETURNED = ("StudyInstanceUID", "StudyDate", "PatientName", "PatientID", "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances", "AccessionNumber")
SHAPES = ("pid", "pid_issuer", "pid_30d", "range_30d", "range_365d")
WIDE = {"range_365d"}


# -- corpus ---------------------------------------------------------------------------------


def uid(seed: int, *parts: object) -> str:
    import hashlib
    h = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return "2.25." + str(int.from_bytes(h[:15], "big"))


def generate(out: Path, seed: int, n_patients: int, n_studies: int,
             date_from: dt.date, days: int) -> dict:
    """Small instances (16 x 16, 16 bits), written with pydicom: the index needs rows."""
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    patients = []
    for p in range(n_patients):
        sex = rng.choice("MF")
        nir = f"{1 if sex == 'M' else 2}{rng.randrange(30, 100):02d}{rng.randrange(1, 13):02d}" \
              f"{rng.randrange(1, 96):02d}{rng.randrange(1, 1000):03d}{p + 1:03d}"
        patients.append({
            "PatientID": nir + f"{97 - int(nir) % 97:02d}",
            "IssuerOfPatientID": LOCAL_ISSUER if p % 5 == 4 else INS_OID,
            "PatientName": f"{rng.choice(LAST)}^{rng.choice(FIRST)}",
            "PatientBirthDate": f"19{rng.randrange(30, 100)}{rng.randrange(1, 13):02d}"
                                f"{rng.randrange(1, 29):02d}",
            "PatientSex": sex,
        })
    studies, n_instances = [], 0
    pixels = bytes(range(256)) * 2  # 16 x 16 x 2 bytes
    for s in range(n_studies):
        pat = patients[rng.randrange(n_patients)]
        date = (date_from + dt.timedelta(days=rng.randrange(days))).strftime("%Y%m%d")
        study = {"StudyInstanceUID": uid(seed, "study", s), "StudyDate": date,
                 "PatientID": pat["PatientID"], "AccessionNumber": f"ACC{seed}{s:06d}",
                 "instances": 0, "modalities": []}
        for se in range(rng.randint(1, 3)):
            modality = rng.choice(list(SOP))
            study["modalities"].append(modality)
            for i in range(rng.randint(1, 3)):
                sop = uid(seed, "sop", s, se, i)
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = SOP[modality]
                meta.MediaStorageSOPInstanceUID = sop
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds = Dataset()
                ds.file_meta = meta
                ds.SpecificCharacterSet = "ISO_IR 100"
                ds.SOPClassUID, ds.SOPInstanceUID = SOP[modality], sop
                ds.StudyDate = ds.SeriesDate = date
                ds.StudyTime = f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}00"
                ds.AccessionNumber = study["AccessionNumber"]
                ds.Modality = modality
                ds.ReferringPhysicianName = "DOCTEUR^BENCH"
                ds.StudyDescription = f"{modality} BENCH"
                ds.SeriesDescription = f"{modality} SERIES {se + 1}"
                for k in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                          "PatientSex"):
                    setattr(ds, k, pat[k])
                ds.StudyInstanceUID = study["StudyInstanceUID"]
                ds.SeriesInstanceUID = uid(seed, "series", s, se)
                ds.StudyID = str(s)
                ds.SeriesNumber = se + 1
                ds.InstanceNumber = i + 1
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.Rows = ds.Columns = 16
                ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
                ds.PixelRepresentation = 0
                ds.PixelData = pixels
                folder = out / "dicom" / f"st{s:05d}"
                folder.mkdir(parents=True, exist_ok=True)
                ds.save_as(folder / f"IM{se}{i}.dcm", enforce_file_format=True)
                study["instances"] += 1
                n_instances += 1
        study["modalities"] = sorted(set(study["modalities"]))
        studies.append(study)
    manifest = {"seed": seed, "patients": patients, "studies": studies,
                "instances": n_instances, "date_from": date_from.isoformat(), "days": days}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


# -- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int(d.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def wait_port(port: int, proc: subprocess.Popen, log: Path, what: str, timeout: float = 60,
              url: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited at start-up:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            if url is None or urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} not ready within {timeout} s (log {log})")


class Server:
    name: str
    aet: str
    port: int
    proc: subprocess.Popen

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Orthanc(Server):
    def __init__(self, work: Path, storage_access: str,
                 modalities: dict[str, list] | None = None) -> None:
        """``modalities``: more ``DicomModalities`` entries (e.g. a C-MOVE destination)."""
        self.name, self.aet = "orthanc", "ORTHANC"
        self.dir = work / "orthanc"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.port, self.http = free_port(), free_port()
        self.storage_access = storage_access
        self.modalities = {"bench": [SCU_AET, "127.0.0.1", 1], **(modalities or {})}

    def start(self) -> None:
        so = self.dir / "loopback_bind.so"
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(so),
                        str(ROOT / "gateway" / "sandbox" / "loopback_bind.c"), "-ldl"], check=True)
        cfg = {
            "Name": "cfind-bench", "StorageDirectory": str(self.dir / "db"),
            "IndexDirectory": str(self.dir / "db"), "StorageCompression": False,
            "HttpServerEnabled": True, "HttpPort": self.http, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomServerEnabled": True, "DicomAet": self.aet,
            "DicomPort": self.port, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "DicomModalities": self.modalities,
            "SaveJobs": False, "SyncStorageArea": True, "StorageAccessOnFind": self.storage_access,
            "LimitFindResults": 0, "LimitFindInstances": 0,
        }
        (self.dir / "orthanc.json").write_text(json.dumps(cfg, indent=1))
        env = dict(os.environ, LD_PRELOAD=str(so), TCP_NODELAY="1")
        self.log = self.dir / "orthanc.log"
        self.proc = subprocess.Popen(["/usr/sbin/Orthanc", str(self.dir / "orthanc.json")],
                                     env=env, stdout=open(self.log, "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc, self.log, "Orthanc",
                  url=f"http://127.0.0.1:{self.http}/system")


class Gateway(Server):
    def __init__(self, work: Path, src: Path, database_url: str | None,
                 peers: list[dict] | None = None) -> None:
        """``peers``: more ``peers`` entries (e.g. a C-MOVE destination)."""
        self.name, self.aet = "gateway", "DRIMBOX"
        self.dir = work / "gateway"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.port, self.http = free_port(), free_port()
        self.src, self.database_url = src, database_url
        self.workers: list[int] = []
        self.peers = [{"ae_title": SCU_AET, "host": "127.0.0.1", "port": 1}, *(peers or [])]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_")}
        env.update(DRIMBOX_DATA_DIR=str(self.dir / "data"), DRIMBOX_DICOM_PORT=str(self.port),
                   DRIMBOX_HTTP_PORT=str(self.http), DRIMBOX_AE_TITLE=self.aet,
                   DRIMBOX_HOST="127.0.0.1", DRIMBOX_LOG_LEVEL="WARNING",
                   DRIMBOX_DICOMWEB_AUTH="none", PYTHONPATH=str(self.src),
                   DRIMBOX_PEERS=json.dumps(self.peers))
        if self.database_url:
            env["DRIMBOX_DATABASE_URL"] = self.database_url
        self.log = self.dir / "gateway.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env,
                                     cwd=self.dir, stdout=open(self.log, "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc, self.log, "gateway",
                  url=f"http://127.0.0.1:{self.http}/healthz")
        time.sleep(1)  # the DICOM workers finish starting
        self.workers = children(self.proc.pid)

    def pids(self) -> list[int]:
        return [self.proc.pid, *self.workers]


def snapshot(ref: str, dest: Path) -> str:
    """The gateway's code at ``ref`` (``git archive``) in ``dest``, emptied first, so that
    editing the worktree during a run changes nothing; returns the short commit."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref],
                         capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryFile() as tar:
        subprocess.run(["git", "-C", str(ROOT), "archive", ref, "gateway", "dicomweb",
                        "adapters"], stdout=tar, check=True)
        tar.seek(0)
        subprocess.run(["tar", "-x", "-C", str(dest)], stdin=tar, check=True)
    return rev


def reset_postgres(url: str, create: bool = True) -> None:
    plain = url.replace("+psycopg", "")
    name = plain.rsplit("/", 1)[1]
    if not name.startswith("h3bench"):
        sys.exit(f"refusing to drop database {name!r} (the name must start with h3bench)")
    admin = plain.rsplit("/", 1)[0] + "/postgres"
    sql = ["-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']
    if create:
        sql += ["-c", f'CREATE DATABASE "{name}"']
    subprocess.run(["psql", "-q", admin, *sql], check=True)


# -- queries --------------------------------------------------------------------------------


def identifier(params: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k in RETURNED:
        setattr(ds, k, params.get(k, ""))
    if "IssuerOfPatientID" in params:
        ds.IssuerOfPatientID = params["IssuerOfPatientID"]
    return ds


def make_params(shape: str, rng: random.Random, manifest: dict) -> dict[str, str]:
    start = dt.date.fromisoformat(manifest["date_from"])

    def span(days: int) -> str:
        first = start + dt.timedelta(days=rng.randrange(manifest["days"] - days + 1))
        last = first + dt.timedelta(days=days - 1)
        return f"{first:%Y%m%d}-{last:%Y%m%d}"

    pat = rng.choice(manifest["patients"])
    if shape == "pid":
        return {"PatientID": pat["PatientID"]}
    if shape == "pid_issuer":
        return {"PatientID": pat["PatientID"], "IssuerOfPatientID": pat["IssuerOfPatientID"]}
    if shape == "pid_30d":
        return {"PatientID": pat["PatientID"], "StudyDate": span(30)}
    if shape == "range_30d":
        return {"StudyDate": span(30)}
    if shape == "range_365d":
        return {"StudyDate": span(365)}
    raise ValueError(shape)


def canonical(ds: Dataset) -> tuple:
    mods = ds.get("ModalitiesInStudy") or []
    mods = sorted([mods] if isinstance(mods, str) else [str(m) for m in mods])
    return (str(ds.get("StudyInstanceUID", "")), str(ds.get("StudyDate", "")),
            str(ds.get("PatientName", "")), str(ds.get("PatientID", "")), tuple(mods),
            int(ds.get("NumberOfStudyRelatedInstances") or -1), str(ds.get("AccessionNumber", "")))


class _Held(threading.Event):
    """Stands in for an association's reactor checkpoint (pynetdicom 3.0) and stays cleared.

    A requestor's association thread (its "reactor") polls the DIMSE queue between two
    ``send_c_find`` calls, and ``send_c_find`` pauses it with a check that can race: the
    reactor, already past its checkpoint, took the first C-FIND-RSP of a request off the queue
    (logged as "Received unexpected C-FIND service message" and dropped), so one match went
    missing on a fast server under load. The bench needs no reactor (the peer sends no
    requests), so it is held paused for the association's life."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = True

    def set(self) -> None:
        if not self.hold:
            super().set()


class Client:
    def __init__(self, server: Server) -> None:
        self.server = server
        ae = AE(ae_title=SCU_AET)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        ae.add_requested_context(FIND_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.ae = ae
        self.assoc = self.open()

    def open(self):
        assoc = self.ae.associate("127.0.0.1", self.server.port, ae_title=self.server.aet)
        if not assoc.is_established:
            sys.exit(f"association with {self.server.name} refused or aborted")
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Nothing is in flight yet: whatever the reactor is doing, it finds no message, and
        # from its next checkpoint on it stays paused.
        self.gate = _Held()
        assoc._reactor_checkpoint = self.gate
        deadline, paused = time.monotonic() + 10, 0
        while paused < 5 and time.monotonic() < deadline:  # paused, and still paused 20 ms on
            paused = paused + 1 if assoc._is_paused else 0
            time.sleep(0.005)
        if paused < 5:
            sys.exit(f"the association with {self.server.name} did not pause its reactor")
        return assoc

    def find(self, params: dict[str, str]) -> tuple[float, list[tuple]]:
        ds = identifier(params)
        rows = []
        t0 = time.perf_counter()
        for status, answer in self.assoc.send_c_find(ds, FIND_MODEL):
            if not status:
                sys.exit(f"{self.server.name}: no response (association aborted?)")
            code = status.Status
            if code in (0xFF00, 0xFF01):
                rows.append(answer)
            elif code != 0x0000:
                sys.exit(f"{self.server.name}: C-FIND status 0x{code:04X} for {params}")
        elapsed = time.perf_counter() - t0
        return elapsed, sorted(canonical(r) for r in rows)

    def assoc_cost(self) -> float:
        t0 = time.perf_counter()
        a = self.ae.associate("127.0.0.1", self.server.port, ae_title=self.server.aet)
        if not a.is_established:
            sys.exit(f"association with {self.server.name} refused")
        a.release()
        return time.perf_counter() - t0

    def close(self) -> None:
        self.assoc.release()
        self.gate.hold = False
        self.gate.set()


def findscu(server: Server, params: dict[str, str]) -> tuple[float, int]:
    cmd = ["findscu", "-S", "-v", "-aet", SCU_AET, "-aec", server.aet, "127.0.0.1",
           str(server.port), "-k", "QueryRetrieveLevel=STUDY"]
    for k in RETURNED:
        cmd += ["-k", f"{k}={params.get(k, '')}" if params.get(k) else k]
    if "IssuerOfPatientID" in params:
        cmd += ["-k", f"IssuerOfPatientID={params['IssuerOfPatientID']}"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                       env=dict(os.environ, TCP_NODELAY="1"), timeout=300)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"findscu against {server.name} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return elapsed, (p.stdout + p.stderr).count("(Pending)")


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


# -- run ------------------------------------------------------------------------------------


def store(server: Server, corpus: Path) -> subprocess.Popen:
    return subprocess.Popen(["storescu", "-q", "+sd", "+r", "-aet", SCU_AET, "-aec", server.aet,
                             "127.0.0.1", str(server.port), str(corpus / "dicom")],
                            env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def settle(server: Server, timeout: float = 180) -> None:
    """Wait until the server is idle (after the load, the gateway warms its metadata cache
    in the background): under 0.05 CPU seconds in each of 3 seconds in a row."""
    quiet, deadline = 0, time.monotonic() + timeout
    while quiet < 3 and time.monotonic() < deadline:
        before = cpu_seconds(server.pids())
        time.sleep(1)
        quiet = quiet + 1 if cpu_seconds(server.pids()) - before < 0.05 else 0
    print(f"{server.name} {'idle' if quiet >= 3 else 'still busy after %d s' % timeout}",
          flush=True)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cfind-bench"))
    ap.add_argument("--corpus", type=Path, help="default WORK/corpus (generated when missing)")
    ap.add_argument("--regen", action="store_true")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--studies", type=int, default=800)
    ap.add_argument("--requests", type=int, default=100, help="pairs per shape and round")
    ap.add_argument("--wide-requests", type=int, default=30, help="pairs for range_365d")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--assoc-pairs", type=int, default=30)
    ap.add_argument("--findscu-rounds", type=int, default=3)
    ap.add_argument("--findscu-requests", type=int, default=5, help="per shape and round")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--ref", default="HEAD", help="commit whose gateway is measured")
    ap.add_argument("--src", type=Path, help="gateway source tree (instead of --ref)")
    ap.add_argument("--database-url", help="PostgreSQL URL (database name h3bench*)")
    ap.add_argument("--orthanc-storage-access", default="Always",
                    help="Orthanc's StorageAccessOnFind (Always is its default)")
    ap.add_argument("--keep", action="store_true", help="leave both servers running")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    shapes = [s for s in args.shapes.split(",") if s]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus or work / "corpus"
    result: dict = {"argv": sys.argv, "uptime_start": uptime(), "started": time.time()}
    print(result["uptime_start"], flush=True)

    if args.regen or not (corpus / "manifest.json").exists():
        t0 = time.time()
        manifest = generate(corpus, args.seed, args.patients, args.studies,
                            dt.date(2024, 1, 1), 731)
        print(f"corpus: {len(manifest['studies'])} studies, {manifest['instances']} instances, "
              f"{len(manifest['patients'])} patients ({time.time() - t0:.0f} s)", flush=True)
    manifest = json.loads((corpus / "manifest.json").read_text())

    if args.src:
        src, rev = args.src.resolve(), "(tree " + str(args.src) + ")"
    else:
        src = work / "src"
        rev = snapshot(args.ref, src)
    result["gateway_source"] = rev
    result["database"] = "postgresql" if args.database_url else "sqlite"
    if args.database_url:
        reset_postgres(args.database_url)

    orthanc = Orthanc(work, args.orthanc_storage_access)
    gateway = Gateway(work, src, args.database_url)
    servers: list[Server] = [orthanc, gateway]
    try:
        for s in servers:
            s.start()
        print(f"orthanc PID {orthanc.proc.pid} DICOM {orthanc.port}; gateway {rev} PID "
              f"{gateway.proc.pid} workers {gateway.workers} DICOM {gateway.port} "
              f"({result['database']})", flush=True)
        t0 = time.time()
        loaders = {s.name: store(s, corpus) for s in servers}
        for name, p in loaders.items():
            out = p.communicate()[0]
            if p.returncode != 0:
                sys.exit(f"storescu into {name} failed:\n{out[-3000:]}")
        print(f"stored into both at once in {time.time() - t0:.0f} s", flush=True)

        for s in servers:
            settle(s)
        clients = [Client(s) for s in servers]
        for c in clients:
            _, rows = c.find({})
            total = sum(r[5] for r in rows)
            if len(rows) != len(manifest["studies"]) or total != manifest["instances"]:
                sys.exit(f"{c.server.name} holds {len(rows)} studies / {total} instances, "
                         f"expected {len(manifest['studies'])} / {manifest['instances']}")
        print(f"both hold {len(manifest['studies'])} studies, {manifest['instances']} instances",
              flush=True)
        result["corpus"] = {"studies": len(manifest["studies"]),
                            "instances": manifest["instances"],
                            "patients": len(manifest["patients"])}

        # association cost (pynetdicom associate + release)
        per = {s.name: [] for s in servers}
        for i in range(args.assoc_pairs):
            for c in (clients if i % 2 == 0 else clients[::-1]):
                per[c.server.name].append(c.assoc_cost())
        result["associate_release"] = {n: {"p50": pct(v, .5), "p95": pct(v, .95)}
                                       for n, v in per.items()}

        rng = random.Random(args.seed * 1000 + 1)
        rounds = []
        for rnd in range(args.rounds):
            for shape in shapes:
                n = args.wide_requests if shape in WIDE else args.requests
                for _ in range(args.warmup):
                    params = make_params(shape, rng, manifest)
                    for c in clients:
                        c.find(params)
                lat = {s.name: [] for s in servers}
                matches = []
                cpu0 = {s.name: cpu_seconds(s.pids()) for s in servers}
                load0 = os.getloadavg()[0]
                for i in range(n):
                    params = make_params(shape, rng, manifest)
                    answers = {}
                    for c in (clients if i % 2 == 0 else clients[::-1]):
                        elapsed, rows = c.find(params)
                        lat[c.server.name].append(elapsed)
                        answers[c.server.name] = rows
                    a, b = answers["orthanc"], answers["gateway"]
                    if a != b:
                        only_a = set(a) - set(b)
                        only_b = set(b) - set(a)
                        sys.exit(f"MISMATCH {shape} {params}: orthanc {len(a)} matches, gateway "
                                 f"{len(b)}\n only orthanc: {sorted(only_a)[:3]}\n only "
                                 f"gateway: {sorted(only_b)[:3]}")
                    matches.append(len(a))
                cpu = {s.name: (cpu_seconds(s.pids()) - cpu0[s.name]) / n for s in servers}
                entry = {"round": rnd + 1, "shape": shape, "requests": n,
                         "matches_mean": statistics.mean(matches),
                         "matches_max": max(matches), "load1": [load0, os.getloadavg()[0]],
                         "cpu_s_per_request": cpu}
                for name, v in lat.items():
                    entry[name] = {"p50": pct(v, .5), "p95": pct(v, .95), "min": min(v)}
                rounds.append(entry)
                print(f"round {rnd + 1} {shape:11s} n={n:3d} matches~{entry['matches_mean']:6.1f} "
                      f"orthanc p50 {entry['orthanc']['p50'] * 1e3:7.2f} p95 "
                      f"{entry['orthanc']['p95'] * 1e3:7.2f} ms | gateway p50 "
                      f"{entry['gateway']['p50'] * 1e3:7.2f} p95 "
                      f"{entry['gateway']['p95'] * 1e3:7.2f} ms | cpu ms/req o "
                      f"{cpu['orthanc'] * 1e3:.1f} g {cpu['gateway'] * 1e3:.1f} | load "
                      f"{load0:.1f}", flush=True)
        result["rounds"] = rounds
        for c in clients:
            c.close()

        fs = []
        for rnd in range(args.findscu_rounds):
            for shape in shapes:
                for i in range(args.findscu_requests):
                    params = make_params(shape, rng, manifest)
                    counts = {}
                    for s in (servers if i % 2 == 0 else servers[::-1]):
                        elapsed, count = findscu(s, params)
                        counts[s.name] = count
                        fs.append({"round": rnd + 1, "shape": shape, "server": s.name,
                                   "s": elapsed, "matches": count})
                    if counts["orthanc"] != counts["gateway"]:
                        sys.exit(f"MISMATCH findscu {shape} {params}: {counts}")
        result["findscu"] = fs
        result["uptime_end"] = uptime()
        print(result["uptime_end"], flush=True)
        summary = summarize(result, shapes)
        result["summary"] = summary
        print(summary)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
            print(f"written {args.out}")
        if args.keep:
            print(f"kept: orthanc PID {orthanc.proc.pid} DICOM {orthanc.port} HTTP {orthanc.http}"
                  f"; gateway PID {gateway.proc.pid} workers {gateway.workers} DICOM "
                  f"{gateway.port} HTTP {gateway.http}")
    finally:
        if not args.keep:
            for s in servers:
                if getattr(s, "proc", None) is not None:
                    s.stop()
            if args.database_url:
                reset_postgres(args.database_url, create=False)


def summarize(result: dict, shapes: list[str]) -> str:
    med = statistics.median
    lines = ["| shape | matches (mean) | Orthanc p50 / p95 ms | gateway p50 / p95 ms | ratio p50 / "
             "p95 | CPU ms per request, Orthanc / gateway | load (1 min) |",
             "|---|---|---|---|---|---|---|"]
    for shape in shapes:
        rs = [r for r in result["rounds"] if r["shape"] == shape]
        if not rs:
            continue
        o50, o95 = med(r["orthanc"]["p50"] for r in rs), med(r["orthanc"]["p95"] for r in rs)
        g50, g95 = med(r["gateway"]["p50"] for r in rs), med(r["gateway"]["p95"] for r in rs)
        oc = med(r["cpu_s_per_request"]["orthanc"] for r in rs)
        gc = med(r["cpu_s_per_request"]["gateway"] for r in rs)
        loads = [x for r in rs for x in r["load1"]]
        lines.append(f"| `{shape}` | {med(r['matches_mean'] for r in rs):.1f} | "
                     f"{o50 * 1e3:.2f} / {o95 * 1e3:.2f} | {g50 * 1e3:.2f} / {g95 * 1e3:.2f} | "
                     f"{g50 / o50:.2f}x / {g95 / o95:.2f}x | {oc * 1e3:.1f} / {gc * 1e3:.1f} | "
                     f"{min(loads):.1f}-{max(loads):.1f} |")
    ar = result["associate_release"]
    lines += ["", f"associate + release (pynetdicom), p50: Orthanc "
              f"{ar['orthanc']['p50'] * 1e3:.2f} ms, gateway {ar['gateway']['p50'] * 1e3:.2f} ms "
              f"({ar['gateway']['p50'] / ar['orthanc']['p50']:.2f}x)"]
    if result.get("findscu"):
        lines += ["", "| shape | findscu (one association per query) p50 ms, Orthanc | gateway | "
                  "ratio |", "|---|---|---|---|"]
        for shape in shapes:
            o = [f["s"] for f in result["findscu"] if f["shape"] == shape
                 and f["server"] == "orthanc"]
            g = [f["s"] for f in result["findscu"] if f["shape"] == shape
                 and f["server"] == "gateway"]
            if o and g:
                lines.append(f"| `{shape}` | {med(o) * 1e3:.1f} | {med(g) * 1e3:.1f} | "
                             f"{med(g) / med(o):.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
