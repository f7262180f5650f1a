#!/usr/bin/env python3
"""The checks of tools/wallet-check.sh: drives two real Electrum wallet daemons (JSON-RPC), one
connected to Ferrum over TCP and one over TLS, each holding the same two wallets, and a regtest
bitcoind (bitcoin-cli); compares what every wallet shows with values computed from what this
script did to the chain.

`wallet_check.py wait-ferrum PORT HEIGHT SECONDS` waits until Ferrum serves that tip height.

Every expected value comes from the blocks and payment made here (coinbase maturity as Bitcoin
Core and Electrum define it: a coinbase at height h is spendable in block h + 100), never from
Ferrum. Waits poll until the wanted state or a deadline, then fail with what was last seen.
"""
import argparse
import base64
import hashlib
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal

COIN = 100_000_000
MATURITY = 100
SUBSIDY = 50 * COIN  # regtest halves every 150 blocks; this check stays below that
# The public key of private key 1 is the generator G (compressed), a fixed constant of secp256k1.
G_COMPRESSED = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
KINDS = ("tcp", "ssl")  # how each wallet daemon reaches Ferrum


class CheckFailed(Exception):
    pass


def base58check(payload: bytes) -> str:
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def wif_testnet_compressed(secret: int) -> str:
    """WIF of a private key for testnet/regtest (version 0xef), compressed public key."""
    return base58check(b"\xef" + secret.to_bytes(32, "big") + b"\x01")


def sats(btc) -> int:
    """Electrum reports amounts as BTC decimal strings; compare in satoshis."""
    return int(Decimal(str(btc)) * COIN)


class Electrum:
    """One Electrum daemon's JSON-RPC interface."""

    def __init__(self, port: int, user: str, password: str):
        self.url = f"http://127.0.0.1:{port}"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def wait_ready(self, limit: float):
        end = time.monotonic() + limit
        while True:
            try:
                return self.call("ping")
            except OSError as e:
                if time.monotonic() >= end:
                    raise CheckFailed(f"electrum daemon RPC not up within {limit:.0f} s: {e}")
                time.sleep(0.2)

    def call(self, method: str, **params):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        headers = {"Content-Type": "application/json", "Authorization": self.auth}
        request = urllib.request.Request(self.url, body.encode(), headers)
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.load(reply)
        if answer.get("error"):
            raise CheckFailed(f"electrum {method}: {answer['error'].get('message')}")
        return answer["result"]


class Node:
    def __init__(self, cli: str, datadir: str):
        self.base = [cli, f"-datadir={datadir}"]

    def call(self, *args) -> str:
        done = subprocess.run(self.base + [str(a) for a in args], capture_output=True, text=True)
        if done.returncode != 0:
            raise CheckFailed(f"bitcoin-cli {' '.join(map(str, args))}: {done.stderr.strip()}")
        return done.stdout.strip()

    def json(self, *args):
        return json.loads(self.call(*args))


def expected_balance(coinbase_heights, tip: int, extra_confirmed: int = 0):
    """(confirmed, unmatured) in sats for coinbases of SUBSIDY at the given heights."""
    mature = [h for h in coinbase_heights if h + MATURITY <= tip + 1]
    return SUBSIDY * len(mature) + extra_confirmed, SUBSIDY * (len(coinbase_heights) - len(mature))


def difference(wanted, seen) -> str:
    """The fields of two wallet states that differ (history: (txid, height, confirmations))."""
    if not (isinstance(wanted, dict) and isinstance(seen, dict)):
        return f"wanted {wanted!r}, wallet shows {seen!r}"
    parts = []
    for key in wanted:
        if wanted[key] == seen.get(key):
            continue
        if key == "history":
            missing = sorted(set(wanted[key]) - set(seen.get(key, [])))
            extra = sorted(set(seen.get(key, [])) - set(wanted[key]))
            parts.append(f"history ({len(seen.get(key, []))} entries, wanted {len(wanted[key])}) "
                         f"lacks {missing[:5]} and has unexpected {extra[:5]}")
        else:
            parts.append(f"{key} is {seen.get(key)!r}, wanted {wanted[key]!r}")
    return "; ".join(parts)


