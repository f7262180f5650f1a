//! Mempool end to end against a real regtest bitcoind (wallet-less: keys are the test's,
//! transactions signed with `signrawtransactionwithkey`): a transaction broadcast through
//! ferrum reaches a subscriber of its script within 2 seconds with the right status, mining it
//! sends the confirmed status, a reorg (`invalidateblock`, then a longer branch without it)
//! ends with the transaction back in the mempool and every answer right; then a child of it
//! (height -1) turns to height 0 when a block confirms the parent alone, and a double spend
//! confirmed by a block evicts the mempool transaction it conflicts with.

mod mempool_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bitcoin::secp256k1::{Secp256k1, SecretKey};
use bitcoin::{
    Address, CompressedPublicKey, Network, OutPoint, PrivateKey, ScriptBuf, Transaction,
};
use ferrum_tools::emulator::client::node_chain;
use ferrum_tools::regtest::RegtestNode;
use mempool_support::*;
use serde_json::{json, Value};

/// The bound from broadcast to notification.
const NOTIFY_BOUND: Duration = Duration::from_secs(2);
/// Quiet time after the expected notifications: longer than a mempool poll.
const QUIET: Duration = Duration::from_millis(1500);

/// A key of the test's own and its P2WPKH address.
struct Key {
    wif: String,
    address: Address,
}

impl Key {
    fn new(tag: u8) -> Key {
        let secp = Secp256k1::new();
        let secret = SecretKey::from_slice(&[tag; 32]).unwrap();
        let private = PrivateKey::new(secret, Network::Regtest);
        let public = CompressedPublicKey::from_private_key(&secp, &private).unwrap();
        Key {
            wif: private.to_wif(),
            address: Address::p2wpkh(&public, Network::Regtest),
        }
    }

    fn script(&self) -> ScriptBuf {
        self.address.script_pubkey()
    }
}

fn rpc(node: &RegtestNode, method: &str, params: Value) -> Value {
    node.rpc(method, params.clone())
        .unwrap_or_else(|e| panic!("bitcoind {method}({params}): {e}"))
}

/// A transaction spending `key`'s output `prevout` (holding `value`) to `outputs`, signed
/// by the node with the key.
fn signed_spend(
    node: &RegtestNode,
    key: &Key,
    prevout: OutPoint,
    value: u64,
    outputs: Vec<(ScriptBuf, u64)>,
) -> Transaction {
    let unsigned = spend(&[prevout], outputs);
    let signed = rpc(
        node,
        "signrawtransactionwithkey",
        json!([raw_hex(&unsigned), [key.wif], [{
            "txid": prevout.txid.to_string(),
            "vout": prevout.vout,
            "scriptPubKey": key.script().to_hex_string(),
            "amount": value as f64 / 1e8,
        }]]),
    );
    assert_eq!(signed["complete"], true, "{signed}");
    bitcoin::consensus::encode::deserialize_hex(signed["hex"].as_str().unwrap()).unwrap()
}

/// What the node holds now: its chain and its mempool's transactions.
fn node_state(node: &RegtestNode) -> Expected {
    let cookie = std::fs::read_to_string(node.cookie_path()).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.rpc_port()));
    let blocks = node_chain(addr, cookie.trim()).unwrap();
    let mempool = rpc(node, "getrawmempool", json!([]))
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let hex = rpc(node, "getrawtransaction", json!([t]));
            bitcoin::consensus::encode::deserialize_hex(hex.as_str().unwrap()).unwrap()
        })
        .collect();
    Expected::new(blocks, mempool)
}

fn header(e: &Expected) -> Value {
    let tip = e.chain.tip();
    json!({"hex": e.chain.header_hex(tip), "height": tip})
}

