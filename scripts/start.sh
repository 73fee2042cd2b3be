#!/usr/bin/env bash
# Start the producer and N workers in the background, with PID files and log files.
#   scripts/start.sh [--workers N] [--env-file FILE]
# Workers are named <hostname>-worker-<i>; worker i serves /health, /metrics on
# WORKER_BASE_PORT+i (default 9100+i; WORKER_BASE_PORT=0 disables them). Exit 1 when a
# process dies during start-up (START_GRACE_SECONDS, default 3), with its log's tail.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=2
ENV_FILE=.env
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS="$2"; shift 2 ;;
    --env-file) ENV_FILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "start.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
# A checkout runs its .venv; the copy `email-ingest kit copy` hands out runs the active environment.
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)}"
RUN_DIR="${RUN_DIR:-run}"
LOG_DIR="${LOG_DIR:-logs}"
GRACE="${START_GRACE_SECONDS:-3}"
# The same settings the services read (a bad one stops here, exit 2, before anything starts).
settings=$("$PYTHON" -m email_ingestion.admin.shell_settings --env-file "$ENV_FILE") || exit 2
eval "$settings"
BASE_PORT="$WORKER_BASE_PORT"
mkdir -p "$RUN_DIR" "$LOG_DIR"
started=()

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {  # name, then the command
  local name="$1"; shift
  if running "$RUN_DIR/$name.pid"; then
    echo "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"
    return
  fi
  nohup "$@" >>"$LOG_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
  started+=("$name:$!")
}

start producer "$PYTHON" -m email_ingestion producer --env-file "$ENV_FILE"
for i in $(seq 1 "$WORKERS"); do
  port=0
  [ "$BASE_PORT" != 0 ] && port=$((BASE_PORT + i))
  start "worker-$i" "$PYTHON" -m email_ingestion worker --env-file "$ENV_FILE" --consumer "$(hostname)-worker-$i" --metrics-port "$port"
done

# A process that exits at once (bad setting: 2, refused credentials: 3) must not be reported started.
deadline=$(( $(date +%s) + GRACE ))
while [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
failed=0
for entry in "${started[@]+"${started[@]}"}"; do
  name="${entry%%:*}"; pid="${entry#*:}"
  if kill -0 "$pid" 2>/dev/null; then
    echo "started $name (pid $pid, log $LOG_DIR/$name.log)"
  else
    rc=0; wait "$pid" || rc=$?
    echo "FAILED: $name exited with status $rc during start-up; last lines of $LOG_DIR/$name.log:" >&2
    tail -n 5 "$LOG_DIR/$name.log" | sed 's/^/  /' >&2
    rm -f "$RUN_DIR/$name.pid"
    failed=1
  fi
done
exit $failed
