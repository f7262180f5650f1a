//! Notifications through the methods layer over a real store: a client that never reads is
//! disconnected while the others are served; a tip is announced once, after a reorg only
//! the new one; unsubscribed scripts and closed sessions hear nothing; statuses sent after
//! blocks and reorgs equal statuses computed from scratch; ElectrumX's status costs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use ferrum_storage::{BlockData, Hash32, Store, TxData};
use serde_json::json;
use tokio::sync::mpsc;

use super::super::node::tests::{rpc_error, FakeNode};
use super::super::{Electrum, SessionState};
use super::*;
use crate::hex::{hash_hex, to_hex};
use crate::jsonrpc::Params;
use crate::query::{self, EmptyMempool, MempoolOutput, MempoolTx, MempoolView};
use crate::services::Protocol;
use crate::session::{Backend, ProtocolVersion, SessionContext, SessionLimits};
use crate::status::{history, status};
use crate::test_store::committed_store;
use crate::txids::StoreTxids;

const A: u8 = 0xa1;
const B: u8 = 0xb2;

fn key(b: u8) -> HashX {
    [b; 11]
}

/// The Electrum script hash whose store key is `key(b)`.
fn scripthash(b: u8) -> String {
    hash_hex(&[b; 32])
}

fn header(branch: u8, height: u32) -> [u8; 80] {
    let mut h = [branch; 80];
    h[..4].copy_from_slice(&height.to_le_bytes());
    h
}

