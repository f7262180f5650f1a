#!/usr/bin/env bash
# The newcomer's demo: starts a private regtest Bitcoin Core (built and cached on first use),
# mines coins to a demo address, runs Ferrum against it, and shows Ferrum serving that wallet
# over the Electrum protocol. Ferrum then keeps running until Ctrl-C, so a real wallet can
# connect too:  electrum --regtest --oneserver --server 127.0.0.1:50001:t
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${FERRUM_DEMO_PORT:-50001}
RPC_PORT=${FERRUM_DEMO_RPC_PORT:-8000}
work=$(mktemp -d "${TMPDIR:-/tmp}/ferrum-demo.XXXXXX")
node_dir="$work/bitcoind"
cleanup() {
  [ -n "${ferrum_pid:-}" ] && kill "$ferrum_pid" 2>/dev/null && wait "$ferrum_pid" 2>/dev/null
  tools/bitcoind.sh stop "$node_dir" || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

cargo build --release --bin ferrum
bitcoin_cli="$(dirname "$(tools/bitcoind.sh path)")/bitcoin-cli"
node=$(tools/bitcoind.sh start "$node_dir")
echo "bitcoind regtest: $node"
cli() { "$bitcoin_cli" -datadir="$node_dir" "$@"; }

# A fixed demo address (a well-known test key; never use it for real money).
address=bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080
cli generatetoaddress 110 "$address" >/dev/null
echo "mined 110 blocks to $address"

rpc=${node#rpc=}; rpc=${rpc%% *}
DB_DIRECTORY="$work/db" NET=regtest DAEMON_URL="127.0.0.1:$rpc" \
  DAEMON_COOKIE_FILE="$node_dir/regtest/.cookie" \
  SERVICES="tcp://127.0.0.1:$PORT,rpc://127.0.0.1:$RPC_PORT" LOG_LEVEL=info \
  target/release/ferrum &
ferrum_pid=$!

python3 - "$PORT" "$address" <<'PY'
import hashlib, json, socket, sys, time
port, address = int(sys.argv[1]), sys.argv[2]
for _ in range(300):
    try:
        sock = socket.create_connection(("127.0.0.1", port)); break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("ferrum did not start serving wallets")
stream = sock.makefile("rwb")
def call(method, *params):
    stream.write((json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}) + "\n").encode())
    stream.flush()
    reply = json.loads(stream.readline())
    if "error" in reply:
        sys.exit(f"{method}: {reply['error']}")
    return reply["result"]
# The P2WPKH script of the demo address, and its Electrum script hash.
script = bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6")
scripthash = hashlib.sha256(script).digest()[::-1].hex()
print("server.version            ->", call("server.version", "ferrum-demo", "1.6"))
print("blockchain.headers.subscribe ->", "height", call("blockchain.headers.subscribe")["height"])
print(f"wallet {address}")
balance = call("blockchain.scripthash.get_balance", scripthash)
print("  get_balance             ->", {k: v / 1e8 for k, v in balance.items()}, "BTC")
print("  get_history             ->", len(call("blockchain.scripthash.get_history", scripthash)), "transactions")
utxos = call("blockchain.scripthash.listunspent", scripthash)
print("  listunspent             ->", len(utxos), "outputs, first", utxos[0] if utxos else None)
PY

echo
echo "Ferrum is serving regtest wallets on 127.0.0.1:$PORT (admin RPC on $RPC_PORT). Ctrl-C stops it."
wait "$ferrum_pid"
