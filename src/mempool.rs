//! The mirror of the node's mempool ([`Mempool`]): refreshed by polling the node, read by the
//! protocol methods through [`MempoolView`] with ElectrumX's semantics.
//!
//! A refresh (ElectrumX's `_refresh_hashes` and `_process_mempool`):
//! 1. reads the node's txids and its tip in one batch, and goes on only if that tip is the
//!    store snapshot's (else [`Error::Unsynced`]: the index has a block to catch up first);
//! 2. diffs the txids against the mirror: transactions gone from the node (mined, evicted,
//!    replaced) are removed, new ones (broadcast, or reorged back in) fetched with batched
//!    `getrawtransaction` calls;
//! 3. parses them and resolves every input, from the mempool (parents before children) or
//!    from the snapshot's unspent outputs, giving each its fee, vsize and scripts. One with
//!    an input found nowhere (a race with a block) is left out and fetched again next round;
//! 4. applies removals and additions under a short write lock, and returns the scripts
//!    whose mempool view changed.
//!
//! Requests are never blocked by a refresh: fetching, parsing and resolving run outside any
//! lock (reads of the state take a read lock, and only the refresh itself writes), on the
//! blocking pool for the CPU and store work. Refreshes run one at a time.
//!
//! Memory: the state holds, per mempool transaction, its txid, fee, vsize, spent outpoints
//! (36 B each) with their script key and value (19 B), outputs (script key and value), and
//! an entry per script it touches and per outpoint it spends: a few hundred bytes for a
//! typical transaction, so proportional to the node's mempool (itself bounded by the node's
//! `-maxmempool`, 300 MB by default). A round also holds the new transactions parsed.
//!
//! The compact fee histogram is rebuilt by a refresh when the last one is older than
//! [`HISTOGRAM_REFRESH`] (ElectrumX's `MEMPOOL_HISTOGRAM_REFRESH_SECS` for Bitcoin).
//!
//! API shape: `refresh` returns this module's [`Error`] (node error, store error, or not
//! at the snapshot's tip) rather than the node client's alone.

mod histogram;
mod resolve;
mod source;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use ferrum_storage::{Hash32, HashX, Snapshot};
use futures_util::future;
use tracing::{info, warn};

use crate::daemon::{self, Daemon};
use crate::hex::hash_hex;
use crate::merkle::snapshot_tip;
use crate::query::{MempoolOutput, MempoolTx, MempoolView};
use source::{NodeMempool, Source};
use state::State;

