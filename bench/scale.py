#!/usr/bin/env python3
"""Scale figures: how the gateway's reads and ingest behave as the index grows (1k, 10k,
100k studies; 10 instance rows per study, so 100k studies = 1,000,000 instance rows), on
SQLite and on PostgreSQL, with Orthanc at the sizes that fit.

For each back-end the index is grown in steps (0 -> 1k -> 10k -> ...) and measured at each
size:

1. **load** (gateway stopped): index-only rows through the real index code
   (:meth:`gateway.index.store.InstanceIndex.record_many`, batches of ``--batch`` studies)
   on an engine whose commits are not flushed (SQLite ``synchronous=OFF``, PostgreSQL
   ``synchronous_commit=off``: a benchmark fixture, not the product's durability). No files
   are written for these rows; rows per second reported.
2. **serve**: ``drimbox serve`` (``bench/run_gateway.sh start``, anonymous DICOMweb on
   loopback, private ports) on that data; ``storescu`` (dcmtk, ``TCP_NODELAY=1``, one
   association) stores ``--store`` real tiny instances (64 x 64 CT, one new study per size):
   the C-STORE rate at that index size, acknowledged = fsync'd as always. Those studies are
   also the ones whose metadata is asked (index-only rows have no files).
3. **requests** (``requests`` client, one keep-alive session, loopback), ``--requests`` each
   after 10 warm-ups: QIDO-RS ``/studies?PatientID=<id>`` (4 studies per patient),
   ``/studies?StudyDate=<D>-<D+29>&limit=50`` and ``/studies/{uid}/metadata`` (10 instances):
   p50 / p95 in ms. With ``--orthanc`` at a size <= ``--orthanc-max``, the same requests go to
   a private Orthanc (loaded by storescu with the same studies as real tiny files), the two
   servers alternating request by request.
4. **size**: SQLite file (after a WAL checkpoint) or ``pg_total_relation_size`` of the index
   tables, per instance row; the query plans of the two QIDO shapes (``EXPLAIN QUERY PLAN`` /
   ``EXPLAIN``).

    .venv/bin/python bench/scale.py --sizes 1000,10000 --backend sqlite --orthanc
    .venv/bin/python bench/scale.py --sizes 1000,10000 --backend postgresql \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/h3bench_scale

The PostgreSQL database (its name must start with ``h3bench``) is dropped and re-created at
the start and dropped at the end (``--keep`` leaves it and the SQLite data dir). Results: one
JSON per back-end (``--out``) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import requests  # noqa: E402
from sqlalchemy import create_engine, event, text  # noqa: E402

from gateway.index.engine import create_index_engine, upgrade  # noqa: E402
from gateway.index.store import InstanceIndex, StoredFile  # noqa: E402
from gateway.ingest.header import InstanceHeader  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.10.1257.77."
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
INS_OID = "1.2.250.1.213.1.4.8"
PER_STUDY = 10
STUDIES_PER_PATIENT = 4
FIRST_DAY = date(2016, 1, 1)
DAYS = 3650
GW_DICOM, GW_HTTP = 11612, 18612
OR_DICOM, OR_HTTP = 14542, 18342
SHARED = Path(os.environ.get("SHARED_BENCH", ROOT.parent / "shared" / "bench"))
if not SHARED.exists():
    SHARED = Path("/work/shared/bench")


# -- the synthetic studies -----------------------------------------------------------------


def study_uid(k: int) -> str:
    return f"{UID_ROOT}{k}"


def patient_id(k: int) -> str:
    return f"SC{k // STUDIES_PER_PATIENT:09d}"


def study_date(k: int) -> str:
    return (FIRST_DAY + timedelta(days=(k * 7919) % DAYS)).strftime("%Y%m%d")


def headers_of(k: int) -> list[InstanceHeader]:
    st = study_uid(k)
    se = f"{st}.1"
    common = dict(
        sop_class_uid=CT, study_instance_uid=st, series_instance_uid=se,
        patient_id=patient_id(k), issuer_of_patient_id=INS_OID,
        patient_name=f"SCALE^P{k // STUDIES_PER_PATIENT}", patient_birth_date="19700101",
        patient_sex="O", study_date=study_date(k), study_time="101500",
        accession_number=f"A{k}", study_description="scale", study_id=str(k % 100000),
        modality="CT", series_number=1, series_description="scale", rows=64, columns=64,
        bits_allocated=16, number_of_frames=1,
    )
    return [InstanceHeader(sop_instance_uid=f"{se}.{i}", instance_number=i + 1, **common)
            for i in range(PER_STUDY)]


def stored_of(h: InstanceHeader) -> StoredFile:
    return StoredFile(EXPLICIT_LE, "0" * 64, 8_704, f"scale/{h.sop_instance_uid}.dcm", "scale")


def tiny_files(ks: list[int], out: Path) -> list[Path]:
    """Real Part 10 files of studies ``ks`` (same attributes as :func:`headers_of`)."""
    from dicom_factory import make_instance

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in ks:
        for i, h in enumerate(headers_of(k)):
            p = out / f"{k}_{i}.dcm"
            if not p.exists():
                ds = make_instance(study_uid=h.study_instance_uid, series_uid=h.series_instance_uid,
                                   sop_uid=h.sop_instance_uid, patient_id=h.patient_id,
                                   patient_name=h.patient_name, issuer=INS_OID,
                                   accession=h.accession_number, instance_number=i + 1,
                                   seed=k * PER_STUDY + i)
                ds.StudyDate = h.study_date
                ds.StudyTime = h.study_time
                ds.StudyDescription = h.study_description
                ds.save_as(p, enforce_file_format=True)
            paths.append(p)
    return paths


# -- the index -----------------------------------------------------------------------------


def loader_engine(url: str):
    engine = create_index_engine(url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _fast(dbapi_conn, _rec) -> None:  # noqa: ANN001 - after the index's own
            dbapi_conn.execute("PRAGMA synchronous=OFF")
    else:
        @event.listens_for(engine, "connect")
        def _fast(dbapi_conn, _rec) -> None:  # noqa: ANN001
            dbapi_conn.execute("SET synchronous_commit TO off")
            dbapi_conn.commit()
    return engine


def _parents_in_bulk(index: InstanceIndex, headers: list[InstanceHeader]) -> None:
    """The patient, study and series rows of ``headers`` with the values the index's own
    full path writes (``InstanceIndex._ensure_patient`` / ``_ensure_study`` / ``_ensure_series``),
    in one transaction of multi-row ``INSERT ... ON CONFLICT DO NOTHING``; then the index's
    parent cache is primed, so that :meth:`InstanceIndex.record_many` takes its fast path (the
    C-STORE path's own INSERT) for every instance. :func:`check_bulk_parents` compares the
    rows with those of the full path."""
    from sqlalchemy import select, tuple_
    from sqlalchemy.dialects import postgresql, sqlite

    from gateway.index.models import Patient, Series, Study

    ins = postgresql.insert if index.engine.dialect.name == "postgresql" else sqlite.insert
    now = datetime.now(UTC)
    firsts = list({h.series_instance_uid: h for h in headers}.values())
    with index.engine.execution_options(writer=True).begin() as conn:
        patients = {(h.patient_id, h.issuer_of_patient_id): h for h in firsts}
        conn.execute(ins(Patient).on_conflict_do_nothing(), [
            {"patient_id": h.patient_id, "issuer_of_patient_id": h.issuer_of_patient_id,
             "patient_name": h.patient_name, "patient_birth_date": h.patient_birth_date,
             "patient_sex": h.patient_sex} for h in patients.values()])
        ppk = {(a, b): pk for pk, a, b in conn.execute(
            select(Patient.id, Patient.patient_id, Patient.issuer_of_patient_id).where(
                tuple_(Patient.patient_id, Patient.issuer_of_patient_id).in_(list(patients))))}
        studies = {h.study_instance_uid: h for h in firsts}
        conn.execute(ins(Study).on_conflict_do_nothing(), [
            {"study_instance_uid": h.study_instance_uid,
             "patient_pk": ppk[(h.patient_id, h.issuer_of_patient_id)],
             "study_date": h.study_date, "study_time": h.study_time,
             "accession_number": h.accession_number,
             "accession_number_issuer": h.accession_number_issuer,
             "referring_physician_name": h.referring_physician_name,
             "study_description": h.study_description, "study_id": h.study_id,
             "created_at": now, "updated_at": now, "ins_matricule": h.ins_matricule,
             "ins_oid": h.ins_oid, "ins_refusal": h.ins_refusal} for h in studies.values()])
        spk = dict(conn.execute(select(Study.study_instance_uid, Study.id)
                                .where(Study.study_instance_uid.in_(list(studies)))).all())
        conn.execute(ins(Series).on_conflict_do_nothing(), [
            {"series_instance_uid": h.series_instance_uid,
             "study_pk": spk[h.study_instance_uid], "modality": h.modality,
             "series_number": h.series_number, "series_description": h.series_description,
             "body_part_examined": h.body_part_examined,
             "performed_procedure_step_start_date": h.performed_procedure_step_start_date,
             "performed_procedure_step_start_time": h.performed_procedure_step_start_time,
             "created_at": now} for h in firsts])
        for uid, pk, study_pk in conn.execute(
                select(Series.series_instance_uid, Series.id, Series.study_pk)
                .where(Series.series_instance_uid.in_([h.series_instance_uid for h in firsts]))):
            index._parents.put(uid, (pk, study_pk))  # noqa: SLF001 - priming the real cache


def _load_range(url: str, start: int, end: int, batch: int, bulk_parents: bool = True) -> int:
    engine = loader_engine(url)
    index = InstanceIndex(engine)
    rows = 0
    for b in range(start, end, batch):
        items = [(h, stored_of(h)) for k in range(b, min(end, b + batch)) for h in headers_of(k)]
        if bulk_parents:
            _parents_in_bulk(index, [h for h, _ in items])
        for r in index.record_many(items):
            if isinstance(r, Exception):
                raise r
        rows += len(items)
    engine.dispose()
    return rows


def check_bulk_parents(work: Path) -> None:
    """The bulk loader writes the same patient / study / series / instance rows as the
    index's full path (ids and timestamps aside): checked on 8 studies before every run."""
    from sqlalchemy import create_engine as ce

    def dump(url: str) -> dict:
        eng = ce(url)
        out = {}
        with eng.connect() as conn:
            for table, skip in (("patients", {"id"}), ("studies", {"id", "patient_pk", "created_at", "updated_at"}),
                                ("series", {"id", "study_pk", "created_at"}),
                                ("instances", {"id", "series_pk", "received_at"})):
                res = conn.exec_driver_sql(f"select * from {table}")
                keys = list(res.keys())
                out[table] = sorted(tuple((k, v) for k, v in zip(keys, r) if k not in skip) for r in res)
        eng.dispose()
        return out

    urls = []
    for mode in (False, True):
        f = work / f"check-{mode}.sqlite"
        f.unlink(missing_ok=True)
        url = f"sqlite:///{f}"
        upgrade(create_index_engine(url))
        _load_range(url, 0, 8, 4, bulk_parents=mode)
        urls.append(url)
    full, bulk = (dump(u) for u in urls)
    assert full == bulk, "the bulk loader's rows differ from the index's full path"


def load(url: str, start: int, end: int, batch: int, workers: int) -> dict:
    """Studies ``start`` to ``end`` (excluded), split between ``workers`` processes, each
    with its own :class:`InstanceIndex`."""
    from concurrent.futures import ProcessPoolExecutor

    engine = loader_engine(url)
    upgrade(engine)
    engine.dispose()
    t0 = time.perf_counter()
    step = -(-(end - start) // workers)
    ranges = [(a, min(end, a + step)) for a in range(start, end, step)]
    if len(ranges) == 1:
        rows = _load_range(url, start, end, batch)
    else:
        with ProcessPoolExecutor(len(ranges)) as pool:
            rows = sum(pool.map(_load_range, *zip(*[(url, a, b, batch) for a, b in ranges])))
    seconds = time.perf_counter() - t0
    # ANALYZE, as autovacuum (PostgreSQL) would do after such a load; SQLite's own statistics
    # are left as the gateway leaves them (it never runs ANALYZE).
    if engine.dialect.name == "postgresql":
        t1 = time.perf_counter()
        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.exec_driver_sql("ANALYZE")
        analyze = round(time.perf_counter() - t1, 2)
    else:
        analyze = None
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "workers": len(ranges), "analyze_s": analyze}


def index_size(url: str, sqlite_file: Path | None) -> dict:
    engine = create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text("select count(*) from instances")).scalar()
        studies = conn.execute(text("select count(*) from studies")).scalar()
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            size = sqlite_file.stat().st_size
        else:
            size = conn.execute(text(
                "select sum(pg_total_relation_size(c.oid)) from pg_class c join pg_namespace n "
                "on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r'")).scalar()
    engine.dispose()
    return {"instances": n, "studies": studies, "bytes": int(size),
            "bytes_per_instance": round(size / max(n, 1))}


