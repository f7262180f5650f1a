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
