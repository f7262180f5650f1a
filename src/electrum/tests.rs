//! The methods end to end over a real store in a temporary directory, a scripted node and a
//! scripted mempool: result shapes per version, ElectrumX's errors, the mempool overlay,
//! proofs checked by folding them, and notifications.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use bitcoin::hashes::{sha256, sha256d, Hash};
use ferrum_storage::{BlockData, Hash32, HashX, Store, TxData};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::node::tests::{rpc_error, FakeNode};
use super::*;
use crate::hex::{hash_hex, parse_hash, to_hex};
use crate::merkle::{header_hash, root_from_branch};
use crate::query::{self, MempoolOutput, MempoolTx};
use crate::services::Protocol;
use crate::session::SessionLimits;
use crate::test_store::committed_store;

fn key(b: u8) -> HashX {
    [b; 11]
}

/// An Electrum script hash whose store key is `key(b)`.
fn scripthash(b: u8) -> String {
    hash_hex(&[b; 32])
}

fn txid(n: u32) -> Hash32 {
    sha256d::Hash::hash(&n.to_le_bytes()).to_byte_array()
}

fn header(height: u32) -> [u8; 80] {
    let mut h = [height as u8; 80];
    h[..4].copy_from_slice(&height.to_le_bytes());
    h
}

/// The store key of the script `OP_TRUE`, for the local RPC's `query`.
fn op_true_key() -> HashX {
    crate::blocks::script_hashx(&bitcoin::ScriptBuf::from_bytes(vec![0x51]))
}

const A: u8 = 0xa1;
const B: u8 = 0xb2;
const C: u8 = 0xc3;
const BLOCKS: u32 = 40;

/// Block 0: an unindexed coinbase. 1: T1 pays A 50. 2: a coinbase to C, then T3 spends
/// T1:0 paying B 30 and A 19. Then coinbases to C up to height 39.
fn chain_blocks() -> Vec<BlockData> {
    let coinbase = |n: u32, to: u8, value: u64| TxData {
        txid: txid(n),
        spends: vec![],
        outputs: vec![Some((key(to), value))],
    };
    let mut blocks = vec![
        BlockData {
            header: header(0),
            txs: vec![TxData {
                txid: txid(0),
                spends: vec![],
                outputs: vec![None],
            }],
        },
        BlockData {
            header: header(1),
            txs: vec![TxData {
                txid: txid(1),
                spends: vec![],
                outputs: vec![Some((key(A), 50)), Some((op_true_key(), 7))],
            }],
        },
        BlockData {
            header: header(2),
            txs: vec![
                coinbase(2, C, 50),
                TxData {
                    txid: txid(3),
                    spends: vec![(txid(1), 0)],
                    outputs: vec![Some((key(B), 30)), Some((key(A), 19))],
                },
            ],
        },
    ];
    for h in 3..BLOCKS {
        blocks.push(BlockData {
            header: header(h),
            txs: vec![coinbase(100 + h, C, 1)],
        });
    }
    blocks
}

/// M1 (inputs confirmed, fee 200) spends T3:1 and pays A 5; M2 spends M1 and pays nothing
/// of A's but touches it (fee 100, unconfirmed inputs).
struct FakeMempool {
    by_key: HashMap<HashX, ScriptEntry>,
}

/// One script's mempool: history, outputs, potential spends, balance delta.
type ScriptEntry = (
    Vec<MempoolTx>,
    Vec<MempoolOutput>,
    HashSet<(Hash32, u32)>,
    i64,
);

fn m1() -> Hash32 {
    txid(1001)
}

fn m2() -> Hash32 {
    txid(1002)
}

impl FakeMempool {
    fn new() -> FakeMempool {
        let history = vec![
            MempoolTx {
                txid: m1(),
                fee: 200,
                unconfirmed_inputs: false,
            },
            MempoolTx {
                txid: m2(),
                fee: 100,
                unconfirmed_inputs: true,
            },
        ];
        let outputs = vec![MempoolOutput {
            txid: m1(),
            vout: 0,
            value: 5,
        }];
        let spends = HashSet::from([(txid(3), 1), (m1(), 0)]);
        FakeMempool {
            by_key: HashMap::from([(key(A), (history, outputs, spends, -19 + 5 - 5))]),
        }
    }
}

