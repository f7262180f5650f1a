//! Storage engine benchmarks: tx-hash appends through the Store, UTXO add/spend/lookup over
//! 10M entries, history lookups at 10k and 100k entries, compaction throughput, and a one-shot
//! sync of a 200k-tx synthetic chain through the Store that reports bytes per tx by file kind.
//! Run: `cargo bench --bench storage`; results and machine notes live in docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrum_storage::history::HistorySet;
use ferrum_storage::utxo::UtxoSet;
use ferrum_storage::{BlockData, Options, Store, TxData, HASHX_LEN};

const UTXOS: u64 = 10_000_000;

/// splitmix64, for reproducible keys.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key(n: u64) -> [u8; HASHX_LEN] {
    let mut k = [0u8; HASHX_LEN];
    k[..8].copy_from_slice(&mix(n).to_be_bytes());
    k
}

fn ids() -> impl FnMut() -> u64 {
    let mut next = 0;
    move || {
        next += 1;
        next
    }
}

/// Tx hashes appended through the Store: blocks of 2,000 txs with no inputs or indexed
/// outputs, committed each time (array append + txid index run + manifest, fsyncs included).
fn txhash_appends(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), Options::default()).unwrap();
    let mut n = 0u64;
    let mut g = c.benchmark_group("txhash_append");
    g.throughput(Throughput::Elements(2000));
    g.bench_function("apply_and_commit_2000_txs", |b| {
        b.iter(|| {
            let txs = (0..2000)
                .map(|_| {
                    n += 1;
                    let mut txid = [0u8; 32];
                    for (i, c) in txid.chunks_mut(8).enumerate() {
                        c.copy_from_slice(&mix(n * 4 + i as u64).to_le_bytes());
                    }
                    TxData {
                        txid,
                        spends: vec![],
                        outputs: vec![None],
                    }
                })
                .collect();
            store
                .apply_block(&BlockData {
                    header: [7; 80],
                    txs,
                })
                .unwrap();
            store.commit().unwrap();
        })
    });
    g.finish();
}

/// A UTXO set of `count` outputs (two per tx, 1M distinct keys) as runs of `per_run`.
fn utxo_set(dir: &Path, count: u64, per_run: u64, alloc: &mut dyn FnMut() -> u64) -> UtxoSet {
    let mut set = UtxoSet::open(dir, &[]).unwrap();
    for i in 0..count {
        set.add(key(i % 1_000_000), i / 2, (i % 2) as u32, i);
        if (i + 1) % per_run == 0 {
            set.flush(alloc).unwrap();
        }
    }
    set.flush(alloc).unwrap();
    set
}

fn utxo_10m(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut alloc = ids();
    let started = Instant::now();
    let mut set = utxo_set(dir.path(), UTXOS, 1_000_000, &mut alloc);
    let built = started.elapsed();
    let started = Instant::now();
    set.compact(&mut alloc, 64 << 20, u64::MAX).unwrap();
    eprintln!(
        "utxo: built {UTXOS} entries as 10 runs in {built:?}; compacted them in {:?}",
        started.elapsed()
    );
    let view = set.view();
    let mut g = c.benchmark_group("utxo_10m");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("lookup_outpoint", |b| {
        b.iter(|| {
            i += 1;
            let n = mix(i) % UTXOS;
            black_box(view.get(n / 2, (n % 2) as u32).unwrap())
        })
    });
    g.bench_function("list_by_key_10_utxos", |b| {
        b.iter(|| {
            i += 1;
            black_box(view.list(&key(mix(i) % 1_000_000)).unwrap())
        })
    });
    let mut next = UTXOS / 2;
    g.bench_function("add", |b| {
        b.iter(|| {
            next += 1;
            set.add(key(next), next, 0, next);
        })
    });
    let mut s = 0u64;
    g.bench_function("spend", |b| {
        b.iter(|| {
            s += 1;
            let n = (s * 7_919) % UTXOS;
            black_box(set.spend(n / 2, (n % 2) as u32).unwrap())
        })
    });
    g.finish();
}

/// A history set where one key has `entries` tx numbers among 1M entries of other keys,
/// written by 10 flushes and compacted.
fn history_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("history_lookup");
    for entries in [10_000u64, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut alloc = ids();
        let mut set = HistorySet::open(dir.path(), &[]).unwrap();
        let total = 1_000_000u64;
        let every = total / entries;
        for t in 0..total {
            if t % every == 0 {
                set.append(key(u64::MAX), t);
            }
            set.append(key(t % 50_000), t);
            if (t + 1) % (total / 10) == 0 {
                set.flush(&mut alloc).unwrap();
            }
        }
        while set.compact(&mut alloc, u64::MAX).unwrap() {}
        let view = set.view();
        assert_eq!(view.get(&key(u64::MAX)).unwrap().len() as u64, entries);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("get_{entries}"), |b| {
            b.iter(|| black_box(view.get(&key(u64::MAX)).unwrap()))
        });
    }
    g.finish();
}

