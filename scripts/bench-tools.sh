#!/usr/bin/env bash
# Installs what the benchmarks compare against (not needed by the tests):
# wrk and nginx (benches/web.rs) from Debian, Crossbar.io and Autobahn|Python (benches/wamp.rs)
# into ./.bench-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null
fi
if [ ! -x .bench-venv/bin/crossbar ]; then
  python3 -m venv .bench-venv
  .bench-venv/bin/pip install -q crossbar==26.10.1 autobahn==26.10.2 msgpack==1.2.4
fi
echo "benchmark tools ready"
