//! ElectrumX's history cache: recently read confirmed histories, kept for one chain tip.
//! A hit skips the store's txid reads and is charged 0.1, as ElectrumX charges it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferrum_storage::{Hash32, HashX};

use crate::query::ConfirmedTx;

/// Entries kept across all histories (about 36 bytes each): bounds memory whatever the
/// history sizes, where ElectrumX counts histories (1000).
const MAX_ENTRIES: usize = 1 << 20;
const MAX_HISTORIES: usize = 1000;

/// The chain state a history is valid for: height and tip hash.
pub type Tip = (u32, Hash32);

#[derive(Default)]
struct Inner {
    tip: Option<Tip>,
    map: HashMap<HashX, Arc<Vec<ConfirmedTx>>>,
    /// Insertion order, oldest first, for eviction.
    order: VecDeque<HashX>,
    entries: usize,
}

#[derive(Default)]
pub struct HistoryCache {
    inner: Mutex<Inner>,
    lookups: AtomicU64,
    hits: AtomicU64,
}

impl HistoryCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (lookups, hits, histories held), for the local RPC's `getinfo`.
    pub fn stats(&self) -> (u64, u64, usize) {
        let held = self.lock().map.len();
        (
            self.lookups.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
            held,
        )
    }

    /// The cached history of `hashx` at `tip`. A newer tip than the cache's empties it;
    /// an older one (a request that took its snapshot earlier) bypasses it.
    pub fn get(&self, tip: Tip, hashx: &HashX) -> Option<Arc<Vec<ConfirmedTx>>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        match inner.tip {
            Some(current) if current == tip => {
                let hit = inner.map.get(hashx).cloned();
                if hit.is_some() {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                }
                hit
            }
            Some((height, _)) if tip.0 < height => None,
            _ => {
                *inner = Inner {
                    tip: Some(tip),
                    ..Inner::default()
                };
                None
            }
        }
    }

    /// Remembers a history read at `tip` (ignored if the cache has moved to another tip).
    pub fn insert(&self, tip: Tip, hashx: HashX, history: Arc<Vec<ConfirmedTx>>) {
        let mut inner = self.lock();
        if inner.tip != Some(tip) || history.len() > MAX_ENTRIES / 4 {
            return;
        }
        inner.entries += history.len();
        if let Some(old) = inner.map.insert(hashx, history) {
            inner.entries -= old.len();
        } else {
            inner.order.push_back(hashx);
        }
        while inner.entries > MAX_ENTRIES || inner.map.len() > MAX_HISTORIES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.map.remove(&oldest) {
                inner.entries -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(n: usize) -> Arc<Vec<ConfirmedTx>> {
        Arc::new(vec![
            ConfirmedTx {
                txid: [0; 32],
                height: 1
            };
            n
        ])
    }

    #[test]
    fn kept_per_tip() {
        let cache = HistoryCache::default();
        let (t1, t2) = ((10, [1; 32]), (11, [2; 32]));
        let k = [5; 11];
        assert!(cache.get(t1, &k).is_none());
        cache.insert(t1, k, history(3));
        assert_eq!(cache.get(t1, &k).unwrap().len(), 3);
        assert_eq!(cache.stats(), (2, 1, 1));
        // An older snapshot neither sees nor resets it.
        assert!(cache.get((9, [0; 32]), &k).is_none());
        assert!(cache.get(t1, &k).is_some());
        // A new tip (or a reorg at the same height) empties it.
        assert!(cache.get((10, [7; 32]), &k).is_none());
        assert!(cache.get(t1, &k).is_none());
        assert!(cache.get(t2, &k).is_none());
        cache.insert(t1, k, history(3));
        assert!(cache.get(t2, &k).is_none());
    }

    #[test]
    fn bounded_by_entries_and_count() {
        let cache = HistoryCache::default();
        let tip = (1, [1; 32]);
        cache.get(tip, &[0; 11]);
        for i in 0..5u8 {
            cache.insert(tip, [i; 11], history(MAX_ENTRIES / 4));
        }
        assert!(cache.get(tip, &[0; 11]).is_none());
        assert!(cache.get(tip, &[4; 11]).is_some());
        assert_eq!(cache.lock().entries, MAX_ENTRIES);
        for i in 0..(MAX_HISTORIES + 10) as u32 {
            let mut k = [0; 11];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[10] = 1;
            cache.insert(tip, k, history(1));
        }
        assert_eq!(cache.lock().map.len(), MAX_HISTORIES);
    }
}
