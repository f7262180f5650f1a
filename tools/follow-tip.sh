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
BIN=${CARGO_TARGET_DIR:-target}/release

source tools/emulator.sh
follow_setup follow "$TXS" "$SEED" "$BLOCKS"
echo "chain: $chain, $txs txs; sync to $start, then $BLOCKS blocks one at a time"

start_ferrum "$work/db"
python3 tools/compare_support.py wait "$port" "$start" 600 "$ferrum"
for height in $(seq $((start + 1)) "$tip"); do
  python3 tools/compare_support.py mine "$control" 1
  python3 tools/compare_support.py wait "$port" "$height" 60 "$ferrum"
done
kill -TERM "$ferrum"
wait "$ferrum" || true
"$BIN/ferrum-db" info "$work/db"
"$BIN/ferrum-db" verify "$work/db" | grep 'index digest'
