//! The status cache against statuses computed from scratch over a real store: new blocks,
//! untouched scripts, mempool changes, reorgs (shorter, longer, same height), older
//! snapshots; what a long history costs; subscriptions and the bound.

use ferrum_storage::{BlockData, Hash32, TxData};

use super::*;
use crate::electrum::internal;
use crate::merkle::snapshot_tip;
use crate::query::{self, MempoolTx};
use crate::status::{history, status};
use crate::test_store::committed_store;
use crate::txids::StoreTxids;

fn key(b: u8) -> HashX {
    [b; 11]
}

/// Txids unique per (branch, height, index).
fn txid(branch: u8, height: u32, i: u32) -> Hash32 {
    let mut t = [branch; 32];
    t[..4].copy_from_slice(&height.to_le_bytes());
    t[4..8].copy_from_slice(&i.to_le_bytes());
    t
}

/// A block at `height` on `branch` whose i-th transaction pays `pays[i]`.
fn block(branch: u8, height: u32, pays: &[u8]) -> BlockData {
    let mut header = [branch; 80];
    header[..4].copy_from_slice(&height.to_le_bytes());
    BlockData {
        header,
        txs: pays
            .iter()
            .enumerate()
            .map(|(i, &to)| TxData {
                txid: txid(branch, height, i as u32),
                spends: vec![],
                outputs: vec![Some((key(to), 1))],
            })
            .collect(),
    }
}

fn tip_of(snap: &Snapshot) -> Option<Tip> {
    snapshot_tip(snap).unwrap()
}

/// The whole confirmed history, as the methods read it when the cache cannot help.
fn whole(snap: &Snapshot, hashx: &HashX) -> Result<(Arc<Vec<ConfirmedTx>>, f64), RpcError> {
    let history = query::confirmed_history(snap, &StoreTxids, hashx, None).map_err(internal)?;
    Ok((Arc::new(history), 1.0))
}

/// Status through the cache: its confirmed part plus `mempool`, and how it was obtained.
fn cached(
    cache: &StatusCache,
    snap: &Snapshot,
    hashx: &HashX,
    mempool: &[MempoolTx],
) -> (Option<Hash32>, usize, Source) {
    let part = cache
        .confirmed(snap, &StoreTxids, tip_of(snap), hashx, || {
            whole(snap, hashx)
        })
        .unwrap();
    let mut hasher = part.hasher;
    for m in mempool {
        hasher.add(&m.txid, m.height());
    }
    (hasher.finish(), part.count, part.source)
}

/// The status computed from scratch, and the confirmed history's length.
fn scratch(snap: &Snapshot, hashx: &HashX, mempool: &[MempoolTx]) -> (Option<Hash32>, usize) {
    let confirmed = query::confirmed_history(snap, &StoreTxids, hashx, None).unwrap();
    (status(&history(&confirmed, mempool)).0, confirmed.len())
}

fn check(cache: &StatusCache, snap: &Snapshot, hashx: &HashX, mempool: &[MempoolTx]) -> Source {
    let (status, count, source) = cached(cache, snap, hashx, mempool);
    assert_eq!((status, count), scratch(snap, hashx, mempool), "{source:?}");
    source
}

fn mempool_tx(n: u8, unconfirmed_inputs: bool) -> MempoolTx {
    MempoolTx {
        txid: [n; 32],
        fee: 1,
        unconfirmed_inputs,
    }
}

const A: u8 = 1;
const B: u8 = 2;
const C: u8 = 3;

