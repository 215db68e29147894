#!/usr/bin/env bash
# The DICOMweb benchmark in one run: the shared harness's QIDO-RS and WADO-RS steps
# (../shared/bench/run_all.py, ingest steps skipped) against Orthanc (TCP_NODELAY, its best)
# and this worktree's gateway, both emptied first and loaded by the harness (--load, C-STORE).
#
#   bench/run_dicomweb.sh [LABEL] [REPS] [WADO_REPS]    results in /tmp/h10-results/LABEL (REPORT.md)
#
# Private ports so as not to meet another Orthanc or gateway: Orthanc DICOM 14442 / HTTP 18242
# (data /tmp/h10-orthanc), gateway DICOM 11512 / HTTP 18512 (data /tmp/h10-gw-bench).
# The gateway runs from a `git archive` of REF (default HEAD) in /tmp/h10-snap/LABEL.
# GW_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/h3bench_h10 runs it on PostgreSQL
# (run_gateway.sh drops and re-creates that database; its name must start with h3bench).
# RSS of the gateway is sampled every 50 ms during the whole run into LOG/rss.tsv.
# KEEP=1 leaves both servers running (loaded) at the end, for drim_reference.py or profiling.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}"
PY="${BENCH_PY:-/tmp/h3-benchvenv/bin/python}"
CORPUS="${CORPUS:-/tmp/h3-corpus}"
LABEL="${1:-dicomweb}"
REPS="${2:-3}"
WADO_REPS="${3:-5}"
OUT="/tmp/h10-results/$LABEL"
SNAP="/tmp/h10-snap/$LABEL"
rm -rf "$SNAP" "$OUT"; mkdir -p "$SNAP" "$OUT"
git -C "$HERE/.." archive "${REF:-HEAD}" gateway dicomweb | tar -x -C "$SNAP"
echo "gateway source: $(git -C "$HERE/.." rev-parse --short "${REF:-HEAD}") -> $SNAP" | tee "$OUT/info.txt"
export GW_BENCH_DIR=/tmp/h10-gw-bench GW_DICOM_PORT=11512 GW_HTTP_PORT=18512 GW_SRC="$SNAP"
ORTHANC_ENV=(ORTHANC_BENCH_DIR=/tmp/h10-orthanc ORTHANC_HTTP_PORT=18242 ORTHANC_DICOM_PORT=14442 ORTHANC_TCP_NODELAY=1)
env "${ORTHANC_ENV[@]}" "$SHARED/run_orthanc.sh" reset
"$HERE/run_gateway.sh" reset
GW_PID="$(cat "$GW_BENCH_DIR/gateway.pid")"
( while kill -0 "$GW_PID" 2>/dev/null; do
    printf '%s\t%s\n' "$(date +%s.%N)" "$(awk '/^VmRSS/{print $2}' "/proc/$GW_PID/status" 2>/dev/null)"
    sleep 0.05
  done ) > "$OUT/rss.tsv" &
SAMPLER=$!
{ date -u +%FT%TZ; uptime; } | tee -a "$OUT/info.txt"
cd "$SHARED"
"$PY" run_all.py --reps "$REPS" --wado-reps "$WADO_REPS" --corpus "$CORPUS" --out "$OUT" \
  --skip ingest_index,ingest,physical \
  --target "name=orthanc-nodelay;scp=127.0.0.1:14442;aet=ORTHANC;dicomweb=http://127.0.0.1:18242/dicom-web" \
  --target "name=drimbox;scp=127.0.0.1:11512;aet=DRIMBOX;dicomweb=http://127.0.0.1:18512/dicom-web"
{ date -u +%FT%TZ; uptime; "$HERE/run_gateway.sh" count; } | tee -a "$OUT/info.txt"
kill "$SAMPLER" 2>/dev/null || true
if [[ "${KEEP:-0}" != 1 ]]; then
  env "${ORTHANC_ENV[@]}" "$SHARED/run_orthanc.sh" stop
  "$HERE/run_gateway.sh" stop
fi
echo "report: $OUT/REPORT.md"
