#!/usr/bin/env bash
# The README's test command: sets everything up from nothing, starts what the tests need,
# then runs ruff, mypy and the test suite (unit, then integration).
#   scripts/test.sh [pytest args]     e.g. scripts/test.sh -m "not integration"
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1;36m[test]\033[0m %s\n' "$*"; }

bash scripts/setup.sh

if ! command -v redis-server >/dev/null 2>&1; then
  say "installing redis-server (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! (redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG); then
  say "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

# Debian packages the tests run for real: the browser, the edge proxy, the metrics server.
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if (( ${#missing[@]} )); then
  say "installing ${missing[*]} (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

say "ruff"
.venv/bin/ruff check .
say "mypy"
.venv/bin/mypy
say "pytest"
mkdir -p test-artifacts
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
