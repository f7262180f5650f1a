//! The txids of tx numbers. A full index reads them from the store. A lean index stores none:
//! the blocks that hold them are fetched from the node (distinct blocks concurrently, up to
//! a bound), each checked against the store's header at its height (hash) and against its
//! merkle root and tx count, and recent blocks' txid lists are kept in an LRU bounded in
//! bytes. Lean lookups wait for the node, so they run on the blocking pool (see [`Txids`]);
//! a session's lookups go through [`Charged`], which reports the blocks fetched for its cost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::{BlockHash, Txid};
use ferrum_storage::{Hash32, Snapshot};
use futures_util::stream::{self, StreamExt};
use tokio::sync::OnceCell;

use crate::daemon;
use crate::electrum::Node;
use crate::merkle::header_hash;

mod scan;

/// `TXID_CACHE_MB`'s default: about 2 million txids, some 700 full mainnet blocks.
pub const DEFAULT_CACHE_MB: usize = 64;

/// Blocks one lookup fetches from the node at once.
const MAX_CONCURRENT_FETCHES: usize = 8;

/// How long one block may take. The node client retries an unreachable node forever, and a
/// lookup holds a blocking-pool thread: during an outage it gives up instead (the session
/// has answered "server busy" by then, at `REQUEST_TIMEOUT`'s default).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// What an LRU entry costs beyond its txids (map and order entries, the `Arc`).
const ENTRY_OVERHEAD: usize = 128;

/// What a session is charged, in the session cost model's units, for each block one of its
/// lean lookups asks the node for (blocks in the cache are free): ElectrumX's cost of a
/// request it forwards to the node, `blockchain.transaction.get` (1.0). Cost decays by 1.0
/// a second at the default `COST_HARD_LIMIT`, so a session sustains about a block a second,
/// and a burst of some 1,000 fetched blocks reaches `COST_SOFT_LIMIT`.
pub const BLOCK_FETCH_COST: f64 = 1.0;

/// Why txids could not be given.
#[derive(Debug)]
pub enum TxidError {
    Store(ferrum_storage::Error),
    /// The node did not give the block.
    Node {
        height: u32,
        hash: BlockHash,
        error: daemon::Error,
    },
    /// The node gave something other than the block the index holds at that height.
    BadBlock {
        height: u32,
        hash: BlockHash,
        reason: String,
    },
    /// A lean lookup outside the async runtime, which the node client needs.
    NoRuntime,
}

impl fmt::Display for TxidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxidError::Store(e) => write!(f, "{e}"),
            TxidError::Node {
                height,
                hash,
                error,
            } => write!(
                f,
                "cannot get block {hash} at height {height} from the node: {error}"
            ),
            TxidError::BadBlock {
                height,
                hash,
                reason,
            } => write!(f, "block {hash} at height {height} from the node: {reason}"),
            TxidError::NoRuntime => {
                f.write_str("txids of a lean index come from the node: no async runtime to ask it")
            }
        }
    }
}

impl std::error::Error for TxidError {}

impl From<ferrum_storage::Error> for TxidError {
    fn from(e: ferrum_storage::Error) -> Self {
        TxidError::Store(e)
    }
}

type Result<T, E = TxidError> = std::result::Result<T, E>;

/// A block's txids, in block order.
pub type BlockTxids = Arc<[Hash32]>;

/// A block to fetch: where the index has it and what it must hold.
#[derive(Clone, Copy)]
struct Wanted {
    height: u32,
    hash: BlockHash,
    /// Its first tx number.
    start: u64,
    tx_count: u64,
}

/// Blocks' txid lists by block hash, least recently used evicted first.
#[derive(Default)]
struct Lru {
    map: HashMap<Hash32, (BlockTxids, u64)>,
    /// Last use -> block hash.
    order: BTreeMap<u64, Hash32>,
    bytes: usize,
    clock: u64,
}

fn entry_bytes(txids: &[Hash32]) -> usize {
    txids.len() * 32 + ENTRY_OVERHEAD
}

impl Lru {
    fn get(&mut self, hash: &Hash32) -> Option<BlockTxids> {
        self.clock += 1;
        let (txids, used) = self.map.get_mut(hash)?;
        self.order.remove(used);
        *used = self.clock;
        self.order.insert(self.clock, *hash);
        Some(txids.clone())
    }

    fn insert(&mut self, hash: Hash32, txids: BlockTxids, capacity: usize) {
        if let Some((old, used)) = self.map.remove(&hash) {
            self.order.remove(&used);
            self.bytes -= entry_bytes(&old);
        }
        let bytes = entry_bytes(&txids);
        if bytes > capacity {
            return;
        }
        self.clock += 1;
        self.bytes += bytes;
        self.map.insert(hash, (txids, self.clock));
        self.order.insert(self.clock, hash);
        self.evict(capacity);
    }

    fn evict(&mut self, capacity: usize) {
        while self.bytes > capacity {
            let Some((_, hash)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&hash) {
                self.bytes -= entry_bytes(&old);
            }
        }
    }
}

