#!/usr/bin/env bash
# moto_server for the flame-backend-ecs tests: create a venv with `moto[server]` (the 5.x series
# whose ECS behaviour DESIGN.md §6 describes) unless it is already there, start
# `moto_server -H 127.0.0.1 -p 5000` (port: FLAME_MOTO_PORT) in the background unless something
# already answers there, then wait until it does (bounded). Idempotent; sourced by .ci/run as
# root. Tests reach it at FLAME_MOTO_URL (default http://127.0.0.1:5000), exported here.
set -euo pipefail

FLAME_MOTO_VENV="${FLAME_MOTO_VENV:-/opt/flame-moto}"
FLAME_MOTO_PORT="${FLAME_MOTO_PORT:-5000}"
export FLAME_MOTO_URL="${FLAME_MOTO_URL:-http://127.0.0.1:$FLAME_MOTO_PORT}"

flame_moto_up() {
  python3 - "$FLAME_MOTO_URL" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/moto-api/config", timeout=2).read()
PY
}

if ! "$FLAME_MOTO_VENV/bin/moto_server" --help >/dev/null 2>&1; then
  python3 -m venv "$FLAME_MOTO_VENV"
  "$FLAME_MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6'
fi

if ! flame_moto_up; then
  nohup "$FLAME_MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$FLAME_MOTO_PORT" \
    >"/tmp/flame-moto-$FLAME_MOTO_PORT.log" 2>&1 &
  for _ in $(seq 1 60); do
    flame_moto_up && break
    sleep 1
  done
  if ! flame_moto_up; then
    echo "moto_server did not answer within 60 s; last lines of /tmp/flame-moto-$FLAME_MOTO_PORT.log:" >&2
    tail -n 30 "/tmp/flame-moto-$FLAME_MOTO_PORT.log" >&2 || true
    exit 1
  fi
fi
echo "moto_server is up at $FLAME_MOTO_URL (moto $("$FLAME_MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?'))"
