#!/usr/bin/env bash
# Is everything up? Exit 0 when every service is healthy, 1 otherwise, 2 on a bad setting.
#   scripts/health_check.sh [--env-file FILE]
# systemd install (units email-producer*.service, email-worker@*.service exist): asks systemctl,
# then /health and /ready on each unit's port. Otherwise the processes scripts/start.sh started
# (PID files in RUN_DIR), or, with neither, the HTTP endpoints on the configured ports.
# Ports are read as the services read them (environment, .env, --env-file).
set -uo pipefail
cd "$(dirname "$0")/.."
ENV_FILE=.env
while [ $# -gt 0 ]; do
  case "$1" in
    --env-file) ENV_FILE="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "health_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
RUN_DIR="${RUN_DIR:-run}"
# A checkout runs its .venv; the copy `email-ingest kit copy` hands out runs the active environment.
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)}"
SYSTEMCTL="${SYSTEMCTL:-systemctl}"
settings=$("$PYTHON" -m email_ingestion.admin.shell_settings --env-file "$ENV_FILE") || exit 2
eval "$settings"
status=0

http() {  # port path -> HTTP status code, or 000
  "$PYTHON" - "$HEALTH_HOST" "$1" "$2" <<'PY'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}{sys.argv[3]}", timeout=5).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError:
    print("000")
PY
}

endpoints() {  # name port prefix -> checks /health and /ready; 0 skips
  if [ "$2" = 0 ]; then echo "$1: $3no health port"; return; fi
  local live ready
  live=$(http "$2" /health); ready=$(http "$2" /ready)
  echo "$1: $3/health $live /ready $ready"
  [ "$live" = 200 ] && [ "$ready" = 200 ] || status=1
}

unit_port() {  # unit default -> the port its Environment= sets, else the default
  local env port
  env=$("$SYSTEMCTL" show -p Environment --value "$1" 2>/dev/null)
  port=$(tr ' ' '\n' <<<"$env" | sed -n 's/^\(PRODUCER_METRICS_PORT\|WORKER_METRICS_PORT\)=//p' | tail -1)
  echo "${port:-$2}"
}

systemd_units() {
  command -v "$SYSTEMCTL" >/dev/null 2>&1 || return 0
  "$SYSTEMCTL" list-units --all --plain --no-legend --type=service 'email-producer*' 'email-worker@*' 2>/dev/null \
    | awk '{print $1}' | grep -E '^email-(producer|worker@)' || true
}

check_units() {
  local unit state port default
  for unit in "$@"; do
    state=$("$SYSTEMCTL" is-active "$unit" 2>/dev/null)
    if [ "$state" != active ]; then echo "$unit: NOT RUNNING (systemd: ${state:-unknown})"; status=1; continue; fi
    case "$unit" in email-producer*) default="$PRODUCER_METRICS_PORT" ;; *) default="$WORKER_METRICS_PORT" ;; esac
    port=$(unit_port "$unit" "$default")
    endpoints "$unit" "$port" "active, "
  done
}

check_pidfile() {  # name port
  local pidfile="$RUN_DIR/$1.pid"
  if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "$1: NOT RUNNING"; status=1; return
  fi
  endpoints "$1" "$2" "pid $(cat "$pidfile") "
}

mapfile -t units < <(systemd_units)
shopt -s nullglob
pidfiles=("$RUN_DIR"/*.pid)
if [ "${#units[@]}" -gt 0 ]; then
  check_units "${units[@]}"
elif [ "${#pidfiles[@]}" -gt 0 ] || [ -d "$RUN_DIR" ]; then
  check_pidfile producer "$PRODUCER_METRICS_PORT"
  for file in "$RUN_DIR"/worker-*.pid; do
    name=$(basename "$file" .pid); i="${name#worker-}"
    port=0; [ "$WORKER_BASE_PORT" != 0 ] && port=$((WORKER_BASE_PORT + i))
    check_pidfile "$name" "$port"
  done
else
  endpoints producer "$PRODUCER_METRICS_PORT" ""
  [ "$WORKER_METRICS_PORT" != 0 ] && endpoints worker "$WORKER_METRICS_PORT" ""
fi
exit $status
