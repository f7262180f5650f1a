#!/usr/bin/env bash
# Side-by-side initial sync: Ferrum, electrs 0.11.1 and ElectrumX 2.0 (PyPI `e-x`, ElectrumX for
# Bitcoin) each index the same generated regtest chain from the same node, one after the other.
# Prints, per server: seconds from start until it serves the tip over Electrum, tx/s, CPU
# seconds, peak RSS, and index bytes on disk split by component. Installs its competitors on
# first use (cached under ~/.cache/ferrum), never as dependencies of Ferrum.
#
#   tools/compare-sync.sh [TXS] [SEED]       default: 200000 txs, seed 1 ("large" preset)
#
# Environment:
#   COMPARE="ferrum electrs electrumx"  servers to run, in this order
#   NODE=bitcoind|emulator   the node serving the chain (default bitcoind, a real regtest
#                            Core 31 with txindex, txospenderindex and rest; the emulator is
#                            `ferrum-emulator`, for Ferrum only: electrs needs P2P, ElectrumX
#                            txospenderindex)
#   PLACEHOLDER=1            chain with placeholder signatures (4x faster to generate; only
#                            the emulator accepts it)
#   NODE_DIR=DIR             keep the bitcoind data directory there and reuse it next time
#                            (the chain is submitted once)
#   CACHE_MB=N               passed to Ferrum (default: Ferrum's, 1200)
#   REORG_LIMIT=N            passed to Ferrum and ElectrumX (default: theirs for regtest, 8000,
#                            so that undo records cover every block of these chains)
#   PERF=1                   run Ferrum under `perf record` with DWARF call graphs (the
#                            profile, ferrum.perf, is left in the work dir: implies KEEP=1;
#                            PERF_FREQ=N samples per second, default 499)
#   KEEP=1                   keep the work dir (databases, logs) instead of deleting it
#   REPEAT=N                 run the servers N times in turn (on a shared machine, compare the
#                            best of each)
set -euo pipefail
cd "$(dirname "$0")/.."
TXS=${1:-200000}
SEED=${2:-1}
COMPARE=${COMPARE:-ferrum electrs electrumx}
NODE=${NODE:-bitcoind}
CACHE=${FERRUM_CACHE:-$HOME/.cache/ferrum}
BIN=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d "${TMPDIR:-/tmp}/ferrum-compare.XXXXXX")
node_dir=${NODE_DIR:-$work/bitcoind}
emu_pid=
cleanup() {
  [ -n "$emu_pid" ] && kill "$emu_pid" 2>/dev/null
  [ "$NODE" = bitcoind ] && { tools/bitcoind.sh stop "$node_dir" 2>/dev/null || true; }
  if [ "${KEEP:-0}" = 1 ] || [ "${PERF:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

case "$NODE" in bitcoind | emulator) ;; *) echo "NODE must be bitcoind or emulator" >&2; exit 2 ;; esac
if [ "$NODE" = emulator ]; then
  for server in $COMPARE; do
    [ "$server" = ferrum ] || { echo "NODE=emulator serves Ferrum only, not $server" >&2; exit 2; }
  done
fi
suffix=
gen_flags=()
if [ "${PLACEHOLDER:-0}" = 1 ]; then
  [ "$NODE" = emulator ] || { echo "PLACEHOLDER=1 chains are rejected by bitcoind: use NODE=emulator" >&2; exit 2; }
  suffix=-ph
  gen_flags=(--placeholder-signatures)
fi

source tools/debian.sh
command -v /usr/bin/time >/dev/null || debian_install time

install_competitors() {
  case " $COMPARE " in *" electrs "*)
    [ -x "$CACHE/electrs-0.11.1/bin/electrs" ] || {
      command -v clang >/dev/null || debian_install clang libclang-dev
      cargo install electrs --version 0.11.1 --locked --root "$CACHE/electrs-0.11.1"
    } ;;
  esac
  case " $COMPARE " in *" electrumx "*)
    [ -x "$CACHE/e-x/bin/electrumx_server" ] || {
      python3 -m venv "$CACHE/e-x"
      "$CACHE/e-x/bin/pip" install -q 'e-x[leveldb]'
    } ;;
  esac
}
install_competitors

source tools/emulator.sh
cargo build --release -q -p ferrum --bin ferrum --bin ferrum-db \
  -p ferrum-tools --bin ferrum-chaingen --bin ferrum-emulator
chain="$CACHE/chains/large-$TXS-$SEED$suffix.frm"
mkdir -p "$CACHE/chains"

