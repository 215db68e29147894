#!/bin/bash
# Quick 1-association A/B of the gateway alone: the first 500 CT slices of the corpus in one
# storescu association (TCP_NODELAY), for each configuration in turn, 3 times; prints
# inst/s and the load average. Gateway on ports 11414/18414, data in /tmp/h9-quick.
set -u
cd "$(dirname "$0")/.."
FILES=$(find ${CORPUS:-/tmp/h3-corpus}/ingest/ct0000 -name '*' -type f | sort | head -500)
export GW_BENCH_DIR=/tmp/h9-quick GW_DICOM_PORT=11414 GW_HTTP_PORT=18414
for rep in 1 2 3; do
 for v in "w0r0 DRIMBOX_DICOM_WORKERS=0 DRIMBOX_REACTOR_WAIT=0" "w0r5 DRIMBOX_DICOM_WORKERS=0" "w2r0 DRIMBOX_DICOM_WORKERS=2 DRIMBOX_REACTOR_WAIT=0" "w2r5 DRIMBOX_DICOM_WORKERS=2"; do
  set -- $v; name=$1; shift
  env "$@" bench/run_gateway.sh reset >/dev/null
  t0=$(date +%s.%N)
  TCP_NODELAY=1 storescu -q -aec DRIMBOX 127.0.0.1 11414 $FILES
  t1=$(date +%s.%N)
  echo "$rep $name $(echo "500 / ($t1 - $t0)" | bc -l | cut -c1-6) inst/s load $(cut -d' ' -f1 /proc/loadavg)"
 done
done
bench/run_gateway.sh stop >/dev/null
