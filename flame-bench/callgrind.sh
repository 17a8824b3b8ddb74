#!/usr/bin/env bash
# Instructions per request on the server side, counted by valgrind's callgrind: stable on a noisy
# machine, unlike requests/s. For each server (raw hyper echo of the JSON and of the binary
# request, our runner signed and unsigned in the binary codec and on the JSON wire) it
# starts the server under callgrind, sends 200 warm-up requests with flame-bench's load generator
# (one connection), dumps and resets the counters, sends N more, dumps again, and prints the
# instructions of that second dump divided by N; the dump stays in $OUT for callgrind_annotate.
#
#   cargo build --release -p flame-bench && flame-bench/callgrind.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH="${FLAME_BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/flame-bench}"
N="${1:-2000}"
OUT="${OUT:-$(mktemp -d /tmp/flame-callgrind.XXXXXX)}"
SECRET="callgrind-secret"

measure() { # name ready-prefix load-args... -- server-env...
  local name=$1 prefix=$2; shift 2
  local load=() env=()
  while [ "$1" != "--" ]; do load+=("$1"); shift; done; shift
  env=("$@")
  local log="$OUT/$name.log"
  env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.%p" \
    "$BENCH" "${SERVER_ARGS[@]}" >"$log" 2>"$OUT/$name.err" &
  local pid=$!
  for _ in $(seq 1 600); do grep -q "^$prefix" "$log" 2>/dev/null && break; sleep 0.1; done
  local url; url=$(grep "^$prefix" "$log" | head -1 | awk '{print $2}')
  [ -n "$url" ] || { echo "$name did not start"; kill "$pid"; return 1; }
  local flags=(--connections 1 --warmup-ms 0 --duration-ms 600000)
  "$BENCH" load "$url" "${load[@]}" "${flags[@]}" --max-requests 200 >/dev/null
  callgrind_control -d "$pid" >/dev/null
  "$BENCH" load "$url" "${load[@]}" "${flags[@]}" --max-requests "$N" >"$OUT/$name.load"
  callgrind_control -d "$pid" >/dev/null
  sleep 0.5
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local dump; dump=$(ls "$OUT/$name.$pid".2 2>/dev/null || ls "$OUT/$name.$pid".*2 | head -1)
  local ir; ir=$(grep -E '^(summary|totals):' "$dump" | head -1 | awk '{print $2}')
  printf '%-28s %10d instructions/request   (%s; %s)\n' "$name" $((ir / N)) "$(cat "$OUT/$name.load")" "$dump"
}

SERVER_ARGS=(echo-server)
measure echo-json ECHO_READY --echo -- FLAME_X=1
measure echo-binary ECHO_READY --echo --binary -- FLAME_X=1
SERVER_ARGS=(runner)
measure runner-unsigned-binary FLAME_READY --binary -- FLAME_MODE=runner FLAME_LISTEN=127.0.0.1:0
measure runner-signed-binary FLAME_READY --binary --secret "$SECRET" -- FLAME_MODE=runner FLAME_LISTEN=127.0.0.1:0 FLAME_SECRET="$SECRET"
measure runner-unsigned-json FLAME_READY -- FLAME_MODE=runner FLAME_LISTEN=127.0.0.1:0
measure runner-signed-json FLAME_READY --secret "$SECRET" -- FLAME_MODE=runner FLAME_LISTEN=127.0.0.1:0 FLAME_SECRET="$SECRET"
echo "dumps in $OUT (callgrind_annotate <dump> | head -40)"
