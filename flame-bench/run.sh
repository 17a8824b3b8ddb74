#!/usr/bin/env bash
# Reproduces BENCHMARKS.md on a fresh machine: installs Bun and the reference's dependencies the
# way .ci/run does (.ci/setup/30-bun.sh; the reference itself is ../shared/reference/flame-js or
# $FLAME_REFERENCE_JS), then runs the side-by-side bench (arguments go to it) and the criterion
# micro-benchmarks. Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source .ci/setup/30-bun.sh
cargo run --release -p flame-bench -- "$@"
cargo bench -p flame-bench --bench micro