impl MempoolView for FakeMempool {
    fn history(&self, hashx: &HashX) -> Vec<MempoolTx> {
        self.by_key
            .get(hashx)
            .map(|e| e.0.clone())
            .unwrap_or_default()
    }
    fn outputs(&self, hashx: &HashX) -> Vec<MempoolOutput> {
        self.by_key
            .get(hashx)
            .map(|e| e.1.clone())
            .unwrap_or_default()
    }
    fn spends(&self, hashx: &HashX) -> HashSet<(Hash32, u32)> {
        self.by_key
            .get(hashx)
            .map(|e| e.2.clone())
            .unwrap_or_default()
    }
    fn balance_delta(&self, hashx: &HashX) -> i64 {
        self.by_key.get(hashx).map_or(0, |e| e.3)
    }
    fn fee_histogram(&self) -> Vec<(f64, u64)> {
        vec![(12.5, 1000), (2.0, 5000)]
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    electrum: Electrum,
    node: Arc<FakeNode>,
}

fn fixture(mempool: Arc<dyn MempoolView>) -> Fixture {
    let (dir, store) = committed_store(chain_blocks());
    let node = FakeNode::new(|method, params| match method {
        "getrawtransaction" if params[0] == "00".repeat(32) => {
            Err(rpc_error(-5, "No such mempool or blockchain transaction"))
        }
        "getrawtransaction" => Ok(json!("0100")),
        "sendrawtransaction" => Ok(json!(hash_hex(&txid(7)))),
        "getnetworkinfo" => {
            Ok(json!({"version": 290100, "subversion": "/Satoshi:29.1.0/", "relayfee": 0.00001}))
        }
        "estimatesmartfee" => Ok(json!({"feerate": 0.00012, "blocks": params[0]})),
        other => Err(rpc_error(-32601, &format!("Method not found: {other}"))),
    });
    let regtest = crate::coin::Network::lookup("Bitcoin", Some("regtest")).unwrap();
    let electrum = Electrum::with_node(store.reader(), regtest, node.clone(), mempool);
    Fixture {
        _dir: dir,
        store,
        electrum,
        node,
    }
}

struct Client {
    ctx: Arc<SessionContext>,
    state: Arc<SessionState>,
    rx: mpsc::Receiver<Vec<u8>>,
}

fn client(f: &Fixture, version: &[i64], max_send: usize) -> Client {
    let limits = SessionLimits {
        max_send,
        ..SessionLimits::unlimited()
    };
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (ctx, rx) = SessionContext::new(1, Protocol::Tcp, peer, limits, false);
    ctx.set_protocol_version(ProtocolVersion::new(version));
    let state = f.electrum.open_session(&ctx);
    Client { ctx, state, rx }
}

impl Client {
    async fn call(&self, f: &Fixture, method: &str, params: Value) -> Result<Value, RpcError> {
        let params = Params::Positional(params.as_array().unwrap().clone());
        f.electrum
            .call(&self.ctx, &self.state, method, params)
            .await
    }

