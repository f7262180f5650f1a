#!/usr/bin/env bash
# Side-by-side initial sync: Ferrum, electrs 0.11.1 and ElectrumX 2.0 (PyPI `e-x`, ElectrumX for
# Bitcoin) each index the same generated regtest chain from the same real bitcoind, one after
# the other. Prints, per server: seconds from start until it serves the tip over Electrum,
# tx/s, index bytes on disk, and peak RSS. Installs its competitors on first use (cached under
# ~/.cache/ferrum), never as dependencies of Ferrum.
#
#   tools/compare-sync.sh [TXS] [SEED]       default: 200000 txs, seed 1 ("large" preset)
#   COMPARE="ferrum electrs electrumx" selects servers.
set -euo pipefail
cd "$(dirname "$0")/.."
TXS=${1:-200000}
SEED=${2:-1}
COMPARE=${COMPARE:-ferrum electrs electrumx}
CACHE=${FERRUM_CACHE:-$HOME/.cache/ferrum}
work=$(mktemp -d "${TMPDIR:-/tmp}/ferrum-compare.XXXXXX")
node_dir="$work/bitcoind"
cleanup() {
  tools/bitcoind.sh stop "$node_dir" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

command -v /usr/bin/time >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null

install_competitors() {
  case " $COMPARE " in *" electrs "*)
    [ -x "$CACHE/electrs-0.11.1/bin/electrs" ] || {
      command -v clang >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-dev >/dev/null
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

cargo build --release -q -p ferrum --bin ferrum -p ferrum-tools --bin ferrum-chaingen
chain="$CACHE/chains/large-$TXS-$SEED.frm"
if [ ! -f "$chain" ]; then
  mkdir -p "$CACHE/chains"
  target/release/ferrum-chaingen --seed "$SEED" --txs "$TXS" --preset large --out "$chain.tmp"
  mv "$chain.tmp" "$chain"
fi

# One node holds the chain; each server syncs from it in turn.
node=$(tools/bitcoind.sh start "$node_dir" -txospenderindex=1)
rpc=$(sed 's/.*rpc=\([0-9]*\).*/\1/' <<<"$node")
p2p=$(sed 's/.*p2p=\([0-9]*\).*/\1/' <<<"$node")
cookie="$node_dir/regtest/.cookie"
python3 tools/compare_support.py submit "$chain" "$rpc" "$cookie"
tip=$(python3 tools/compare_support.py height "$rpc" "$cookie")
txs=$(python3 tools/compare_support.py txcount "$rpc" "$cookie")
echo "chain: $chain, height $tip, $txs txs, $(du -sb "$node_dir/regtest/blocks" | cut -f1) bytes of block files"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
measure() { # name db_dir command...: runs it until it serves $tip, then stops it
  local name=$1 db=$2; shift 2
  local start end
  start=$(date +%s.%N)
  # Its own session: a server that signals its process group must not stop this script.
  setsid /usr/bin/time -f "%M" -o "$work/$name.rss" "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  if ! python3 tools/compare_support.py wait "$port" "$tip" 900 "$pid"; then
    echo "$name did not serve height $tip; log tail:"; tail -20 "$work/$name.log"; pkill -TERM -P "$pid" 2>/dev/null || true; return 1
  fi
  end=$(date +%s.%N)
  # Stop the server, not /usr/bin/time, so that time still reports the peak RSS.
  pkill -TERM -P "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local secs size rss
  secs=$(python3 -c "print(f'{$end - $start:.2f}')")
  size=$(du -sb "$db" | cut -f1)
  rss=$(cat "$work/$name.rss" | tail -1)
  printf '%-10s %8ss %10s tx/s %12s bytes (%s B/tx) peak RSS %s MiB\n' "$name" "$secs" \
    "$(python3 -c "print(round($txs / $secs))")" "$size" "$(python3 -c "print(round($size / $txs, 1))")" \
    "$(( rss / 1024 ))"
}

for server in $COMPARE; do
  case $server in
    ferrum)
      measure ferrum "$work/ferrum-db" env DB_DIRECTORY="$work/ferrum-db" NET=regtest \
        DAEMON_URL="127.0.0.1:$rpc" DAEMON_COOKIE_FILE="$cookie" SERVICES="tcp://127.0.0.1:$port" \
        target/release/ferrum ;;
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
        sh -c "mkdir -p '$work/electrumx-db' && exec '$CACHE/e-x/bin/electrumx_server'" ;;
    *) echo "unknown server $server" >&2; exit 2 ;;
  esac
done
