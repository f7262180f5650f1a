#!/usr/bin/env python3
"""A client that floods one session with big JSON-RPC batches and never reads, then leaves;
prints the server's RSS and CPU seconds as it goes (docs/BENCHMARKS.md, "One client's batch
flood").

    tools/batch_flood.py PORT PID [BATCHES] [MEMBERS]   default: 8 batches of 85,000 pings

PORT is a running ferrum's TCP wallet port on 127.0.0.1, PID its process id. Bounded: at most
BATCHES sends 2 s apart (each gives up after 3 s once the server stops reading), then 30 s of
samples after the client closes.
"""
import json
import socket
import sys
import time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    batches = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    members = int(sys.argv[4]) if len(sys.argv) > 4 else 85000
    sample = lambda what: print(f"{what}: RSS {rss_mib(pid):.0f} MiB, CPU {cpu_s(pid):.2f} s", flush=True)
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(3)
    hello = {"jsonrpc": "2.0", "id": 0, "method": "server.version", "params": ["flood", "1.6"]}
    s.sendall(json.dumps(hello).encode() + b"\n")
    s.recv(4096)
    batch = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "server.ping"} for i in range(members)])
    batch = batch.encode() + b"\n"
    print(f"{batches} batches of {members} pings, {len(batch):,} bytes each, never read")
    sample("start")
    sent = 0
    for _ in range(batches):
        try:
            s.sendall(batch)
        except (socket.timeout, OSError):
            print("the server stopped reading")
            break
        sent += 1
        time.sleep(2)
        sample(f"after batch {sent}")
    s.close()
    sample("client closed")
    for k in range(6):
        time.sleep(5)
        sample(f"{5 * (k + 1)} s later")


if __name__ == "__main__":
    main()