    async fn ok(&self, f: &Fixture, method: &str, params: Value) -> Value {
        self.call(f, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    async fn err(&self, f: &Fixture, method: &str, params: Value) -> (i64, String) {
        let e = self.call(f, method, params).await.expect_err(method);
        (e.code, e.message)
    }

    fn notifications(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(bytes) = self.rx.try_recv() {
            out.push(serde_json::from_slice(&bytes).unwrap());
        }
        out
    }
}

fn header_hex(height: u32) -> String {
    to_hex(&header(height))
}

#[tokio::test]
async fn headers_and_proofs() {
    let f = fixture(Arc::new(FakeMempool::new()));
    let c = client(&f, &[1, 4], 0);
    assert_eq!(
        c.ok(&f, "blockchain.block.header", json!([5])).await,
        json!(header_hex(5))
    );
    assert_eq!(
        c.err(&f, "blockchain.block.header", json!([40])).await,
        (1, "height 40 out of range".into())
    );
    assert_eq!(
        c.err(&f, "blockchain.block.header", json!([-1])).await,
        (1, "-1 should be a non-negative integer".into())
    );
    let err = c.err(&f, "blockchain.block.header", json!([5, 40])).await;
    assert_eq!(
        err,
        (
            1,
            "require header height 5 <= cp_height 40 <= chain height 39".into()
        )
    );
    f.electrum.prepare().await.unwrap();
    let hashes: Vec<Hash32> = (0..BLOCKS).map(|h| header_hash(&header(h))).collect();
    for (height, cp) in [(5u32, 8u32), (0, 39), (33, 35), (39, 39), (7, 7)] {
        let proof = c
            .ok(&f, "blockchain.block.header", json!([height, cp]))
            .await;
        assert_eq!(proof["header"], json!(header_hex(height)));
        let branch: Vec<Hash32> = proof["branch"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| parse_hash(b.as_str().unwrap()).unwrap())
            .collect();
        let root = root_from_branch(&hashes[height as usize], &branch, height as usize);
        let expected = bitcoin::merkle_tree::calculate_root(
            hashes[..=cp as usize]
                .iter()
                .map(|h| bitcoin::BlockHash::from_byte_array(*h)),
        );
        assert_eq!(hash_hex(&root), proof["root"], "height {height} cp {cp}");
        assert_eq!(root, expected.unwrap().to_byte_array());
    }
    // Before 1.6: one hex string; clamped to the chain; the proof is of the last header.
    let r = c
        .ok(&f, "blockchain.block.headers", json!([38, 5, 39]))
        .await;
    assert_eq!(r["count"], 2);
    assert_eq!(r["max"], 2016);
    assert_eq!(r["hex"], json!(header_hex(38) + &header_hex(39)));
    let single = c.ok(&f, "blockchain.block.header", json!([39, 39])).await;
    assert_eq!(
        (&r["root"], &r["branch"]),
        (&single["root"], &single["branch"])
    );
    assert_eq!(
        c.ok(&f, "blockchain.block.headers", json!([50, 3])).await,
        json!({"count": 0, "hex": "", "max": 2016})
    );
    // 1.6: a list of headers.
    let c16 = client(&f, &[1, 6], 0);
    let r = c16
        .ok(&f, "blockchain.block.headers", json!([0, 3000]))
        .await;
    assert_eq!(r["count"], 40);
    assert_eq!(r["headers"][39], json!(header_hex(39)));
    assert!(r.get("root").is_none() && r.get("hex").is_none());
    let sub = c16.ok(&f, "blockchain.headers.subscribe", json!([])).await;
    assert_eq!(sub, json!({"hex": header_hex(39), "height": 39}));
}

#[tokio::test]
async fn transaction_positions_and_branches() {
    let f = fixture(Arc::new(FakeMempool::new()));
    let c = client(&f, &[1, 4, 2], 0);
    let t3 = hash_hex(&txid(3));
    let r = c
        .ok(&f, "blockchain.transaction.get_merkle", json!([t3, 2]))
        .await;
    assert_eq!(
        r,
        json!({"block_height": 2, "merkle": [hash_hex(&txid(2))], "pos": 1})
    );
    let err = c
        .err(&f, "blockchain.transaction.get_merkle", json!([t3, 1]))
        .await;
    assert_eq!(err, (1, format!("tx {t3} not in block at height 1")));
    assert_eq!(
        c.err(&f, "blockchain.transaction.get_merkle", json!([t3, 99]))
            .await
            .1,
        "height 99 out of range"
    );
    assert_eq!(
        c.ok(&f, "blockchain.transaction.id_from_pos", json!([2, 1]))
            .await,
        json!(t3)
    );
    let r = c
        .ok(
            &f,
            "blockchain.transaction.id_from_pos",
            json!([2, 0, true]),
        )
        .await;
    assert_eq!(r, json!({"tx_hash": hash_hex(&txid(2)), "merkle": [t3]}));
    let err = c
        .err(&f, "blockchain.transaction.id_from_pos", json!([2, 2]))
        .await;
    assert_eq!(err, (1, "no tx at position 2 in block at height 2".into()));
    let err = c
        .err(&f, "blockchain.transaction.id_from_pos", json!([1000, 0]))
        .await;
    assert_eq!(
        err,
        (
            1,
            "db error: DBError('block 1,000 not on disk (>39)')".into()
        )
    );
    let err = c
        .err(&f, "blockchain.transaction.id_from_pos", json!([2, 0, 2]))
        .await;
    assert_eq!(err, (1, "\"merkle\" must be a boolean".into()));
}

/// Python's ints are unbounded: a height or position past u64 is printed in full, as
/// ElectrumX prints it, never clamped.
#[tokio::test]
async fn integers_past_64_bits() {
    let f = fixture(Arc::new(FakeMempool::new()));
    let c = client(&f, &[1, 4, 2], 0);
    let big = "100,000,000,000,000,000,000";
    let t3 = hash_hex(&txid(3));
    for (method, params, message) in [
        (
            "blockchain.block.header",
            json!([1e20]),
            format!("height {big} out of range"),
        ),
        (
            "blockchain.block.header",
            json!(["99999999999999999999999"]),
            "height 99,999,999,999,999,999,999,999 out of range".into(),
        ),
        (
            "blockchain.block.header",
            json!([5, 1e20]),
            format!("require header height 5 <= cp_height {big} <= chain height 39"),
        ),
        (
            "blockchain.block.headers",
            json!([0, 2, 1e20]),
            format!("require header height 1 <= cp_height {big} <= chain height 39"),
        ),
        (
            "blockchain.transaction.get_merkle",
            json!([t3, 1e20]),
            format!("height {big} out of range"),
        ),
        (
            "blockchain.transaction.id_from_pos",
            json!([1e20, 0]),
            format!("db error: DBError('block {big} not on disk (>39)')"),
        ),
        (
            "blockchain.transaction.id_from_pos",
            json!([2, 1e20]),
            format!("no tx at position {big} in block at height 2"),
        ),
        (
            "blockchain.block.header",
            json!([-1e20]),
            "-100000000000000000000 should be a non-negative integer".into(),
        ),
    ] {
        assert_eq!(c.err(&f, method, params).await, (1, message));
    }
    assert_eq!(
        c.ok(&f, "blockchain.block.headers", json!([1e20, 5])).await,
        json!({"count": 0, "hex": "", "max": 2016})
    );
}

#[tokio::test]
async fn script_views_with_the_mempool_overlay() {
    let f = fixture(Arc::new(FakeMempool::new()));
    let c = client(&f, &[1, 4, 2], 1_000_000);
    let (t1, t3) = (hash_hex(&txid(1)), hash_hex(&txid(3)));
    let (m1, m2) = (hash_hex(&m1()), hash_hex(&m2()));
    let history = c
        .ok(
            &f,
            "blockchain.scripthash.get_history",
            json!([scripthash(A)]),
        )
        .await;
    assert_eq!(
        history,
        json!([
            {"tx_hash": t1, "height": 1},
            {"tx_hash": t3, "height": 2},
            {"tx_hash": m1, "height": 0, "fee": 200},
            {"tx_hash": m2, "height": -1, "fee": 100},
        ])
    );
    let mempool = c
        .ok(
            &f,
            "blockchain.scripthash.get_mempool",
            json!([scripthash(A)]),
        )
        .await;
    assert_eq!(
        mempool,
        json!([{"tx_hash": m1, "height": 0, "fee": 200}, {"tx_hash": m2, "height": -1, "fee": 100}])
    );
    // T3:1 is spent in the mempool and M1:0 by M2: nothing of A's is left unspent.
    assert_eq!(
        c.ok(
            &f,
            "blockchain.scripthash.listunspent",
            json!([scripthash(A)])
        )
        .await,
        json!([])
    );
    let balance = c
        .ok(
            &f,
            "blockchain.scripthash.get_balance",
            json!([scripthash(A)]),
        )
        .await;
    assert_eq!(balance, json!({"confirmed": 19, "unconfirmed": -19}));
    let unspent = c
        .ok(
            &f,
            "blockchain.scripthash.listunspent",
            json!([scripthash(B)]),
        )
        .await;
    assert_eq!(
        unspent,
        json!([{"tx_hash": t3, "tx_pos": 0, "height": 2, "value": 30}])
    );
    let c_unspent = c
        .ok(
            &f,
            "blockchain.scripthash.listunspent",
            json!([scripthash(C)]),
        )
        .await;
    assert_eq!(c_unspent.as_array().unwrap().len(), 38);
    assert_eq!(c_unspent[0]["height"], 2);
    assert_eq!(c_unspent[37]["height"], 39);
    // The status: the history's text hashed, computed here from the text itself.
    let text = format!("{t1}:1:{t3}:2:{m1}:0:{m2}:-1:");
    let expected = to_hex(&sha256::Hash::hash(text.as_bytes()).to_byte_array());
    assert_eq!(
        c.ok(
            &f,
            "blockchain.scripthash.subscribe",
            json!([scripthash(A)])
        )
        .await,
        json!(expected)
    );
    assert_eq!(
        c.ok(
            &f,
            "blockchain.scripthash.subscribe",
            json!([scripthash(0x77)])
        )
        .await,
        Value::Null
    );
    assert_eq!(c.ctx.subscription_count(), 2);
    assert_eq!(
        c.ok(
            &f,
            "blockchain.scripthash.unsubscribe",
            json!([scripthash(0x77)])
        )
        .await,
        json!(true)
    );
    assert_eq!(
        c.ok(
            &f,
            "blockchain.scripthash.unsubscribe",
            json!([scripthash(0x77)])
        )
        .await,
        json!(false)
    );
    assert_eq!(
        c.err(&f, "blockchain.scripthash.get_balance", json!(["xy"]))
            .await,
        (1, "xy is not a valid script hash".into())
    );
    let hist = c.ok(&f, "mempool.get_fee_histogram", json!([])).await;
    assert_eq!(hist, json!([[12.5, 1000], [2.0, 5000]]));
}

#[tokio::test]
async fn history_too_large() {
    let f = fixture(Arc::new(query::EmptyMempool));
    // A limit of (400 - 100) / 99 = 3 entries: C has 38.
    let c = client(&f, &[1, 4], 400);
    let e = c
        .call(
            &f,
            "blockchain.scripthash.get_history",
            json!([scripthash(C)]),
        )
        .await
        .unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (10001, "history too large"));
    assert!((e.cost - 0.203).abs() < 1e-9);
    assert_eq!(
        c.err(
            &f,
            "blockchain.scripthash.subscribe",
            json!([scripthash(C)])
        )
        .await
        .0,
        10001
    );
    assert_eq!(c.ctx.subscription_count(), 0);
    assert_eq!(
        c.ok(
            &f,
            "blockchain.scripthash.get_history",
            json!([scripthash(B)])
        )
        .await
        .as_array()
        .unwrap()
        .len(),
        1
    );
}

#[tokio::test]
async fn method_tables_per_version() {
    let f = fixture(Arc::new(query::EmptyMempool));
    let c14 = client(&f, &[1, 4], 0);
    let c16 = client(&f, &[1, 6], 0);
    assert_eq!(
        c14.ok(&f, "blockchain.relayfee", json!([])).await,
        json!(0.00001)
    );
    assert_eq!(
        c16.err(&f, "blockchain.relayfee", json!([])).await,
        (-32601, "unknown method \"blockchain.relayfee\"".into())
    );
    assert_eq!(c14.err(&f, "mempool.get_info", json!([])).await.0, -32601);
    assert_eq!(
        c14.err(&f, "blockchain.transaction.broadcast_package", json!([[]]))
            .await
            .0,
        -32601
    );
    assert_eq!(
        c14.err(
            &f,
            "blockchain.scripthash.unsubscribe",
            json!([scripthash(A)])
        )
        .await
        .0,
        -32601
    );
    assert_eq!(
        c14.err(&f, "blockchain.nonsense", json!([])).await.0,
        -32601
    );
    let (code, message) = c16.err(&f, "blockchain.block.header", json!([])).await;
    assert_eq!(
        (code, message.as_str()),
        (
            -32602,
            "0 arguments passed to method \"blockchain.block.header\" but it requires 1"
        )
    );
    assert_eq!(
        c16.err(&f, "blockchain.transaction.get", json!(["00", true, 1]))
            .await
            .0,
        -32602
    );
}

#[tokio::test]
async fn node_backed_methods() {
    let f = fixture(Arc::new(query::EmptyMempool));
    let c = client(&f, &[1, 6], 0);
    assert_eq!(
        c.ok(&f, "blockchain.estimatefee", json!([6])).await,
        json!(0.00012)
    );
    assert_eq!(
        c.ok(&f, "blockchain.estimatefee", json!([6, "conservative"]))
            .await,
        json!(0.00012)
    );
    assert_eq!(
        c.ok(&f, "blockchain.estimatefee", json!([6])).await,
        json!(0.00012)
    );
    assert_eq!(
        c.err(&f, "blockchain.estimatefee", json!([6, "x"])).await,
        (1, "unknown estimatefee mode: X".into())
    );
    let estimates: Vec<Value> = f
        .node
        .calls()
        .into_iter()
        .filter(|(m, _)| m == "estimatesmartfee")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(estimates, [json!([6]), json!([6, "CONSERVATIVE"])]);
    let tx = hash_hex(&txid(3));
    assert_eq!(
        c.ok(&f, "blockchain.transaction.get", json!([tx, 1])).await,
        json!("0100")
    );
    assert_eq!(f.node.calls().last().unwrap().1, json!([tx, 1]));
    let (code, message) = c
        .err(&f, "blockchain.transaction.get", json!(["00".repeat(32)]))
        .await;
    assert_eq!(code, 2);
    assert_eq!(message, "daemon error: DaemonError({'code': -5, 'message': 'No such mempool or blockchain transaction'})");
    assert_eq!(
        c.err(&f, "blockchain.transaction.get", json!([tx, "yes"]))
            .await
            .1,
        "\"verbose\" must be a boolean"
    );
    assert_eq!(
        c.ok(&f, "blockchain.transaction.broadcast", json!(["00ff"]))
            .await,
        json!(hash_hex(&txid(7)))
    );
    assert_eq!(c.ctx.txs_sent(), 1);
    assert_eq!(
        c.err(&f, "blockchain.transaction.broadcast", json!(["0g"]))
            .await
            .1,
        "0g should be a hex string"
    );
    let info = f.electrum.info();
    assert_eq!(info["db height"], 39);
    assert_eq!(
        info["caches"]["estimatefee"],
        "3 lookups, 1 hits, 2 entries, hitrate 0.3333"
    );
    let version = f.electrum.daemon_version().await.unwrap();
    assert_eq!(
        (version.version, version.subversion.as_str()),
        (290100, "/Satoshi:29.1.0/")
    );
}

#[tokio::test]
async fn notifications_follow_the_chain() {
    let mut f = fixture(Arc::new(query::EmptyMempool));
    let mut c = client(&f, &[1, 4], 0);
    c.ok(&f, "blockchain.headers.subscribe", json!([])).await;
    let before = c
        .ok(
            &f,
            "blockchain.scripthash.subscribe",
            json!([scripthash(B)]),
        )
        .await;
    c.ok(
        &f,
        "blockchain.scripthash.subscribe",
        json!([scripthash(A)]),
    )
    .await;
    // Block 40 spends T3:0 (B's) into A.
    let spend = TxData {
        txid: txid(40),
        spends: vec![(txid(3), 0)],
        outputs: vec![Some((key(A), 29))],
    };
    f.store
        .apply_block(&BlockData {
            header: header(BLOCKS),
            txs: vec![spend],
        })
        .unwrap();
    f.store.commit().unwrap();
    f.electrum
        .notify(Some(Arc::new(HashSet::from([key(B)]))), true)
        .await;
    let got = c.notifications();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["method"], "blockchain.headers.subscribe");
    assert_eq!(
        got[0]["params"],
        json!([{"hex": header_hex(BLOCKS), "height": BLOCKS}])
    );
    assert_eq!(got[1]["method"], "blockchain.scripthash.subscribe");
    assert_eq!(got[1]["params"][0], json!(scripthash(B)));
    assert_ne!(got[1]["params"][1], before);
    // Not told what changed: every subscription is checked, only changed statuses are sent.
    f.electrum.notify(None, false).await;
    let got = c.notifications();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["params"][0], json!(scripthash(A)));
    f.electrum.notify(None, false).await;
    assert!(c.notifications().is_empty());
    f.electrum.close_session(&c.ctx, &c.state);
    f.electrum
        .notify(Some(Arc::new(HashSet::from([key(A)]))), true)
        .await;
    assert!(c.notifications().is_empty());
}

