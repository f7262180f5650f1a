#!/usr/bin/env bash
# Following the tip: Ferrum syncs a generated chain from the node emulator up to a height,
# then the emulator mines the rest one block at a time and Ferrum commits each on its own (a
# commit and a compaction per block, as at a real tip). Prints the index by file kind and its
# `ferrum-db verify` digest, which must equal that of one sync of the same chain.
#
#   tools/follow-tip.sh [TXS] [SEED] [BLOCKS]   default: 200000 txs, seed 1 ("large" preset),
#                                               the last 200 blocks one at a time
# Environment: REORG_LIMIT (default: regtest's, 8000), KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
TXS=${1:-200000}
SEED=${2:-1}
BLOCKS=${3:-200}
CACHE=${FERRUM_CACHE:-$HOME/.cache/ferrum}
BIN=${CARGO_TARGET_DIR:-target}/release
chain="$CACHE/chains/large-$TXS-$SEED.frm"
work=$(mktemp -d "${TMPDIR:-/tmp}/ferrum-follow.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

source tools/emulator.sh
cargo build --release -q -p ferrum --bin ferrum --bin ferrum-db \
  -p ferrum-tools --bin ferrum-chaingen --bin ferrum-emulator
ensure_chain "$chain" "$TXS" "$SEED"
read -r tip txs < <(python3 tools/compare_support.py chainsize "$chain")
start=$((tip - BLOCKS))
start_emulator "$work" --chain "$chain" --initial-height "$start"
pids+=("$emu_pid")
port=$(free_port)
echo "chain: $chain, $txs txs; sync to $start, then $BLOCKS blocks one at a time"

env DB_DIRECTORY="$work/db" NET=regtest DAEMON_URL="127.0.0.1:$rpc" DAEMON_COOKIE_FILE="$cookie" \
  SERVICES="tcp://127.0.0.1:$port" DAEMON_POLL_INTERVAL_BLOCKS=100 \
  ${REORG_LIMIT:+REORG_LIMIT=$REORG_LIMIT} "$BIN/ferrum" >"$work/ferrum.log" 2>&1 &
ferrum=$!
pids+=("$ferrum")
python3 tools/compare_support.py wait "$port" "$start" 600 "$ferrum"
for height in $(seq $((start + 1)) "$tip"); do
  python3 tools/compare_support.py mine "$control" 1
  python3 tools/compare_support.py wait "$port" "$height" 60 "$ferrum"
done
kill -TERM "$ferrum"
wait "$ferrum" || true
"$BIN/ferrum-db" info "$work/db"
"$BIN/ferrum-db" verify "$work/db" | grep 'index digest'