def plans(url: str, pid: str, d1: str, d2: str) -> dict:
    """The plans of the two QIDO shapes, as the gateway compiles them."""
    from gateway.imaging.query import Level, _parameters, build_select, parse_query
    from gateway.index.prepared import compile_select

    engine = create_engine(url)
    out = {}
    for name, params in (("patientid", [("PatientID", pid)]),
                         ("date_30d", [("StudyDate", f"{d1}-{d2}"), ("limit", "50")])):
        q = parse_query(Level.STUDY, params)
        c = compile_select(build_select(q, engine.dialect.name, bind=True), engine)
        args = c.arguments(_parameters(q, engine.dialect.name))
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + c.sql, args).all()
                out[name] = [r[-1] for r in rows]
            else:
                rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS OFF, TIMING OFF) " + c.sql,
                                            args).all()
                out[name] = [r[0] for r in rows]
    engine.dispose()
    return out


# -- servers -------------------------------------------------------------------------------


def snapshot(ref: str, dest: Path) -> str:
    """The gateway's code at ``ref`` (``git archive``), so that editing the worktree during a
    run does not change what is measured."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "gateway", "dicomweb", "adapters"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", ref], check=True,
                          capture_output=True, text=True).stdout.strip()


def gateway_env(work: Path, url: str | None) -> dict:
    env = dict(os.environ, GW_BENCH_DIR=str(work / "gw"), GW_DICOM_PORT=str(GW_DICOM),
               GW_HTTP_PORT=str(GW_HTTP), GW_SRC=str(work / "src"))
    if url:
        env["GW_DATABASE_URL"] = url
    else:
        env.pop("GW_DATABASE_URL", None)
    return env


def gateway(cmd: str, env: dict) -> None:
    subprocess.run([str(ROOT / "bench" / "run_gateway.sh"), cmd], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def orthanc(cmd: str, work: Path) -> None:
    env = dict(os.environ, ORTHANC_BENCH_DIR=str(work / "orthanc"), ORTHANC_HTTP_PORT=str(OR_HTTP),
               ORTHANC_DICOM_PORT=str(OR_DICOM), ORTHANC_TCP_NODELAY="1")
    subprocess.run([str(SHARED / "run_orthanc.sh"), cmd], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def storescu(port: int, aet: str, files: list[Path]) -> float:
    """Seconds to store ``files`` on one association (dcmtk, Nagle off)."""
    t0 = time.perf_counter()
    for i in range(0, len(files), 2000):  # argument list length
        subprocess.run(["storescu", "-aec", aet, "-xs", "127.0.0.1", str(port),
                        *map(str, files[i:i + 2000])], check=True,
                       env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


# -- requests ------------------------------------------------------------------------------


def request_sets(n_studies: int, n: int, metadata_uids: list[str], seed: int) -> dict:
    rng = random.Random(seed)
    patients = max(1, n_studies // STUDIES_PER_PATIENT)
    pids = [f"SC{rng.randrange(patients):09d}" for _ in range(n)]
    dates = []
    for _ in range(n):
        d = FIRST_DAY + timedelta(days=rng.randrange(DAYS - 30))
        dates.append(f"{d:%Y%m%d}-{d + timedelta(days=29):%Y%m%d}")
    return {
        "qido_patientid": [("/studies", {"PatientID": p}) for p in pids],
        "qido_date_30d": [("/studies", {"StudyDate": d, "limit": "50"}) for d in dates],
        "metadata": [(f"/studies/{metadata_uids[i % len(metadata_uids)]}/metadata", None)
                     for i in range(n)],
    }


def timed(s: requests.Session, base: str, path: str, params) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = s.get(base + path, params=params, headers={"Accept": "application/dicom+json"},
              timeout=60)
    sec = time.perf_counter() - t0
    r.raise_for_status()
    return sec * 1000, len(r.json()) if r.content else 0


def measure(targets: dict[str, str], sets: dict) -> dict:
    """Each request kind, the targets alternating request by request."""
    out = {}
    sessions = {name: requests.Session() for name in targets}
    for s in sessions.values():
        s.headers["Accept-Encoding"] = "identity"
    for kind, reqs in sets.items():
        lat = {name: [] for name in targets}
        results = {name: [] for name in targets}
        for j, (path, params) in enumerate(reqs[:10] + reqs):
            for name, base in targets.items():
                ms, count = timed(sessions[name], base, path, params)
                if j >= 10:
                    lat[name].append(ms)
                    results[name].append(count)
        out[kind] = {name: {"p50_ms": round(statistics.median(v), 2),
                            "p95_ms": round(sorted(v)[int(0.95 * (len(v) - 1))], 2),
                            "results_mean": round(statistics.mean(results[name]), 2)}
                     for name, v in lat.items()}
    return out


def load_avg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


# -- main ----------------------------------------------------------------------------------


def recreate_database(url: str, drop_only: bool = False) -> None:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    assert u.database and u.database.startswith("h3bench"), "database name must start with h3bench"
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)')
        if not drop_only:
            conn.exec_driver_sql(f'CREATE DATABASE "{u.database}"')
    admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000", help="studies, ascending (10 rows each)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/h3bench_scale")
    ap.add_argument("--work", default="/tmp/scale-bench")
    ap.add_argument("--batch", type=int, default=200, help="studies per record_many call")
    ap.add_argument("--workers", type=int, default=0,
                    help="loader processes (default: 1 on SQLite, whose writers queue, 2 on PostgreSQL)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--store", type=int, default=50, help="instances stored by storescu per size")
    ap.add_argument("--orthanc", action="store_true", help="Orthanc too, up to --orthanc-max")
    ap.add_argument("--orthanc-max", type=int, default=1000)
    ap.add_argument("--ref", default="HEAD", help="gateway code to serve (git archive)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(args.work) / args.backend
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files_dir = Path(args.work) / "files"
    if args.backend == "sqlite":
        db_file = work / "gw" / "data" / "index.sqlite"
        url, gw_url = f"sqlite:///{db_file}", None
    else:
        db_file = None
        url = gw_url = args.database_url
        recreate_database(url)
    env = gateway_env(work, gw_url)
    check_bulk_parents(work)
    args.workers = args.workers or (1 if args.backend == "sqlite" else 2)
    commit = snapshot(args.ref, work / "src")
    # studies stored by storescu live above every size's synthetic range
    stored_base = 10_000_000
    report = {"backend": args.backend, "sizes": {}, "machine": {
        "nproc": os.cpu_count(), "uname": " ".join(os.uname())}, "command": " ".join(sys.argv), "gateway": commit}
    loaded = 0
    orthanc_up = False
    orthanc_loaded = 0
    try:
        for step, size in enumerate(sizes):
            fig: dict = {"load_avg_start": load_avg(), "utc_start": time.strftime("%H:%M:%S", time.gmtime())}
            fig["load"] = load(url, loaded, size, args.batch, args.workers)
            loaded = size
            print(f"[{args.backend} {size}] loaded {fig['load']}", flush=True)
            gateway("start", env)
            try:
                per = PER_STUDY
                ks = [stored_base + step * 100 + i for i in range(max(1, args.store // per))]
                files = tiny_files(ks, files_dir / "stored")
                sec = storescu(GW_DICOM, "DRIMBOX", files)
                fig["cstore"] = {"instances": len(files), "seconds": round(sec, 2),
                                 "per_s": round(len(files) / sec, 1)}
                print(f"[{args.backend} {size}] C-STORE {fig['cstore']}", flush=True)
                targets = {"gateway": f"http://127.0.0.1:{GW_HTTP}/dicom-web"}
                if args.orthanc and size <= args.orthanc_max:
                    if not orthanc_up:
                        orthanc("reset", work)
                        orthanc_up = True
                    ofiles = tiny_files(list(range(orthanc_loaded, size)), files_dir / "synthetic")
                    orthanc_loaded = size
                    t = storescu(OR_DICOM, "ORTHANC", ofiles)
                    fig["orthanc_load"] = {"instances": len(ofiles), "seconds": round(t, 1),
                                           "per_s": round(len(ofiles) / t, 1)}
                    t = storescu(OR_DICOM, "ORTHANC", files)
                    fig["orthanc_cstore"] = {"instances": len(files), "seconds": round(t, 2),
                                             "per_s": round(len(files) / t, 1)}
                    print(f"[orthanc {size}] load {fig['orthanc_load']} C-STORE {fig['orthanc_cstore']}",
                          flush=True)
                    targets["orthanc"] = f"http://127.0.0.1:{OR_HTTP}/dicom-web"
                sets = request_sets(size, args.requests, [study_uid(k) for k in ks], seed=size)
                fig["load_avg_requests"] = load_avg()
                fig["requests"] = measure(targets, sets)
                fig["load_avg_end"] = load_avg()
                for kind, per_target in fig["requests"].items():
                    print(f"[{args.backend} {size}] {kind}: " + "  ".join(
                        f"{n} p50 {v['p50_ms']} p95 {v['p95_ms']} ms ({v['results_mean']} results)"
                        for n, v in per_target.items()), flush=True)
            finally:
                gateway("stop", env)
            fig["size"] = index_size(url, db_file)
            d = FIRST_DAY + timedelta(days=400)
            fig["plans"] = plans(url, patient_id(size // 2), f"{d:%Y%m%d}",
                                 f"{d + timedelta(days=29):%Y%m%d}")
            print(f"[{args.backend} {size}] size {fig['size']}", flush=True)
            report["sizes"][size] = fig
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=1))
    finally:
        if orthanc_up and not args.keep:
            orthanc("stop", work)
        if args.backend == "postgresql" and not args.keep:
            recreate_database(url, drop_only=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