#[test]
fn blocks_mempool_and_reorgs_match_statuses_from_scratch() {
    let (_dir, mut store) = committed_store((0..5).map(|h| block(0, h, &[A, B, A])));
    let cache = StatusCache::default();
    let snap = store.snapshot();
    for k in [A, B, C] {
        assert!(matches!(
            check(&cache, &snap, &key(k), &[]),
            Source::Read { .. }
        ));
        assert_eq!(check(&cache, &snap, &key(k), &[]), Source::Cached);
    }

    // Two blocks touching A and C: B keeps its state.
    let old = snap;
    store.apply_block(&block(0, 5, &[A, C])).unwrap();
    store.apply_block(&block(0, 6, &[A])).unwrap();
    store.commit().unwrap();
    let snap = store.snapshot();
    assert_eq!(check(&cache, &snap, &key(A), &[]), Source::Extended(2));
    assert_eq!(check(&cache, &snap, &key(B), &[]), Source::Cached);
    assert_eq!(check(&cache, &snap, &key(C), &[]), Source::Extended(1));

    // Mempool changes re-hash only the mempool part, from the same confirmed state.
    let one = [mempool_tx(9, false)];
    let two = [mempool_tx(9, false), mempool_tx(4, true)];
    for mempool in [&one[..], &two[..], &[]] {
        for k in [A, B] {
            assert_eq!(check(&cache, &snap, &key(k), mempool), Source::Cached);
        }
    }

    // A snapshot taken before the blocks: rebuilt for it, then brought forward again.
    assert!(matches!(
        check(&cache, &old, &key(A), &[]),
        Source::Read { .. }
    ));
    assert_eq!(check(&cache, &snap, &key(A), &[]), Source::Extended(2));

    // A longer branch replaces the last two blocks: rebuilt, whatever it touches.
    store.rollback(2, &[]).unwrap();
    store.apply_block(&block(1, 5, &[B])).unwrap();
    store.apply_block(&block(1, 6, &[C, C])).unwrap();
    store.apply_block(&block(1, 7, &[A])).unwrap();
    store.commit().unwrap();
    let snap = store.snapshot();
    for k in [A, B, C] {
        assert!(matches!(
            check(&cache, &snap, &key(k), &two),
            Source::Read { .. }
        ));
    }
    // Same height, another block: rebuilt again.
    store.rollback(1, &[]).unwrap();
    store.apply_block(&block(2, 7, &[B])).unwrap();
    store.commit().unwrap();
    let snap = store.snapshot();
    for k in [A, B, C] {
        assert!(matches!(
            check(&cache, &snap, &key(k), &[]),
            Source::Read { .. }
        ));
    }
    // A shorter chain: rebuilt; then new blocks on it extend.
    store.rollback(3, &[]).unwrap();
    store.commit().unwrap();
    let snap = store.snapshot();
    for k in [A, B, C] {
        assert!(matches!(
            check(&cache, &snap, &key(k), &[]),
            Source::Read { .. }
        ));
    }
    store.apply_block(&block(3, 5, &[B, B])).unwrap();
    store.commit().unwrap();
    let snap = store.snapshot();
    assert_eq!(check(&cache, &snap, &key(A), &one), Source::Cached);
    assert_eq!(check(&cache, &snap, &key(B), &one), Source::Extended(2));
}

/// A deterministic walk of blocks, reorgs, compactions and mempool changes, each step checked.
#[test]
fn a_random_walk_matches_statuses_from_scratch() {
    let (_dir, mut store) = committed_store([block(0, 0, &[A])]);
    let cache = StatusCache::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut branch = 0u8;
    let mut mempool = Vec::new();
    let mut sources = [0; 3]; // read, extended, cached
    let mut check_all = |snap: &Snapshot, mempool: &[MempoolTx]| {
        for k in [A, B, C] {
            let i = match check(&cache, snap, &key(k), mempool) {
                Source::Read { .. } => 0,
                Source::Extended(_) => 1,
                Source::Cached => 2,
            };
            sources[i] += 1;
        }
    };
    for _ in 0..60 {
        let height = store.height().unwrap();
        match next(6) {
            0 if height > 3 => {
                store.rollback(1 + next(3) as u32, &[]).unwrap();
                branch += 1;
                if next(2) == 0 {
                    check_all(&store.snapshot(), &mempool); // the fork point, seen or not
                }
            }
            1 => {
                mempool = (0..next(3))
                    .map(|i| mempool_tx(i as u8, next(2) == 0))
                    .collect()
            }
            // Merged segments: rollback cuts folded in.
            2 => {
                store.compact().unwrap();
            }
            _ => {}
        }
        let height = store.height().unwrap();
        let pays: Vec<u8> = (0..next(4)).map(|_| 1 + next(3) as u8).collect();
        store
            .apply_block(&block(branch, height + 1, &pays))
            .unwrap();
        store.commit().unwrap();
        check_all(&store.snapshot(), &mempool);
    }
    assert!(sources.iter().all(|&n| n >= 10), "{sources:?}");
}

