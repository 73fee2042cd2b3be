#!/usr/bin/env bash
# Stop everything scripts/start.sh started: SIGTERM, wait up to STOP_TIMEOUT seconds (30)
# for the batch in hand to finish, then SIGKILL what is left.
#   scripts/stop.sh [--timeout SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
TIMEOUT="${STOP_TIMEOUT:-30}"
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) TIMEOUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "stop.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
RUN_DIR="${RUN_DIR:-run}"
shopt -s nullglob
pids=()
for file in "$RUN_DIR"/*.pid; do
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" && pids+=("$pid:$file") && echo "SIGTERM to $(basename "$file" .pid) (pid $pid)"
  else
    rm -f "$file"
  fi
done
deadline=$(( $(date +%s) + TIMEOUT ))
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"; file="${entry#*:}"
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$(basename "$file" .pid) still running after ${TIMEOUT}s: SIGKILL (its messages stay pending for other workers)"
    kill -KILL "$pid"
  fi
  rm -f "$file"
done
echo "stopped"