/// Transactions asked for in one `getrawtransaction` batch (ElectrumX's chunk size).
const FETCH_BATCH: usize = 200;
/// Batches in flight at once.
const FETCH_CONCURRENCY: usize = 4;
/// How old the fee histogram may get before a refresh rebuilds it.
pub const HISTOGRAM_REFRESH: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub enum Error {
    /// The node could not be read; the round is skipped.
    Daemon(daemon::Error),
    /// The store snapshot could not be read; the round is skipped.
    Store(ferrum_storage::Error),
    /// The node's tip is not the snapshot's (a block the index has not committed yet, or one
    /// that arrived mid-read): the mempool is read again once they agree.
    Unsynced(String),
    /// A refresh task failed.
    Task(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Daemon(e) => write!(f, "mempool: {e}"),
            Error::Store(e) => write!(f, "mempool: store: {e}"),
            Error::Unsynced(m) | Error::Task(m) => write!(f, "mempool: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<daemon::Error> for Error {
    fn from(e: daemon::Error) -> Self {
        Error::Daemon(e)
    }
}

impl From<ferrum_storage::Error> for Error {
    fn from(e: ferrum_storage::Error) -> Self {
        Error::Store(e)
    }
}

/// The mirror of the node's mempool. Share it as `Arc<Mempool>`: the methods read it as a
/// [`MempoolView`], one task refreshes it.
pub struct Mempool {
    inner: Arc<Inner>,
    /// Serialises refreshes; holds when the fee histogram was last built.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
}

struct Inner {
    state: RwLock<State>,
    histogram: RwLock<Vec<(f64, u64)>>,
}

impl Default for Mempool {
    fn default() -> Self {
        Mempool::new()
    }
}

/// What one refresh did, for its log line.
struct Round {
    touched: HashSet<HashX>,
    removed: usize,
    added: usize,
    unresolved: usize,
}

impl Mempool {
    /// An empty mirror; the first refresh loads the node's whole mempool.
    pub fn new() -> Mempool {
        Mempool {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                histogram: RwLock::new(Vec::new()),
            }),
            refreshing: tokio::sync::Mutex::new(None),
        }
    }

    /// Transactions held.
    pub fn tx_count(&self) -> usize {
        self.inner.read().len()
    }

    /// Brings the mirror to the node's mempool, resolving inputs against `snap`, which must
    /// be at the node's tip. Returns the scripts whose mempool view changed.
    pub async fn refresh(&self, daemon: &Daemon, snap: &Snapshot) -> Result<HashSet<HashX>, Error> {
        self.refresh_from(daemon, snap).await
    }

    pub(crate) async fn refresh_from<S: Source>(
        &self,
        source: &S,
        snap: &Snapshot,
    ) -> Result<HashSet<HashX>, Error> {
        let mut histogram_at = self.refreshing.lock().await;
        let node = source
            .mempool()
            .await?
            .ok_or_else(|| Error::Unsynced("a block arrived while the mempool was read".into()))?;
        check_tip(&node, snap)?;
        let ids: Arc<HashSet<Hash32>> = Arc::new(node.txids.into_iter().collect());

        let (inner, all) = (self.inner.clone(), ids.clone());
        let (new, removed) = blocking(move || {
            let state = inner.read();
            let new: Vec<Hash32> = all.iter().filter(|t| !state.contains(t)).copied().collect();
            let removed: Vec<Hash32> = state
                .txids()
                .filter(|t| !all.contains(*t))
                .copied()
                .collect();
            (new, removed)
        })
        .await?;

        let mut raws: Vec<(Hash32, Vec<u8>)> = Vec::with_capacity(new.len());
        // FETCH_CONCURRENCY batches at a time.
        for group in new.chunks(FETCH_BATCH * FETCH_CONCURRENCY) {
            let mut fetches = Vec::with_capacity(FETCH_CONCURRENCY);
            for chunk in group.chunks(FETCH_BATCH) {
                fetches.push(source.transactions(chunk));
            }
            let replies = future::join_all(fetches).await;
            for (chunk, reply) in group.chunks(FETCH_BATCH).zip(replies) {
                // None: mined or evicted since the txids were read; the diff sees to it.
                let fetched = chunk.iter().zip(reply?);
                raws.extend(fetched.filter_map(|(txid, raw)| Some((*txid, raw?))));
            }
        }

        let histogram_due = histogram_at.is_none_or(|at| at.elapsed() >= HISTOGRAM_REFRESH);
        let (inner, snap) = (self.inner.clone(), snap.clone());
        let round = blocking(move || -> Result<Round, Error> {
            let mut parsed = Vec::with_capacity(raws.len());
            for (txid, raw) in raws {
                match resolve::parse(&txid, &raw) {
                    Ok(tx) => parsed.push(tx),
                    Err(e) => warn!("mempool: {e}; skipped"),
                }
            }
            let resolved = resolve::resolve(parsed, &ids, &inner.read(), &snap)?;
            let added = resolved.added.len();
            let touched = inner.write().apply(&removed, resolved.added);
            if histogram_due {
                inner.rebuild_histogram();
            }
            Ok(Round {
                touched,
                removed: removed.len(),
                added,
                unresolved: resolved.unresolved,
            })
        })
        .await??;
        if histogram_due {
            *histogram_at = Some(Instant::now());
        }
        if round.unresolved > 0 {
            warn!(
                "mempool: {} transactions left out: an input is neither in the mempool nor \
                 unspent in the store (tried again next round)",
                round.unresolved
            );
        }
        tracing::debug!(
            "mempool: {} added, {} removed, {} scripts touched",
            round.added,
            round.removed,
            round.touched.len()
        );
        Ok(round.touched)
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn rebuild_histogram(&self) {
        let started = Instant::now();
        let state = self.read();
        let compact = histogram::compact(state.fees(), histogram::BIN_SIZE);
        info!(
            "mempool: {} txs, {:.2} MvB, touching {} scripts; fee histogram of {} bins \
             built in {:.3}s",
            state.len(),
            state.total_vsize() as f64 / 1e6,
            state.script_count(),
            compact.len(),
            started.elapsed().as_secs_f64()
        );
        drop(state);
        *self.histogram.write().unwrap_or_else(|p| p.into_inner()) = compact;
    }
}

/// Fails unless the node's tip is the snapshot's.
fn check_tip(node: &NodeMempool, snap: &Snapshot) -> Result<(), Error> {
    let store_tip = snapshot_tip(snap)?.map(|(_, hash)| hash);
    if store_tip == Some(node.tip) {
        return Ok(());
    }
    Err(Error::Unsynced(format!(
        "the node's tip {} is not the index's {}",
        hash_hex(&node.tip),
        store_tip.map_or_else(|| "(empty)".to_string(), |h| hash_hex(&h))
    )))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(format!("refresh task failed: {e}")))
}

impl MempoolView for Mempool {
    fn history(&self, hashx: &HashX) -> Vec<MempoolTx> {
        self.inner.read().history(hashx)
    }
    fn outputs(&self, hashx: &HashX) -> Vec<MempoolOutput> {
        self.inner.read().outputs(hashx)
    }
    fn spends(&self, hashx: &HashX) -> HashSet<(Hash32, u32)> {
        self.inner.read().spends(hashx)
    }
    fn balance_delta(&self, hashx: &HashX) -> i64 {
        self.inner.read().balance_delta(hashx)
    }
    fn fee_histogram(&self) -> Vec<(f64, u64)> {
        self.inner
            .histogram
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
