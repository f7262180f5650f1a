//! The status cache of subscribed scripts: the status hasher after a script's confirmed
//! history, valid for one chain tip. A later tip that descends from it extends the hasher
//! with the new blocks' entries only (read with `Snapshot::history_since`), so a new
//! transaction on a 100,000-entry history neither re-reads nor re-hashes the history. A tip
//! that does not descend from it (a reorg) rebuilds it from the whole history.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ferrum_storage::{HashX, Snapshot};

use super::history_cache::Tip;
use super::txid_error;
use crate::jsonrpc::RpcError;
use crate::merkle::header_hash;
use crate::query::ConfirmedTx;
use crate::status::StatusHasher;
use crate::txids::{TxidError, TxidSource};

/// Scripts kept (about 250 bytes each). Subscribed scripts beyond it are evicted least
/// recently used first and rebuilt when next needed.
const MAX_SCRIPTS: usize = 1 << 16;

/// The confirmed part of a status at one tip.
#[derive(Clone)]
struct Confirmed {
    tip: Tip,
    /// The snapshot's tx count at `tip`: a later block's entries are the numbers from here.
    next_txnum: u64,
    hasher: StatusHasher,
    count: usize,
}

/// How the confirmed part was obtained, which sets what ElectrumX would charge for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    /// Cached and unchanged at this tip (ElectrumX: a history cache hit).
    Cached,
    /// Cached, plus this many entries of new blocks (ElectrumX re-reads a touched history).
    Extended(usize),
    /// Read whole by the caller's reader, at the cost it gave.
    Read { cost: f64 },
}

/// A script's status hasher after its confirmed history, and that history's length.
pub struct ConfirmedPart {
    pub hasher: StatusHasher,
    pub count: usize,
    pub source: Source,
}

struct Slot {
    state: Arc<Mutex<Option<Confirmed>>>,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    /// Sessions subscribed to each script.
    subscribers: HashMap<HashX, u32>,
    slots: HashMap<HashX, Slot>,
    clock: u64,
}

