"""CPU milliseconds per instance of each gateway repetition of a bench/interleave.sh run.

    python3 bench/cpu_per_instance.py COUNTS_LOG LOG_TXT [SINCE]

COUNTS_LOG: run_gateway.sh's counts.log (its "started: cpu_s=" / "stopping: cpu_s=" lines);
LOG_TXT: the run's log.txt; SINCE: ignore counts.log lines before this UTC time
(2026-11-23T10:44:00). Repetitions are matched in order; the last gateway of a run is never
stopped by a reset, so it has no figure.
"""
import re, sys, statistics
counts, log = sys.argv[1], sys.argv[2]
since = sys.argv[3] if len(sys.argv) > 3 else ""
pairs, start = [], None
for line in open(counts):
    if line[:20] < since: continue
    m = re.search(r"started: cpu_s=([\d.]+)", line)
    if m: start = float(m[1]); continue
    m = re.search(r"stopping: cpu_s=([\d.]+) instances=(\d+)", line)
    if m and start is not None:
        pairs.append((float(m[1]) - start) / int(m[2]) * 1000); start = None
runs = [(m[1], m[2]) for m in re.finditer(r"^\[(\S+)\] ingest ingest storescu x(\d)", open(log).read(), re.M) if m[1] != "orthanc-nodelay"]
out = {}
for (name, n), cpu in zip(runs, pairs):
    out.setdefault((name, n), []).append(cpu)
for k in sorted(out):
    v = out[k]; print(k, " ".join(f"{x:.2f}" for x in v), "median %.2f ms CPU/instance" % statistics.median(v))
