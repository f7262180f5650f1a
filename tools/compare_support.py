"""Helpers for tools/compare-sync.sh and tools/follow-tip.sh: size up a Ferrum chain file,
submit it to bitcoind, ask the node's height and tx count, have the node emulator mine, wait
until an Electrum server on a port serves a given tip height, and report a server's time,
memory and index size by component."""
import base64, glob, http.client, json, os, socket, struct, sys, time


def rpc(port, cookie, method, *params):
    auth = base64.b64encode(open(cookie).read().strip().encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=600)
    body = json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)})
    conn.request("POST", "/", body, {"Authorization": "Basic " + auth})
    reply = json.loads(conn.getresponse().read())
    if reply.get("error"):
        raise SystemExit(f"{method}: {reply['error']}")
    return reply["result"]


def mine(control_port, blocks):
    """Has the node emulator (its control port) serve `blocks` more blocks of its chain."""
    conn = http.client.HTTPConnection("127.0.0.1", int(control_port), timeout=60)
    body = json.dumps({"jsonrpc": "1.0", "id": 1, "method": "emu_mine", "params": [int(blocks)]})
    conn.request("POST", "/", body)
    reply = json.loads(conn.getresponse().read())
    if reply.get("error"):
        raise SystemExit(f"emu_mine: {reply['error']}")


def frames(path):
    """The raw blocks of a Ferrum chain file (FRMCHAIN, then [u32 LE length][block])."""
    with open(path, "rb") as f:
        if f.read(8) != b"FRMCHAIN":
            raise SystemExit(f"{path} is not a Ferrum chain file")
        while header := f.read(4):
            yield f.read(struct.unpack("<I", header)[0])


def chainsize(path):
    """Tip height and tx count (genesis included, as getchaintxstats counts) of a chain file:
    each block's tx count is the compact size right after its 80-byte header."""
    height, txs = -1, 0
    for block in frames(path):
        first = block[80]
        width = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first)
        txs += first if width is None else int.from_bytes(block[81:81 + width], "little")
        height += 1
    print(height, txs)


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


def descendants(pid):
    """`pid` and every process below it."""
    found, todo = [], [int(pid)]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def rss_kib(pid):
    """(anonymous, file-backed) resident KiB of a process, (0, 0) once it is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value
    except OSError:
        return 0, 0
    kib = lambda k: int(fields.get(k, "0 kB").split()[0])
    return kib("RssAnon"), kib("RssFile") + kib("RssShmem")


def wait(port, tip, timeout, pid, rss_out=None):
    """0 once the server on `port` serves height `tip`; 1 on timeout or if `pid` exits.
    Meanwhile samples the largest process under `pid` every 50 ms and writes its peak
    anonymous and peak file-backed resident KiB to `rss_out` (mmap'd index files count in
    the kernel's peak RSS but are page cache, reclaimable)."""
    deadline = time.time() + float(timeout)
    peak = [0, 0]

    def sample():
        for p in descendants(pid):
            anon, file_ = rss_kib(p)
            peak[0], peak[1] = max(peak[0], anon), max(peak[1], file_)
        if rss_out:
            with open(rss_out, "w") as f:
                f.write(f"{peak[0]} {peak[1]}\n")

    while time.time() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return 1
        sample()
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


def report(name, start, end, txs, peak_kib, user, sys_, anon_kib, file_kib):
    secs = float(end) - float(start)
    cpu = float(user) + float(sys_)
    print(f"{name:<10} {secs:8.2f} s {int(txs) / secs:10.0f} tx/s   CPU {cpu:7.1f} s "
          f"({int(txs) / cpu:.0f} tx per CPU s)   peak RSS {int(peak_kib) // 1024} MiB "
          f"(sampled: anonymous {int(anon_kib) // 1024} MiB, file-backed "
          f"{int(file_kib) // 1024} MiB)")


def tree_bytes(paths):
    total = 0
    for path in paths:
        if os.path.isfile(path):
            total += os.path.getsize(path)
        for root, _, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def print_parts(parts, txs, excluded=()):
    txs = int(txs)
    for label, size in parts:
        print(f"    {label:<44} {size:>14} bytes {size / txs:8.1f} B/tx")
    total = sum(size for label, size in parts if label not in excluded)
    note = " (without the last)" if excluded else ""
    print(f"    {'total' + note:<44} {total:>14} bytes {total / txs:8.1f} B/tx")


def dirsize(db, txs):
    print_parts([(os.path.basename(db.rstrip("/")), tree_bytes([db]))], txs)


# ElectrumX's LevelDB key prefixes (electrumx/server/db.py and history.py).
EX_PREFIXES = {
    "utxo": {b"u": "UTXOs by script (u)", b"h": "outpoint index (h)", b"U": "undo (U)"},
    "hist": {b"H": "history (H)"},
}


def leveldb_shares(path, prefixes):
    """Raw key + value bytes per labelled prefix of a LevelDB (None without plyvel, which
    ElectrumX's own Python has: run this script with it)."""
    try:
        import plyvel
    except ImportError:
        return None
    shares = {label: 0 for label in prefixes.values()}
    shares["other"] = 0
    db = plyvel.DB(path)
    try:
        for key, value in db.iterator():
            shares[prefixes.get(key[:1], "other")] += len(key) + len(value)
    finally:
        db.close()
    return shares


def exsize(db, txs):
    """ElectrumX's directory by component. meta/block<N> files are its raw-block reorg cache
    (whole blocks kept for the last REORG_LIMIT heights), which the targets exclude; LevelDB
    write-ahead logs (*.log) are listed apart from its sorted tables."""
    meta = os.path.join(db, "meta")
    raw = [p for p in glob.glob(os.path.join(meta, "block*"))]
    hashes = glob.glob(os.path.join(meta, "hashes*"))
    other_meta = [p for p in glob.glob(os.path.join(meta, "*")) if p not in raw + hashes]
    parts = [("meta: tx hashes", tree_bytes(hashes)),
             ("meta: headers, tx counts", tree_bytes(other_meta))]
    for name in ("utxo", "hist"):
        d = os.path.join(db, name)
        logs = glob.glob(os.path.join(d, "*.log"))
        tables = tree_bytes([d]) - tree_bytes(logs)
        shares = leveldb_shares(d, EX_PREFIXES[name])
        if shares is None:
            parts.append((f"{name} LevelDB tables", tables))
        else:
            # Split the compressed tables in proportion to raw key + value bytes per prefix.
            total = sum(shares.values()) or 1
            for label, raw_bytes in shares.items():
                parts.append((f"{name} LevelDB: {label}", round(tables * raw_bytes / total)))
        parts.append((f"{name} LevelDB logs", tree_bytes(logs)))
    # Whatever the per-prefix split's rounding leaves over or under stays out of "other".
    rest = max(0, tree_bytes([db]) - sum(size for _, size in parts) - tree_bytes(raw))
    parts.append(("other", rest))
    parts.append((f"raw-block reorg cache, {len(raw)} blocks", tree_bytes(raw)))
    print_parts(parts, txs, excluded=(parts[-1][0],))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "chainsize":
        chainsize(*args)
    elif cmd == "report":
        report(*args)
    elif cmd == "dirsize":
        dirsize(*args)
    elif cmd == "exsize":
        exsize(*args)
    elif cmd == "submit":
        submit(*args)
    elif cmd == "height":
        print(rpc(args[0], args[1], "getblockcount"))
    elif cmd == "txcount":
        print(rpc(args[0], args[1], "getchaintxstats")["txcount"])
    elif cmd == "mine":
        mine(*args)
    elif cmd == "wait":
        sys.exit(wait(*args))
