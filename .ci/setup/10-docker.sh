#!/usr/bin/env bash
# Docker engine for the flame-backend-docker tests: install docker.io if dockerd is missing,
# start dockerd in the background (no bridge, no iptables: runner containers use host
# networking) unless `docker info` already answers, then wait until it does (bounded).
# Idempotent; sourced by .ci/run as root.
set -euo pipefail

if ! command -v dockerd >/dev/null 2>&1; then
  apt-get update
  # Keep the package from starting a daemon of its own (no init system here): we start
  # dockerd below, with the flags the tests expect.
  flame_docker_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    flame_docker_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io
  if [ "$flame_docker_policy" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
  fi
fi

if ! docker info >/dev/null 2>&1; then
  nohup dockerd --bridge=none --iptables=false >/tmp/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    echo "dockerd did not answer within 60 s; last lines of /tmp/dockerd.log:" >&2
    tail -n 30 /tmp/dockerd.log >&2 || true
    exit 1
  fi
fi
echo "dockerd is up: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
