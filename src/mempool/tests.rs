//! The mirror's refresh end to end: state transitions against a scripted node and a real
//! store (add, evict, replace, confirm, reorg back in, unresolvable inputs, tip checks), and
//! against the node emulator driven by its own mempool, mining and reorgs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::{
    absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid,
    Witness,
};
use ferrum_storage::{BlockData, Hash32, HashX, TxData};

use super::source::{NodeMempool, Source};
use super::*;
use crate::blocks::script_hashx;
use crate::merkle::snapshot_tip;
use crate::test_store::committed_store;

fn script(n: u8) -> ScriptBuf {
    ScriptBuf::from_bytes(vec![0x01, n])
}

fn key(n: u8) -> HashX {
    script_hashx(&script(n))
}

const A: u8 = 0xa;
const B: u8 = 0xb;
const C: u8 = 0xc;

fn tx(inputs: &[(Hash32, u32)], outputs: &[(u8, u64)]) -> Transaction {
    Transaction {
        version: transaction::Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: inputs
            .iter()
            .map(|(txid, vout)| TxIn {
                previous_output: OutPoint::new(Txid::from_byte_array(*txid), *vout),
                script_sig: ScriptBuf::new(),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            })
            .collect(),
        output: outputs
            .iter()
            .map(|(s, v)| TxOut {
                value: Amount::from_sat(*v),
                script_pubkey: script(*s),
            })
            .collect(),
    }
}

fn id(tx: &Transaction) -> Hash32 {
    tx.compute_txid().to_byte_array()
}

fn block(height: u8, txs: &[&Transaction]) -> BlockData {
    BlockData {
        header: [height; 80],
        txs: txs
            .iter()
            .map(|t| TxData {
                txid: id(t),
                spends: t
                    .input
                    .iter()
                    .filter(|i| !i.previous_output.is_null())
                    .map(|i| {
                        (
                            i.previous_output.txid.to_byte_array(),
                            i.previous_output.vout,
                        )
                    })
                    .collect(),
                outputs: t
                    .output
                    .iter()
                    .map(|o| Some((script_hashx(&o.script_pubkey), o.value.to_sat())))
                    .collect(),
            })
            .collect(),
    }
}

fn tip_of(snap: &Snapshot) -> Hash32 {
    snapshot_tip(snap).unwrap().unwrap().1
}

/// A scripted node: its tip and mempool, in the order getrawmempool lists it.
#[derive(Default)]
struct FakeNode {
    tip: Mutex<Hash32>,
    pool: Mutex<Vec<Transaction>>,
    /// Answer "a block arrived mid-read" once.
    moving: Mutex<bool>,
    fetched: Mutex<usize>,
}

impl FakeNode {
    fn set(&self, tip: Hash32, pool: &[&Transaction]) {
        *self.tip.lock().unwrap() = tip;
        *self.pool.lock().unwrap() = pool.iter().map(|t| (*t).clone()).collect();
    }
}

impl Source for FakeNode {
    async fn mempool(&self) -> daemon::Result<Option<NodeMempool>> {
        if std::mem::take(&mut *self.moving.lock().unwrap()) {
            return Ok(None);
        }
        Ok(Some(NodeMempool {
            tip: *self.tip.lock().unwrap(),
            txids: self.pool.lock().unwrap().iter().map(id).collect(),
        }))
    }

    async fn transactions(&self, txids: &[Hash32]) -> daemon::Result<Vec<Option<Vec<u8>>>> {
        *self.fetched.lock().unwrap() += txids.len();
        let pool = self.pool.lock().unwrap();
        Ok(txids
            .iter()
            .map(|t| {
                let found = pool.iter().find(|p| id(p) == *t);
                found.map(bitcoin::consensus::serialize)
            })
            .collect())
    }
}

fn mtx(t: &Transaction, fee: u64, unconfirmed_inputs: bool) -> MempoolTx {
    MempoolTx {
        txid: id(t),
        fee,
        unconfirmed_inputs,
    }
}

fn keys(ks: &[u8]) -> HashSet<HashX> {
    ks.iter().map(|k| key(*k)).collect()
}

/// The confirmed chain: block 0 with C0 paying A 1000 and B 500 (one output each).
fn c0() -> Transaction {
    tx(&[([0; 32], u32::MAX)], &[(A, 1000), (B, 500)])
}

