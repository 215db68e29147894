#!/usr/bin/env bash
# The ingest benchmark in one run: Orthanc (TCP_NODELAY, its best) and this worktree's
# gateway, same corpus, dcmtk storescu with TCP_NODELAY=1, 1 and 4 associations.
#
#   bench/compare.sh [LABEL] [REPS]      results in /tmp/h3-results/LABEL (REPORT.md)
#
# The gateway runs from a `git archive` of REF (default HEAD) in /tmp/h3-snap/LABEL, so
# that editing the worktree while it runs does not change what is measured.
# SKIP_ORTHANC=1 measures the gateway alone; extra DRIMBOX_* variables are passed through.
#
# Needs: the shared harness in ../shared/bench (SHARED_BENCH), a corpus made by its
# gen_corpus.py (CORPUS, default /tmp/h3-corpus), a Python with its requirements (BENCH_PY).
# Orthanc runs on private ports (DICOM 14342, HTTP 18142) so as not to meet another Orthanc;
# the gateway is started and emptied by run_gateway.sh before every repetition.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}"
PY="${BENCH_PY:-/tmp/h3-benchvenv/bin/python}"
CORPUS="${CORPUS:-/tmp/h3-corpus}"
LABEL="${1:-run}"
REPS="${2:-3}"
OUT="/tmp/h3-results/$LABEL"
SNAP="/tmp/h3-snap/$LABEL"
rm -rf "$SNAP"; mkdir -p "$SNAP"
git -C "$HERE/.." archive "${REF:-HEAD}" gateway dicomweb | tar -x -C "$SNAP"
echo "gateway source: $(git -C "$HERE/.." rev-parse --short "${REF:-HEAD}") -> $SNAP"
ORTHANC_ENV="ORTHANC_BENCH_DIR=/tmp/h3-orthanc ORTHANC_HTTP_PORT=18142 ORTHANC_DICOM_PORT=14342 ORTHANC_TCP_NODELAY=1"
TARGETS=()
if [[ "${SKIP_ORTHANC:-0}" != 1 ]]; then
  TARGETS+=(--target "name=orthanc-nodelay;scp=127.0.0.1:14342;aet=ORTHANC;dicomweb=http://127.0.0.1:18142/dicom-web;reset=env $ORTHANC_ENV $SHARED/run_orthanc.sh reset")
fi
TARGETS+=(--target "name=drimbox;scp=127.0.0.1:11412;aet=DRIMBOX;dicomweb=;reset=GW_SRC=$SNAP $HERE/run_gateway.sh reset")
cd "$SHARED"
"$PY" run_all.py --reps "$REPS" --tools storescu --assocs 1,4 --corpus "$CORPUS" --out "$OUT" \
  --skip ingest_index,qido,wado,physical "${TARGETS[@]}"
"$HERE/run_gateway.sh" count            # the last repetition, not checked by a reset
[[ "${SKIP_ORTHANC:-0}" == 1 ]] || env $ORTHANC_ENV "$SHARED/run_orthanc.sh" stop
tail -n 3 "${GW_BENCH_DIR:-/tmp/h3-gw-bench}/counts.log"
