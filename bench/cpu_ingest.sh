#!/bin/bash
# CPU per received C-STORE instance, gateway alone, versions alternated run by run.
#
#   bench/cpu_ingest.sh ROUNDS REF [REF ...]
#
# REF is a git ref (snapshotted with `git archive` into $WORK/src-<ref>, so later edits do
# not change it) or "." (this working tree). Each round runs every REF once, in turn: a
# private `drimbox serve` (fresh data directory, SQLite, fsync on; settings from the
# environment, so DRIMBOX_* variables apply), then N instances of the corpus in A storescu
# associations (TCP_NODELAY=1). CPU is the user + system ticks of the gateway's process tree
# (main process and DICOM workers; /proc/PID/stat), read just before the first storescu
# starts and just after the last one ends ("during": the figure to compare; the metadata
# warmer waits while instances keep arriving), and again once the tree has been idle for
# 2 s ("settled": warmer included). CPU is measured instead of wall time because the
# machine is shared: the load of other processes changes the rate far more than the CPU.
#
# Environment: N (500), A (associations, 1), W (DICOM workers, 0), CORPUS
# (/tmp/h3-corpus/ingest), PORT (11498; HTTP is PORT+7000), WORK (/tmp/cpu-ingest), VENV
# (this repository's .venv). Prints one line per run, then the median per REF.
set -u
ROUNDS=${1:?usage: bench/cpu_ingest.sh ROUNDS REF [REF ...]}; shift
[ $# -ge 1 ] || { echo "usage: bench/cpu_ingest.sh ROUNDS REF [REF ...]" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-500} A=${A:-1} W=${W:-0}
CORPUS=${CORPUS:-/tmp/h3-corpus/ingest} PORT=${PORT:-11498} WORK=${WORK:-/tmp/cpu-ingest}
VENV=${VENV:-$REPO/.venv}
HTTP=$((PORT + 7000))
mkdir -p "$WORK"
LOG=$WORK/runs.txt
: > "$LOG"

src_of() {  # the directory to run a REF from
  if [ "$1" = . ]; then echo "$REPO"; return; fi
  local dir=$WORK/src-$(echo "$1" | tr '/' '_')
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir" && git -C "$REPO" archive "$1" | tar -x -C "$dir" || exit 1
    ln -sfn "$REPO/.cache" "$dir/.cache"
  fi
  echo "$dir"
}

snapshot() {  # JSON: {pid: [user + system ticks, {tid: ticks of each live thread}]} of the tree
  python3 - "$1" <<'EOF2'
import json, os, sys
def stat(path):
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()
children = {}
for t in os.listdir("/proc"):
    if t.isdigit():
        try:
            children.setdefault(int(stat(f"/proc/{t}/stat")[1]), []).append(int(t))
        except OSError:
            pass
todo, out = [int(sys.argv[1])], {}
while todo:
    p = todo.pop()
    try:
        st = stat(f"/proc/{p}/stat")
        threads = {}
        for t in os.listdir(f"/proc/{p}/task"):
            try:
                tst = stat(f"/proc/{p}/task/{t}/stat")
                threads[t] = int(tst[11]) + int(tst[12])
            except OSError:
                pass
        out[p] = [int(st[11]) + int(st[12]), threads]
    except OSError:
        pass
    todo += children.get(p, [])
print(json.dumps(out))
EOF2
}

delta() {  # SNAP0 SNAP1 -> "total ended": ticks of the tree, and of threads that ended between
  python3 - "$1" "$2" <<'EOF2'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
total = ended = 0
for pid, (t1, th1) in b.items():
    t0, th0 = a.get(pid, [0, {}])
    total += t1 - t0
    # a process's ticks include its ended threads; the live ones are counted separately
    ended += (t1 - t0) - sum(v - th0.get(tid, 0) for tid, v in th1.items())
print(total, ended)
EOF2
}

mapfile -t FILES < <(find "$CORPUS" -type f | sort | head -"$N")
N=${#FILES[@]}
HZ=$(getconf CLK_TCK)

run_one() {  # REF -> one result line
  local ref=$1 src data gw s0 s1 s2 t0 t1 prev now d1 d2
  src=$(src_of "$ref")
  data=$WORK/data; rm -rf "$data"; mkdir -p "$data"
  (cd "$src" && PYTHONPATH=$src DRIMBOX_DATA_DIR=$data DRIMBOX_DICOM_PORT=$PORT \
     DRIMBOX_HTTP_PORT=$HTTP DRIMBOX_DICOM_WORKERS=$W \
     exec "$VENV/bin/python" -m gateway.cli serve) > "$WORK/gw.log" 2>&1 &
  gw=$!
  for _ in $(seq 1 120); do
    curl -s -o /dev/null "http://127.0.0.1:$HTTP/healthz" && break; sleep 0.5
  done
  if ! kill -0 "$gw" 2>/dev/null || ! curl -s -o /dev/null "http://127.0.0.1:$HTTP/healthz"; then
    echo "$ref: the gateway did not start (port $PORT or $HTTP in use?), see $WORK/gw.log" >&2
    kill "$gw" 2>/dev/null; exit 1
  fi
  sleep 1
  s0=$(snapshot $gw); t0=$(date +%s.%N)
  local pids=() i
  for ((i = 0; i < A; i++)); do
    TCP_NODELAY=1 storescu -q -aet BENCH -aec DRIMBOX 127.0.0.1 "$PORT" \
      $(for ((j = i; j < N; j += A)); do echo "${FILES[j]}"; done) &
    pids+=($!)
  done
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  t1=$(date +%s.%N); s1=$(snapshot $gw)
  sleep 0.5  # the association threads end once the peer has gone
  prev=-1; now=$(snapshot $gw)
  while [ "$(delta "$s0" "$now")" != "$prev" ]; do
    prev=$(delta "$s0" "$now"); sleep 2; now=$(snapshot $gw)
  done
  s2=$now
  d1=$(delta "$s0" "$s1"); d2=$(delta "$s0" "$s2")
  kill "$gw"; wait "$gw" 2>/dev/null
  python3 -c "
n, d, hz = $N, $t1 - $t0, $HZ
during, _ = map(int, '$d1'.split()); settled, assoc = map(int, '$d2'.split())
ms = lambda t: t * 1000 / hz / n
print(f'$ref rc=$rc {n} inst {n/d:6.1f} inst/s  assoc {ms(assoc):5.2f}  during {ms(during):5.2f}  settled {ms(settled):5.2f} ms/inst  load $(cut -d' ' -f1-3 /proc/loadavg | tr ' ' /)')"
}

for ((r = 1; r <= ROUNDS; r++)); do
  for ref in "$@"; do run_one "$ref" | tee -a "$LOG"; done
done
python3 - "$LOG" "$@" <<'EOF'
import statistics, sys
lines = open(sys.argv[1]).read().split("\n")
for ref in sys.argv[2:]:
    rows = [l.split() for l in lines if l.split()[:1] == [ref]]
    col = lambda name: [float(r[r.index(name) + 1]) for r in rows]
    rate = [float(r[r.index("inst/s") - 1]) for r in rows]
    print(f"median {ref} ({len(rows)} runs), ms/inst: " + ", ".join(
        f"{name} {statistics.median(col(name)):.2f} ({min(col(name)):.2f}-{max(col(name)):.2f})"
        for name in ("assoc", "during", "settled")) + f"; {statistics.median(rate):.1f} inst/s")
EOF
