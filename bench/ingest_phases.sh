#!/bin/bash
# Where the time of a C-STORE goes: per-phase wall and CPU time in every gateway process.
#
#   bench/ingest_phases.sh N ASSOCS [WORKERS]
#
# Starts a private `drimbox serve` (this working tree, SQLite, fresh data directory,
# DRIMBOX_DICOM_WORKERS=WORKERS, default 2) with bench/phases/sitecustomize.py loaded, sends
# the first N slices of the ingest corpus over ASSOCS storescu associations (CONTIG=1: each
# association a contiguous chunk, i.e. its own study, as the shared harness does; otherwise
# slices dealt in turn), prints the rate and each process's table (calls, wall and CPU per
# call; phases named after the functions in bench/phases/sitecustomize.py).
# Environment: CORPUS (/tmp/h3-corpus/ingest), PORT (11660; HTTP is PORT+7000), WORK
# (/tmp/ingest-phases).
set -u
N=${1:?usage: bench/ingest_phases.sh N ASSOCS [WORKERS]} A=${2:?} W=${3:-2}
REPO=$(cd "$(dirname "$0")/.." && pwd)
CORPUS=${CORPUS:-/tmp/h3-corpus/ingest} PORT=${PORT:-11660} WORK=${WORK:-/tmp/ingest-phases}
HTTP=$((PORT + 7000))
rm -rf "$WORK"; mkdir -p "$WORK/data"
(cd "$REPO" && INGEST_PHASES=$WORK PYTHONPATH=$REPO/bench/phases DRIMBOX_DATA_DIR=$WORK/data \
   DRIMBOX_DICOM_PORT=$PORT DRIMBOX_HTTP_PORT=$HTTP DRIMBOX_DICOM_WORKERS=$W \
   exec .venv/bin/python -m gateway.cli serve) > "$WORK/gw.log" 2>&1 &
gw=$!
for _ in $(seq 1 120); do curl -s -o /dev/null "http://127.0.0.1:$HTTP/healthz" && break; sleep 0.5; done
sleep 1
mapfile -t FILES < <(find "$CORPUS" -type f | sort | head -"$N")
N=${#FILES[@]}
start=$(date +%s.%N); pids=()
for ((i = 0; i < A; i++)); do
  if [ -n "${CONTIG:-}" ]; then c=$((N / A)); mine=("${FILES[@]:$((i * c)):$c}")
  else mine=(); for ((j = i; j < N; j += A)); do mine+=("${FILES[j]}"); done; fi
  TCP_NODELAY=1 storescu -q -aet BENCH -aec DRIMBOX 127.0.0.1 "$PORT" "${mine[@]}" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
end=$(date +%s.%N)
python3 -c "print('N=$N ASSOCS=$A WORKERS=$W: %.1f inst/s' % ($N / ($end - $start)))"
sleep 2.5
for f in "$WORK"/phases-*.txt; do echo "== process ${f##*-}"; cat "$f"; done
kill "$gw"; wait "$gw" 2>/dev/null
