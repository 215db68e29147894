#!/usr/bin/env python3
"""Whole-study WADO-RS and study metadata, Orthanc and the gateway alternating request by
request (A, B, A, B, ...), so that a change of load on the shared 2-core machine hits both
alike; prints min / median / max per target and the ratio of each pair. Uses the shared
harness's bench_wado.get_multipart (streamed, parts counted, Accept-Encoding: identity).
With --pid, the gateway's VmRSS is sampled every 20 ms during its retrieves.

    /tmp/h3-benchvenv/bin/python bench/interleave_wado.py --pairs 10 \\
        --a orthanc-nodelay=http://127.0.0.1:18242/dicom-web \\
        --b drimbox=http://127.0.0.1:18512/dicom-web --pid $(cat /tmp/h10-gw-bench/gateway.pid)

Both servers must hold the harness's WADO study (bench_wado.py --load did that).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

SHARED = Path(os.environ.get("SHARED_BENCH", Path(__file__).resolve().parents[2] / "shared" / "bench"))
if not SHARED.exists():
    SHARED = Path("/work/shared/bench")
sys.path.insert(0, str(SHARED))
import benchlib as bl  # noqa: E402
from bench_wado import MULTIPART_ANY, MULTIPART_DEFAULT, get_multipart  # noqa: E402


def rss_during(pid, fn):
    samples, stop = [], threading.Event()

    def run():
        while not stop.is_set():
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS"):
                        samples.append(int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    return out, samples


def small_requests(kind, targets, sessions, manifest, study, uid, n):
    """Small requests, the two targets alternating request by request (A B, B A, ...), after 10
    warm-up pairs: one instance (WADO-RS, as stored) or QIDO-RS by PatientID; p50 / p95 and
    the per-target lists."""
    import random

    rng = random.Random(f"{kind}-{n}")
    if kind == "instance":
        series = {}
        for name, base in targets:
            q = sessions[name].get(f"{base}/studies/{uid}/series", headers={"Accept": "application/dicom+json"},
                                   timeout=30)
            q.raise_for_status()
            series[name] = q.json()[0]["0020000E"]["Value"][0]
        picks = [rng.choice(study["files"])["sop_instance"] for _ in range(n + 10)]
    else:
        ids = sorted({st["PatientID"] for s_ in manifest["sets"].values() for st in s_["studies"]})
        picks = [rng.choice(ids) for _ in range(n + 10)]
    lat = {name: [] for name, _ in targets}
    for i, pick in enumerate(picks):
        order = targets if i % 2 == 0 else targets[::-1]
        for name, base in order:
            t0 = time.perf_counter()
            if kind == "instance":
                sec, _, nbytes, parts, _ = get_multipart(
                    sessions[name], f"{base}/studies/{uid}/series/{series[name]}/instances/{pick}",
                    MULTIPART_ANY, 60)
                assert parts == 1, (name, parts)
            else:
                r = sessions[name].get(f"{base}/studies", params={"PatientID": pick},
                                       headers={"Accept": "application/dicom+json"}, timeout=60)
                r.raise_for_status()
                r.json()
                sec = time.perf_counter() - t0
            if i >= 10:
                lat[name].append(sec * 1000)
    (na, _), (nb, _) = targets
    pct = lambda v, p: sorted(v)[int(p / 100 * (len(v) - 1))]  # noqa: E731
    line = (f"{kind} ({n} pairs, ms): {na} p50 {pct(lat[na], 50):.2f} p95 {pct(lat[na], 95):.2f} | "
            f"{nb} p50 {pct(lat[nb], 50):.2f} p95 {pct(lat[nb], 95):.2f} | p95 ratio {nb}/{na} "
            f"{pct(lat[nb], 95) / pct(lat[na], 95):.2f}, p50 ratio {pct(lat[nb], 50) / pct(lat[na], 50):.2f}")
    print(line, flush=True)
    return {"ms": lat, "p95_ratio": pct(lat[nb], 95) / pct(lat[na], 95)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="NAME=DICOMWEB_URL (first of each pair)")
    ap.add_argument("--b", required=True, help="NAME=DICOMWEB_URL (second of each pair)")
    ap.add_argument("--corpus", default="/tmp/h3-corpus")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--kinds", default="study_ts_any,study_default,metadata",
                    help="also: instance (one instance of the WADO study, as stored), qido_patientid "
                         "(/studies?PatientID=, the corpus' patients): --requests pairs each, p50 / p95")
    ap.add_argument("--requests", type=int, default=200, help="pairs for instance and qido_patientid")
    ap.add_argument("--pid", type=int, help="PID of target b (RSS sampled)")
    ap.add_argument("--out")
    args = ap.parse_args()
    manifest = bl.load_manifest(args.corpus)
    uid = manifest["wado_study"]
    study = next(st for s_ in manifest["sets"].values() for st in s_["studies"] if st["StudyInstanceUID"] == uid)
    n = len(study["files"])
    targets = [tuple(x.split("=", 1)) for x in (args.a, args.b)]
    for _, url in targets:
        bl.check_target_host(bl.url_host(url), False)
    sessions = {name: requests.Session() for name, _ in targets}
    for s in sessions.values():
        s.headers["Accept-Encoding"] = "identity"
    res = {}
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        if kind in ("instance", "qido_patientid"):
            res[kind] = small_requests(kind, targets, sessions, manifest, study, uid, args.requests)
            continue
        per = {name: [] for name, _ in targets}
        rss = []
        for i in range(args.pairs):
            for j, (name, base) in enumerate(targets):
                url = f"{base}/studies/{uid}"
                if kind.startswith("study"):
                    accept = MULTIPART_ANY if kind == "study_ts_any" else MULTIPART_DEFAULT

                    def call():
                        return get_multipart(sessions[name], url, accept, 600)
                else:
                    def call():
                        t0 = time.perf_counter()
                        r = sessions[name].get(f"{url}/metadata", headers={"Accept": "application/dicom+json"},
                                               timeout=600)
                        r.raise_for_status()
                        items = len(r.json())
                        return time.perf_counter() - t0, None, len(r.content), items, ""
                if j == 1 and args.pid:
                    (sec, _, nbytes, parts, _), samples = rss_during(args.pid, call)
                    rss += samples
                else:
                    sec, _, nbytes, parts, _ = call()
                if parts != n:
                    print(f"[{name}] {kind}: {parts}/{n} parts or items", flush=True)
                per[name].append(sec)
        (na, _), (nb, _) = targets
        ratios = [b / a for a, b in zip(per[na], per[nb])]
        mmm = lambda v: f"{min(v):.3f} / {statistics.median(v):.3f} / {max(v):.3f}"  # noqa: E731
        line = (f"{kind}: {na} {mmm(per[na])} s  {nb} {mmm(per[nb])} s  "
                f"time ratio {nb}/{na} per pair {mmm(ratios)} (min / median / max)")
        if rss:
            line += f"  {nb} RSS {min(rss) / 1024:.0f}-{max(rss) / 1024:.0f} MiB over {len(rss)} samples"
        print(line, flush=True)
        res[kind] = {"seconds": per, "ratios": ratios, "rss_kb": [min(rss), max(rss)] if rss else None,
                     "bytes": nbytes}
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": res}, indent=1))


if __name__ == "__main__":
    main()
