# Sourced by the tools' scripts: generated chains, the node emulator, free ports. Expects
# $BIN, the directory of the release binaries.

# free_port: a TCP port on 127.0.0.1 that was free a moment ago.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ensure_chain FILE TXS SEED [ferrum-chaingen flags...]: generates the "large" chain into FILE
# unless it is there.
ensure_chain() {
  local file=$1 txs=$2 seed=$3
  shift 3
  [ -f "$file" ] && return
  mkdir -p "$(dirname "$file")"
  "$BIN/ferrum-chaingen" --seed "$seed" --txs "$txs" --preset large "$@" --out "$file.tmp"
  mv "$file.tmp" "$file"
}

# start_emulator DIR ARGS...: starts `ferrum-emulator ARGS` in its own session (its output in
# DIR), waits until it serves, and sets emu_pid, rpc, control and cookie.
start_emulator() {
  local dir=$1 line
  shift
  setsid "$BIN/ferrum-emulator" "$@" >"$dir/emulator.out" 2>"$dir/emulator.log" &
  emu_pid=$!
  until grep -q '^rpc=' "$dir/emulator.out" 2>/dev/null; do
    kill -0 "$emu_pid" 2>/dev/null || { echo "emulator failed:" >&2; tail "$dir/emulator.log" >&2; exit 1; }
    sleep 0.1
  done
  line=$(head -1 "$dir/emulator.out")
  rpc=$(sed 's/.*rpc=\([0-9]*\).*/\1/' <<<"$line")
  control=$(sed 's/.*control=\([0-9]*\).*/\1/' <<<"$line")
  cookie=$(sed 's/.*cookie=\([^ ]*\).*/\1/' <<<"$line")
}

# follow_setup NAME TXS SEED BLOCKS: for the scripts that follow a generated chain's tip.
# Builds the binaries, makes the "large" chain (TXS txs, SEED) if needed, and starts the
# emulator on it in a new work dir, BLOCKS below its tip. Sets work, chain, tip, txs, start,
# port and the emulator's variables; on exit every pid in `pids` is stopped and the work dir
# removed (unless KEEP=1).
follow_setup() {
  local name=$1 txs_wanted=$2 seed=$3 blocks=$4
  chain="${FERRUM_CACHE:-$HOME/.cache/ferrum}/chains/large-$txs_wanted-$seed.frm"
  work=$(mktemp -d "${TMPDIR:-/tmp}/ferrum-$name.XXXXXX")
  pids=()
  trap follow_cleanup EXIT INT TERM
  cargo build --release -q -p ferrum --bin ferrum --bin ferrum-db \
    -p ferrum-tools --bin ferrum-chaingen --bin ferrum-emulator
  ensure_chain "$chain" "$txs_wanted" "$seed"
  read -r tip txs < <(python3 tools/compare_support.py chainsize "$chain")
  start=$((tip - blocks))
  start_emulator "$work" --chain "$chain" --initial-height "$start"
  pids+=("$emu_pid")
  port=$(free_port)
}

follow_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}

# start_ferrum DB: starts the server on index DB against the emulator, polling every 100 ms
# (REORG_LIMIT passed through), its output appended to $work/ferrum.log. Sets ferrum.
start_ferrum() {
  env DB_DIRECTORY="$1" NET=regtest DAEMON_URL="127.0.0.1:$rpc" DAEMON_COOKIE_FILE="$cookie" \
    SERVICES="tcp://127.0.0.1:$port" DAEMON_POLL_INTERVAL_BLOCKS=100 \
    ${REORG_LIMIT:+REORG_LIMIT=$REORG_LIMIT} "$BIN/ferrum" >>"$work/ferrum.log" 2>&1 &
  ferrum=$!
  pids+=("$ferrum")
}
