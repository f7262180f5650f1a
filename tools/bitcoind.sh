#!/usr/bin/env bash
# Provides a real Bitcoin Core `bitcoind` for tests: builds it once from the source shipped in
# the `libbitcoinkernel-sys` registry crate, caches it outside the repo keyed by version, and
# starts/stops regtest nodes on free loopback ports, one data directory per node.
#
#   tools/bitcoind.sh path                 build if missing, print the bitcoind path
#   tools/bitcoind.sh start DIR [ARGS...]  start a regtest node in DIR, print "rpc=PORT p2p=PORT cookie=PATH"
#   tools/bitcoind.sh stop DIR             stop the node in DIR (waits for it to exit)
set -euo pipefail

KERNEL_CRATE_VERSION=0.4.1
CACHE_ROOT=${FERRUM_CACHE:-$HOME/.cache/ferrum}
PREFIX="$CACHE_ROOT/bitcoind-kernel-sys-$KERNEL_CRATE_VERSION"
BITCOIND="$PREFIX/bin/bitcoind"

log() { echo "bitcoind.sh: $*" >&2; }
source "$(dirname "${BASH_SOURCE[0]}")/debian.sh"

install_build_deps() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  [ -e /usr/include/boost/version.hpp ] || missing+=(libboost-dev)
  [ -e /usr/include/event2/event.h ] || missing+=(libevent-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v g++ >/dev/null || missing+=(g++)
  [ ${#missing[@]} -eq 0 ] || debian_install "${missing[@]}"
}

# Fetch the crate through cargo (the registry is the only source we may use) and unpack it.
fetch_source() {
  local work=$1
  mkdir -p "$work/fetch/src"
  cat >"$work/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-core-source"
version = "0.0.0"
edition = "2021"
[dependencies]
libbitcoinkernel-sys = "=$KERNEL_CRATE_VERSION"
TOML
  echo "fn main() {}" >"$work/fetch/src/main.rs"
  (cd "$work/fetch" && cargo fetch -q)
  local crate
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/libbitcoinkernel-sys-$KERNEL_CRATE_VERSION.crate | head -n1)
  tar xzf "$crate" -C "$work"
  echo "$work/libbitcoinkernel-sys-$KERNEL_CRATE_VERSION/bitcoin"
}

build() {
  [ -x "$BITCOIND" ] && return 0
  install_build_deps
  local work src
  work=$(mktemp -d "${TMPDIR:-/tmp}/ferrum-core-build.XXXXXX")
  src=$(fetch_source "$work")
  log "building bitcoind from $src (this takes a while on 2 cores)"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DENABLE_WALLET=OFF -DENABLE_IPC=OFF -DWITH_EMBEDDED_ASMAP=OFF -DBUILD_TESTS=OFF \
    -DBUILD_BENCH=OFF -DBUILD_GUI=OFF -DBUILD_TX=OFF -DBUILD_UTIL=OFF -DBUILD_FUZZ_BINARY=OFF \
    -DWITH_ZMQ=OFF -DCMAKE_INSTALL_PREFIX="$PREFIX.tmp" >"$work/configure.log"
  cmake --build "$work/build" -j"$(nproc)" --target bitcoind bitcoin-cli >"$work/build.log"
  mkdir -p "$PREFIX.tmp/bin"
  cp "$work/build/bin/bitcoind" "$work/build/bin/bitcoin-cli" "$PREFIX.tmp/bin/"
  strip "$PREFIX.tmp/bin/"* || true
  rm -rf "$PREFIX" && mv "$PREFIX.tmp" "$PREFIX"   # publish atomically: a half build is never used
  rm -rf "$work"
  log "cached $BITCOIND"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
  local dir=$1; shift
  build
  mkdir -p "$dir"
  local rpc p2p
  rpc=$(free_port); p2p=$(free_port)
  cat >"$dir/bitcoin.conf" <<CONF
regtest=1
server=1
txindex=1
rest=1
listen=1
dnsseed=0
fixedseeds=0
discover=0
fallbackfee=0.0001
[regtest]
rpcbind=127.0.0.1
rpcallowip=127.0.0.1
rpcport=$rpc
bind=127.0.0.1:$p2p
CONF
  "$BITCOIND" -datadir="$dir" -daemonwait "$@" >/dev/null
  echo "rpc=$rpc p2p=$p2p cookie=$dir/regtest/.cookie"
}

stop() {
  local dir=$1 pid
  pid=$(cat "$dir/regtest/bitcoind.pid" 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
  path) build; echo "$BITCOIND" ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: $0 path | start DIR [ARGS...] | stop DIR" >&2; exit 2 ;;
esac