/// Where the query functions get txids: [`Txids`] in either mode, or [`StoreTxids`].
pub trait TxidSource: Sync {
    /// The txids of `txnums`, in their order.
    fn txids(&self, snap: &Snapshot, txnums: &[u64]) -> Result<Vec<Hash32>>;
}

/// A full index's own txids (a lean index has none: its lookups fail).
pub struct StoreTxids;

impl TxidSource for StoreTxids {
    fn txids(&self, snap: &Snapshot, txnums: &[u64]) -> Result<Vec<Hash32>> {
        Ok(snap.txids(txnums)?)
    }
}

/// [`Txids`] for one session's request: each lookup reports how many blocks it is about to
/// ask the node for (those not in the cache) to `on_fetch` before asking, so that a request
/// that fails or times out has still paid for them.
pub struct Charged<'a> {
    txids: &'a Txids,
    on_fetch: &'a (dyn Fn(usize) + Sync),
}

impl Charged<'_> {
    /// As [`Txids::txids`].
    pub fn txids(&self, snap: &Snapshot, txnums: &[u64]) -> Result<Vec<Hash32>> {
        self.txids.lookup(snap, txnums, self.on_fetch)
    }

    /// The txids of the block at `height`, in block order.
    pub fn block(&self, snap: &Snapshot, height: u32) -> Result<BlockTxids> {
        self.txids.block_of(snap, height, self.on_fetch)
    }
}

