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
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal

COIN = 100_000_000
MATURITY = 100
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
        return json.loads(self.call(*args), parse_float=Decimal)


def coinbase_balance(outputs, tip: int):
    """(mature, immature) value in sats of coinbase outputs (txid, index, value, height) at tip."""
    mature = sum(v for _, _, v, h in outputs if h + MATURITY <= tip + 1)
    return mature, sum(v for *_, v, _ in outputs) - mature


def difference(wanted, seen) -> str:
    """The fields of two states that differ; lists are compared as sets of entries."""
    if not isinstance(seen, dict):
        return f"got {seen!r}"
    parts = []
    for key in wanted:
        if wanted[key] == seen.get(key):
            continue
        if isinstance(wanted[key], list):
            got = seen.get(key) or []
            missing = sorted(set(wanted[key]) - set(got))
            extra = sorted(set(got) - set(wanted[key]))
            parts.append(f"{key} ({len(got)} entries, wanted {len(wanted[key])}) "
                         f"lacks {missing[:5]} and has unexpected {extra[:5]}")
        else:
            parts.append(f"{key} is {seen.get(key)!r}, wanted {wanted[key]!r}")
    return "; ".join(parts)


def same_certificate(pem_a: str, pem_b: str) -> bool:
    return ssl.PEM_cert_to_DER_cert(pem_a) == ssl.PEM_cert_to_DER_cert(pem_b)


class Tx:
    """A transaction made here, with its fee and its height as the server must report it in a
    history: its block's height, 0 in the mempool, -1 in the mempool with an unconfirmed input."""

    def __init__(self, decoded, fee: int, height: int, raw: str = ""):
        self.txid = decoded["txid"]
        self.decoded = decoded
        self.raw = raw
        self.fee = fee
        self.height = height

    def confirmations(self, tip: int) -> int:
        return tip - self.height + 1 if self.height > 0 else 0

    def inputs(self):
        return {(vin["txid"], vin["vout"]) for vin in self.decoded["vin"]}

    def outputs_to(self, address: str):
        """(txid, index, value) of the outputs paying address."""
        return [(self.txid, out["n"], sats(out["value"])) for out in self.decoded["vout"]
                if out["scriptPubKey"].get("address") == address]


