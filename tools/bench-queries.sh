#!/usr/bin/env bash
# Query benchmark over TCP: builds release binaries, serves a generated chain with the node
# emulator, starts Ferrum on it on free ports, waits until it serves the tip, then runs
# ferrum-rpcbench (get_history, listunspent, get_balance on scripts of ~10, ~1,000, ≥10,000 and
# the 10 heaviest histories, on 1 and 16 connections) and stops everything. Markdown on stdout.
#
#   tools/bench-queries.sh [ferrum-rpcbench options...]     e.g. --seconds 5 --conns 1,4,16
#   CHAIN=path.frm         chain file (default: the 200k-tx "large" chain, seed 1; generated
#                          when missing)
#   COMPARE="electrumx electrs"   also bench these on the same chain, each synced from one
#                          real regtest bitcoind loaded with it (tools/bitcoind.sh); binaries
#                          from $ELECTRUMX (default /opt/ex/bin/electrumx_server) and $ELECTRS
#                          (default /opt/electrs/bin/electrs)
#   SERVERS="ferrum"       servers to bench (ferrum, electrumx, electrs); COMPARE adds to it
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FERRUM_CACHE:-$HOME/.cache/ferrum}
CHAIN=${CHAIN:-$CACHE/chains/large-200000-1.frm}
SERVERS="${SERVERS:-ferrum} ${COMPARE:-}"
ELECTRUMX=${ELECTRUMX:-/opt/ex/bin/electrumx_server}
ELECTRS=${ELECTRS:-/opt/electrs/bin/electrs}
BIN=${CARGO_TARGET_DIR:-target}/release
bench_args=("$@")
work=$(mktemp -d "${TMPDIR:-/tmp}/ferrum-bench-queries.XXXXXX")
pids=()
node_dir=
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "$node_dir" ] || tools/bitcoind.sh stop "$node_dir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

source tools/emulator.sh
cargo build --release -q -p ferrum --bin ferrum \
  -p ferrum-tools --bin ferrum-emulator --bin ferrum-rpcbench --bin ferrum-chaingen
ensure_chain "$CHAIN" 200000 1

# serve NAME COMMAND...: starts a server on $port in its own session, waits until it
# serves height $tip, benches it, stops it.
serve() {
  local name=$1; shift
  setsid "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local start=$SECONDS
  if ! python3 tools/compare_support.py wait "$port" "$tip" 900 "$pid"; then
    echo "$name did not serve height $tip; log tail:" >&2; tail -20 "$work/$name.log" >&2
    return 1
  fi
  echo "$name serves height $tip after $((SECONDS - start)) s" >&2
  "$BIN/ferrum-rpcbench" --chain "$CHAIN" --server "127.0.0.1:$port" --label "$name" \
    --server-pid "$pid" "${bench_args[@]}"
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

port=$(free_port)
case " $SERVERS " in *" ferrum "*)
  start_emulator "$work" --chain "$CHAIN"
  pids+=("$emu_pid")
  tip=$(python3 tools/compare_support.py height "$rpc" "$cookie")
  echo "emulator serves $CHAIN up to height $tip" >&2
  serve ferrum env DB_DIRECTORY="$work/ferrum-db" NET=regtest DAEMON_URL="127.0.0.1:$rpc" \
    DAEMON_COOKIE_FILE="$cookie" SERVICES="tcp://127.0.0.1:$port" PEER_DISCOVERY=off \
    MAX_SEND=200000000 COST_SOFT_LIMIT=0 COST_HARD_LIMIT=0 "$BIN/ferrum" ;;
esac

case " $SERVERS " in *" electrumx "*|*" electrs "*)
  node_dir="$work/bitcoind"
  node=$(tools/bitcoind.sh start "$node_dir" -txospenderindex=1)
  rpc=$(sed 's/.*rpc=\([0-9]*\).*/\1/' <<<"$node")
  p2p=$(sed 's/.*p2p=\([0-9]*\).*/\1/' <<<"$node")
  cookie="$node_dir/regtest/.cookie"
  python3 tools/compare_support.py submit "$CHAIN" "$rpc" "$cookie"
  tip=$(python3 tools/compare_support.py height "$rpc" "$cookie")
  echo "bitcoind holds $CHAIN up to height $tip" >&2 ;;
esac

case " $SERVERS " in *" electrumx "*)
  auth=$(cat "$cookie")
  mkdir -p "$work/electrumx-db"
  serve electrumx env COIN=Bitcoin NET=regtest DB_DIRECTORY="$work/electrumx-db" \
    DAEMON_URL="http://$auth@127.0.0.1:$rpc/" SERVICES="tcp://127.0.0.1:$port" \
    PEER_DISCOVERY=off DB_ENGINE=leveldb ALLOW_ROOT=1 MAX_SEND=200000000 \
    COST_SOFT_LIMIT=0 COST_HARD_LIMIT=0 "$ELECTRUMX" ;;
esac

case " $SERVERS " in *" electrs "*)
  # Generated blocks are old, so the node stays in initial block download.
  serve electrs "$ELECTRS" --network regtest --db-dir "$work/electrs-db" \
    --daemon-dir "$node_dir" --cookie-file "$cookie" --daemon-rpc-addr "127.0.0.1:$rpc" \
    --daemon-p2p-addr "127.0.0.1:$p2p" --electrum-rpc-addr "127.0.0.1:$port" \
    --monitoring-addr 127.0.0.1:0 --skip-block-download-wait ;;
esac