#[test]
fn a_new_transaction_on_a_long_history_hashes_only_it() {
    const ENTRIES: u32 = 100_000;
    let (_dir, mut store) = committed_store((0..ENTRIES / 1000).map(|h| block(0, h, &[A; 1000])));
    let cache = StatusCache::default();
    let snap = store.snapshot();
    assert!(matches!(
        check(&cache, &snap, &key(A), &[]),
        Source::Read { .. }
    ));
    assert_eq!(cache.entries_hashed(), u64::from(ENTRIES));

    store
        .apply_block(&block(0, ENTRIES / 1000, &[B, A]))
        .unwrap();
    store.commit().unwrap();
    let snap = store.snapshot();
    let part = cache
        .confirmed(&snap, &StoreTxids, tip_of(&snap), &key(A), || {
            panic!("the whole history is not read again")
        })
        .unwrap();
    assert_eq!(part.source, Source::Extended(1));
    assert_eq!(part.count, ENTRIES as usize + 1);
    assert_eq!(cache.entries_hashed(), u64::from(ENTRIES) + 1);
    assert_eq!(part.hasher.finish(), scratch(&snap, &key(A), &[]).0);
}

#[test]
fn errors_are_not_cached() {
    let (_dir, store) = committed_store([block(0, 0, &[A])]);
    let cache = StatusCache::default();
    let snap = store.snapshot();
    let refused = cache.confirmed(&snap, &StoreTxids, tip_of(&snap), &key(A), || {
        Err(RpcError::new(10001, "history too large"))
    });
    assert_eq!(refused.err().unwrap().message, "history too large");
    assert!(matches!(
        check(&cache, &snap, &key(A), &[]),
        Source::Read { .. }
    ));
    // An empty store has no tip: nothing to key an entry by.
    let (_empty_dir, empty) = committed_store([]);
    let (status, count, _) = cached(&cache, &empty.snapshot(), &key(A), &[]);
    assert_eq!((status, count), (None, 0));
    assert_eq!(cache.stats(), (3, 0, 1));
}

#[test]
fn entries_go_with_the_last_subscriber() {
    let (_dir, store) = committed_store([block(0, 0, &[A, B])]);
    let cache = StatusCache::default();
    let snap = store.snapshot();
    for k in [A, B] {
        cache.subscribed(key(k));
        check(&cache, &snap, &key(k), &[]);
    }
    cache.subscribed(key(A));
    cache.unsubscribed(&key(A));
    cache.unsubscribed(&key(B));
    assert_eq!(cache.stats().2, 1, "A still has a subscriber");
    assert_eq!(check(&cache, &snap, &key(A), &[]), Source::Cached);
    cache.unsubscribed(&key(A));
    assert_eq!(cache.stats().2, 0);
    cache.unsubscribed(&key(A)); // not subscribed: nothing to do
    assert_eq!(cache.stats().2, 0);
}

#[test]
fn bounded_least_recently_used_first() {
    let cache = StatusCache::default();
    let k = |i: u32| {
        let mut h = [0u8; 11];
        h[..4].copy_from_slice(&i.to_le_bytes());
        h
    };
    for i in 0..MAX_SCRIPTS as u32 {
        cache.slot(&k(i));
    }
    cache.slot(&k(0)); // used again: now the most recent
    cache.slot(&k(MAX_SCRIPTS as u32));
    let inner = lock(&cache.inner);
    assert_eq!(inner.slots.len(), MAX_SCRIPTS - MAX_SCRIPTS / 8 + 1);
    assert!(inner.slots.contains_key(&k(0)));
    assert!(!inner.slots.contains_key(&k(1)));
    assert!(inner.slots.contains_key(&k(MAX_SCRIPTS as u32)));
}
