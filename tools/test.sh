#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test in the workspace, then the real
# Electrum wallet end to end (tools/wallet-check.sh). Tests that need a real node use the cached
# Bitcoin Core build, which is built here first if it is missing.
# Ends with one "N passed, N failed" line summing every test binary's result and the wallet check.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/bitcoind.sh path >/dev/null
# openssl makes the TLS tests' certificates; libzmq5 is the real ZMQ publisher of tests/zmq_blocks.rs.
missing=()
command -v openssl >/dev/null || missing+=(openssl)
python3 -c 'import ctypes; ctypes.CDLL("libzmq.so.5")' 2>/dev/null || missing+=(libzmq5)
source tools/debian.sh
[ ${#missing[@]} -eq 0 ] || debian_install "${missing[@]}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?

# The real Electrum wallet against Ferrum on regtest, counted as one test.
wallet_passed=1 wallet_failed=0
tools/wallet-check.sh || { wallet_passed=0 wallet_failed=1; [ "$status" != 0 ] || status=1; }

awk -v passed="$wallet_passed" -v failed="$wallet_failed" \
  '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
