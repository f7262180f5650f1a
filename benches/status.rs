//! Status benchmarks for one subscribed script with a 100,000-entry history, through the
//! methods layer over a real store (`blockchain.scripthash.subscribe`): from scratch (cold
//! caches: the whole history read and hashed), after a new block adding one entry (the
//! status cache reads and hashes that entry only), after a block not touching it, and at an
//! unchanged tip; and the store's part, the whole history against the tail a block adds.
//! Run: `cargo bench --bench status`.

mod support;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ferrum::electrum::{Electrum, SessionState};
use ferrum::jsonrpc::Params;
use ferrum::session::{Backend, SessionContext};
use ferrum_storage::{BlockData, Hash32, HashX, Options, Store, TxData, HASHX_LEN};
use serde_json::json;
use tokio::sync::mpsc::Receiver;

const BLOCKS: u32 = 500;
const TXS_PER_BLOCK: u32 = 200;

/// The heavy script's Electrum script hash (its store key is the first 11 bytes).
const HEAVY: [u8; 32] = [0x5a; 32];

fn heavy_key() -> HashX {
    let mut key = [0u8; HASHX_LEN];
    key.copy_from_slice(&HEAVY[..HASHX_LEN]);
    key
}

fn txid(n: u32) -> Hash32 {
    let mut t = [0u8; 32];
    t[..4].copy_from_slice(&n.to_le_bytes());
    t[4..8].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_le_bytes());
    t
}

/// A block at `height` of `txs` transactions numbered from `first`, each paying `to`.
fn block(height: u32, first: u32, txs: u32, to: HashX) -> BlockData {
    let mut header = [0u8; 80];
    header[..4].copy_from_slice(&height.to_le_bytes());
    BlockData {
        header,
        txs: (first..first + txs)
            .map(|n| TxData {
                txid: txid(n),
                spends: vec![],
                outputs: vec![Some((to, 1000))],
            })
            .collect(),
    }
}

/// 500 blocks of 200 transactions: a 100,000-entry history.
fn build(dir: &std::path::Path) -> Store {
    let mut store = Store::open(dir, Options::default()).unwrap();
    for height in 0..BLOCKS {
        store
            .apply_block(&block(
                height,
                height * TXS_PER_BLOCK,
                TXS_PER_BLOCK,
                heavy_key(),
            ))
            .unwrap();
    }
    store.commit().unwrap();
    store
}

/// Methods over `store` with empty caches, and one session.
fn methods(store: &Store) -> Methods {
    let electrum = support::electrum(store);
    let (ctx, rx) = support::session();
    let state = electrum.open_session(&ctx);
    (electrum, ctx, state, rx)
}

type Methods = (
    Electrum,
    Arc<SessionContext>,
    Arc<SessionState>,
    Receiver<Vec<u8>>,
);

fn status(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = build(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let subscribe = |(electrum, ctx, state, _): &Methods| {
        let params = Params::Positional(vec![json!(ferrum::hex::hash_hex(&HEAVY))]);
        rt.block_on(async {
            let reply = electrum
                .call_reply(ctx, state, "blockchain.scripthash.subscribe", params)
                .await
                .unwrap();
            black_box(reply.into_json())
        })
    };
    let mut group = c.benchmark_group("status of a 100k-entry script");
    group.sample_size(20);
    group.bench_function("from scratch", |b| {
        b.iter_batched(
            || methods(&store),
            |m| subscribe(&m),
            BatchSize::PerIteration,
        )
    });
    let warm = methods(&store);
    subscribe(&warm);
    group.bench_function("unchanged tip", |b| b.iter(|| subscribe(&warm)));
    // A new block, committed (not measured), paying `to`.
    let mut height = BLOCKS;
    let mut new_block = |to: HashX| {
        let first = store.snapshot().tx_count() as u32;
        store.apply_block(&block(height, first, 1, to)).unwrap();
        store.commit().unwrap();
        height += 1;
    };
    group.bench_function("after a block adding one entry", |b| {
        b.iter_batched(
            || new_block(heavy_key()),
            |()| subscribe(&warm),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("after a block not touching it", |b| {
        b.iter_batched(
            || new_block([7; HASHX_LEN]),
            |()| subscribe(&warm),
            BatchSize::PerIteration,
        )
    });
    // The store's part: the whole history, and the tail a new block adds.
    let snap = store.snapshot();
    let history = snap.history(&heavy_key()).unwrap();
    let newest = *history.last().unwrap();
    group.bench_function("store history (whole)", |b| {
        b.iter(|| black_box(snap.history(&heavy_key()).unwrap()).len())
    });
    group.bench_function("store history_since (newest entry)", |b| {
        b.iter(|| black_box(snap.history_since(&heavy_key(), newest).unwrap()).len())
    });
    group.finish();
}

criterion_group!(benches, status);
criterion_main!(benches);
