//! Lean lookups against a scripted node serving a generated chain: the same txids as a full
//! store's, one fetch per block (cached, shared by concurrent lookups, reported for charging),
//! the byte bound, and each way a node's block can be wrong.

use std::collections::HashMap;
use std::sync::Mutex;

use bitcoin::consensus::serialize;
use ferrum_storage::{Options, Store};
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::*;
use crate::blocks::parse_block;
use crate::hex::to_hex;

/// What the node answers for a block hash (the served bytes may be tampered with).
type Serve = dyn Fn(&BlockHash, &[u8]) -> daemon::Result<Vec<u8>> + Send + Sync;

/// A node that serves `getblock <hash> 0` from a chain and counts the calls.
pub(crate) struct ChainNode {
    blocks: HashMap<BlockHash, Vec<u8>>,
    serve: Box<Serve>,
    pub calls: Mutex<Vec<BlockHash>>,
}

impl Node for ChainNode {
    fn call<'a>(&'a self, method: &'a str, params: Value) -> BoxFuture<'a, daemon::Result<Value>> {
        let hash: BlockHash = params[0].as_str().unwrap().parse().unwrap();
        assert_eq!((method, &params[1]), ("getblock", &json!(0)));
        lock(&self.calls).push(hash);
        let raw = self.blocks.get(&hash).cloned().unwrap_or_default();
        let answer = (self.serve)(&hash, &raw).map(|raw| Value::String(to_hex(&raw)));
        Box::pin(async move { answer })
    }
}

pub(crate) struct Fixture {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    pub full: Store,
    pub lean: Store,
    pub blocks: Vec<bitcoin::Block>,
}

