#!/usr/bin/env bash
# Runs Herald's whole test suite on a fresh Debian machine with a Rust toolchain: installs what
# the tests need (a real etcd server), checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests start real etcd servers (Debian's etcd-server package).
if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
  echo "== installing etcd-server (the end-to-end tests run a real etcd)"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq etcd-server >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
