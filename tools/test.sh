#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test in the workspace. Tests that need a
# real node use the cached Bitcoin Core build, which is built here first if it is missing.
# Ends with one "N passed, N failed" line summing every test binary's result.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/bitcoind.sh path >/dev/null
command -v openssl >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
}

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
