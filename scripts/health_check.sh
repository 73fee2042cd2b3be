#!/usr/bin/env bash
# Check what scripts/start.sh started: process alive, /health and /ready answering 200.
#   scripts/health_check.sh        exit 0 when everything is healthy, 1 otherwise
# Ports: PRODUCER_METRICS_PORT (9090) and WORKER_BASE_PORT+i (9100+i); 0 skips the HTTP checks.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,4p' "$0"; exit 0 ;; esac
RUN_DIR="${RUN_DIR:-run}"
PYTHON="${PYTHON:-.venv/bin/python}"
BASE_PORT="${WORKER_BASE_PORT:-9100}"
status=0

http() {  # port path -> HTTP status code, or 000
  "$PYTHON" - "$1" "$2" <<'PY'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=5).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print("000")
PY
}

check() {  # name port
  local pidfile="$RUN_DIR/$1.pid"
  if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$1: NOT RUNNING"; status=1; return
  fi
  if [ "$2" = 0 ]; then echo "$1: running (pid $(cat "$pidfile")), no health port"; return; fi
  local live ready
  live=$(http "$2" /health); ready=$(http "$2" /ready)
  echo "$1: pid $(cat "$pidfile") /health $live /ready $ready"
  [ "$live" = 200 ] && [ "$ready" = 200 ] || status=1
}

check producer "${PRODUCER_METRICS_PORT:-9090}"
shopt -s nullglob
for file in "$RUN_DIR"/worker-*.pid; do
  name=$(basename "$file" .pid); i="${name#worker-}"
  port=0; [ "$BASE_PORT" != 0 ] && port=$((BASE_PORT + i))
  check "$name" "$port"
done
exit $status