#[tokio::test]
async fn local_rpc_query() {
    let f = fixture(Arc::new(query::EmptyMempool));
    let params = Params::Positional(vec![json!(["51", "not an address", "52"]), json!(10)]);
    let lines = f.electrum.admin_call("query", params).await.unwrap();
    let t1 = hash_hex(&txid(1));
    assert_eq!(
        lines,
        json!([
            "Script: 51",
            format!("History #0: height 1 txid {t1}"),
            format!("UTXO #1: txid {t1} tx_pos 1 height 1 value 7"),
            "Balance: 0.00000007 XTN",
            "Script: 52",
            "No history found",
            "No UTXOs found",
            "Balance: 0 XTN",
        ])
    );
    let e = f
        .electrum
        .admin_call("query", Params::Positional(vec![json!("51")]))
        .await
        .unwrap_err();
    assert_eq!(e.code, -32602);
    let missing = f
        .electrum
        .admin_call("reorg", Params::Positional(vec![]))
        .await
        .unwrap_err();
    assert_eq!(missing.code, -32602);
    // Without a caught-up indexer, ElectrumX's answer.
    let e = f
        .electrum
        .admin_call("reorg", Params::Positional(vec![json!(1)]))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (1, "still catching up with daemon")
    );
    assert_eq!(
        f.electrum
            .admin_call("frobnicate", Params::Positional(vec![]))
            .await
            .unwrap_err()
            .code,
        -32601
    );
}

