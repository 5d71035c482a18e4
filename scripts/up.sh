#!/usr/bin/env bash
# The README's run command: set everything up, then run the local stack (`tviz up`).
#   scripts/up.sh [tviz up options]     e.g. scripts/up.sh --replicas 2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v redis-server >/dev/null 2>&1 && ! (redis-cli ping 2>/dev/null | grep -q PONG); then
  echo "[up] installing redis-server (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
exec .venv/bin/tviz up "$@"