impl TxidSource for Charged<'_> {
    fn txids(&self, snap: &Snapshot, txnums: &[u64]) -> Result<Vec<Hash32>> {
        Charged::txids(self, snap, txnums)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Txids for the protocol methods, whatever the index mode.
///
/// In a lean index a lookup that misses the cache waits for the node with
/// `Handle::block_on`: call it only from the blocking pool (`spawn_blocking`), never from an
/// async task, where that call panics.
pub struct Txids {
    node: Arc<dyn Node>,
    cache: Mutex<Lru>,
    capacity: AtomicUsize,
    /// Blocks being fetched: concurrent lookups of one block wait for one fetch.
    inflight: Mutex<HashMap<Hash32, Arc<OnceCell<BlockTxids>>>>,
    fetch_timeout: Duration,
    lookups: AtomicU64,
    hits: AtomicU64,
}

impl Txids {
    /// Lean lookups ask `node`, keeping up to `cache_bytes` of txid lists.
    pub fn new(node: Arc<dyn Node>, cache_bytes: usize) -> Txids {
        Txids {
            node,
            cache: Mutex::default(),
            capacity: AtomicUsize::new(cache_bytes),
            inflight: Mutex::default(),
            fetch_timeout: FETCH_TIMEOUT,
            lookups: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// Sets the cache's bound, evicting what no longer fits.
    pub fn set_cache_bytes(&self, bytes: usize) {
        self.capacity.store(bytes, Ordering::Relaxed);
        lock(&self.cache).evict(bytes);
    }

    /// (block lookups, cache hits, blocks held), for the local RPC's `getinfo`.
    pub fn stats(&self) -> (u64, u64, usize) {
        let held = lock(&self.cache).map.len();
        (
            self.lookups.load(Ordering::Relaxed),
            self.hits.load(Ordering::Relaxed),
            held,
        )
    }

    /// Lookups that tell `on_fetch` how many blocks they fetch from the node.
    pub fn charged<'a>(&'a self, on_fetch: &'a (dyn Fn(usize) + Sync)) -> Charged<'a> {
        Charged {
            txids: self,
            on_fetch,
        }
    }

    /// The txids of `txnums`, in their order (fetches charged to no one: see [`Txids::charged`]).
    pub fn txids(&self, snap: &Snapshot, txnums: &[u64]) -> Result<Vec<Hash32>> {
        self.lookup(snap, txnums, &|_| {})
    }

    fn lookup(
        &self,
        snap: &Snapshot,
        txnums: &[u64],
        on_fetch: &dyn Fn(usize),
    ) -> Result<Vec<Hash32>> {
        if snap.stores_txids() {
            return Ok(snap.txids(txnums)?);
        }
        let heights = snap.tx_heights(txnums)?;
        // Where each block's transactions go in the answer: a block's txid list is let go
        // as soon as they are copied out (a long history may span thousands of blocks).
        let mut slots: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, &height) in heights.iter().enumerate() {
            slots.entry(height).or_default().push(i);
        }
        let mut out = vec![[0u8; 32]; txnums.len()];
        let mut distinct = heights;
        distinct.dedup();
        self.for_each_block(snap, distinct, on_fetch, |height, start, txids| {
            for &i in slots.get(&height).map_or(&[][..], Vec::as_slice) {
                let txnum = txnums[i];
                let txid = txnum
                    .checked_sub(start)
                    .and_then(|at| txids.get(at as usize))
                    .ok_or_else(|| {
                        ferrum_storage::Error::Invalid(format!(
                            "tx number {txnum} is not in the block at height {height}"
                        ))
                    })?;
                out[i] = *txid;
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn block_of(
        &self,
        snap: &Snapshot,
        height: u32,
        on_fetch: &dyn Fn(usize),
    ) -> Result<BlockTxids> {
        if snap.stores_txids() {
            let range = snap.block_txs(height)?;
            return Ok(snap.txids(&range.collect::<Vec<_>>())?.into());
        }
        let mut found = None;
        self.for_each_block(snap, [height], on_fetch, |_, _, txids| {
            found = Some(txids.clone());
            Ok(())
        })?;
        found.ok_or_else(|| {
            TxidError::Store(ferrum_storage::Error::Invalid(format!(
                "no txids for the block at height {height}"
            )))
        })
    }

    /// Calls `f` with each block of `heights` (a lean index; repeats skipped): its height,
    /// first tx number and txids. Cached blocks come first, then the others as they arrive;
    /// `on_fetch` is told how many those are before they are asked for.
    fn for_each_block(
        &self,
        snap: &Snapshot,
        heights: impl IntoIterator<Item = u32>,
        on_fetch: &dyn Fn(usize),
        mut f: impl FnMut(u32, u64, &BlockTxids) -> Result<()>,
    ) -> Result<()> {
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        for height in heights {
            if !seen.insert(height) {
                continue;
            }
            let hash = header_hash(&snap.header(height)?);
            let range = snap.block_txs(height)?;
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let cached = lock(&self.cache).get(&hash);
            if let Some(txids) = cached {
                self.hits.fetch_add(1, Ordering::Relaxed);
                f(height, range.start, &txids)?;
                continue;
            }
            missing.push(Wanted {
                height,
                hash: BlockHash::from_byte_array(hash),
                start: range.start,
                tx_count: range.end - range.start,
            });
        }
        if missing.is_empty() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TxidError::NoRuntime)?;
        on_fetch(missing.len());
        runtime.block_on(async {
            let mut fetched = stream::iter(missing)
                .map(|wanted| async move {
                    let fetched = tokio::time::timeout(self.fetch_timeout, self.fetch(wanted));
                    let txids = fetched.await.map_err(|_| TxidError::Node {
                        height: wanted.height,
                        hash: wanted.hash,
                        error: daemon::Error::Unavailable(format!(
                            "no answer in {:?}",
                            self.fetch_timeout
                        )),
                    })??;
                    Ok::<_, TxidError>((wanted, txids))
                })
                .buffer_unordered(MAX_CONCURRENT_FETCHES);
            while let Some(result) = fetched.next().await {
                let (wanted, txids) = result?;
                f(wanted.height, wanted.start, &txids)?;
            }
            Ok(())
        })
    }

    /// One block's txids, from the cache, a fetch under way, or a new fetch.
    async fn fetch(&self, wanted: Wanted) -> Result<BlockTxids> {
        let key = wanted.hash.to_byte_array();
        let cell = lock(&self.inflight).entry(key).or_default().clone();
        let result = cell
            .get_or_try_init(|| async {
                if let Some(txids) = lock(&self.cache).get(&key) {
                    return Ok(txids);
                }
                let raw = self
                    .node
                    .block(&wanted.hash)
                    .await
                    .map_err(|error| TxidError::Node {
                        height: wanted.height,
                        hash: wanted.hash,
                        error,
                    })?;
                let txids: BlockTxids = checked_txids(&raw, &wanted)?.into();
                let capacity = self.capacity.load(Ordering::Relaxed);
                lock(&self.cache).insert(key, txids.clone(), capacity);
                Ok(txids)
            })
            .await
            .cloned();
        let mut inflight = lock(&self.inflight);
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        result
    }
}

/// The txids of the serialized block `raw`, which must be the block `wanted` names (its
/// hash), hold the transactions its header commits to (merkle root) and as many as the index
/// counts (a duplicated last transaction keeps the root but not the count).
fn checked_txids(raw: &[u8], wanted: &Wanted) -> Result<Vec<Hash32>> {
    let bad = |reason: String| TxidError::BadBlock {
        height: wanted.height,
        hash: wanted.hash,
        reason,
    };
    let (header, txids) = scan::block_txids(raw).map_err(|e| bad(format!("malformed: {e}")))?;
    let got = BlockHash::from_byte_array(header_hash(&header));
    if got != wanted.hash {
        return Err(bad(format!("the node sent block {got} instead")));
    }
    let root =
        bitcoin::merkle_tree::calculate_root(txids.iter().map(|t| Txid::from_byte_array(*t)));
    if root.map(|r| r.to_byte_array()).as_ref().map(|r| &r[..]) != Some(&header[36..68]) {
        return Err(bad("its transactions do not match its merkle root".into()));
    }
    if txids.len() as u64 != wanted.tx_count {
        return Err(bad(format!(
            "it has {} transactions, the index {}",
            txids.len(),
            wanted.tx_count
        )));
    }
    Ok(txids)
}

/// Its chain fixture serves the methods' tests too.
#[cfg(test)]
pub(crate) mod tests;
