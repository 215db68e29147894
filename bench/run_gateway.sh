#!/usr/bin/env bash
# Run a private `drimbox serve` from this worktree for the ingest benchmark (../shared/bench).
#
#   run_gateway.sh start     start in the background, wait until the DICOM port and /healthz answer
#   run_gateway.sh stop      SIGTERM the gateway started here (recorded PID), wait for it to exit
#   run_gateway.sh reset     stop, delete the data directory, start again (empty gateway): the
#                            harness's --reset-cmd; logs the previous run's instance count first
#   run_gateway.sh count     print "instances=N studies=N" from the index (SQLite or PostgreSQL)
#   run_gateway.sh status    PID and ports
#
# Settings (environment variables, defaults in brackets):
#   GW_BENCH_DIR    [/tmp/h3-gw-bench]  data dir (data/), log, pid and count log live here
#   GW_DICOM_PORT   [11412]             GW_HTTP_PORT [18412]   GW_AET [DRIMBOX]
#   GW_DATABASE_URL [unset = SQLite in data/]  e.g. postgresql://postgres@127.0.0.1:5432/h3bench
#                   (the PostgreSQL database is dropped and re-created on reset)
#   GW_VENV         [the worktree's .venv]
#   GW_SRC          [the worktree]  source tree to run (e.g. a `git archive` of a commit, so that
#                   editing the worktree during a benchmark does not change what is measured)
#   Any DRIMBOX_* variable is passed through (e.g. DRIMBOX_MAX_PDU_SIZE). fsync stays on: the
#   gateway has no way to turn it off.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DIR="${GW_BENCH_DIR:-/tmp/h3-gw-bench}"
DICOM_PORT="${GW_DICOM_PORT:-11412}"
HTTP_PORT="${GW_HTTP_PORT:-18412}"
AET="${GW_AET:-DRIMBOX}"
VENV="${GW_VENV:-$ROOT/.venv}"
DB_URL="${GW_DATABASE_URL:-}"
SRC="${GW_SRC:-$ROOT}"
DATA="$DIR/data"
PIDFILE="$DIR/gateway.pid"
LOG="$DIR/gateway.log"

die() { echo "run_gateway.sh: $*" >&2; exit 1; }

our_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  [[ -n "$pid" && -r "/proc/$pid/environ" ]] || return 1
  tr '\0' '\n' < "/proc/$pid/environ" | grep -qxF -- "DRIMBOX_DATA_DIR=$DATA" || return 1
  echo "$pid"
}

count() {
  if [[ -n "$DB_URL" ]]; then
    psql -qtA "${DB_URL#*+psycopg}" -c \
      "select 'instances=' || (select count(*) from instances) || ' studies=' || (select count(*) from studies)" 2>/dev/null \
      || echo "instances=? (no index)"
  elif [[ -f "$DATA/index.sqlite" ]]; then
    "$VENV/bin/python" - "$DATA/index.sqlite" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print("instances=%d studies=%d" % (c.execute("select count(*) from instances").fetchone()[0],
                                   c.execute("select count(*) from studies").fetchone()[0]))
PY
  else
    echo "instances=0 studies=0 (no index)"
  fi
}

start() {
  if pid="$(our_pid)"; then echo "already running: PID $pid"; return 0; fi
  for port in "$DICOM_PORT" "$HTTP_PORT"; do
    if ss -ltnH "sport = :$port" 2>/dev/null | grep -q .; then die "port $port already in use"; fi
  done
  mkdir -p "$DATA"
  local env=(DRIMBOX_DATA_DIR="$DATA" DRIMBOX_DICOM_PORT="$DICOM_PORT" DRIMBOX_HTTP_PORT="$HTTP_PORT"
             DRIMBOX_AE_TITLE="$AET" DRIMBOX_HOST=127.0.0.1 DRIMBOX_LOG_LEVEL="${DRIMBOX_LOG_LEVEL:-WARNING}"
             DRIMBOX_DICOMWEB_AUTH="${DRIMBOX_DICOMWEB_AUTH:-none}")  # anonymous on loopback
  [[ -n "$DB_URL" ]] && env+=(DRIMBOX_DATABASE_URL="$DB_URL")
  # From inside SRC: `python -m` puts the working directory first on sys.path, before
  # PYTHONPATH, so started from the worktree it would run the worktree, not GW_SRC.
  (cd "$SRC" && exec env "${env[@]}" PYTHONPATH="$SRC" nohup "$VENV/bin/python" -m gateway.cli serve \
     >> "$LOG" 2>&1 < /dev/null) &
  local pid=$!
  echo "$pid" > "$PIDFILE"
  for _ in $(seq 1 120); do   # at most ~30 s
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "gateway exited during start-up"; }
    if curl -sf -m 1 "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null 2>&1 \
       && ss -ltnH "sport = :$DICOM_PORT" | grep -q .; then
      sleep 0.5  # let the DICOM workers finish starting up before the CPU baseline
      echo "$(date -u +%FT%TZ) started: cpu_s=$(cpu_seconds "$pid") workers=$(pgrep -P "$pid" -c -f spawn_main || true)" >> "$DIR/counts.log"
      echo "gateway started: PID $pid, DICOM $AET@127.0.0.1:$DICOM_PORT, data $DATA, source $SRC"
      return 0
    fi
    sleep 0.25
  done
  die "gateway did not become ready within 30 s (log: $LOG)"
}

cpu_seconds() {  # user+sys CPU of PID and its children (DICOM workers), children reaped included
  local tck total=0 p f
  tck="$(getconf CLK_TCK)"
  for p in "$1" $(pgrep -P "$1" || true); do
    f="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null)" || continue
    # fields after the command: state=1 ... utime=12 stime=13 cutime=14 cstime=15
    total=$(( total + $(echo "$f" | awk '{print $12 + $13 + $14 + $15}') ))
  done
  awk -v t="$total" -v h="$tck" 'BEGIN {printf "%.1f", t / h}'
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then rm -f "$PIDFILE"; echo "not running"; return 0; fi
  mkdir -p "$DIR"
  echo "$(date -u +%FT%TZ) stopping: cpu_s=$(cpu_seconds "$pid") $(count)" >> "$DIR/counts.log"
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "stopped PID $pid"; return 0; }
    sleep 0.25
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  echo "killed PID $pid"
}

reset_db() {
  [[ -n "$DB_URL" ]] || return 0
  local plain="${DB_URL/+psycopg/}" name admin
  name="${plain##*/}"
  [[ "$name" == h3bench* ]] || die "refusing to drop database $name (name must start with h3bench)"
  admin="${plain%/*}/postgres"
  psql -q "$admin" -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" -c "CREATE DATABASE \"$name\""
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  count) count ;;
  status) if pid="$(our_pid)"; then echo "running: PID $pid"; else echo "not running"; exit 1; fi ;;
  reset)
    stop
    mkdir -p "$DIR"
    echo "$(date -u +%FT%TZ) before reset: $(count)" >> "$DIR/counts.log"
    case "$DATA" in /tmp/*) ;; *) die "refusing to delete data outside /tmp: $DATA" ;; esac
    rm -rf "$DATA"
    reset_db
    start ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
