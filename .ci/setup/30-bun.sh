#!/usr/bin/env bash
# Bun and the TypeScript reference's dependencies, for the interop tests of flame-http
# (examples/tests/interop_bun.rs): installs @oven/bun-linux-<arch>, superjson and errore from
# npm into $FLAME_BUN_HOME (default $HOME/.cache/flame-bun) unless they are already there, and
# exports FLAME_BUN (the Bun binary) and FLAME_BUN_NODE_MODULES (for the reference's imports).
# Installs node/npm from Debian if npm is missing. Idempotent; sourced by .ci/run as root.
set -euo pipefail

FLAME_BUN_HOME="${FLAME_BUN_HOME:-${HOME:-/root}/.cache/flame-bun}"
case "$(uname -m)" in
  aarch64 | arm64) flame_bun_pkg="bun-linux-aarch64" ;;
  *) flame_bun_pkg="bun-linux-x64" ;;
esac
flame_bun_bin="$FLAME_BUN_HOME/node_modules/@oven/$flame_bun_pkg/bin/bun"

if ! "$flame_bun_bin" --version >/dev/null 2>&1 \
  || [ ! -f "$FLAME_BUN_HOME/node_modules/superjson/package.json" ] \
  || [ ! -f "$FLAME_BUN_HOME/node_modules/errore/package.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
  fi
  mkdir -p "$FLAME_BUN_HOME"
  npm install --prefix "$FLAME_BUN_HOME" --no-audit --no-fund --loglevel=error \
    "@oven/$flame_bun_pkg@1.4.5" superjson@2.2.6 errore@0.14.1
fi

export FLAME_BUN="$flame_bun_bin"
export FLAME_BUN_NODE_MODULES="$FLAME_BUN_HOME/node_modules"
echo "bun $("$FLAME_BUN" --version) at $FLAME_BUN"
unset flame_bun_pkg flame_bun_bin
