#!/usr/bin/env bash
# kill -9 while following the tip: Ferrum syncs a generated chain from the node emulator up to
# a height, then the emulator mines the rest one block at a time; at KILLS random blocks the
# server is killed with SIGKILL a random 0-300 ms after the block is mined (while it commits
# and compacts, with merges possibly running on their own threads) and started again. At the
# end its `ferrum-db verify` digest must equal that of one uninterrupted sync of the chain.
# Also lists the files a kill left that no commit named (a commit's files written before its
# manifest, or a merge's output being written or waiting to be installed: the big ones), which
# opening the store removes.
#
#   tools/kill-at-tip.sh [TXS] [SEED] [BLOCKS] [KILLS]   default: 1000000 txs, seed 1,
#                                                        the last 600 blocks, 20 kills
# Environment: REORG_LIMIT (default: regtest's, 8000), KEEP=1 keeps the work dir.
set -euo pipefail
cd "$(dirname "$0")/.."
TXS=${1:-1000000}
SEED=${2:-1}
BLOCKS=${3:-600}
KILLS=${4:-20}
BIN=${CARGO_TARGET_DIR:-target}/release

source tools/emulator.sh
follow_setup kill "$TXS" "$SEED" "$BLOCKS"
echo "chain: $chain, $txs txs; sync to $start, then $BLOCKS blocks one at a time, $KILLS kills"

# The store's data files that opening it removes if no commit names them, with their sizes.
listing() { (cd "$1" && stat -c '%n %s' -- *.seg *.run *.log 2>/dev/null | sort) || true; }

db="$work/db"
start_ferrum "$db"
python3 tools/compare_support.py wait "$port" "$start" 600 "$ferrum"
# Which blocks get a kill: KILLS distinct ones.
mapfile -t kill_at < <(shuf -i "$((start + 1))-$tip" -n "$KILLS" | sort -n)
killed=0
orphans=0
for height in $(seq $((start + 1)) "$tip"); do
  python3 tools/compare_support.py mine "$control" 1
  if [ "$killed" -lt "$KILLS" ] && [ "$height" -eq "${kill_at[$killed]}" ]; then
    sleep "0.$(printf '%03d' $((RANDOM % 300)))"
    kill -9 "$ferrum"
    wait "$ferrum" 2>/dev/null || true
    killed=$((killed + 1))
    # Opening the store (here offline, by ferrum-db) removes files no commit named.
    before=$(listing "$db")
    "$BIN/ferrum-db" info "$db" >/dev/null
    gone=$(awk 'NR == FNR { kept[$1]; next } !($1 in kept)' <(listing "$db") <(echo "$before"))
    if [ -n "$gone" ]; then
      orphans=$((orphans + 1))
      echo "kill $killed (block $height) left, named by no commit (name, bytes):" $gone
    fi
    start_ferrum "$db"
  fi
  if ! python3 tools/compare_support.py wait "$port" "$height" 120 "$ferrum"; then
    echo "FAIL: the server did not reach height $height; its log:" >&2
    tail -20 "$work/ferrum.log" >&2
    exit 1
  fi
done
kill -TERM "$ferrum"
wait "$ferrum" || true
killed_digest=$("$BIN/ferrum-db" verify "$db" | grep 'index digest')

# One uninterrupted sync of the same chain, from the same emulator (now at the tip).
start_ferrum "$work/straight"
python3 tools/compare_support.py wait "$port" "$tip" 600 "$ferrum"
kill -TERM "$ferrum"
wait "$ferrum" || true
straight_digest=$("$BIN/ferrum-db" verify "$work/straight" | grep 'index digest')

echo "kills: $killed; kills that left files no commit named (removed on opening): $orphans"
echo "killed run:    $killed_digest"
echo "straight sync: $straight_digest"
if [ "$killed_digest" != "$straight_digest" ]; then
  echo "FAIL: the digests differ" >&2
  exit 1
fi
echo "PASS: same index digest"