class Check:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.time_limit
        ports = {"tcp": args.tcp_rpc_port, "ssl": args.ssl_rpc_port}
        self.daemons = {k: Electrum(ports[k], args.rpc_user, args.rpc_password) for k in KINDS}
        self.node = Node(args.bitcoin_cli, args.node_dir)
        self.passed = 0
        self.coinbases = {}  # txid -> height of every coinbase paying the demo address
        self.coinbase_outputs = []  # (txid, index, value) of their outputs paying it
        self.amount = sats("1.2345")  # the payment to the receiver
        self.back = sats("0.5")  # the receiver's payment back to the demo address
        self.payment = None  # Tx, once made
        self.payback = None  # Tx spending the payment's output, once made

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

    def address_view(self, address: str):
        """A probe: Ferrum's own answers for an address, through Electrum's walletless queries
        (get_history, listunspent, get_balance), amounts in sats."""

        def probe(kind):
            electrum = self.daemons[kind]
            history = electrum.call("getaddresshistory", address=address)
            unspent = electrum.call("getaddressunspent", address=address)
            balance = electrum.call("getaddressbalance", address=address)
            return {
                "history": sorted((h["tx_hash"], h["height"], h.get("fee")) for h in history),
                "unspent": sorted((u["tx_hash"], u["tx_pos"], u["height"], u["value"]) for u in unspent),
                "confirmed": sats(balance["confirmed"]),
                "unconfirmed": sats(balance["unconfirmed"]),
            }

        return probe

    def made(self):
        return [tx for tx in (self.payment, self.payback) if tx]

    def expected_wallets(self, tip):
        """(sender, receiver): what each wallet must show at tip, from the coinbases and the
        transactions made so far."""
        confirmed, unmatured = coinbase_balance(
            [(t, n, v, self.coinbases[t]) for t, n, v in self.coinbase_outputs], tip)
        unconfirmed = 0
        history = [(txid, h, tip - h + 1) for txid, h in self.coinbases.items()]
        received, received_at, receiver_history = 0, 0, []
        for tx in self.made():
            history.append((tx.txid, tx.height, tx.confirmations(tip)))
            receiver_history.append((tx.txid, tx.height, tx.confirmations(tip)))
        if self.payment:
            # Electrum counts the change of an unconfirmed tx spending confirmed coins as
            # confirmed: the sender's confirmed balance drops by amount and fee at once.
            confirmed -= self.amount + self.payment.fee
            received, received_at = self.amount, self.payment.height
        if self.payback:
            if self.payback.height > 0:
                confirmed += self.back
            else:
                unconfirmed += self.back
            received = self.amount - self.back - self.payback.fee
            received_at = self.payback.height
        sender = {"confirmed": confirmed, "unconfirmed": unconfirmed, "unmatured": unmatured,
                  "history": sorted(history)}
        receiver = {"confirmed": received if received_at > 0 else 0,
                    "unconfirmed": 0 if received_at > 0 else received,
                    "unmatured": 0, "history": sorted(receiver_history)}
        return sender, receiver

    def expected_demo_view(self):
        """What Ferrum must answer for the demo address, as ElectrumX does: history with the fee
        of mempool entries; unspent outputs (mempool ones at height 0, none spent in the
        mempool); confirmed balance, and the mempool's net effect as unconfirmed."""
        txs = self.made()
        history = [(txid, h, None) for txid, h in self.coinbases.items()]
        history += [(tx.txid, tx.height, tx.fee if tx.height <= 0 else None) for tx in txs]
        outputs = [(txid, n, self.coinbases[txid], v) for txid, n, v in self.coinbase_outputs]
        outputs += [(t, n, max(tx.height, 0), v) for tx in txs for t, n, v in tx.outputs_to(self.args.address)]
        spent_by = {outpoint: tx.height for tx in txs for outpoint in tx.inputs()}
        confirmed = sum(v for t, n, h, v in outputs if h > 0 and spent_by.get((t, n), 0) <= 0)
        unconfirmed = sum(v for t, n, h, v in outputs if h == 0)
        unconfirmed -= sum(v for t, n, h, v in outputs if (t, n) in spent_by and spent_by[(t, n)] <= 0)
        return {
            "history": sorted(history),
            "unspent": sorted(o for o in outputs if (o[0], o[1]) not in spent_by),
            "confirmed": confirmed,
            "unconfirmed": unconfirmed,
        }

    def wait_all(self, what: str, tip: int, limit: float):
        """Both wallets on both daemons, then Ferrum's view of the demo address, as expected."""
        sender, receiver = self.expected_wallets(tip)
        self.wait_for(f"sender {what}", self.wallet_state("sender"), sender, limit)
        if self.payment:
            self.wait_for(f"receiver {what}", self.wallet_state("receiver"), receiver, limit)
        self.wait_for(
            f"Ferrum's history, unspent and balance of the demo address {what}",
            self.address_view(self.args.address), self.expected_demo_view(), limit,
        )

    def run(self):
        for electrum in self.daemons.values():
            electrum.wait_ready(30)
        self.open_wallets()
        tip = self.check_mined()
        self.pay(tip)
        self.bump_fee(tip)
        self.pay_back(tip)
        self.confirm(tip + 1)
        self.reorg(tip + 1)
        self.restart_ferrum(tip + 3)
        self.long_chain(tip + 5)
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

    def add_coinbase(self, block_hash: str, height: int):
        coinbase = self.node.json("getblock", block_hash, 2)["tx"][0]
        self.coinbases[coinbase["txid"]] = height
        self.coinbase_outputs += Tx(coinbase, 0, height).outputs_to(self.args.address)

    def check_mined(self) -> int:
        """Coinbases mined before Ferrum started, then more mined while the wallets are online."""
        a = self.args
        for height in range(1, a.initial_blocks + 1):
            self.add_coinbase(self.node.call("getblockhash", height), height)
        tip = a.initial_blocks
        self.wait_all(f"after {tip} blocks mined before Ferrum started (SPV-verified history)", tip, 60)
        # Ferrum must notify the new headers and the address's new status.
        for block_hash in self.node.json("generatetoaddress", a.live_blocks, a.address):
            tip += 1
            self.add_coinbase(block_hash, tip)
        self.wait_all(f"after {a.live_blocks} more blocks mined live (tip {tip})", tip, 30)
        return tip

    def send(self, kind: str, wallet: str, destination: str, amount: int, fee: int, height: int):
        """payto and broadcast on one daemon; the node must hold the tx with exactly that fee."""
        electrum = self.daemons[kind]
        raw = electrum.call("payto", destination=destination, amount=str(Decimal(amount) / COIN),
                            fee=str(Decimal(fee) / COIN), wallet=self.wallet(kind, wallet))
        tx = self.broadcast(kind, raw, height)
        if tx.fee != fee:
            raise CheckFailed(f"the node holds {tx.txid} with fee {tx.fee} sat, not {fee} sat")
        self.ok(f"[{kind}] {wallet} paid {Decimal(amount) / COIN} BTC to {destination}, broadcast via "
                f"Ferrum: {tx.txid} is in the node's mempool")
        return tx

    def broadcast(self, kind: str, raw: str, height: int) -> Tx:
        """Broadcast through Ferrum; the node must then hold the tx (its fee is read there)."""
        txid = self.daemons[kind].call("broadcast", tx=raw)
        decoded = self.node.json("decoderawtransaction", raw)
        if decoded["txid"] != txid:
            raise CheckFailed(f"broadcast returned {txid}, not the txid of the signed transaction {decoded['txid']}")
        fee = sats(self.node.json("getmempoolentry", txid)["fees"]["base"])
        return Tx(decoded, fee, height, raw)

    def pay(self, tip):
        """The sender pays a fresh receiver address; broadcast goes through Ferrum (TCP)."""
        pay_to = self.daemons["tcp"].call("getunusedaddress", wallet=self.wallet("tcp", "receiver"))
        sent = time.monotonic()
        self.payment = self.send("tcp", "sender", pay_to, self.amount, sats("0.0001"), 0)
        self.wait_all("shows the payment unconfirmed (history height 0)", tip, 15)
        print(f"      (the payment reached both wallets {time.monotonic() - sent:.1f} s after broadcast)",
              flush=True)
        self.wait_for(
            f"Ferrum's history, unspent and balance of {pay_to}: the payment unconfirmed",
            self.address_view(pay_to),
            {"history": [(self.payment.txid, 0, self.payment.fee)],
             "unspent": [(self.payment.txid, n, 0, v) for _, n, v in self.payment.outputs_to(pay_to)],
             "confirmed": 0, "unconfirmed": self.amount}, 15,
        )

    def bump_fee(self, tip):
        """The sender replaces the payment with one paying 10,000 sat more fee out of its change
        (Debian's Electrum disables bumpfee, so the wallet's `serialize` builds and signs it; the
        node relays full-RBF): Ferrum's mempool must drop the replaced tx and show the
        replacement in its place."""
        old, wif = self.payment, wif_testnet_compressed(1)
        values = {(t, n): v for t, n, v in self.coinbase_outputs}
        inputs = [{"prevout_hash": t, "prevout_n": n, "value_sats": values[(t, n)],
                   "privkey": f"p2wpkh:{wif}", "nsequence": 0xFFFFFFFD}
                  for t, n in sorted(old.inputs())]
        outputs = []
        for out in old.decoded["vout"]:
            address = out["scriptPubKey"]["address"]
            value = sats(out["value"]) - (10_000 if address == self.args.address else 0)
            outputs.append({"address": address, "value_sats": value})
        raw = self.daemons["tcp"].call("serialize", jsontx={"inputs": inputs, "outputs": outputs})
        new = self.broadcast("tcp", raw, 0)
        mempool = self.node.json("getrawmempool")
        if old.txid in mempool or new.txid not in mempool:
            raise CheckFailed(f"the node's mempool after the replacement is {mempool}")
        if new.fee != old.fee + 10_000:
            raise CheckFailed(f"the replacement {new.txid} pays {new.fee} sat, not {old.fee + 10_000}")
        self.payment = new
        self.ok(f"[tcp] sender replaced the payment, fee {old.fee} -> {new.fee} sat: {new.txid} "
                f"replaced {old.txid} in the node's mempool")
        self.wait_all("shows the replacement instead of the replaced payment", tip, 15)

    def pay_back(self, tip):
        """The receiver spends the unconfirmed payment back to the demo address (TLS): a mempool
        tx with an unconfirmed input, at height -1 in histories."""
        self.payback = self.send("ssl", "receiver", self.args.address, self.back, sats("0.0002"), -1)
        if self.payment.txid not in {txid for txid, _ in self.payback.inputs()}:
            raise CheckFailed(f"{self.payback.txid} does not spend the unconfirmed payment")
        self.wait_all("shows the payment back unconfirmed with an unconfirmed parent (height -1)", tip, 15)

    def mine_made(self, tip):
        """Mines a block outside both wallets, which must hold both transactions, at tip."""
        block_hash = self.node.json("generatetoaddress", 1, self.args.other_address)[0]
        block_txs = self.node.json("getblock", block_hash)["tx"]
        for tx in self.made():
            if tx.txid not in block_txs:
                raise CheckFailed(f"block {tip} does not hold {tx.txid}")
            tx.height = tip

    def confirm(self, tip):
        """A block mined to an address outside both wallets confirms both at tip."""
        a = self.args
        script = self.node.json("validateaddress", a.other_address)["scriptPubKey"]
        if script != "0020" + hashlib.sha256(b"\x51").hexdigest():
            raise CheckFailed(f"{a.other_address} is not P2WSH(OP_TRUE): node says {script}")
        self.mine_made(tip)
        self.wait_all(f"shows both confirmed at height {tip} (one more coinbase matured)", tip, 30)
        change = self.amount - self.back - self.payback.fee
        for kind, electrum in self.daemons.items():
            unspent = electrum.call("listunspent", wallet=self.wallet(kind, "receiver"))
            outputs = [(u["prevout_hash"], sats(u["value"]), u["height"]) for u in unspent]
            if outputs != [(self.payback.txid, change, tip)]:
                raise CheckFailed(f"[{kind}] receiver listunspent: {unspent}")
        self.ok("receiver listunspent: exactly the change of the payment back, confirmed")

    def reorg(self, tip):
        """The block confirming both at tip is replaced by two empty blocks: both go back to the
        mempool (heights 0 and -1 again), then a third block confirms them."""
        self.node.call("invalidateblock", self.node.call("getblockhash", tip))
        mempool = self.node.json("getrawmempool")
        if any(tx.txid not in mempool for tx in self.made()):
            raise CheckFailed(f"the node did not return both to its mempool after invalidateblock: {mempool}")
        self.payment.height, self.payback.height = 0, -1
        for _ in range(2):
            self.node.call("generateblock", self.args.other_address, "[]")
        tip += 1
        self.wait_all(f"after a reorg of block {tip - 1} (two empty blocks, tip {tip}): "
                      "both unconfirmed again", tip, 30)
        tip += 1
        self.mine_made(tip)
        self.wait_all(f"shows both confirmed at height {tip} on the new branch", tip, 30)

    def restart_ferrum(self, tip):
        """Ferrum stops (SIGTERM), two blocks are mined to the demo address while it is down,
        and it restarts on its database: the wallets reconnect and see the new blocks."""
        work = self.args.work
        with open(f"{work}/ferrum.pid") as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 30
        while process_alive(pid):
            if time.monotonic() >= end:
                raise CheckFailed(f"ferrum (pid {pid}) did not exit within 30 s of SIGTERM")
            time.sleep(0.1)
        for block_hash in self.node.json("generatetoaddress", 2, self.args.address):
            tip += 1
            self.add_coinbase(block_hash, tip)
        with open(f"{work}/ferrum.log", "ab") as log:
            ferrum = subprocess.Popen([f"{work}/ferrum.sh"], stdout=log, stderr=log)
        with open(f"{work}/ferrum.pid", "w") as f:
            f.write(str(ferrum.pid))
        self.ok("ferrum stopped on SIGTERM; 2 blocks mined while it was down; ferrum restarted")
        self.wait_all(f"after Ferrum restarted on its database (tip {tip})", tip, 60)

    def long_chain(self, tip):
        """Blocks mined past the first 2016-header chunk: Electrum catches up with
        blockchain.block.headers chunks (a full one and a partial one); every coinbase of the
        demo address is now mature."""
        blocks = 2016 + 16 - tip  # the tip ends 16 blocks into the second chunk
        for batch in (blocks // 2, blocks - blocks // 2):
            self.node.call("generatetoaddress", batch, self.args.other_address)
        tip += blocks
        self.wait_all(f"after {blocks} more blocks mined to another address (tip {tip}, past the "
                      "2016-header chunk)", tip, 60)

    def check_certificate(self):
        """The TLS daemon pinned Ferrum's certificate (after checking its fingerprint)."""
        with open(f"{self.electrum_dir('ssl')}/certs/127.0.0.1") as pinned, open(self.args.cert) as ours:
            if not same_certificate(pinned.read(), ours.read()):
                raise CheckFailed("the TLS daemon pinned a certificate that is not Ferrum's")
        self.ok("the TLS daemon talked to Ferrum's certificate (pinned, fingerprint checked)")

    def check_logs(self):
        """Electrum tolerates some server faults (a failed request, a status mismatch, a
        dropped connection) by logging and retrying; any of those is a failure here, as is an
        error in Ferrum's log."""
        for kind in KINDS:
            with open(f"{self.args.work}/electrum-{kind}.log", errors="replace") as log:
                faults = [line.rstrip() for line in log
                          if " | E | " in line or " | W | " in line or "Traceback" in line]
            if faults:
                raise CheckFailed(f"[{kind}] electrum logged {len(faults)} warnings or errors, "
                                  f"first: {faults[:5]}")
        with open(f"{self.args.work}/ferrum.log", errors="replace") as log:
            errors = [line.rstrip() for line in log if " ERROR " in line]
        if errors:
            raise CheckFailed(f"ferrum logged {len(errors)} errors, first: {errors[:5]}")
        self.ok("neither electrum daemon logged a warning or an error, nor ferrum an error")


def process_alive(pid: int) -> bool:
    """Whether pid runs; a zombie (exited, not yet reaped by its parent) has stopped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
