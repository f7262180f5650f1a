#!/usr/bin/env python3
"""A ZMQ publisher made with the real libzmq (Debian's libzmq5, through ctypes), standing in
for bitcoind's -zmqpubhashblock in tests: bitcoind publishes with this library.

    tools/zmq_publisher.py ENDPOINT     e.g. tcp://127.0.0.1:*  (any free port)

Binds a PUB socket and prints "bound <endpoint>". Then each line read on stdin, a block hash in
hex, is published as bitcoind does: three frames, "hashblock", the 32 bytes, and a 4-byte
little-endian sequence number; "sent <n>" is printed after each. Exits at end of input.
"""
import ctypes
import sys

ZMQ_PUB, ZMQ_SNDMORE, ZMQ_LINGER, ZMQ_LAST_ENDPOINT = 1, 2, 17, 32

lib = ctypes.CDLL("libzmq.so.5", use_errno=True)
lib.zmq_ctx_new.restype = ctypes.c_void_p
lib.zmq_socket.restype = ctypes.c_void_p
lib.zmq_socket.argtypes = [ctypes.c_void_p, ctypes.c_int]
lib.zmq_bind.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.zmq_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
lib.zmq_setsockopt.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
lib.zmq_getsockopt.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                               ctypes.POINTER(ctypes.c_size_t)]
lib.zmq_close.argtypes = [ctypes.c_void_p]
lib.zmq_ctx_term.argtypes = [ctypes.c_void_p]
lib.zmq_strerror.restype = ctypes.c_char_p
lib.zmq_errno.restype = ctypes.c_int


def check(result, what):
    if result == -1:
        sys.exit(f"zmq_publisher: {what}: {lib.zmq_strerror(lib.zmq_errno()).decode()}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: zmq_publisher.py ENDPOINT")
    ctx = lib.zmq_ctx_new()
    sock = lib.zmq_socket(ctx, ZMQ_PUB)
    linger = ctypes.c_int(0)
    check(lib.zmq_setsockopt(sock, ZMQ_LINGER, ctypes.byref(linger), 4), "setsockopt")
    check(lib.zmq_bind(sock, sys.argv[1].encode()), f"bind {sys.argv[1]}")
    endpoint = ctypes.create_string_buffer(256)
    size = ctypes.c_size_t(256)
    check(lib.zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, endpoint, ctypes.byref(size)), "getsockopt")
    print("bound", endpoint.value.decode(), flush=True)
    for seq, line in enumerate(sys.stdin):
        body = bytes.fromhex(line.strip())
        parts = [b"hashblock", body, seq.to_bytes(4, "little")]
        for i, part in enumerate(parts):
            flags = ZMQ_SNDMORE if i < len(parts) - 1 else 0
            check(lib.zmq_send(sock, part, len(part), flags), "send")
        print("sent", seq + 1, flush=True)
    lib.zmq_close(sock)
    lib.zmq_ctx_term(ctx)


if __name__ == "__main__":
    main()