#[tokio::test]
async fn add_confirm_reorg_back_evict_and_replace() {
    let c0 = c0();
    let (_dir, mut store) = committed_store([block(0, &[&c0])]);
    let snap0 = store.snapshot();
    let node = FakeNode::default();
    let mempool = Mempool::new();

    // M1 spends C0:0 (A's 1000), pays B 900: fee 100. M2 spends M1:0, pays A 850: fee 50.
    let m1 = tx(&[(id(&c0), 0)], &[(B, 900)]);
    let m2 = tx(&[(id(&m1), 0)], &[(A, 850)]);
    // Listed child first: parents are still resolved first.
    node.set(tip_of(&snap0), &[&m2, &m1]);
    assert_eq!(
        mempool.refresh_from(&node, &snap0).await.unwrap(),
        keys(&[A, B])
    );
    assert_eq!(mempool.tx_count(), 2);
    assert_eq!(
        mempool.history(&key(A)),
        [mtx(&m1, 100, false), mtx(&m2, 50, true)]
    );
    assert_eq!(
        mempool.history(&key(B)),
        [mtx(&m1, 100, false), mtx(&m2, 50, true)]
    );
    // A: -1000 (M1) + 850 (M2); B: +900 - 900.
    assert_eq!(mempool.balance_delta(&key(A)), -150);
    assert_eq!(mempool.balance_delta(&key(B)), 0);
    assert_eq!(
        mempool.outputs(&key(A)),
        [MempoolOutput {
            txid: id(&m2),
            vout: 0,
            value: 850
        }]
    );
    assert_eq!(
        mempool.spends(&key(A)),
        HashSet::from([(id(&c0), 0), (id(&m1), 0)])
    );
    // Nothing changed: nothing touched, nothing fetched again.
    let fetched = *node.fetched.lock().unwrap();
    assert!(mempool
        .refresh_from(&node, &snap0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(*node.fetched.lock().unwrap(), fetched);

    // M1 is mined: it leaves, and M2's height goes from -1 to 0 (M2's scripts are touched).
    store.apply_block(&block(1, &[&m1])).unwrap();
    store.commit().unwrap();
    let snap1 = store.snapshot();
    node.set(tip_of(&snap1), &[&m2]);
    assert_eq!(
        mempool.refresh_from(&node, &snap1).await.unwrap(),
        keys(&[A, B])
    );
    assert_eq!(mempool.history(&key(A)), [mtx(&m2, 50, false)]);
    assert_eq!(mempool.balance_delta(&key(B)), -900);

    // The block is reorged away: M1 is back in the mempool, resolved from the store again.
    store.rollback(1, &[]).unwrap();
    let snap0 = store.snapshot();
    node.set(tip_of(&snap0), &[&m1, &m2]);
    assert_eq!(
        mempool.refresh_from(&node, &snap0).await.unwrap(),
        keys(&[A, B])
    );
    assert_eq!(
        mempool.history(&key(A)),
        [mtx(&m1, 100, false), mtx(&m2, 50, true)]
    );

    // M2 is evicted: only its scripts are touched.
    node.set(tip_of(&snap0), &[&m1]);
    assert_eq!(
        mempool.refresh_from(&node, &snap0).await.unwrap(),
        keys(&[A, B])
    );
    assert_eq!(mempool.history(&key(A)), [mtx(&m1, 100, false)]);
    assert_eq!(mempool.balance_delta(&key(A)), -1000);

    // RBF: M3 spends C0:1 (B's 500) paying C 450; M4 replaces it, paying A 400.
    let m3 = tx(&[(id(&c0), 1)], &[(C, 450)]);
    let m4 = tx(&[(id(&c0), 1)], &[(A, 400)]);
    node.set(tip_of(&snap0), &[&m1, &m3]);
    assert_eq!(
        mempool.refresh_from(&node, &snap0).await.unwrap(),
        keys(&[B, C])
    );
    node.set(tip_of(&snap0), &[&m1, &m4]);
    assert_eq!(
        mempool.refresh_from(&node, &snap0).await.unwrap(),
        keys(&[A, B, C])
    );
    assert!(mempool.history(&key(C)).is_empty());
    assert_eq!(mempool.balance_delta(&key(A)), -1000 + 400);
    assert_eq!(mempool.balance_delta(&key(B)), 900 - 500);
    assert_eq!(mempool.history(&key(B)).len(), 2);
    assert_eq!(mempool.tx_count(), 2);
}

#[tokio::test]
async fn unresolvable_inputs_are_retried_next_round() {
    let c0 = c0();
    let (_dir, mut store) = committed_store([block(0, &[&c0])]);
    let snap0 = store.snapshot();
    let node = FakeNode::default();
    let mempool = Mempool::new();

    // M1 spends an output of C1, which the store does not have yet; M2 spends M1; M3 only
    // confirmed coins.
    let c1 = tx(&[([0; 32], u32::MAX)], &[(C, 700)]);
    let m1 = tx(&[(id(&c1), 0)], &[(A, 600)]);
    let m2 = tx(&[(id(&m1), 0)], &[(B, 500)]);
    let m3 = tx(&[(id(&c0), 1)], &[(B, 400)]);
    node.set(tip_of(&snap0), &[&m1, &m2, &m3]);
    assert_eq!(
        mempool.refresh_from(&node, &snap0).await.unwrap(),
        keys(&[B])
    );
    assert_eq!(mempool.tx_count(), 1);
    // Next round: still unresolvable, fetched again.
    let fetched = *node.fetched.lock().unwrap();
    assert!(mempool
        .refresh_from(&node, &snap0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(*node.fetched.lock().unwrap(), fetched + 2);

    // An output spent in the store is unresolvable too (a conflict the node has yet to drop).
    let m5 = tx(&[(id(&c0), 0)], &[(A, 1)]);
    store.apply_block(&block(1, &[&c1, &m5])).unwrap();
    store.commit().unwrap();
    let snap1 = store.snapshot();
    let m6 = tx(&[(id(&c0), 0)], &[(C, 2)]);
    node.set(tip_of(&snap1), &[&m1, &m2, &m3, &m6]);
    assert_eq!(
        mempool.refresh_from(&node, &snap1).await.unwrap(),
        keys(&[A, B, C])
    );
    assert_eq!(mempool.tx_count(), 3);
    assert_eq!(
        mempool.history(&key(A)),
        [mtx(&m1, 100, false), mtx(&m2, 100, true)]
    );
    assert!(!mempool.history(&key(C)).iter().any(|t| t.txid == id(&m6)));
}

#[tokio::test]
async fn a_round_at_another_tip_changes_nothing() {
    let c0 = c0();
    let (_dir, store) = committed_store([block(0, &[&c0])]);
    let snap = store.snapshot();
    let node = FakeNode::default();
    let mempool = Mempool::new();
    let m1 = tx(&[(id(&c0), 0)], &[(B, 900)]);
    node.set([7; 32], &[&m1]);
    let e = mempool.refresh_from(&node, &snap).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "mempool: the node's tip {} is not the index's {}",
            hash_hex(&[7; 32]),
            hash_hex(&tip_of(&snap))
        )
    );
    node.set(tip_of(&snap), &[&m1]);
    *node.moving.lock().unwrap() = true;
    let e = mempool.refresh_from(&node, &snap).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "mempool: a block arrived while the mempool was read"
    );
    assert_eq!(mempool.tx_count(), 0);
    assert_eq!(
        mempool.refresh_from(&node, &snap).await.unwrap(),
        keys(&[A, B])
    );
}

#[tokio::test]
async fn the_fee_histogram_is_built_on_the_first_round() {
    // 1000 confirmed coins of 10,000 sat; mempool tx i spends coin i and pays B 9,000 (even i)
    // or 9,500 (odd i): fees of 1,000 and 500.
    let coinbase = tx(&[([0; 32], u32::MAX)], &[(A, 10_000); 1000]);
    let (_dir, store) = committed_store([block(0, &[&coinbase])]);
    let snap = store.snapshot();
    let spends: Vec<Transaction> = (0..1000u32)
        .map(|i| {
            tx(
                &[(id(&coinbase), i)],
                &[(B, 9_000 + u64::from(i % 2) * 500)],
            )
        })
        .collect();
    let node = FakeNode::default();
    node.set(tip_of(&snap), &spends.iter().collect::<Vec<_>>());
    let mempool = Mempool::new();
    assert!(mempool.fee_histogram().is_empty());
    mempool.refresh_from(&node, &snap).await.unwrap();
    assert_eq!(mempool.tx_count(), 1000);
    // Every tx has the same vsize v; fees 1000 and 500, 500 txs each.
    let v = spends[0].vsize() as u64;
    let expect = histogram::compact(
        (0..1000u64).map(|i| (if i % 2 == 0 { 1000 } else { 500 }, v)),
        histogram::BIN_SIZE,
    );
    assert!(!expect.is_empty());
    assert_eq!(mempool.fee_histogram(), expect);
}

/// Every mirrored tx is as the node sees it: fee, vsize and whether it has mempool parents.
async fn check(mempool: &Mempool, daemon: &Daemon) {
    let verbose = daemon
        .call("getrawmempool", serde_json::json!([true]))
        .await
        .unwrap();
    let entries = verbose.as_object().unwrap();
    let state = mempool.inner.read();
    assert_eq!(state.len(), entries.len());
    for (txid, e) in entries {
        let txid = crate::hex::parse_hash(txid).unwrap();
        let fee = (e["fees"]["base"].as_f64().unwrap() * 1e8).round() as u64;
        let vsize = e["vsize"].as_u64().unwrap();
        let depends = !e["depends"].as_array().unwrap().is_empty();
        let entry = state.get(&txid).expect("the mirror holds every node tx");
        assert_eq!(
            (entry.fee, entry.vsize, state.has_unconfirmed_inputs(entry)),
            (fee, vsize, depends)
        );
    }
}

/// The regtest network, for the node client.
fn regtest() -> &'static crate::coin::Network {
    crate::coin::Network::lookup("Bitcoin", Some("regtest")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_emulated_node() {
    use crate::daemon::DaemonSettings;
    use crate::indexer::{open_store, Indexer, IndexerSettings};
    use ferrum_tools::emulator::{Emulator, EmulatorConfig};

    let emu = Emulator::start(EmulatorConfig::generated(11, 120)).unwrap();
    let mut settings =
        DaemonSettings::new(vec![format!("{}@{}", emu.credentials(), emu.rpc_addr())]);
    settings.give_up_after = Some(Duration::from_secs(20));
    let daemon = Arc::new(Daemon::new(&settings, regtest()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), regtest(), 10, 100).unwrap();
    let reader = store.reader();
    let mut indexer_settings = IndexerSettings::new(regtest());
    indexer_settings.poll_interval = Duration::from_millis(50);
    let (indexer, handle) =
        Indexer::new(store, daemon.clone(), regtest(), indexer_settings).unwrap();
    let task = tokio::spawn(indexer.run());
    let at_node_tip = || async {
        let want = emu.best_hash();
        let mut tips = handle.tip();
        tokio::time::timeout(
            Duration::from_secs(60),
            tips.wait_for(|t| t.is_some_and(|t| t.hash == want)),
        )
        .await
        .expect("the indexer reaches the node's tip")
        .unwrap();
        reader.snapshot()
    };
    let snap = at_node_tip().await;
    let mempool = Mempool::new();
    assert!(mempool.refresh(&daemon, &snap).await.unwrap().is_empty());
    let added = emu.add_mempool_txs(40).unwrap();
    let touched = mempool.refresh(&daemon, &snap).await.unwrap();
    assert!(!touched.is_empty());
    assert_eq!(mempool.tx_count(), added.len());
    check(&mempool, &daemon).await;

    // Evicting a tx takes its descendants too.
    let evicted = emu.evict(&added[5]);
    mempool.refresh(&daemon, &snap).await.unwrap();
    assert_eq!(mempool.tx_count(), added.len() - evicted.len());
    check(&mempool, &daemon).await;

    // A block: the mirror refuses to read the node against the old snapshot, then empties
    // at the new one (the emulator mines the whole mempool).
    emu.mine(1).unwrap();
    assert!(matches!(
        mempool.refresh(&daemon, &snap).await,
        Err(Error::Unsynced(_))
    ));
    let snap = at_node_tip().await;
    assert!(!mempool.refresh(&daemon, &snap).await.unwrap().is_empty());
    assert_eq!(mempool.tx_count(), 0);

    // A reorg puts the disconnected block's transactions back in the mempool.
    emu.add_mempool_txs(10).unwrap();
    emu.mine(1).unwrap();
    let snap = at_node_tip().await;
    mempool.refresh(&daemon, &snap).await.unwrap();
    emu.reorg(1, 2, 1).unwrap();
    let snap = at_node_tip().await;
    mempool.refresh(&daemon, &snap).await.unwrap();
    assert!(mempool.tx_count() > 0);
    check(&mempool, &daemon).await;

    handle.stop().await;
    task.await.unwrap().unwrap();
}