if [ "$NODE" = bitcoind ]; then
  # One node holds the chain; each server syncs from it in turn.
  node=$(tools/bitcoind.sh start "$node_dir" -txospenderindex=1)
  cookie="$node_dir/regtest/.cookie"
  rpc=$(sed 's/.*rpc=\([0-9]*\).*/\1/' <<<"$node")
  p2p=$(sed 's/.*p2p=\([0-9]*\).*/\1/' <<<"$node")
  if [ ! -f "$chain" ]; then
    # Generate straight into submitblock, keeping the file: the node validates blocks while
    # the generator makes the next ones (about half the time of one after the other).
    "$BIN/ferrum-chaingen" --seed "$SEED" --txs "$TXS" --preset large --out /dev/stdout |
      tee "$chain.tmp" | python3 tools/compare_support.py submit /dev/stdin "$rpc" "$cookie"
    mv "$chain.tmp" "$chain"
  fi
  read -r tip txs < <(python3 tools/compare_support.py chainsize "$chain")
  if [ "$(python3 tools/compare_support.py height "$rpc" "$cookie")" != "$tip" ]; then
    python3 tools/compare_support.py submit "$chain" "$rpc" "$cookie"
  fi
  [ "$(python3 tools/compare_support.py txcount "$rpc" "$cookie")" = "$txs" ] || {
    echo "bitcoind's chain is not $chain" >&2; exit 1; }
  blocks_bytes=$(du -sb "$node_dir/regtest/blocks" | cut -f1)
else
  ensure_chain "$chain" "$TXS" "$SEED" "${gen_flags[@]}"
  read -r tip txs < <(python3 tools/compare_support.py chainsize "$chain")
  start_emulator "$work" --chain "$chain"
  blocks_bytes=$(($(stat -c %s "$chain") - 8 - 4 * (tip + 1)))
fi
echo "chain: $chain, height $tip, $txs txs, $blocks_bytes bytes of blocks ($NODE)"
echo "ferrum commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src storage Cargo.toml || echo ' (modified)'), $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"

port=$(free_port)
measure() { # name db_dir command...: runs it from an empty db_dir until it serves $tip, then stops it
  local name=$1 db=$2; shift 2
  local start end
  rm -rf "$db"
  start=$(date +%s.%N)
  # Its own session: a server that signals its process group must not stop this script.
  setsid /usr/bin/time -f "%M %U %S" -o "$work/$name.time" "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  if ! python3 tools/compare_support.py wait "$port" "$tip" 3600 "$pid" "$work/$name.rss"; then
    echo "$name did not serve height $tip; log tail:"; tail -20 "$work/$name.log"; pkill -TERM -P "$pid" 2>/dev/null || true; return 1
  fi
  end=$(date +%s.%N)
  # Stop the server, not /usr/bin/time, so that time still reports the peak RSS.
  pkill -TERM -P "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local rss user sys anon file
  read -r rss user sys < <(tail -1 "$work/$name.time")
  read -r anon file <"$work/$name.rss"
  python3 tools/compare_support.py report "$name" "$start" "$end" "$txs" "$rss" "$user" "$sys" "$anon" "$file"
  case $name in
    ferrum) "$BIN/ferrum-db" info "$db" | sed 's/^/    /' ;;
    electrumx) "$CACHE/e-x/bin/python" tools/compare_support.py exsize "$db" "$txs" ;;
    *) python3 tools/compare_support.py dirsize "$db" "$txs" ;;
  esac
}

for round in $(seq "${REPEAT:-1}"); do
  [ "${REPEAT:-1}" = 1 ] || echo "round $round"
  for server in $COMPARE; do
    case $server in
      ferrum)
        run=("$BIN/ferrum")
        [ "${PERF:-0}" = 1 ] && run=(perf record -F "${PERF_FREQ:-499}" --call-graph dwarf,16384 -q -o "$work/ferrum.perf" "${run[@]}")
        measure ferrum "$work/ferrum-db" env DB_DIRECTORY="$work/ferrum-db" NET=regtest \
          DAEMON_URL="127.0.0.1:$rpc" DAEMON_COOKIE_FILE="$cookie" SERVICES="tcp://127.0.0.1:$port" \
          ${CACHE_MB:+CACHE_MB=$CACHE_MB} ${REORG_LIMIT:+REORG_LIMIT=$REORG_LIMIT} "${run[@]}" ;;
      electrs)
        measure electrs "$work/electrs-db" "$CACHE/electrs-0.11.1/bin/electrs" --network regtest \
          --db-dir "$work/electrs-db" --daemon-dir "$node_dir" --cookie-file "$cookie" \
          --daemon-rpc-addr "127.0.0.1:$rpc" --daemon-p2p-addr "127.0.0.1:$p2p" \
          --electrum-rpc-addr "127.0.0.1:$port" --monitoring-addr 127.0.0.1:0 \
          --skip-block-download-wait ;;  # generated blocks are old, so the node stays in IBD
      electrumx)
        auth=$(cat "$cookie")
        measure electrumx "$work/electrumx-db" env COIN=Bitcoin NET=regtest \
          DB_DIRECTORY="$work/electrumx-db" DAEMON_URL="http://$auth@127.0.0.1:$rpc/" \
          SERVICES="tcp://127.0.0.1:$port" PEER_DISCOVERY=off DB_ENGINE=leveldb ALLOW_ROOT=1 \
          ${REORG_LIMIT:+REORG_LIMIT=$REORG_LIMIT} \
          sh -c "mkdir -p '$work/electrumx-db' && exec '$CACHE/e-x/bin/electrumx_server'" ;;
      *) echo "unknown server $server" >&2; exit 2 ;;
    esac
  done
done