def same_certificate(pem_a: str, pem_b: str) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)


class Check:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.time_limit
        ports = {"tcp": args.tcp_rpc_port, "ssl": args.ssl_rpc_port}
        self.daemons = {k: Electrum(ports[k], args.rpc_user, args.rpc_password) for k in KINDS}
        self.node = Node(args.bitcoin_cli, args.node_dir)
        self.passed = 0
        self.coinbases = {}  # txid -> height of every coinbase paying the demo address

    def ok(self, what: str):
        self.passed += 1
        print(f"  ok  {what}", flush=True)

    def electrum_dir(self, kind: str) -> str:
        return f"{self.args.work}/electrum-{kind}/regtest"

    def wallet(self, kind: str, name: str) -> str:
        return f"{self.electrum_dir(kind)}/wallets/{name}"

    def wait_for(self, what: str, probe, wanted, limit: float):
        """Poll probe(kind) on both daemons until each returns wanted (within limit seconds and
        the overall deadline)."""
        start = time.monotonic()
        end = min(start + limit, self.deadline)
        pending = list(KINDS)
        while True:
            seen = {kind: probe(kind) for kind in pending}
            pending = [kind for kind in pending if seen[kind] != wanted]
            if not pending:
                self.ok(f"{what} (after {time.monotonic() - start:.1f} s)")
                return
            if time.monotonic() >= end:
                why = "; ".join(f"[{kind}] {difference(wanted, seen[kind])}" for kind in pending)
                raise CheckFailed(f"{what}: after {limit:.0f} s, {why}")
            time.sleep(0.25)

    def wallet_state(self, name: str):
        """A probe: what wallet name shows on a daemon once it is synchronized to the node's
        tip: balance in sats and history."""

        def probe(kind):
            electrum, wallet = self.daemons[kind], self.wallet(kind, name)
            tip = int(self.node.call("getblockcount"))
            height = electrum.call("getinfo")["blockchain_height"]
            if height != tip or not electrum.call("is_synchronized", wallet=wallet):
                return ("syncing", f"wallet at height {height}, node at {tip}")
            balance = electrum.call("getbalance", wallet=wallet)
            history = electrum.call("onchain_history", wallet=wallet)["transactions"]
            return {
                "confirmed": sats(balance.get("confirmed", 0)),
                "unconfirmed": sats(balance.get("unconfirmed", 0)),
                "unmatured": sats(balance.get("unmatured", 0)),
                # Verified (SPV merkle proof checked) txs have confirmations = tip - height + 1.
                "history": sorted((h["txid"], h["height"], h["confirmations"]) for h in history),
            }

        return probe

    def address_balance(self, address: str):
        """A probe: Electrum's walletless getaddressbalance (Ferrum's get_balance), in sats."""

        def probe(kind):
            balance = self.daemons[kind].call("getaddressbalance", address=address)
            return {k: sats(v) for k, v in balance.items()}

        return probe

    def sender_expectation(self, tip, payment=None, spent=0):
        """The sender's state at tip: its coinbases, and the payment (txid, height) if made."""
        confirmed, unmatured = expected_balance(list(self.coinbases.values()), tip, -spent)
        history = [(txid, h, tip - h + 1) for txid, h in self.coinbases.items()]
        if payment:
            txid, height = payment
            history.append((txid, height, tip - height + 1 if height else 0))
        return {"confirmed": confirmed, "unconfirmed": 0, "unmatured": unmatured,
                "history": sorted(history)}

    @staticmethod
    def receiver_expectation(amount, txid, height):
        """The receiver's state: the payment, confirmed at height (the new tip) or unconfirmed."""
        if height:
            return {"confirmed": amount, "unconfirmed": 0, "unmatured": 0,
                    "history": [(txid, height, 1)]}
        return {"confirmed": 0, "unconfirmed": amount, "unmatured": 0, "history": [(txid, 0, 0)]}

    def run(self):
        for electrum in self.daemons.values():
            electrum.wait_ready(30)
        self.open_wallets()
        tip = self.check_mined()
        txid, pay_to, amount, spent = self.pay(tip)
        self.confirm(tip + 1, txid, pay_to, amount, spent)
        self.reorg(tip + 1, txid, pay_to, amount, spent)
        self.check_certificate()
        self.check_logs()

    def open_wallets(self):
        """On both daemons: the sender holds private key 1 (imported), the receiver restores the
        seed of a wallet the TCP daemon creates."""
        a = self.args
        wif = wif_testnet_compressed(1)
        h160 = hashlib.new("ripemd160", hashlib.sha256(G_COMPRESSED).digest()).hexdigest()
        script = self.node.json("validateaddress", a.address)["scriptPubKey"]
        if script != "0014" + h160:
            raise CheckFailed(f"{a.address} is not the P2WPKH of key 1: node says {script}")
        self.ok(f"{a.address} is the P2WPKH address of private key 1 (WIF {wif})")

        tcp, ssl_ = self.daemons["tcp"], self.daemons["ssl"]
        seed = tcp.call("create", seed_type="segwit", wallet_path=self.wallet("tcp", "receiver"))["seed"]
        ssl_.call("restore", text=seed, wallet_path=self.wallet("ssl", "receiver"))
        for kind, electrum in self.daemons.items():
            electrum.call("restore", text=f"p2wpkh:{wif}", wallet_path=self.wallet(kind, "sender"))
            for name in ("sender", "receiver"):
                if electrum.call("load_wallet", wallet_path=self.wallet(kind, name)) is not True:
                    raise CheckFailed(f"electrum could not load wallet {self.wallet(kind, name)}")
            addresses = electrum.call("listaddresses", wallet=self.wallet(kind, "sender"))
            if addresses != [a.address]:
                raise CheckFailed(f"[{kind}] the imported-key wallet holds {addresses}, not [{a.address}]")
        self.ok("electrum imported the key on both daemons: the only address is the demo address")

    def check_mined(self) -> int:
        """Coinbases mined before Ferrum started, then more mined while the wallets are online."""
        a = self.args
        for height in range(1, a.initial_blocks + 1):
            block = self.node.json("getblock", self.node.call("getblockhash", height))
            self.coinbases[block["tx"][0]] = height
        tip = a.initial_blocks
        self.wait_for(
            f"sender after {tip} blocks mined before Ferrum started: "
            f"balance and {tip} SPV-verified history entries",
            self.wallet_state("sender"), self.sender_expectation(tip), 60,
        )
        # Ferrum must notify the new headers and the address's new status.
        for block_hash in self.node.json("generatetoaddress", a.live_blocks, a.address):
            tip += 1
            self.coinbases[self.node.json("getblock", block_hash)["tx"][0]] = tip
        self.wait_for(
            f"sender after {a.live_blocks} more blocks mined live (tip {tip})",
            self.wallet_state("sender"), self.sender_expectation(tip), 30,
        )
        return tip

    def pay(self, tip):
        """The TCP daemon's sender pays a fresh receiver address; broadcast goes through Ferrum."""
        tcp = self.daemons["tcp"]
        pay_to = tcp.call("getunusedaddress", wallet=self.wallet("tcp", "receiver"))
        amount, fee = sats("1.2345"), sats("0.0001")
        raw = tcp.call("payto", destination=pay_to, amount=str(Decimal(amount) / COIN),
                       fee=str(Decimal(fee) / COIN), wallet=self.wallet("tcp", "sender"))
        sent = time.monotonic()
        txid = tcp.call("broadcast", tx=raw)
        if self.node.json("decoderawtransaction", raw)["txid"] != txid:
            raise CheckFailed(f"broadcast returned {txid}, not the txid of the signed transaction")
        if txid not in self.node.json("getrawmempool"):
            raise CheckFailed(f"broadcast through Ferrum returned {txid}, not in the node's mempool")
        self.ok(f"payto {Decimal(amount) / COIN} BTC to {pay_to}, broadcast via Ferrum: "
                f"{txid} is in the node's mempool")

        # Electrum counts the change of an unconfirmed tx spending confirmed coins as confirmed.
        self.wait_for(
            "sender shows the payment unconfirmed (history height 0, balance less amount and fee)",
            self.wallet_state("sender"), self.sender_expectation(tip, (txid, 0), amount + fee), 15,
        )
        latency = time.monotonic() - sent
        print(f"      (the payment reached both wallets {latency:.1f} s after broadcast)", flush=True)
        self.wait_for(
            "receiver shows the payment unconfirmed",
            self.wallet_state("receiver"), self.receiver_expectation(amount, txid, 0), 15,
        )
        self.wait_for(
            f"getaddressbalance {pay_to} (Ferrum's mempool view)",
            self.address_balance(pay_to), {"confirmed": 0, "unconfirmed": amount}, 15,
        )
        return txid, pay_to, amount, amount + fee

    def mine_payment(self, tip, txid):
        """Mines a block outside both wallets, which must hold the payment, at height tip."""
        block_hash = self.node.json("generatetoaddress", 1, self.args.other_address)[0]
        if txid not in self.node.json("getblock", block_hash)["tx"]:
            raise CheckFailed(f"block {tip} does not hold the payment {txid}")

    def confirm(self, tip, txid, pay_to, amount, spent):
        """A block mined to an address outside both wallets confirms the payment at tip."""
        a = self.args
        script = self.node.json("validateaddress", a.other_address)["scriptPubKey"]
        if script != "0020" + hashlib.sha256(b"\x51").hexdigest():
            raise CheckFailed(f"{a.other_address} is not P2WSH(OP_TRUE): node says {script}")
        self.mine_payment(tip, txid)
        self.wait_for(
            f"sender shows the payment confirmed at height {tip} (one more coinbase matured)",
            self.wallet_state("sender"), self.sender_expectation(tip, (txid, tip), spent), 30,
        )
        self.wait_for(
            "receiver shows the payment confirmed",
            self.wallet_state("receiver"), self.receiver_expectation(amount, txid, tip), 30,
        )
        self.wait_for(
            f"getaddressbalance {pay_to} confirmed",
            self.address_balance(pay_to), {"confirmed": amount, "unconfirmed": 0}, 15,
        )
        for kind, electrum in self.daemons.items():
            unspent = electrum.call("listunspent", wallet=self.wallet(kind, "receiver"))
            outputs = [(u["prevout_hash"], sats(u["value"]), u["height"]) for u in unspent]
            if outputs != [(txid, amount, tip)]:
                raise CheckFailed(f"[{kind}] receiver listunspent: {unspent}")
        self.ok("receiver listunspent: exactly the payment output, confirmed")

    def reorg(self, tip, txid, pay_to, amount, spent):
        """The block confirming the payment at tip is replaced by two empty blocks: the payment
        goes back to the mempool (unconfirmed in both wallets), then a third block confirms it."""
        self.node.call("invalidateblock", self.node.call("getblockhash", tip))
        if txid not in self.node.json("getrawmempool"):
            raise CheckFailed(f"the node did not return {txid} to its mempool after invalidateblock")
        for _ in range(2):
            self.node.call("generateblock", self.args.other_address, "[]")
        tip += 1
        self.wait_for(
            f"reorg of block {tip - 1} (two empty blocks, tip {tip}): sender shows the payment "
            "unconfirmed again",
            self.wallet_state("sender"), self.sender_expectation(tip, (txid, 0), spent), 30,
        )
        self.wait_for(
            "receiver shows the payment unconfirmed again",
            self.wallet_state("receiver"), self.receiver_expectation(amount, txid, 0), 30,
        )
        self.wait_for(
            f"getaddressbalance {pay_to} unconfirmed again",
            self.address_balance(pay_to), {"confirmed": 0, "unconfirmed": amount}, 15,
        )
        tip += 1
        self.mine_payment(tip, txid)
        self.wait_for(
            f"sender shows the payment confirmed at height {tip} on the new branch",
            self.wallet_state("sender"), self.sender_expectation(tip, (txid, tip), spent), 30,
        )
        self.wait_for(
            "receiver shows the payment confirmed on the new branch",
            self.wallet_state("receiver"), self.receiver_expectation(amount, txid, tip), 30,
        )

    def check_certificate(self):
        """The TLS daemon pinned Ferrum's certificate (after checking its fingerprint)."""
        with open(f"{self.electrum_dir('ssl')}/certs/127.0.0.1") as pinned, open(self.args.cert) as ours:
            if not same_certificate(pinned.read(), ours.read()):
                raise CheckFailed("the TLS daemon pinned a certificate that is not Ferrum's")
        self.ok("the TLS daemon talked to Ferrum's certificate (pinned, fingerprint checked)")

    def check_logs(self):
        """Electrum tolerates some server faults (a failed request, a status mismatch, a
        dropped connection) by logging and retrying; any of those is a failure here."""
        for kind in KINDS:
            with open(f"{self.args.work}/electrum-{kind}.log", errors="replace") as log:
                faults = [line.rstrip() for line in log
                          if " | E | " in line or " | W | " in line or "Traceback" in line]
            if faults:
                raise CheckFailed(f"[{kind}] electrum logged {len(faults)} warnings or errors, "
                                  f"first: {faults[:5]}")
        self.ok("neither electrum daemon logged a warning or an error")


