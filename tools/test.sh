#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test in the workspace. Tests that need a
# real node use the cached Bitcoin Core build, which is built here first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/bitcoind.sh path >/dev/null
command -v openssl >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
}

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