/// After the node mined a block: its state and statuses, once the server has notified exactly
/// the scripts whose status changed since `before`, with the new header, and answers as the
/// node's state says.
async fn expect_block(
    node: &RegtestNode,
    w: &mut Wallet,
    scripts: &[&ScriptBuf],
    before: &BTreeMap<String, Value>,
    what: &str,
) -> (Expected, BTreeMap<String, Value>) {
    let now = node_state(node);
    let after = now.statuses(scripts);
    let notified = w
        .expect_statuses(&changed(before, &after), QUIET, what)
        .await;
    assert_eq!(notified.headers, vec![header(&now)], "{what}");
    assert_answers(w, &now, scripts, what).await;
    (now, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_mine_and_reorg_against_bitcoind() {
    let node = RegtestNode::start().unwrap();
    let (alice, bob, carol, miner) = (
        Key::new(0xa1),
        Key::new(0xb0),
        Key::new(0xca),
        Key::new(0xc0),
    );
    rpc(
        &node,
        "generatetoaddress",
        json!([101, alice.address.to_string()]),
    );
    // Alice's first coinbase has matured: she pays Bob from it.
    let start = node_state(&node);
    let coinbase = &start.chain.blocks[1].txdata[0];
    let value = coinbase.output[0].value.to_sat();
    let (pay, fee) = (100_000_000, 10_000);
    let tx = signed_spend(
        &node,
        &alice,
        OutPoint::new(coinbase.compute_txid(), 0),
        value,
        vec![(bob.script(), pay), (alice.script(), value - pay - fee)],
    );
    let txid = tx.compute_txid();

    // Default settings: the mempool is polled at the default interval.
    let server = Ferrum::start(node.rpc_port(), node.cookie_path(), &[]);
    let (a, b, c) = (alice.script(), bob.script(), carol.script());
    let scripts = [&a, &b, &c];
    let mut w = Wallet::connect(server.tcp, "1.4").await;
    assert_eq!(
        w.call("blockchain.headers.subscribe", json!([])).await,
        header(&start)
    );
    assert_eq!(
        w.subscribe(&scripts).await,
        vec![start.status(&a), Value::Null, Value::Null]
    );
    let statuses = start.statuses(&scripts);

    // Broadcast through ferrum: Bob hears of it within 2 seconds, with the right status.
    let sent = Instant::now();
    assert_eq!(
        w.call("blockchain.transaction.broadcast", json!([raw_hex(&tx)]))
            .await,
        json!(txid.to_string())
    );
    let now = node_state(&node);
    assert_eq!(now.mempool_txids(), vec![txid]);
    let after = now.statuses(&scripts);
    assert_eq!(after[&script_hash(&b)], status_of(&[(txid, 0)]));
    let notified = w
        .expect_statuses(&changed(&statuses, &after), QUIET, "broadcast")
        .await;
    let latency = notified.at[&script_hash(&b)] - sent;
    assert!(
        latency <= NOTIFY_BOUND,
        "Bob was notified {latency:?} after the broadcast"
    );
    assert_answers(&mut w, &now, &scripts, "broadcast").await;
    assert_eq!(
        now.mempool(&b),
        json!([{"tx_hash": txid.to_string(), "height": 0, "fee": fee}])
    );

    // Mined: the confirmed status, once, with the new header.
    let statuses = after;
    rpc(
        &node,
        "generatetoaddress",
        json!([1, miner.address.to_string()]),
    );
    let (_, after) = expect_block(&node, &mut w, &scripts, &statuses, "mined").await;
    assert_eq!(after[&script_hash(&b)], status_of(&[(txid, 102)]));

    // Reorg: block 102 invalidated, two blocks without the transaction mined instead; it is
    // back in the node's mempool. The server may follow the node through its intermediate
    // tips; the end state must be right.
    let statuses = after;
    let at_102 = rpc(&node, "getblockhash", json!([102]));
    rpc(&node, "invalidateblock", json!([at_102]));
    for _ in 0..2 {
        rpc(
            &node,
            "generateblock",
            json!([miner.address.to_string(), []]),
        );
    }
    let now = node_state(&node);
    assert_eq!(now.chain.tip(), 103);
    assert_eq!(now.mempool_txids(), vec![txid]);
    let after = now.statuses(&scripts);
    assert_eq!(after[&script_hash(&b)], status_of(&[(txid, 0)]));
    let last_header = w.settle_statuses(&statuses, &after, QUIET, "reorg").await;
    assert_eq!(last_header, Some(header(&now)));
    assert_answers(&mut w, &now, &scripts, "reorg").await;
    assert_eq!(
        w.call("blockchain.headers.subscribe", json!([])).await,
        header(&now)
    );

    // Bob passes the unconfirmed output on to Carol: height -1.
    let statuses = after;
    let child = signed_spend(
        &node,
        &bob,
        OutPoint::new(txid, 0),
        pay,
        vec![(c.clone(), pay - 5_000)],
    );
    let child_id = child.compute_txid();
    assert_eq!(
        w.call("blockchain.transaction.broadcast", json!([raw_hex(&child)]))
            .await,
        json!(child_id.to_string())
    );
    let now = node_state(&node);
    let after = now.statuses(&scripts);
    assert_eq!(now.mempool_entries(&c), vec![(child_id, -1, 5_000)]);
    w.expect_statuses(&changed(&statuses, &after), QUIET, "child")
        .await;
    assert_answers(&mut w, &now, &scripts, "child").await;

    // A block with the parent alone: the child, unchanged, now has its inputs confirmed.
    let statuses = after;
    rpc(
        &node,
        "generateblock",
        json!([miner.address.to_string(), [txid.to_string()]]),
    );
    let (_, after) = expect_block(&node, &mut w, &scripts, &statuses, "parent mined").await;
    assert_eq!(after[&script_hash(&c)], status_of(&[(child_id, 0)]));
    assert_eq!(
        after[&script_hash(&b)],
        status_of(&[(txid, 104), (child_id, 0)])
    );

    // And the child.
    let statuses = after;
    rpc(
        &node,
        "generatetoaddress",
        json!([1, miner.address.to_string()]),
    );
    let (now, after) = expect_block(&node, &mut w, &scripts, &statuses, "child mined").await;
    assert_eq!(after[&script_hash(&c)], status_of(&[(child_id, 105)]));

    // A double spend confirmed by a block evicts the mempool transaction it conflicts with:
    // Alice pays Dave from her second coinbase, then a block holds her payment of the same
    // coin to Erin instead.
    let (dave, erin) = (Key::new(0xd0), Key::new(0xe0));
    let (d, e) = (dave.script(), erin.script());
    assert_eq!(w.subscribe(&[&d, &e]).await, vec![Value::Null, Value::Null]);
    let scripts = [&a, &b, &c, &d, &e];
    let statuses = now.statuses(&scripts);
    let coinbase = &now.chain.blocks[2].txdata[0];
    let outpoint = OutPoint::new(coinbase.compute_txid(), 0);
    let to_dave = signed_spend(
        &node,
        &alice,
        outpoint,
        value,
        vec![(d.clone(), value - fee)],
    );
    let to_erin = signed_spend(
        &node,
        &alice,
        outpoint,
        value,
        vec![(e.clone(), value - fee)],
    );
    assert_eq!(
        w.call(
            "blockchain.transaction.broadcast",
            json!([raw_hex(&to_dave)])
        )
        .await,
        json!(to_dave.compute_txid().to_string())
    );
    let now = node_state(&node);
    let after = now.statuses(&scripts);
    w.expect_statuses(&changed(&statuses, &after), QUIET, "payment to Dave")
        .await;
    let statuses = after;
    rpc(
        &node,
        "generateblock",
        json!([miner.address.to_string(), [raw_hex(&to_erin)]]),
    );
    let (now, after) = expect_block(&node, &mut w, &scripts, &statuses, "double spend mined").await;
    assert!(now.mempool_txids().is_empty());
    assert_eq!(after[&script_hash(&d)], Value::Null);
    assert_eq!(
        after[&script_hash(&e)],
        status_of(&[(to_erin.compute_txid(), 106)])
    );
    server.stop();
}
