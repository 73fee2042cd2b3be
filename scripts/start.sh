#!/usr/bin/env bash
# Start the producer and N workers in the background, with PID files and log files.
#   scripts/start.sh [--workers N] [--env-file FILE]
# Workers are named <hostname>-worker-<i>; worker i serves /health, /metrics on
# WORKER_BASE_PORT+i (default 9100+i; WORKER_BASE_PORT=0 disables them).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=2
ENV_FILE=.env
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS="$2"; shift 2 ;;
    --env-file) ENV_FILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "start.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
PYTHON="${PYTHON:-.venv/bin/python}"
RUN_DIR="${RUN_DIR:-run}"
LOG_DIR="${LOG_DIR:-logs}"
BASE_PORT="${WORKER_BASE_PORT:-9100}"
mkdir -p "$RUN_DIR" "$LOG_DIR"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {  # name, then the command
  local name="$1"; shift
  if running "$RUN_DIR/$name.pid"; then
    echo "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"
    return
  fi
  nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
  echo "started $name (pid $!, log $LOG_DIR/$name.log)"
}

start producer "$PYTHON" producer.py --env-file "$ENV_FILE"
for i in $(seq 1 "$WORKERS"); do
  port=0
  [ "$BASE_PORT" != 0 ] && port=$((BASE_PORT + i))
  start "worker-$i" "$PYTHON" worker.py --env-file "$ENV_FILE" --consumer "$(hostname)-worker-$i" --metrics-port "$port"
done
