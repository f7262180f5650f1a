#!/usr/bin/env bash
# End-to-end check with a real wallet: Debian's Electrum (headless, --regtest) connected only to
# Ferrum, Ferrum on a private regtest bitcoind. Mines coinbases to the demo key (private key 1)
# and checks the wallet's balance and SPV-verified history; pays a second wallet (broadcast
# through Ferrum) and replaces that payment with a higher fee; the receiver spends it back
# unconfirmed (height -1); a block confirms both, a reorg unconfirms them, a block on the new
# branch confirms them again; Ferrum restarts on its database with two blocks mined while it
# was down; blocks past the first 2016-header chunk make Electrum fetch headers in chunks. Two
# wallet daemons hold the same wallets, one reaching Ferrum over TCP, one over TLS; Ferrum's own
# answers for the demo address are checked too. The checks are in tools/wallet_check.py.
# Prints PASS or FAIL with the reason; exits non-zero on failure. The checks are bounded by
# WALLET_CHECK_TIME_LIMIT seconds (default 180, the ferrum build excluded).
# WALLET_CHECK_KEEP=1 keeps the work directory (logs, wallets, chain) for inspection;
# WALLET_CHECK_FERRUM=PATH checks that ferrum binary instead of building one (bisecting).
set -euo pipefail
cd "$(dirname "$0")/.."

TIME_LIMIT=${WALLET_CHECK_TIME_LIMIT:-180}
INITIAL_BLOCKS=105  # mined before Ferrum starts; a few coinbases are mature, most are not
LIVE_BLOCKS=5       # mined while the wallet is connected
# The P2WPKH address of private key 1 (tools/demo.sh mines to it); wallet_check.py verifies it.
ADDRESS=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080
# P2WSH(OP_TRUE), Bitcoin Core's test address for "anyone": mined to when a block must belong to
# neither wallet. wallet_check.py verifies its script through the node.
OTHER_ADDRESS=bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85

say() { echo "wallet-check: $*"; }
fail() { say "FAIL: $*"; exit 1; }

