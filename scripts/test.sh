#!/usr/bin/env bash
# Runs Herald's whole test suite on a fresh Debian machine with a Rust toolchain: installs what
# the tests need (real etcd and PostgreSQL servers, a browser, a proxy, a Python gRPC client),
# checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests start real servers from Debian's packages: etcd (etcd-server) and
# PostgreSQL (postgresql, run by the tests as the postgres user in temp dirs), and tinyproxy.
missing=""
if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
  missing="$missing etcd-server"
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing="$missing postgresql"
fi
# The README's deployment commands (run by a test) make their TLS certificate with OpenSSL.
if ! command -v openssl >/dev/null 2>&1; then
  missing="$missing openssl"
fi
# The web console and portal are tested in a real browser, driven through WebDriver.
if [ ! -x /usr/bin/chromium ]; then
  missing="$missing chromium"
fi
if [ ! -x /usr/bin/chromedriver ]; then
  missing="$missing chromium-driver"
fi
# Deliveries through an egress proxy are tested against a real one.
if [ ! -x /usr/bin/tinyproxy ]; then
  missing="$missing tinyproxy"
fi
# Herald is also driven by a Python client generated from proto/ with Google's protoc and the
# gRPC Python plugin: a client in another language, with another HTTP/2 stack.
if [ ! -x /usr/bin/protoc ]; then
  missing="$missing protobuf-compiler"
fi
if [ ! -f /usr/include/google/protobuf/timestamp.proto ]; then
  missing="$missing libprotobuf-dev"
fi
if [ ! -x /usr/bin/grpc_python_plugin ]; then
  missing="$missing protobuf-compiler-grpc"
fi
if ! /usr/bin/python3 -c "import grpc, google.protobuf" >/dev/null 2>&1; then
  missing="$missing python3-grpcio python3-protobuf"
fi
# The portal's sample receiver for ed25519 endpoints is run as a shop would run it.
if ! /usr/bin/python3 -c "import cryptography" >/dev/null 2>&1; then
  missing="$missing python3-cryptography"
fi
# ...and Go code is generated from it with the Go plugins (protoc-gen-go, protoc-gen-go-grpc).
if [ ! -x /usr/bin/protoc-gen-go ]; then
  missing="$missing protoc-gen-go"
fi
if [ ! -x /usr/bin/protoc-gen-go-grpc ]; then
  missing="$missing protoc-gen-go-grpc"
fi
# ...and a Go client is built from that code against Debian's grpc-go. Generated code of
# today needs the protobuf runtime's v1.5 layer; v1.3 cannot read it (they conflict: apt
# replaces one with the other).
if [ ! -x /usr/bin/go ]; then
  missing="$missing golang-go"
fi
if [ ! -f /usr/share/gocode/src/google.golang.org/grpc/server.go ]; then
  missing="$missing golang-google-grpc-dev"
fi
if [ ! -f /usr/share/gocode/src/github.com/golang/protobuf/proto/registry.go ]; then
  missing="$missing golang-github-golang-protobuf-1-5-dev"
fi
if [ -n "$missing" ]; then
  echo "== installing$missing (the end-to-end tests run them for real)"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  # The package's own cluster is not used: the tests make their own.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
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
