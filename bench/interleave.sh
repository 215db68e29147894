#!/usr/bin/env bash
# Same benchmark as compare.sh, but Orthanc and the gateway alternate repetition by
# repetition (Orthanc x1, gateway x1, Orthanc x4, gateway x4, then again), so that a change
# of load on a shared machine hits both alike; prints the ratio of each pair.
#
#   bench/interleave.sh [LABEL] [ROUNDS]     logs and JSON in /tmp/h3-results/LABEL
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}"
PY="${BENCH_PY:-/tmp/h3-benchvenv/bin/python}"
CORPUS="${CORPUS:-/tmp/h3-corpus}"
LABEL="${1:-interleave}"
ROUNDS="${2:-3}"
OUT="/tmp/h3-results/$LABEL"
SNAP="/tmp/h3-snap/$LABEL"
rm -rf "$SNAP"; mkdir -p "$SNAP" "$OUT"
git -C "$HERE/.." archive "${REF:-HEAD}" gateway dicomweb | tar -x -C "$SNAP"
ORTHANC_ENV="ORTHANC_BENCH_DIR=/tmp/h3-orthanc ORTHANC_HTTP_PORT=18142 ORTHANC_DICOM_PORT=14342 ORTHANC_TCP_NODELAY=1"
cd "$SHARED"
one() {  # one NAME SCP AET DICOMWEB RESET ASSOCS TAG
  "$PY" bench_ingest.py --name "$1" --scp "$2" --aet "$3" --dicomweb "$4" --corpus "$CORPUS" \
    --out "$OUT/$1" --set ingest --tools storescu --assocs "$6" --reps 1 --reset-cmd "$5" \
    --scu-tcp-nodelay 1 --tag "$7" | grep ' rep 1/1' | tee -a "$OUT/log.txt"
}
for r in $(seq 1 "$ROUNDS"); do
  for n in 1 4; do
    one orthanc-nodelay 127.0.0.1:14342 ORTHANC http://127.0.0.1:18142/dicom-web \
      "env $ORTHANC_ENV $SHARED/run_orthanc.sh reset" "$n" "r$r-x$n"
    one drimbox 127.0.0.1:11412 DRIMBOX "" "GW_SRC=$SNAP $HERE/run_gateway.sh reset" "$n" "r$r-x$n"
    "$HERE/run_gateway.sh" count | sed "s/^/  gateway index after round $r x$n: /" | tee -a "$OUT/log.txt"
  done
done
env $ORTHANC_ENV "$SHARED/run_orthanc.sh" stop
python3 - "$OUT/log.txt" <<'PY'
import re, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    m = re.match(r"\[(\S+)\] ingest ingest storescu x(\d) .*?: \S+s ([\d.]+) inst/s", line)
    if m:
        rates.setdefault((m[1], int(m[2])), []).append(float(m[3]))
for n in (1, 4):
    o, g = rates.get(("orthanc-nodelay", n), []), rates.get(("drimbox", n), [])
    pairs = [b / a for a, b in zip(o, g)]
    mmm = lambda v: f"{min(v):.1f} / {statistics.median(v):.1f} / {max(v):.1f}"
    print(f"x{n}: orthanc {mmm(o)}  gateway {mmm(g)}  ratio per pair {[round(p, 2) for p in pairs]}"
          f"  median ratio {statistics.median(pairs):.2f}")
PY
