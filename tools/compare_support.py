"""Helpers for tools/compare-sync.sh: submit a Ferrum chain file to bitcoind, ask its height
and tx count, and wait until an Electrum server on a port serves a given tip height."""
import base64, http.client, json, os, socket, struct, sys, time


def rpc(port, cookie, method, *params):
    auth = base64.b64encode(open(cookie).read().strip().encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=600)
    body = json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)})
    conn.request("POST", "/", body, {"Authorization": "Basic " + auth})
    reply = json.loads(conn.getresponse().read())
    if reply.get("error"):
        raise SystemExit(f"{method}: {reply['error']}")
    return reply["result"]


def frames(path):
    """The raw blocks of a Ferrum chain file (FRMCHAIN, then [u32 LE length][block])."""
    with open(path, "rb") as f:
        if f.read(8) != b"FRMCHAIN":
            raise SystemExit(f"{path} is not a Ferrum chain file")
        while header := f.read(4):
            yield f.read(struct.unpack("<I", header)[0])


def submit(path, port, cookie):
    blocks = frames(path)
    next(blocks)  # genesis: the node has its own
    count = 0
    for block in blocks:
        result = rpc(port, cookie, "submitblock", block.hex())
        if result not in (None, "duplicate"):
            raise SystemExit(f"block {count + 1} rejected: {result}")
        count += 1
    print(f"submitted {count} blocks", file=sys.stderr)


def wait(port, tip, timeout, pid):
    """0 once the server on `port` serves height `tip`; 1 on timeout or if `pid` exits."""
    deadline = time.time() + float(timeout)
    while time.time() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return 1
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
                f = s.makefile("rwb")
                for req in ({"id": 0, "method": "server.version", "params": ["compare", "1.4"]},
                            {"id": 1, "method": "blockchain.headers.subscribe", "params": []}):
                    f.write((json.dumps(req) + "\n").encode()); f.flush()
                    reply = json.loads(f.readline())
                if reply.get("result", {}).get("height") == int(tip):
                    return 0
        except (OSError, ValueError, AttributeError):
            pass
        time.sleep(0.05)
    return 1


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "submit":
        submit(*args)
    elif cmd == "height":
        print(rpc(args[0], args[1], "getblockcount"))
    elif cmd == "txcount":
        print(rpc(args[0], args[1], "getchaintxstats")["txcount"])
    elif cmd == "wait":
        sys.exit(wait(*args))