/// A block at `height` on `branch` whose i-th transaction pays `pays[i]`.
fn block(branch: u8, height: u32, pays: &[u8]) -> BlockData {
    BlockData {
        header: header(branch, height),
        txs: pays
            .iter()
            .enumerate()
            .map(|(i, &to)| {
                let mut txid = [branch; 32];
                txid[..4].copy_from_slice(&height.to_le_bytes());
                txid[4..8].copy_from_slice(&(i as u32).to_le_bytes());
                TxData {
                    txid,
                    spends: vec![],
                    outputs: vec![Some((key(to), 1))],
                }
            })
            .collect(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    electrum: Electrum,
}

/// Ten blocks on branch 0, each paying A and B.
fn fixture() -> Fixture {
    fixture_with(Arc::new(EmptyMempool))
}

/// A mempool holding one transaction touching A, or nothing, as the test flips it.
#[derive(Default)]
struct Flipping(AtomicBool);

impl Flipping {
    const TX: MempoolTx = MempoolTx {
        txid: [9; 32],
        fee: 1,
        unconfirmed_inputs: false,
    };

    fn flip(&self) {
        self.0.fetch_xor(true, Ordering::SeqCst);
    }
}

impl MempoolView for Flipping {
    fn history(&self, hashx: &HashX) -> Vec<MempoolTx> {
        if *hashx == key(A) && self.0.load(Ordering::SeqCst) {
            vec![Flipping::TX]
        } else {
            Vec::new()
        }
    }
    fn outputs(&self, _: &HashX) -> Vec<MempoolOutput> {
        Vec::new()
    }
    fn spends(&self, _: &HashX) -> HashSet<(Hash32, u32)> {
        HashSet::new()
    }
    fn balance_delta(&self, _: &HashX) -> i64 {
        0
    }
    fn fee_histogram(&self) -> Vec<(f64, u64)> {
        Vec::new()
    }
}

fn fixture_with(mempool: Arc<dyn MempoolView>) -> Fixture {
    let (dir, store) = committed_store((0..10).map(|h| block(0, h, &[A, B])));
    let node = FakeNode::new(|method, _| Err(rpc_error(-32601, method)));
    let regtest = crate::coin::Network::lookup("Bitcoin", Some("regtest")).unwrap();
    let electrum = Electrum::with_node(store.reader(), regtest, node, mempool);
    Fixture {
        _dir: dir,
        store,
        electrum,
    }
}

struct Client {
    ctx: Arc<SessionContext>,
    state: Arc<SessionState>,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl Client {
    fn new(f: &Fixture, id: u64) -> Client {
        let limits = SessionLimits::unlimited();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (ctx, rx) = SessionContext::new(id, Protocol::Tcp, peer, limits, false);
        ctx.set_protocol_version(ProtocolVersion::new(&[1, 6]));
        let state = f.electrum.open_session(&ctx);
        Client { ctx, state, rx }
    }

    async fn call(&self, f: &Fixture, method: &str, params: Value) -> Value {
        let params = Params::Positional(params.as_array().unwrap().clone());
        f.electrum
            .call(&self.ctx, &self.state, method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Subscribes to headers and to the scripts `keys`.
    async fn subscribe(&self, f: &Fixture, keys: &[u8]) {
        self.call(f, "blockchain.headers.subscribe", json!([]))
            .await;
        for &k in keys {
            self.call(f, "blockchain.scripthash.subscribe", json!([scripthash(k)]))
                .await;
        }
    }

    /// Notifications received: the header's first, then statuses in script order (one
    /// session's statuses go out in no particular order).
    fn notifications(&mut self) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        while let Ok(bytes) = self.rx.try_recv() {
            out.push(serde_json::from_slice(&bytes).unwrap());
        }
        let statuses = out.partition_point(|n| n["method"] == "blockchain.headers.subscribe");
        out[statuses..].sort_by_key(|n| n["params"][0].to_string());
        out
    }
}

fn header_note(branch: u8, height: u32) -> Value {
    json!({"jsonrpc": "2.0", "method": "blockchain.headers.subscribe",
           "params": [{"hex": to_hex(&header(branch, height)), "height": height}]})
}

/// The status notification of script `b` as computed from scratch on the store's tip.
fn status_note(f: &Fixture, b: u8) -> Value {
    status_note_with(f, b, &[])
}

/// The same with mempool transactions after the confirmed history.
fn status_note_with(f: &Fixture, b: u8, mempool: &[MempoolTx]) -> Value {
    let confirmed =
        query::confirmed_history(&f.store.snapshot(), &StoreTxids, &key(b), None).unwrap();
    let status = status(&history(&confirmed, mempool)).0.map(|s| to_hex(&s));
    json!({"jsonrpc": "2.0", "method": "blockchain.scripthash.subscribe",
           "params": [scripthash(b), status]})
}

fn touched(keys: &[u8]) -> Option<Arc<HashSet<HashX>>> {
    Some(Arc::new(keys.iter().map(|&b| key(b)).collect()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_the_others_are_served() {
    let mempool = Arc::new(Flipping::default());
    let mut f = fixture_with(mempool.clone());
    let mut reader = Client::new(&f, 1);
    let mut idle = Client::new(&f, 2);
    reader.subscribe(&f, &[A]).await;
    idle.subscribe(&f, &[A]).await;
    f.store.apply_block(&block(0, 10, &[A])).unwrap();
    f.store.commit().unwrap();
    f.electrum.notify(touched(&[A]), true).await;
    let expected = vec![header_note(0, 10), status_note(&f, A)];
    assert_eq!(reader.notifications(), expected);
    // A's status changes every round (its mempool transaction comes and goes): far more
    // notifications than a session queues. Each round returns without waiting for the idle
    // client, which is disconnected once its queue is full; the reader gets every one.
    for round in 0..3000 {
        mempool.flip();
        f.electrum.notify(touched(&[A]), false).await;
        let in_mempool = if round % 2 == 0 {
            &[Flipping::TX][..]
        } else {
            &[]
        };
        assert_eq!(
            reader.notifications(),
            [status_note_with(&f, A, in_mempool)],
            "round {round}"
        );
    }
    assert!(idle.ctx.is_closing(), "the idle client is disconnected");
    assert!(!reader.ctx.is_closing());
    let queued = idle.notifications();
    assert!(
        queued.len() > 100 && queued.len() < 3000,
        "{}",
        queued.len()
    );
    assert_eq!(queued[..2], expected);
}

#[tokio::test]
async fn a_reorg_announces_the_new_tip_once() {
    let mut f = fixture();
    let mut c = Client::new(&f, 1);
    c.subscribe(&f, &[A, B]).await;
    // Two blocks replaced by three that pay B only.
    f.store.rollback(2, &[]).unwrap();
    for h in 8..11 {
        f.store.apply_block(&block(1, h, &[B])).unwrap();
    }
    f.store.commit().unwrap();
    // The change arrives twice (say a block and then the reorg that followed, handled
    // late): the tip is announced once; the statuses are those of the new chain.
    f.electrum.notify(None, true).await;
    f.electrum.notify(None, true).await;
    let got = c.notifications();
    assert_eq!(
        got,
        [header_note(1, 10), status_note(&f, A), status_note(&f, B)]
    );
    // Same height, another block: a new tip all the same.
    f.store.rollback(1, &[]).unwrap();
    f.store.apply_block(&block(2, 10, &[A])).unwrap();
    f.store.commit().unwrap();
    f.electrum.notify(touched(&[A, B]), true).await;
    assert_eq!(
        c.notifications(),
        [header_note(2, 10), status_note(&f, A), status_note(&f, B)]
    );
    f.electrum.notify(touched(&[]), true).await;
    assert!(c.notifications().is_empty(), "nothing new");
}

#[tokio::test]
async fn unsubscribed_scripts_and_closed_sessions_hear_nothing() {
    let mut f = fixture();
    let mut c = Client::new(&f, 1);
    let mut other = Client::new(&f, 2);
    c.subscribe(&f, &[A, B]).await;
    other.subscribe(&f, &[A]).await;
    assert_eq!(
        c.call(
            &f,
            "blockchain.scripthash.unsubscribe",
            json!([scripthash(A)])
        )
        .await,
        json!(true)
    );
    f.store.apply_block(&block(0, 10, &[A, B])).unwrap();
    f.store.commit().unwrap();
    f.electrum.notify(touched(&[A, B]), true).await;
    assert_eq!(c.notifications(), [header_note(0, 10), status_note(&f, B)]);
    assert_eq!(
        other.notifications(),
        [header_note(0, 10), status_note(&f, A)]
    );
    // Closing a session releases its subscriptions; the other's still work.
    f.electrum.close_session(&other.ctx, &other.state);
    assert_eq!(
        f.electrum.shared.status_cache.stats().2,
        1,
        "B's entry only"
    );
    f.store.apply_block(&block(0, 11, &[A, B])).unwrap();
    f.store.commit().unwrap();
    f.electrum.notify(touched(&[A, B]), true).await;
    assert!(other.notifications().is_empty());
    assert_eq!(c.notifications(), [header_note(0, 11), status_note(&f, B)]);
}

/// ElectrumX's charges for a status: the history read (0.2 + n/1000; 0.1 when cached), plus
/// 0.1 and the status text's length / 50,000.
#[tokio::test]
async fn status_costs_follow_electrumx() {
    let mut f = fixture();
    let c = Client::new(&f, 1);
    let charged = async |c: &Client, f: &Fixture, what: &str| {
        let before = c.ctx.cost();
        match what {
            "subscribe" => {
                c.call(f, "blockchain.scripthash.subscribe", json!([scripthash(A)]))
                    .await;
            }
            _ => f.electrum.notify(touched(&[A]), true).await,
        }
        c.ctx.cost() - before
    };
    // A's 10 entries "<txid>:<h>:" at heights 0-9: 67 bytes each.
    let text = |n: usize| (10 * 67 + (n - 10) * 68) as f64 / 50_000.0;
    let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-9, "{got} != {want}");
    close(
        charged(&c, &f, "subscribe").await,
        0.2 + 0.010 + 0.1 + text(10),
    );
    close(charged(&c, &f, "subscribe").await, 0.1 + 0.1 + text(10));
    // A block paying A: the cached state is extended, charged as ElectrumX's re-read.
    f.store.apply_block(&block(0, 10, &[A])).unwrap();
    f.store.commit().unwrap();
    close(
        charged(&c, &f, "notify").await,
        0.2 + 0.011 + 0.1 + text(11),
    );
    // A block not touching A: still cached.
    f.store.apply_block(&block(0, 11, &[B])).unwrap();
    f.store.commit().unwrap();
    close(charged(&c, &f, "subscribe").await, 0.1 + 0.1 + text(11));
}