#[tokio::test]
async fn unchanged_statuses_are_not_sent_again() {
    let f = fixture(Arc::new(FakeMempool::new()));
    let mut c = client(&f, &[1, 6], 0);
    c.ok(
        &f,
        "blockchain.scripthash.subscribe",
        json!([scripthash(A)]),
    )
    .await;
    // Touched, but its status is the one the session already has: nothing sent (a poll
    // and a block's change may both report one state).
    f.electrum
        .notify(Some(Arc::new(HashSet::from([key(A)]))), false)
        .await;
    assert!(c.notifications().is_empty());
    // A's status covers the mempool, so a new tip re-checks it: unchanged, not sent; and
    // this session did not subscribe to headers.
    f.electrum
        .notify(Some(Arc::new(HashSet::new())), true)
        .await;
    assert!(c.notifications().is_empty());
    // Nothing touched and no new tip: nothing to check.
    f.electrum
        .notify(Some(Arc::new(HashSet::from([key(B)]))), false)
        .await;
    assert!(c.notifications().is_empty());
}

/// A lean index charges its sessions for each block their lookups fetch from the node
/// (`BLOCK_FETCH_COST`), and nothing for blocks in its cache: the same requests cost
/// exactly that much more than on a full index of the same chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_lookups_charge_each_block_fetched() {
    use std::collections::BTreeSet;

    use crate::txids::tests::{fixture as chain_fixture, honest, node as chain_node};
    use crate::txids::BLOCK_FETCH_COST;

    let f = chain_fixture(110);
    let regtest = crate::coin::Network::lookup("Bitcoin", Some("regtest")).unwrap();
    let node = chain_node(&f, honest);
    let open = |store: &Store| {
        let mempool = Arc::new(query::EmptyMempool);
        let electrum = Electrum::with_node(store.reader(), regtest, node.clone(), mempool);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (ctx, _rx) =
            SessionContext::new(1, Protocol::Tcp, peer, SessionLimits::unlimited(), false);
        ctx.set_protocol_version(ProtocolVersion::new(&[1, 4]));
        let state = electrum.open_session(&ctx);
        (electrum, ctx, state)
    };
    let sessions = [open(&f.lean), open(&f.full)];
    // Calls `method` in both modes (same answers); the lean session's extra cost.
    let call = |method: &'static str, params: Value| {
        let sessions = &sessions;
        async move {
            let mut answers = Vec::new();
            for (electrum, ctx, state) in sessions {
                let params = Params::Positional(params.as_array().unwrap().clone());
                answers.push(electrum.call(ctx, state, method, params).await.unwrap());
            }
            assert_eq!(answers[0], answers[1], "{method}");
            sessions[0].1.cost() - sessions[1].1.cost()
        }
    };

    // Each output script: its Electrum script hash and the heights of its history.
    let snap = f.full.snapshot();
    let mut scripts = Vec::new();
    for script in f
        .blocks
        .iter()
        .flat_map(|b| &b.txdata)
        .flat_map(|t| &t.output)
    {
        let hashx = crate::blocks::script_hashx(&script.script_pubkey);
        let heights: BTreeSet<u32> = snap
            .tx_heights(&snap.history(&hashx).unwrap())
            .unwrap()
            .into_iter()
            .collect();
        let digest = sha256::Hash::hash(script.script_pubkey.as_bytes()).to_byte_array();
        scripts.push((hash_hex(&digest), heights));
    }
    scripts.sort_by_key(|(_, heights)| std::cmp::Reverse(heights.len()));
    let (widest, fetched) = scripts[0].clone();
    assert!(fetched.len() >= 5, "{}", fetched.len());

    // An uncached history: a block each.
    let extra = call("blockchain.scripthash.get_history", json!([widest])).await;
    let mut blocks = fetched.len();
    assert!(
        (extra - blocks as f64 * BLOCK_FETCH_COST).abs() < 1e-9,
        "{extra}"
    );
    // Its blocks are cached now.
    let extra = call("blockchain.scripthash.listunspent", json!([widest])).await;
    assert!(
        (extra - blocks as f64 * BLOCK_FETCH_COST).abs() < 1e-9,
        "{extra}"
    );

    // A status whose history is partly in cached blocks: only the others.
    let (other, heights) = scripts
        .iter()
        .find(|(_, h)| !h.is_subset(&fetched) && !h.is_disjoint(&fetched))
        .expect("a script sharing some blocks")
        .clone();
    let extra = call("blockchain.scripthash.subscribe", json!([other])).await;
    blocks += heights.difference(&fetched).count();
    assert!(
        (extra - blocks as f64 * BLOCK_FETCH_COST).abs() < 1e-9,
        "{extra}"
    );

    // A block no lookup has read, then the same block again.
    let height = (0..110u32)
        .find(|h| !fetched.contains(h) && !heights.contains(h))
        .unwrap();
    let extra = call("blockchain.transaction.id_from_pos", json!([height, 0])).await;
    blocks += 1;
    assert!(
        (extra - blocks as f64 * BLOCK_FETCH_COST).abs() < 1e-9,
        "{extra}"
    );
    let coinbase = f.blocks[height as usize].txdata[0]
        .compute_txid()
        .to_string();
    let extra = call(
        "blockchain.transaction.get_merkle",
        json!([coinbase, height]),
    )
    .await;
    assert!(
        (extra - blocks as f64 * BLOCK_FETCH_COST).abs() < 1e-9,
        "{extra}"
    );
    // Every block was asked for once.
    assert_eq!(node.calls.lock().unwrap().len(), blocks);
}