#[derive(Default)]
pub struct StatusCache {
    inner: Mutex<Inner>,
    lookups: AtomicU64,
    /// Lookups served without reading the whole history.
    hits: AtomicU64,
    /// Confirmed entries hashed, whole histories and new blocks' entries alike.
    entries_hashed: AtomicU64,
    /// The last (older tip, newer tip) found on one chain: a block's notifications extend
    /// every subscribed script from the same older tip, so the header is hashed once.
    last_link: Mutex<Option<(Tip, Tip)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StatusCache {
    /// A session subscribed to `hashx`.
    pub fn subscribed(&self, hashx: HashX) {
        *lock(&self.inner).subscribers.entry(hashx).or_default() += 1;
    }

    /// A session no longer subscribes to `hashx`: the last one takes its entry away.
    pub fn unsubscribed(&self, hashx: &HashX) {
        let mut inner = lock(&self.inner);
        if let Some(n) = inner.subscribers.get_mut(hashx) {
            *n -= 1;
            if *n == 0 {
                inner.subscribers.remove(hashx);
                inner.slots.remove(hashx);
            }
        }
    }

    /// (lookups, hits, scripts held), for the local RPC's `getinfo`.
    pub fn stats(&self) -> (u64, u64, usize) {
        let held = lock(&self.inner).slots.len();
        (
            self.lookups.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
            held,
        )
    }

    /// Confirmed entries hashed so far: tests see what the cache saves.
    #[cfg(test)]
    pub fn entries_hashed(&self) -> u64 {
        self.entries_hashed.load(Ordering::Relaxed)
    }

    /// The slot of `hashx`, created if missing; marks it used and evicts beyond the bound.
    fn slot(&self, hashx: &HashX) -> Arc<Mutex<Option<Confirmed>>> {
        let mut inner = lock(&self.inner);
        inner.clock += 1;
        let now = inner.clock;
        if !inner.slots.contains_key(hashx) && inner.slots.len() >= MAX_SCRIPTS {
            // Evict the least recently used eighth: amortised O(1) a lookup.
            let mut ages: Vec<u64> = inner.slots.values().map(|s| s.last_used).collect();
            let (_, &mut oldest_kept, _) = ages.select_nth_unstable(MAX_SCRIPTS / 8);
            inner.slots.retain(|_, s| s.last_used >= oldest_kept);
        }
        let slot = inner.slots.entry(*hashx).or_insert_with(|| Slot {
            state: Arc::default(),
            last_used: now,
        });
        slot.last_used = now;
        slot.state.clone()
    }

    /// The confirmed part of the status of `hashx` in `snap`, whose tip is `tip`. Without a
    /// usable cached state, `read_all` gives the whole confirmed history (applying the
    /// history limit) and its cost. Concurrent lookups of one script wait for the first.
    pub fn confirmed(
        &self,
        snap: &Snapshot,
        txids: &dyn TxidSource,
        tip: Option<Tip>,
        hashx: &HashX,
        read_all: impl FnOnce() -> Result<(Arc<Vec<ConfirmedTx>>, f64), RpcError>,
    ) -> Result<ConfirmedPart, RpcError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let Some(tip) = tip else {
            return self.read(read_all);
        };
        let slot = self.slot(hashx);
        let mut state = lock(&slot);
        if let Some(cached) = state.as_mut() {
            match self.extend(snap, txids, tip, hashx, cached) {
                Ok(Some(source)) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(ConfirmedPart {
                        hasher: cached.hasher.clone(),
                        count: cached.count,
                        source,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    *state = None;
                    return Err(txid_error(e));
                }
            }
        }
        *state = None;
        let part = self.read(read_all)?;
        *state = Some(Confirmed {
            tip,
            next_txnum: snap.tx_count(),
            hasher: part.hasher.clone(),
            count: part.count,
        });
        Ok(part)
    }

    /// Brings `cached` to `tip` if the chain there descends from its tip: adds the entries
    /// of the blocks since. None if it does not descend (a reorg, or an older snapshot).
    fn extend(
        &self,
        snap: &Snapshot,
        txids: &dyn TxidSource,
        tip: Tip,
        hashx: &HashX,
        cached: &mut Confirmed,
    ) -> Result<Option<Source>, TxidError> {
        if cached.tip == tip {
            return Ok(Some(Source::Cached));
        }
        if !self.descends(snap, cached.tip, tip)? {
            return Ok(None);
        }
        let tail = snap.history_since(hashx, cached.next_txnum)?;
        let (txids, heights) = (txids.txids(snap, &tail)?, snap.tx_heights(&tail)?);
        for (txid, height) in txids.iter().zip(heights) {
            cached.hasher.add(txid, height as i32);
        }
        self.entries_hashed
            .fetch_add(tail.len() as u64, Ordering::Relaxed);
        cached.tip = tip;
        cached.next_txnum = snap.tx_count();
        cached.count += tail.len();
        Ok(Some(match tail.len() {
            0 => Source::Cached,
            n => Source::Extended(n),
        }))
    }

    /// Whether `tip`, the tip of `snap`, descends from `older`.
    fn descends(
        &self,
        snap: &Snapshot,
        older: Tip,
        tip: Tip,
    ) -> Result<bool, ferrum_storage::Error> {
        if *lock(&self.last_link) == Some((older, tip)) {
            return Ok(true);
        }
        let (height, hash) = older;
        let linked = tip.0 > height && header_hash(&snap.header(height)?) == hash;
        if linked {
            *lock(&self.last_link) = Some((older, tip));
        }
        Ok(linked)
    }

    /// Hashes a whole confirmed history from `read_all` (read from the same snapshot).
    fn read(
        &self,
        read_all: impl FnOnce() -> Result<(Arc<Vec<ConfirmedTx>>, f64), RpcError>,
    ) -> Result<ConfirmedPart, RpcError> {
        let (history, cost) = read_all()?;
        let mut hasher = StatusHasher::new();
        for c in history.iter() {
            hasher.add(&c.txid, c.height as i32);
        }
        self.entries_hashed
            .fetch_add(history.len() as u64, Ordering::Relaxed);
        Ok(ConfirmedPart {
            hasher,
            count: history.len(),
            source: Source::Read { cost },
        })
    }
}

#[cfg(test)]
mod tests;