def wait_for_ferrum(port: int, height: int, limit: float):
    """Wait until Ferrum serves the Electrum protocol on port with its tip at height."""
    end = time.monotonic() + limit
    seen = "no connection"
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                stream = sock.makefile("rwb")
                for method, params in (("server.version", ["wallet-check", "1.4"]),
                                       ("blockchain.headers.subscribe", [])):
                    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
                    stream.write(json.dumps(request).encode() + b"\n")
                    stream.flush()
                    reply = json.loads(stream.readline())
                    if "error" in reply:
                        sys.exit(f"ferrum answered {method} with an error: {reply['error']}")
                if reply["result"].get("height") == height:
                    return
                seen = reply["result"]
        except (OSError, ValueError) as e:
            seen = str(e)
        time.sleep(0.2)
    sys.exit(f"ferrum did not serve height {height} on port {port} within {limit:.0f} s (last: {seen})")


def main():
    if sys.argv[1:2] == ["wait-ferrum"]:
        wait_for_ferrum(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", required=True,
                   help="holds electrum-KIND/ (daemon dir) and electrum-KIND.log for tcp and ssl")
    p.add_argument("--tcp-rpc-port", type=int, required=True)
    p.add_argument("--ssl-rpc-port", type=int, required=True)
    p.add_argument("--rpc-user", required=True)
    p.add_argument("--rpc-password", required=True)
    p.add_argument("--cert", required=True, help="Ferrum's TLS certificate (PEM)")
    p.add_argument("--bitcoin-cli", required=True)
    p.add_argument("--node-dir", required=True)
    p.add_argument("--address", required=True, help="the P2WPKH address of private key 1")
    p.add_argument("--other-address", required=True, help="P2WSH(OP_TRUE), outside both wallets")
    p.add_argument("--initial-blocks", type=int, required=True)
    p.add_argument("--live-blocks", type=int, default=5)
    p.add_argument("--time-limit", type=float, default=150)
    args = p.parse_args()
    check = Check(args)
    try:
        check.run()
    except (CheckFailed, OSError) as e:
        print(f"FAIL after {check.passed} checks: {e}", flush=True)
        sys.exit(1)
    print(f"all {check.passed} checks passed", flush=True)


if __name__ == "__main__":
    main()
