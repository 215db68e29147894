#!/usr/bin/env bash
# Before / after of a gateway change on the DICOMweb benchmark's corpus, each against Orthanc
# in the same minutes: one-instance WADO-RS, QIDO by PatientID and study metadata, the servers
# alternating request by request (bench/interleave_wado.py), BEFORE and AFTER taking turns.
#
#   bench/interleave_ab.sh BEFORE_REF [AFTER_REF] [ROUNDS] [REQUESTS]   -> /tmp/h10-results/ab/log.txt
#
# 1. Orthanc (nodelay, /tmp/h10-orthanc, 14442/18242) and the AFTER gateway (`git archive` of
#    AFTER_REF, default HEAD; /tmp/h10-gw-bench, 11512/18512) are reset and loaded by the
#    harness's own --load (bench_qido.py, bench_wado.py with a few requests): 1,820 instances.
# 2. The AFTER gateway's data dir is copied (index and files) and the BEFORE gateway runs on the
#    copy (/tmp/h10-gw-before, 11712/18712): both gateways hold the same index.
# 3. ROUNDS x (Orthanc vs AFTER, then Orthanc vs BEFORE): REQUESTS pairs of one instance and of
#    QIDO by PatientID, 10 pairs of study metadata.
# All three are left running (interleave_dicomweb.sh can follow for the date ranges);
# `bench/interleave_ab.sh stop` stops them.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}"
PY="${BENCH_PY:-/tmp/h3-benchvenv/bin/python}"
CORPUS="${CORPUS:-/tmp/h3-corpus}"
ORTHANC_ENV=(ORTHANC_BENCH_DIR=/tmp/h10-orthanc ORTHANC_HTTP_PORT=18242 ORTHANC_DICOM_PORT=14442 ORTHANC_TCP_NODELAY=1)
AFTER_ENV=(GW_BENCH_DIR=/tmp/h10-gw-bench GW_DICOM_PORT=11512 GW_HTTP_PORT=18512)
BEFORE_ENV=(GW_BENCH_DIR=/tmp/h10-gw-before GW_DICOM_PORT=11712 GW_HTTP_PORT=18712)
if [[ "${1:-}" == stop ]]; then
  env "${ORTHANC_ENV[@]}" "$SHARED/run_orthanc.sh" stop || true
  env "${AFTER_ENV[@]}" "$HERE/run_gateway.sh" stop || true
  env "${BEFORE_ENV[@]}" "$HERE/run_gateway.sh" stop || true
  exit 0
fi
BEFORE="${1:?BEFORE_REF}"
AFTER="${2:-HEAD}"
ROUNDS="${3:-2}"
REQUESTS="${4:-200}"
OUT=/tmp/h10-results/ab
rm -rf "$OUT" /tmp/h10-snap/ab-before /tmp/h10-snap/ab-after
mkdir -p "$OUT" /tmp/h10-snap/ab-before /tmp/h10-snap/ab-after
git -C "$HERE/.." archive "$BEFORE" gateway dicomweb adapters | tar -x -C /tmp/h10-snap/ab-before
git -C "$HERE/.." archive "$AFTER" gateway dicomweb adapters | tar -x -C /tmp/h10-snap/ab-after
log() { tee -a "$OUT/log.txt"; }
echo "before $(git -C "$HERE/.." rev-parse --short "$BEFORE"), after $(git -C "$HERE/.." rev-parse --short "$AFTER")" | log

env "${ORTHANC_ENV[@]}" "$SHARED/run_orthanc.sh" reset
env "${BEFORE_ENV[@]}" "$HERE/run_gateway.sh" stop || true
env "${AFTER_ENV[@]}" GW_SRC=/tmp/h10-snap/ab-after "$HERE/run_gateway.sh" reset
O=http://127.0.0.1:18242/dicom-web
A=http://127.0.0.1:18512/dicom-web
B=http://127.0.0.1:18712/dicom-web
for t in "orthanc-nodelay 127.0.0.1:14442 ORTHANC $O" "drimbox 127.0.0.1:11512 DRIMBOX $A"; do
  set -- $t
  common=(--name "$1" --scp "$2" --aet "$3" --dicomweb "$4" --corpus "$CORPUS" --out "$OUT/load-$1")
  "$PY" "$SHARED/bench_qido.py" "${common[@]}" --load --rounds 1 --requests 5 --kinds patientid | tail -1
  "$PY" "$SHARED/bench_wado.py" "${common[@]}" --load --reps 1 --kinds metadata | tail -1
done
env "${AFTER_ENV[@]}" "$HERE/run_gateway.sh" count | log
env "${AFTER_ENV[@]}" "$HERE/run_gateway.sh" stop
rm -rf /tmp/h10-gw-before && mkdir -p /tmp/h10-gw-before && cp -a /tmp/h10-gw-bench/data /tmp/h10-gw-before/data
env "${AFTER_ENV[@]}" GW_SRC=/tmp/h10-snap/ab-after "$HERE/run_gateway.sh" start
env "${BEFORE_ENV[@]}" GW_SRC=/tmp/h10-snap/ab-before "$HERE/run_gateway.sh" start
sleep 5  # the metadata warmer after the loads
for r in $(seq 1 "$ROUNDS"); do
  for t in "after $A /tmp/h10-gw-bench" "before $B /tmp/h10-gw-before"; do
    set -- $t
    { echo "round $r, $1: $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"; } | log
    "$PY" "$HERE/interleave_wado.py" --a "orthanc-nodelay=$O" --b "drimbox-$1=$2" \
      --kinds instance,qido_patientid,metadata --requests "$REQUESTS" --pairs 10 \
      --pid "$(cat "$3/gateway.pid")" --corpus "$CORPUS" --out "$OUT/$1-r$r.json" | log
  done
done
{ date -u +%FT%TZ; uptime; } | log