/// Merge throughput: four runs (UTXO) or segments (history) of 250k entries into one.
fn compaction(c: &mut Criterion) {
    let mut g = c.benchmark_group("compaction");
    g.throughput(Throughput::Elements(1_000_000));
    g.bench_function("utxo_4x250k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let mut alloc = ids();
                let mut set = utxo_set(dir.path(), 1_000_000, 250_000, &mut alloc);
                let started = Instant::now();
                set.compact(&mut alloc, 64 << 20, u64::MAX).unwrap();
                total += started.elapsed();
            }
            total
        })
    });
    g.bench_function("history_4x250k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let mut alloc = ids();
                let mut set = HistorySet::open(dir.path(), &[]).unwrap();
                for t in 0..1_000_000u64 {
                    set.append(key(t % 100_000), t);
                    if (t + 1) % 250_000 == 0 {
                        set.flush(&mut alloc).unwrap();
                    }
                }
                let started = Instant::now();
                while set.compact(&mut alloc, u64::MAX).unwrap() {}
                total += started.elapsed();
            }
            total
        })
    });
    g.finish();
}

/// One pass, not a criterion loop: apply a 200k-tx chain (451 blocks of 443 txs, like the
/// regtest anchor chain; each tx spends 1–2 random UTXOs and pays 2 outputs, 60% to an
/// existing script), committing every 20 blocks and compacting every 100, then report the
/// time and the bytes per tx of each kind of file; then bench txid and tx-number lookups on it.
fn store_sync_and_space(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path(), Options::default()).unwrap();
    let mut live: Vec<([u8; 32], u32)> = Vec::new();
    let (mut n, mut keys) = (0u64, 0u64);
    let started = Instant::now();
    for h in 0..451u64 {
        let txs = (0..443)
            .map(|i| {
                n += 1;
                let mut txid = [0u8; 32];
                for (j, c) in txid.chunks_mut(8).enumerate() {
                    c.copy_from_slice(&mix(n * 4 + j as u64).to_le_bytes());
                }
                let mut spends = Vec::new();
                for _ in 0..if i == 0 { 0 } else { 1 + mix(n) % 2 } {
                    if !live.is_empty() {
                        let at = (mix(n ^ live.len() as u64) % live.len() as u64) as usize;
                        spends.push(live.swap_remove(at));
                    }
                }
                let outputs = (0..2u64)
                    .map(|o| {
                        let r = mix(n * 2 + o);
                        let k = if r % 10 < 6 && keys > 0 {
                            // Zipf-like: low ranks are reused most.
                            let u = (r >> 8) % keys + 1;
                            (keys * u / (u + keys / 16 + 1)).min(keys - 1)
                        } else {
                            keys += 1;
                            keys - 1
                        };
                        Some((key(k), 1000 + (r >> 20) % 5_000_000_000))
                    })
                    .collect();
                live.push((txid, 0));
                live.push((txid, 1));
                TxData {
                    txid,
                    spends,
                    outputs,
                }
            })
            .collect();
        store
            .apply_block(&BlockData {
                header: [h as u8; 80],
                txs,
            })
            .unwrap();
        if h % 20 == 19 {
            store.commit().unwrap();
        }
        if h % 100 == 99 {
            store.compact().unwrap();
        }
    }
    store.commit().unwrap();
    while store.compact().unwrap() {}
    let elapsed = started.elapsed();
    let txs = store.snapshot().tx_count();
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let kind = name.split(['-', '.']).next().unwrap().to_string();
        *bytes.entry(kind).or_default() += e.metadata().unwrap().len();
    }
    let total: u64 = bytes.values().sum();
    eprintln!(
        "store sync: {txs} txs in 451 blocks in {elapsed:?} ({:.0} tx/s), {} UTXOs left",
        txs as f64 / elapsed.as_secs_f64(),
        live.len()
    );
    for (kind, b) in &bytes {
        eprintln!(
            "  {kind:>8}: {b:>10} bytes = {:6.2} B/tx",
            *b as f64 / txs as f64
        );
    }
    eprintln!(
        "  {:>8}: {total:>10} bytes = {:6.2} B/tx",
        "total",
        total as f64 / txs as f64
    );
    let snap = store.snapshot();
    let mut g = c.benchmark_group("store_200k");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    let mut outpoints = Vec::new();
    snap.for_each_utxo(|_, u| outpoints.push((u.txnum, u.vout)))
        .unwrap();
    g.bench_function("unspent", |b| {
        b.iter(|| {
            i += 1;
            let (txnum, vout) = outpoints[(mix(i) % outpoints.len() as u64) as usize];
            let txid = snap.txid(txnum).unwrap();
            black_box(snap.unspent(&txid, vout).unwrap())
        })
    });
    g.bench_function("tx_height", |b| {
        b.iter(|| {
            i += 1;
            black_box(snap.tx_height(mix(i) % txs).unwrap())
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = store_sync_and_space, txhash_appends, utxo_10m, history_lookup, compaction
}
criterion_main!(benches);