/// A generated chain of `count` blocks (genesis first) in a full and a lean store. Blocks
/// past 100 (coinbase maturity) hold more than their coinbase.
pub(crate) fn fixture(count: u32) -> Fixture {
    let mut gen = ChainGenerator::new(ChainParams::medium(5));
    let mut blocks = vec![gen.genesis()];
    blocks.extend((1..count).map(|_| gen.next_block()));
    let (full_dir, lean_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut full = Store::open(full_dir.path(), Options::default()).unwrap();
    let lean_options = Options {
        store_txids: false,
        ..Options::default()
    };
    let mut lean = Store::open(lean_dir.path(), lean_options).unwrap();
    for (height, block) in blocks.iter().enumerate() {
        let parsed = parse_block(&serialize(block), height as u32, &block.block_hash()).unwrap();
        full.apply_block(&parsed.data).unwrap();
        lean.apply_block(&parsed.data).unwrap();
    }
    full.commit().unwrap();
    lean.commit().unwrap();
    Fixture {
        _dirs: (full_dir, lean_dir),
        full,
        lean,
        blocks,
    }
}

pub(crate) fn node(
    f: &Fixture,
    serve: impl Fn(&BlockHash, &[u8]) -> daemon::Result<Vec<u8>> + Send + Sync + 'static,
) -> Arc<ChainNode> {
    Arc::new(ChainNode {
        blocks: f
            .blocks
            .iter()
            .map(|b| (b.block_hash(), serialize(b)))
            .collect(),
        serve: Box::new(serve),
        calls: Mutex::default(),
    })
}

pub(crate) fn honest(_: &BlockHash, raw: &[u8]) -> daemon::Result<Vec<u8>> {
    Ok(raw.to_vec())
}

impl Txids {
    /// The txids of the block at `height`, fetches charged to no one.
    fn block(&self, snap: &Snapshot, height: u32) -> Result<BlockTxids> {
        self.block_of(snap, height, &|_| {})
    }
}

/// Runs `f` on the blocking pool, as the methods do.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_lookups_give_the_stored_txids() {
    let f = Arc::new(fixture(106));
    let chain_node = node(&f, honest);
    let txids = Arc::new(Txids::new(chain_node.clone(), 1 << 20));
    let (f2, t2) = (f.clone(), txids.clone());
    blocking(move || {
        let (full, lean) = (f2.full.snapshot(), f2.lean.snapshot());
        assert!(full.stores_txids() && !lean.stores_txids());
        // Out of order, repeated, across blocks.
        let count = full.tx_count();
        let mut txnums: Vec<u64> = (0..count).rev().step_by(7).collect();
        txnums.extend([5, 5, 0, count - 1]);
        let want = full.txids(&txnums).unwrap();
        assert_eq!(t2.txids(&lean, &txnums).unwrap(), want);
        // The full store is read, never the node.
        assert_eq!(t2.txids(&full, &txnums).unwrap(), want);
        for height in [0, 7, 101, 105] {
            let range = full.block_txs(height).unwrap();
            let block = full.txids(&range.collect::<Vec<_>>()).unwrap();
            assert_eq!(&*t2.block(&lean, height).unwrap(), &block[..]);
            assert_eq!(&*t2.block(&full, height).unwrap(), &block[..]);
        }
        assert_eq!(t2.txids(&lean, &[]).unwrap(), Vec::<Hash32>::new());
    })
    .await;
    // Each block fetched once: the repeats came from the cache.
    let mut calls = lock(&chain_node.calls).clone();
    calls.sort();
    calls.dedup();
    assert_eq!(calls.len(), lock(&chain_node.calls).len());
    let (lookups, hits, held) = txids.stats();
    assert_eq!(held, calls.len());
    assert_eq!(lookups - hits, calls.len() as u64);
    assert!(hits > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charged_lookups_report_the_blocks_fetched() {
    let f = Arc::new(fixture(106));
    let txids = Arc::new(Txids::new(node(&f, honest), 1 << 20));
    let (f2, t2) = (f.clone(), txids.clone());
    let reported = blocking(move || {
        let (lean, full) = (f2.lean.snapshot(), f2.full.snapshot());
        let reported = Mutex::new(Vec::new());
        let on_fetch = |blocks| lock(&reported).push(blocks);
        let charged = t2.charged(&on_fetch);
        // Blocks 1, 2 and 3, block 2 twice.
        let txnums = [1, 2, 3, 2];
        assert_eq!(
            charged.txids(&lean, &txnums).unwrap(),
            full.txids(&txnums).unwrap()
        );
        // Cached: nothing fetched, nothing reported.
        charged.txids(&lean, &[3, 1]).unwrap();
        charged.block(&lean, 2).unwrap();
        // One more block, through a lookup that also reads cached ones.
        charged.txids(&lean, &[1, 4]).unwrap();
        charged.block(&lean, 5).unwrap();
        // A full index fetches nothing.
        charged.txids(&full, &[6, 7]).unwrap();
        charged.block(&full, 8).unwrap();
        reported.into_inner().unwrap()
    })
    .await;
    assert_eq!(reported, [3, 1, 1]);

    // A fetch that fails was reported before it was asked for.
    let failing = Txids::new(
        node(&f, |hash, _| Err(daemon::Error::MissingBlock(*hash))),
        1 << 20,
    );
    let reported = blocking(move || {
        let reported = Mutex::new(Vec::new());
        let on_fetch = |blocks| lock(&reported).push(blocks);
        failing
            .charged(&on_fetch)
            .txids(&f.lean.snapshot(), &[1, 2])
            .unwrap_err();
        reported.into_inner().unwrap()
    })
    .await;
    assert_eq!(reported, [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_a_block_fetch_it_once() {
    let f = Arc::new(fixture(4));
    let chain_node = node(&f, |_, raw| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        Ok(raw.to_vec())
    });
    let txids = Arc::new(Txids::new(chain_node.clone(), 1 << 20));
    let lookups = (0..4).map(|_| {
        let (f, txids) = (f.clone(), txids.clone());
        tokio::spawn(blocking(move || {
            txids.block(&f.lean.snapshot(), 3).unwrap().len()
        }))
    });
    for lookup in lookups.collect::<Vec<_>>() {
        assert_eq!(lookup.await.unwrap(), f.blocks[3].txdata.len());
    }
    assert_eq!(lock(&chain_node.calls).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded_in_bytes() {
    let f = Arc::new(fixture(10));
    let chain_node = node(&f, honest);
    let sizes: Vec<usize> = f
        .blocks
        .iter()
        .map(|b| entry_bytes(&vec![[0; 32]; b.txdata.len()]))
        .collect();
    // Room for the two largest blocks, not three.
    let mut sorted = sizes.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let capacity = sorted[0] + sorted[1];
    let txids = Arc::new(Txids::new(chain_node.clone(), capacity));
    let (f2, t2) = (f.clone(), txids.clone());
    let held = blocking(move || {
        let lean = f2.lean.snapshot();
        for height in 0..10 {
            t2.block(&lean, height).unwrap();
        }
        let cache = lock(&t2.cache);
        assert!(cache.bytes <= capacity, "{} > {capacity}", cache.bytes);
        // The most recent block is kept.
        assert!(cache
            .map
            .contains_key(&f2.blocks[9].block_hash().to_byte_array()));
        cache.map.len()
    })
    .await;
    assert!((1..=2).contains(&held), "{held}");
    txids.set_cache_bytes(0);
    assert_eq!(txids.stats().2, 0);
}

/// The error a lean lookup of the block at `height` meets when the node serves `serve`.
async fn refused(
    f: &Arc<Fixture>,
    height: u32,
    serve: impl Fn(&BlockHash, &[u8]) -> daemon::Result<Vec<u8>> + Send + Sync + 'static,
) -> String {
    let txids = Txids::new(node(f, serve), 1 << 20);
    let f = f.clone();
    blocking(move || {
        let snap = f.lean.snapshot();
        let e = txids.block(&snap, height).unwrap_err().to_string();
        // Nothing wrong is cached: the next lookup asks again and fails the same way.
        assert_eq!(txids.block(&snap, height).unwrap_err().to_string(), e);
        assert_eq!(txids.stats().2, 0);
        e
    })
    .await
}

fn edit(raw: &[u8], change: impl FnOnce(&mut bitcoin::Block)) -> daemon::Result<Vec<u8>> {
    let mut block: bitcoin::Block = bitcoin::consensus::deserialize(raw).unwrap();
    change(&mut block);
    Ok(serialize(&block))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_blocks_are_refused() {
    let f = Arc::new(fixture(110));
    // A block of an odd number of transactions, three or more.
    let height = (101..110)
        .find(|&h| f.blocks[h].txdata.len() >= 3 && f.blocks[h].txdata.len() % 2 == 1)
        .expect("such a block") as u32;
    let at = |reason: &str| {
        let hash = f.blocks[height as usize].block_hash();
        format!("block {hash} at height {height} from the node: {reason}")
    };

    // Transactions swapped: the header (and hash) are right, the merkle root is not.
    let e = refused(&f, height, |_, raw| edit(raw, |b| b.txdata.swap(1, 2))).await;
    assert_eq!(e, at("its transactions do not match its merkle root"));

    // Another block.
    let e = refused(&f, height, |_, raw| edit(raw, |b| b.header.nonce ^= 1)).await;
    let mut other = f.blocks[height as usize].header;
    other.nonce ^= 1;
    let sent = format!("the node sent block {} instead", other.block_hash());
    assert_eq!(e, at(&sent));

    // The last transaction repeated: the same merkle root (CVE-2012-2459), not the count
    // the index holds.
    let e = refused(&f, height, |_, raw| {
        edit(raw, |b| b.txdata.push(b.txdata.last().unwrap().clone()))
    })
    .await;
    let n = f.blocks[height as usize].txdata.len();
    assert_eq!(
        e,
        at(&format!("it has {} transactions, the index {n}", n + 1))
    );

    // Truncated.
    let e = refused(&f, height, |_, raw| Ok(raw[..raw.len() - 1].to_vec())).await;
    assert!(e.starts_with(&at("malformed: ")), "{e}");

    // The node's own error.
    let e = refused(&f, height, |hash, _| {
        Err(daemon::Error::MissingBlock(*hash))
    })
    .await;
    let hash = f.blocks[height as usize].block_hash();
    assert_eq!(
        e,
        format!("cannot get block {hash} at height {height} from the node: the node has no block {hash}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_given_up_on() {
    struct Silent;
    impl Node for Silent {
        fn call<'a>(&'a self, _: &'a str, _: Value) -> BoxFuture<'a, daemon::Result<Value>> {
            Box::pin(std::future::pending())
        }
    }
    let f = Arc::new(fixture(3));
    let mut txids = Txids::new(Arc::new(Silent), 1 << 20);
    txids.fetch_timeout = std::time::Duration::from_millis(50);
    let f2 = f.clone();
    let e = blocking(move || txids.block(&f2.lean.snapshot(), 2).unwrap_err()).await;
    let hash = f.blocks[2].block_hash();
    assert_eq!(
        e.to_string(),
        format!("cannot get block {hash} at height 2 from the node: no answer in 50ms")
    );
}

#[test]
fn lean_lookups_need_the_runtime() {
    let f = fixture(3);
    let txids = Txids::new(node(&f, honest), 1 << 20);
    let e = txids.block(&f.lean.snapshot(), 1).unwrap_err();
    assert!(matches!(e, TxidError::NoRuntime), "{e}");
    // A full store needs no node.
    assert_eq!(
        txids.block(&f.full.snapshot(), 1).unwrap().len(),
        f.blocks[1].txdata.len()
    );
}
