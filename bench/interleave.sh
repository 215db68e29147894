#!/usr/bin/env bash
# Same benchmark as compare.sh, but Orthanc and the gateway alternate repetition by
# repetition (Orthanc x1, gateway x1, Orthanc x4, gateway x4, then again), so that a change
# of load on a shared machine hits both alike; prints the ratio of each pair.
#
#   bench/interleave.sh [LABEL] [ROUNDS]     logs and JSON in $RESULTS_DIR/LABEL
#
# Private ports and directories (defaults in brackets) so that a concurrent benchmark on the
# same machine is not disturbed: RESULTS_DIR [/tmp/h3-results], SNAP_DIR [/tmp/h3-snap],
# ORTHANC_BENCH_DIR [/tmp/h3-orthanc], ORTHANC_DICOM_PORT [14342], ORTHANC_HTTP_PORT [18142],
# GW_DICOM_PORT [11412] (and run_gateway.sh's GW_* variables, e.g. GW_BENCH_DIR).
#
# GW_VARIANTS: gateway configurations measured in turn after each Orthanc repetition, as
# space-separated NAME or NAME:VAR=VALUE,VAR=VALUE (e.g. "w0:DRIMBOX_DICOM_WORKERS=0
# w2:DRIMBOX_DICOM_WORKERS=2"); default one variant "drimbox" with the defaults. NAME@COMMIT
# runs that commit's code instead of REF's (e.g. "before@332f9cd after"): before / after in
# the same rounds.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}"
PY="${BENCH_PY:-/tmp/h3-benchvenv/bin/python}"
CORPUS="${CORPUS:-/tmp/h3-corpus}"
LABEL="${1:-interleave}"
ROUNDS="${2:-3}"
OUT="${RESULTS_DIR:-/tmp/h3-results}/$LABEL"
SNAP="${SNAP_DIR:-/tmp/h3-snap}/$LABEL"
O_DIR="${ORTHANC_BENCH_DIR:-/tmp/h3-orthanc}" O_DICOM="${ORTHANC_DICOM_PORT:-14342}"
O_HTTP="${ORTHANC_HTTP_PORT:-18142}" G_DICOM="${GW_DICOM_PORT:-11412}"
rm -rf "$SNAP"; mkdir -p "$SNAP" "$OUT"
git -C "$HERE/.." archive "${REF:-HEAD}" gateway dicomweb adapters | tar -x -C "$SNAP"
ORTHANC_ENV="ORTHANC_BENCH_DIR=$O_DIR ORTHANC_HTTP_PORT=$O_HTTP ORTHANC_DICOM_PORT=$O_DICOM ORTHANC_TCP_NODELAY=1"
cd "$SHARED"
one() {  # one NAME SCP AET DICOMWEB RESET ASSOCS TAG
  "$PY" bench_ingest.py --name "$1" --scp "$2" --aet "$3" --dicomweb "$4" --corpus "$CORPUS" \
    --out "$OUT/$1" --set ingest --tools storescu --assocs "$6" --reps 1 --reset-cmd "$5" \
    --scu-tcp-nodelay 1 --tag "$7" | grep ' rep 1/1' | tee -a "$OUT/log.txt"
}
read -r -a VARIANTS <<< "${GW_VARIANTS:-drimbox}"
for r in $(seq 1 "$ROUNDS"); do
  for n in 1 4; do
    one orthanc-nodelay "127.0.0.1:$O_DICOM" ORTHANC "http://127.0.0.1:$O_HTTP/dicom-web" \
      "env $ORTHANC_ENV $SHARED/run_orthanc.sh reset" "$n" "r$r-x$n"
    for v in "${VARIANTS[@]}"; do
      name="${v%%:*}"; vars=""; [[ "$v" == *:* ]] && vars="${v#*:}"
      src="$SNAP"
      if [[ "$name" == *@* ]]; then
        src="$SNAP-${name#*@}"
        [[ -d "$src" ]] || { mkdir -p "$src"; git -C "$HERE/.." archive "${name#*@}" gateway dicomweb adapters | tar -x -C "$src"; }
      fi
      one "$name" "127.0.0.1:$G_DICOM" DRIMBOX "" \
        "env ${vars//,/ } GW_SRC=$src $HERE/run_gateway.sh reset" "$n" "r$r-x$n"
      "$HERE/run_gateway.sh" count | sed "s/^/  $name index after round $r x$n: /" | tee -a "$OUT/log.txt"
    done
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
names = sorted({k[0] for k in rates if k[0] != "orthanc-nodelay"})
mmm = lambda v: f"{min(v):.1f} / {statistics.median(v):.1f} / {max(v):.1f}"
for n in (1, 4):
    o = rates.get(("orthanc-nodelay", n), [])
    print(f"x{n}: orthanc {mmm(o)}")
    for name in names:
        g = rates.get((name, n), [])
        pairs = [b / a for a, b in zip(o, g)]
        print(f"x{n}:   {name} {mmm(g)}  ratio per pair {[round(p, 2) for p in pairs]}"
              f"  median ratio {statistics.median(pairs):.2f}")
PY
