#!/usr/bin/env bash
# After `KEEP=1 bench/run_dicomweb.sh LABEL` (both servers running and loaded): the same QIDO-RS
# and WADO-RS requests with Orthanc and the gateway alternating, so that the shared machine's
# changing load hits both alike, then the DRIM-M reference shape (bench/drim_reference.py).
#
#   bench/interleave_dicomweb.sh LABEL [ROUNDS] [PAIRS]     output in /tmp/h10-results/LABEL/interleave
#
# QIDO: ROUNDS x (bench_qido.py --rounds 1 on Orthanc, then on the gateway), 200 requests per
# kind. WADO: interleave_wado.py, PAIRS pairs of whole-study (as stored, default syntax) and
# metadata requests, then 200 pairs of one-instance WADO-RS and of QIDO by PatientID alternating
# request by request (WADO_KINDS to choose). DRIM-M (skipped with DRIM=0): the 1,300-image JPEG-LS series (DRIM_DIR, generated if missing)
# loaded into both if absent, then ROUNDS x (Orthanc, gateway) x (as stored, transcoded).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SHARED="${SHARED_BENCH:-$(cd "$HERE/../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}"
PY="${BENCH_PY:-/tmp/h3-benchvenv/bin/python}"
GWPY="$ROOT/.venv/bin/python"
CORPUS="${CORPUS:-/tmp/h3-corpus}"
DRIM_DIR="${DRIM_DIR:-/tmp/h10-drim-ref}"
LABEL="${1:?label}"
ROUNDS="${2:-3}"
PAIRS="${3:-10}"
OUT="/tmp/h10-results/$LABEL/interleave"
mkdir -p "$OUT"
O=http://127.0.0.1:18242/dicom-web
G=http://127.0.0.1:18512/dicom-web
GW_PID="$(cat /tmp/h10-gw-bench/gateway.pid)"
log() { tee -a "$OUT/log.txt"; }
{ date -u +%FT%TZ; uptime; } | log
for r in $(seq 1 "$ROUNDS"); do
  for t in "orthanc-nodelay $O" "drimbox $G"; do
    set -- $t
    "$PY" "$SHARED/bench_qido.py" --name "$1" --dicomweb "$2" --scp 127.0.0.1:1 --aet X \
      --corpus "$CORPUS" --rounds 1 --requests 200 --out "$OUT/qido-$1-r$r" | grep 'round 1/1' | log
  done
done
{ date -u +%FT%TZ; uptime; } | log
"$PY" "$HERE/interleave_wado.py" --pairs "$PAIRS" --a "orthanc-nodelay=$O" --b "drimbox=$G" \
  --kinds "${WADO_KINDS:-study_ts_any,study_default,metadata,instance,qido_patientid}" \
  --pid "$GW_PID" --corpus "$CORPUS" --out "$OUT/wado.json" | log
{ date -u +%FT%TZ; uptime; } | log
if [[ "${DRIM:-1}" != 0 ]]; then
[[ -f "$DRIM_DIR/series.json" ]] || "$GWPY" "$HERE/drim_reference.py" gen --out "$DRIM_DIR"
SERIES="$("$GWPY" -c "import json,sys; print(json.load(open(sys.argv[1]))['StudyInstanceUID'])" "$DRIM_DIR/series.json")"
for t in "ORTHANC 14442 $O" "DRIMBOX 11512 $G"; do
  set -- $t
  n="$(curl -s -H 'Accept: application/dicom+json' "$3/studies?StudyInstanceUID=$SERIES&includefield=00201208" \
       | "$GWPY" -c "import json,sys; r=json.load(sys.stdin); print(r[0]['00201208']['Value'][0] if r else 0)")"
  [[ "$n" == 1300 ]] || "$GWPY" "$HERE/drim_reference.py" load --dir "$DRIM_DIR" --scp "127.0.0.1:$2" --aet "$1" | log
done
for r in $(seq 1 "$ROUNDS"); do
  "$GWPY" "$HERE/drim_reference.py" time --dir "$DRIM_DIR" --name orthanc-nodelay --dicomweb "$O" \
    --reps 1 --out "$OUT/drim-orthanc-r$r.json" | grep 'rep 1/1' | log
  "$GWPY" "$HERE/drim_reference.py" time --dir "$DRIM_DIR" --name drimbox --dicomweb "$G" \
    --reps 1 --pid "$GW_PID" --out "$OUT/drim-drimbox-r$r.json" | grep 'rep 1/1' | log
done
fi
{ date -u +%FT%TZ; uptime; } | log
"$GWPY" - "$OUT" <<'PY' | log
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
mmm = lambda v: f"{min(v):.2f} / {statistics.median(v):.2f} / {max(v):.2f}"
q = {}
for p in sorted(out.glob("qido-*-r*/qido.json")):
    d = json.loads(p.read_text())
    for r in d["results"]:
        q.setdefault((r["kind"], d["target"]), []).append((r["rounds"][0]["p50_ms"], r["rounds"][0]["p95_ms"]))
print("QIDO interleaved (ms, min / median / max over rounds):")
for kind in ("patientid", "patientid_issuer", "date_30d", "date_365d"):
    o, g = q.get((kind, "orthanc-nodelay"), []), q.get((kind, "drimbox"), [])
    if o and g:
        ratio = [b[1] / a[1] for a, b in zip(o, g)]
        print(f"  {kind}: orthanc p50 {mmm([x[0] for x in o])} p95 {mmm([x[1] for x in o])} | "
              f"drimbox p50 {mmm([x[0] for x in g])} p95 {mmm([x[1] for x in g])} | p95 ratio per round {mmm(ratio)}")
PY
