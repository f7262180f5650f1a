#!/usr/bin/env bash
# Builds Ferrum and runs it. (Grows into: start a regtest node, sync it, serve a wallet.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --bin ferrum
