//! Protocol query benchmarks: `get_history`, `listunspent`, `get_balance` and a status hash
//! for one script with 60k history entries and 30k unspent outputs, through the methods
//! layer over a real store: what the server calls (`call_raw`, JSON text), and through a
//! `Value` tree for comparison. `get_history` repeats hit the history cache; its "cold" case
//! uses a fresh `Electrum` (empty caches) per iteration.
//! Run: `cargo bench --bench queries`.

mod support;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ferrum::electrum::SessionState;
use ferrum::jsonrpc::Params;
use ferrum::session::Backend;
use ferrum::txids::StoreTxids;
use ferrum_storage::{BlockData, Hash32, Options, Store, TxData, HASHX_LEN};
use serde_json::json;

const BLOCKS: u32 = 300;
const TXS_PER_BLOCK: u32 = 200;

/// The heavy script: sha256 of nothing in particular, shown reversed.
const HEAVY: [u8; 32] = [0x5a; 32];

fn txid(n: u32) -> Hash32 {
    let mut t = [0u8; 32];
    t[..4].copy_from_slice(&n.to_le_bytes());
    t[4..8].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_le_bytes());
    t
}

/// Every transaction pays the heavy script; every other one also spends an earlier output
/// of it: 60k history entries, 30k unspent outputs.
fn build(dir: &std::path::Path) -> Store {
    let mut store = Store::open(dir, Options::default()).unwrap();
    let mut key = [0u8; HASHX_LEN];
    key.copy_from_slice(&HEAVY[..HASHX_LEN]);
    let mut n = 0u32;
    for height in 0..BLOCKS {
        let mut header = [0u8; 80];
        header[..4].copy_from_slice(&height.to_le_bytes());
        let txs = (0..TXS_PER_BLOCK)
            .map(|i| {
                n += 1;
                let spends = if i > 0 && n.is_multiple_of(2) {
                    vec![(txid(n - 1), 0)]
                } else {
                    vec![]
                };
                TxData {
                    txid: txid(n),
                    spends,
                    outputs: vec![Some((key, 1000 + u64::from(n)))],
                }
            })
            .collect();
        store.apply_block(&BlockData { header, txs }).unwrap();
    }
    store.commit().unwrap();
    store
}

fn queries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = build(dir.path());
    let fresh = || support::electrum(&store);
    let electrum = fresh();
    let (ctx, _rx) = support::session();
    let state: Arc<SessionState> = electrum.open_session(&ctx);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let scripthash = ferrum::hex::hash_hex(&HEAVY);
    let params = || Params::Positional(vec![json!(scripthash)]);
    let mut group = c.benchmark_group("queries");
    group.sample_size(20);
    for method in ["get_history", "listunspent", "get_balance", "subscribe"] {
        let method = format!("blockchain.scripthash.{method}");
        group.bench_function(&method, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let reply = electrum
                        .call_reply(&ctx, &state, &method, params())
                        .await
                        .unwrap();
                    black_box(reply.into_json()).len()
                })
            })
        });
        if method.ends_with("get_history") {
            group.bench_function(format!("{method} cold"), |b| {
                b.iter_batched(
                    || {
                        let electrum = fresh();
                        let state = electrum.open_session(&ctx);
                        (electrum, state)
                    },
                    |(electrum, state)| {
                        let len = rt.block_on(async {
                            let reply = electrum
                                .call_reply(&ctx, &state, &method, params())
                                .await
                                .unwrap();
                            black_box(reply.into_json()).len()
                        });
                        // Dropped after the timing, with the cache it filled.
                        (electrum, state, len)
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        if method.ends_with("get_history") || method.ends_with("listunspent") {
            group.bench_function(format!("{method} via Value"), |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let value = electrum
                            .call(&ctx, &state, &method, params())
                            .await
                            .unwrap();
                        black_box(serde_json::to_string(&value).unwrap()).len()
                    })
                })
            });
        }
    }
    // The store's part of the above: history with txids and heights, unspent outputs.
    let mut key = [0u8; HASHX_LEN];
    key.copy_from_slice(&HEAVY[..HASHX_LEN]);
    let snap = store.snapshot();
    group.bench_function("store history", |b| {
        b.iter(|| black_box(snap.history(&key).unwrap()).len())
    });
    group.bench_function("store history with txids and heights", |b| {
        b.iter(|| {
            black_box(ferrum::query::confirmed_history(&snap, &StoreTxids, &key, None).unwrap())
                .len()
        })
    });
    group.bench_function("store utxos", |b| {
        b.iter(|| black_box(snap.utxos(&key).unwrap()).len())
    });
    group.bench_function("store utxos with txids and heights", |b| {
        b.iter(|| {
            black_box(ferrum::query::confirmed_unspent(&snap, &StoreTxids, &key).unwrap()).len()
        })
    });
    group.finish();
}

criterion_group!(benches, queries);
criterion_main!(benches);