missing=()
command -v electrum >/dev/null || missing+=(electrum)
command -v openssl >/dev/null || missing+=(openssl)
source tools/debian.sh
[ ${#missing[@]} -eq 0 ] || debian_install --no-install-recommends "${missing[@]}"

if [ -n "${WALLET_CHECK_FERRUM:-}" ]; then
  ferrum_bin=$(realpath "$WALLET_CHECK_FERRUM")
else
  cargo build --release --bin ferrum
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  ferrum_bin="$target_dir/release/ferrum"
fi
bitcoin_cli="$(dirname "$(tools/bitcoind.sh path)")/bitcoin-cli"

started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/ferrum-wallet-check.XXXXXX")
node_dir="$work/bitcoind"
electrum_tcp_pid="" electrum_ssl_pid="" child_pid=""
show_logs() {
  for f in ferrum.log electrum-tcp.log electrum-ssl.log; do
    [ -s "$work/$f" ] || continue
    echo "---- last lines of $f"
    tail -n 25 "$work/$f"
  done
}
alive() {  # a zombie (exited, not yet reaped by whichever parent it has) counts as gone
  [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}
stop_pid() {  # TERM, then KILL after 10 s: a hung process never outlives the check
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [ "$status" = 0 ] || show_logs >&2
  stop_pid "$child_pid"
  stop_pid "$electrum_tcp_pid"
  stop_pid "$electrum_ssl_pid"
  stop_pid "$(cat "$work/ferrum.pid" 2>/dev/null)"
  tools/bitcoind.sh stop "$node_dir" || true
  if [ "${WALLET_CHECK_KEEP:-0}" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

# Runs a step in the background and waits: a signal then interrupts the wait at once (bash defers
# traps until a foreground command ends), and cleanup stops the step.
step() { "$@" & child_pid=$!; wait "$child_pid"; }
remaining() { echo $((TIME_LIMIT - ($(date +%s) - started))); }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

node=$(tools/bitcoind.sh start "$node_dir")
rpc=${node#rpc=}; rpc=${rpc%% *}
"$bitcoin_cli" -datadir="$node_dir" generatetoaddress "$INITIAL_BLOCKS" "$ADDRESS" >/dev/null
say "bitcoind regtest ($node), mined $INITIAL_BLOCKS blocks to $ADDRESS"

# A self-signed certificate for Ferrum's TLS service (an end-entity one: rustls refuses a CA
# certificate as a server's); Electrum pins it on first use and must see this fingerprint.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" -addext extendedKeyUsage=serverAuth \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
fingerprint=$(openssl x509 -noout -fingerprint -sha256 -in "$work/cert.pem" | sed 's/.*=//; s/://g')

port=$(free_port); ssl_port=$(free_port); admin_port=$(free_port)
# Ferrum's command line, also run by wallet_check.py to restart it on the same database; whoever
# starts it records its pid in ferrum.pid for cleanup.
cat >"$work/ferrum.sh" <<SH
#!/bin/sh
DB_DIRECTORY="$work/db" NET=regtest DAEMON_URL="127.0.0.1:$rpc" \\
  DAEMON_COOKIE_FILE="$node_dir/regtest/.cookie" \\
  SERVICES="tcp://127.0.0.1:$port,ssl://127.0.0.1:$ssl_port,rpc://127.0.0.1:$admin_port" \\
  SSL_CERTFILE="$work/cert.pem" SSL_KEYFILE="$work/key.pem" LOG_LEVEL=info \\
  exec "$ferrum_bin"
SH
chmod +x "$work/ferrum.sh"
"$work/ferrum.sh" >>"$work/ferrum.log" 2>&1 &
echo $! >"$work/ferrum.pid"
step python3 tools/wallet_check.py wait-ferrum "$port" "$INITIAL_BLOCKS" 60 ||
  fail "ferrum did not start serving"
say "ferrum serving on 127.0.0.1:$port (tcp) and $ssl_port (ssl) at height $INITIAL_BLOCKS"

# Two wallet daemons, each with only Ferrum as server: one over TCP, one over TLS. JSON-RPC on
# free ports with fixed credentials; -v logs go to electrum-KIND.log.
electrum_version=$(dpkg-query -W -f='${Version}' electrum 2>/dev/null || echo unknown)
rpc_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
start_electrum() {  # KIND SERVER RPC_PORT [DAEMON ARGS...]
  local kind=$1 server=$2 rpc_port=$3 dir="$work/electrum-$1"
  shift 3
  mkdir -p "$dir/regtest/wallets"
  cat >"$dir/regtest/config" <<JSON
{"rpcuser": "check", "rpcpassword": "$rpc_password", "rpchost": "127.0.0.1",
 "rpcport": $rpc_port, "server": "$server", "oneserver": true,
 "auto_connect": false, "check_updates": false}
JSON
  electrum --regtest -D "$dir" -v daemon --oneserver --server "$server" "$@" \
    >"$work/electrum-$kind.log" 2>&1 &
}
tcp_rpc_port=$(free_port); ssl_rpc_port=$(free_port)
start_electrum tcp "127.0.0.1:$port:t" "$tcp_rpc_port"
electrum_tcp_pid=$!
start_electrum ssl "127.0.0.1:$ssl_port:s" "$ssl_rpc_port" --serverfingerprint "$fingerprint"
electrum_ssl_pid=$!
say "electrum $electrum_version daemons connecting to ferrum over tcp and ssl"

left=$(remaining)
[ "$left" -gt 0 ] || fail "time limit of $TIME_LIMIT s used up before the wallet checks"
if step python3 tools/wallet_check.py --work "$work" --tcp-rpc-port "$tcp_rpc_port" \
  --ssl-rpc-port "$ssl_rpc_port" --rpc-user check --rpc-password "$rpc_password" \
  --cert "$work/cert.pem" --bitcoin-cli "$bitcoin_cli" --node-dir "$node_dir" \
  --address "$ADDRESS" --other-address "$OTHER_ADDRESS" --initial-blocks "$INITIAL_BLOCKS" \
  --live-blocks "$LIVE_BLOCKS" --time-limit "$left"; then
  say "PASS: Electrum $electrum_version served end to end by Ferrum in $(($(date +%s) - started)) s"
else
  fail "the wallet checks above failed after $(($(date +%s) - started)) s"
fi
