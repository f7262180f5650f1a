//! The block processor: keeps the store in step with the node's best chain (initial sync
//! through the prefetcher, then following the tip by polling), handles reorganisations within
//! REORG_LIMIT, and tells the protocol layer about new tips through an [`IndexerHandle`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use ferrum_storage::{BlockData, Hash32, HashX, Options, Snapshot, Store};
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

use crate::blocks::parse_block;
use crate::coin::Network;
use crate::config::IndexMode;
use crate::daemon::{self, Daemon};
use crate::fetch::{FetchError, FetchSettings, Fetched, Prefetcher};
use crate::merkle::snapshot_tip;

/// Blocks handed to the store in one blocking call, at most.
const APPLY_BATCH_BLOCKS: usize = 64;
const APPLY_BATCH_BYTES: usize = 16 << 20;
/// Share of `CACHE_MB` that blocks fetched and parsed ahead of the store may take, at most
/// `FetchSettings::prefetch_bytes`; the store's buffers get the rest.
const PREFETCH_SHARE_DIVISOR: usize = 8;
/// Heights compared per `getblockhash` batch while looking for a fork point.
const FORK_SEARCH_BATCH: u32 = 100;
/// Blocks a lean index's rollback fetches and undoes per store rollback (each committed), so
/// that what it holds of them (their spent txids) stays bounded.
const LEAN_ROLLBACK_CHUNK: u32 = 100;
/// Blocks a lean rollback fetches from the node at once.
const LEAN_ROLLBACK_FETCHES: usize = 4;
/// Consecutive failures to fetch or apply the same height before the indexer stops.
const MAX_ATTEMPTS: u32 = 3;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct IndexerSettings {
    /// `CACHE_MB`: commit when uncommitted work holds more than this many MiB.
    pub cache_mb: usize,
    /// `REORG_LIMIT`: the deepest reorganisation handled (undo records are kept this deep).
    pub reorg_limit: u32,
    /// `DAEMON_POLL_INTERVAL_BLOCKS`: how often the node is asked for its best block.
    pub poll_interval: Duration,
    /// Signalled when the node announces a block (ZMQ): poll at once.
    pub new_block: Arc<Notify>,
    pub fetch: FetchSettings,
}

impl IndexerSettings {
    /// ElectrumX's defaults for `network`.
    pub fn new(network: &Network) -> IndexerSettings {
        IndexerSettings {
            cache_mb: 1200,
            reorg_limit: network.reorg_limit,
            poll_interval: Duration::from_millis(1000),
            new_block: Arc::new(Notify::new()),
            fetch: FetchSettings::default(),
        }
    }
}

/// The last committed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tip {
    pub height: u32,
    pub hash: BlockHash,
}

impl Tip {
    /// The snapshot's tip (None for an empty store).
    fn of(snap: &Snapshot) -> Result<Option<Tip>> {
        Ok(snapshot_tip(snap)?.map(|(height, hash)| Tip {
            height,
            hash: BlockHash::from_byte_array(hash),
        }))
    }
}

/// A new committed tip once caught up, with the scripts whose history changed since the last
/// one (None when unknown, e.g. after a reorganisation: check every subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub tip: Option<Tip>,
    pub touched: Option<Arc<HashSet<HashX>>>,
}

#[derive(Debug)]
pub enum IndexError {
    Daemon(daemon::Error),
    Store(ferrum_storage::Error),
    /// DB_DIRECTORY holds an index of something else.
    WrongDatabase(String),
    /// The node's chain forked from ours deeper than REORG_LIMIT; the index is unchanged.
    ReorgTooDeep(String),
    /// The node kept sending a block we cannot index.
    BadBlock(String),
    /// A request the indexer cannot carry out (e.g. rolling back more than REORG_LIMIT).
    Invalid(String),
    /// The indexer is no longer running.
    Stopped,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Daemon(e) => write!(f, "node: {e}"),
            IndexError::Store(e) => write!(f, "store: {e}"),
            IndexError::WrongDatabase(m)
            | IndexError::ReorgTooDeep(m)
            | IndexError::BadBlock(m)
            | IndexError::Invalid(m) => f.write_str(m),
            IndexError::Stopped => f.write_str("the indexer has stopped"),
        }
    }
}

impl std::error::Error for IndexError {}

impl From<daemon::Error> for IndexError {
    fn from(e: daemon::Error) -> Self {
        IndexError::Daemon(e)
    }
}

impl From<ferrum_storage::Error> for IndexError {
    fn from(e: ferrum_storage::Error) -> Self {
        IndexError::Store(e)
    }
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Opens (or creates) the full index in `dir` for `network`: see [`open_store_as`].
pub fn open_store(
    dir: &Path,
    network: &Network,
    reorg_limit: u32,
    cache_mb: usize,
) -> Result<Store> {
    open_store_as(dir, network, reorg_limit, cache_mb, IndexMode::Full)
}

/// Opens (or creates) the index in `dir` for `network` in `mode`, keeping undo records for
/// `reorg_limit` blocks. An index of another network, or built in the other mode, is refused
/// with a message saying so. Merges run after commits, when the cache is empty, so they may
/// use a quarter of `cache_mb` (at least the store's default): pruning the txid index takes
/// a bit per transaction, 150 MB at mainnet's 1.2 billion.
pub fn open_store_as(
    dir: &Path,
    network: &Network,
    reorg_limit: u32,
    cache_mb: usize,
    mode: IndexMode,
) -> Result<Store> {
    let default = Options::default();
    let options = Options {
        undo_blocks: reorg_limit,
        compaction_memory: default
            .compaction_memory
            .max(cache_mb.saturating_mul(1 << 18)),
        store_txids: mode.stores_txids(),
        ..default
    };
    // The mode a store with blocks was built in, refused in INDEX_MODE's terms.
    let built = ferrum_storage::built_with_txids(dir)?.map(|txids| {
        if txids {
            IndexMode::Full
        } else {
            IndexMode::Lean
        }
    });
    if let Some(built) = built.filter(|&built| built != mode) {
        return Err(IndexError::WrongDatabase(format!(
            "DB_DIRECTORY {} holds an index built with INDEX_MODE={built}, not {mode}: set \
             INDEX_MODE={built}, or delete the directory and resync",
            dir.display()
        )));
    }
    let mut store = Store::open(dir, options)?;
    let snap = store.snapshot();
    let name = network.db_name();
    let genesis = network.genesis();
    match snap.meta("network") {
        Some(found) if found == name.as_bytes() => {}
        // No block yet (a start against the wrong node, say): nothing to protect, so the
        // operator need not delete the directory to start again with the right COIN/NET.
        found if snap.height().is_none() => {
            if let Some(found) = found {
                info!(
                    "DB_DIRECTORY {} holds no blocks yet: it now indexes {name}, not {}",
                    dir.display(),
                    String::from_utf8_lossy(&found)
                );
            }
            store.set_meta("network", name.as_bytes());
            store.set_meta("genesis", genesis.as_byte_array());
            store.commit()?;
        }
        Some(found) => {
            return Err(IndexError::WrongDatabase(format!(
                "DB_DIRECTORY {} holds an index of {}, not {name}: use another DB_DIRECTORY or set \
                 COIN/NET to match",
                dir.display(),
                String::from_utf8_lossy(&found)
            )))
        }
        None => {
            return Err(IndexError::WrongDatabase(format!(
                "DB_DIRECTORY {} holds blocks but no network name, so it was not written by \
                 Ferrum's indexer: use an empty DB_DIRECTORY",
                dir.display()
            )))
        }
    }
    let snap = store.snapshot();
    let recorded = snap.meta("genesis");
    if recorded.as_deref() != Some(genesis.as_byte_array().as_slice()) {
        return Err(IndexError::WrongDatabase(format!(
            "DB_DIRECTORY {} is an index of a {name} chain whose genesis block is not {genesis}: \
             use another DB_DIRECTORY",
            dir.display()
        )));
    }
    if snap.height().is_some() && header_hash(&snap.header(0)?) != genesis {
        return Err(IndexError::WrongDatabase(format!(
            "DB_DIRECTORY {}: its block 0 is not the {name} genesis block {genesis}",
            dir.display()
        )));
    }
    Ok(store)
}

/// Scripts whose history `blocks` change: those of their outputs and of the outputs they
/// spend (looked up in `snap`, or among earlier outputs of the same blocks).
fn touched_scripts<'a>(
    snap: &Snapshot,
    blocks: impl Iterator<Item = &'a BlockData> + Clone,
) -> ferrum_storage::Result<HashSet<HashX>> {
    let mut touched = HashSet::new();
    let mut created: HashMap<(Hash32, u32), HashX> = HashMap::new();
    for tx in blocks.clone().flat_map(|b| &b.txs) {
        for (vout, out) in tx.outputs.iter().enumerate() {
            if let Some((hashx, _)) = out {
                touched.insert(*hashx);
                created.insert((tx.txid, vout as u32), *hashx);
            }
        }
    }
    for (txid, vout) in blocks.flat_map(|b| &b.txs).flat_map(|tx| &tx.spends) {
        if created.contains_key(&(*txid, *vout)) {
            continue;
        }
        if let Some((hashx, _)) = snap.unspent(txid, *vout)? {
            touched.insert(hashx);
        }
    }
    Ok(touched)
}

fn header_hash(header: &[u8; 80]) -> BlockHash {
    BlockHash::from_byte_array(bitcoin::hashes::sha256d::Hash::hash(header).to_byte_array())
}

enum Command {
    Rollback {
        blocks: u32,
        reply: oneshot::Sender<Result<Option<u32>>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// What the rest of the server holds to follow the indexer and steer it.
#[derive(Clone)]
pub struct IndexerHandle {
    tip: watch::Receiver<Option<Tip>>,
    changes: broadcast::Sender<Arc<Change>>,
    caught_up: watch::Receiver<bool>,
    commands: mpsc::Sender<Command>,
}

impl IndexerHandle {
    /// Changes whenever a new tip is committed (None while the index is empty).
    pub fn tip(&self) -> watch::Receiver<Option<Tip>> {
        self.tip.clone()
    }

    /// Every new tip committed after initial sync, with the scripts it touched. A receiver
    /// that lags loses changes (`RecvError::Lagged`) and should then check everything.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    pub fn current_tip(&self) -> Option<Tip> {
        *self.tip.borrow()
    }

    /// Becomes true once initial sync has reached the node's tip (and stays true).
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.caught_up.clone()
    }

    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Rolls the index back `blocks` blocks (the admin `reorg` command); the indexer then
    /// syncs forward again. Returns the height after the rollback.
    pub async fn force_rollback(&self, blocks: u32) -> Result<Option<u32>> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Rollback { blocks, reply })
            .await
            .map_err(|_| IndexError::Stopped)?;
        answer.await.map_err(|_| IndexError::Stopped)?
    }

    /// Commits what is applied and makes [`Indexer::run`] return.
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Outcome of one pass of the main loop.
enum Step {
    /// More may be done at once.
    Busy,
    /// Caught up: wait for the next poll.
    Idle,
    Stop(oneshot::Sender<()>),
}

/// Throughput bookkeeping for progress lines.
struct Progress {
    started: Instant,
    start_height: Option<u32>,
    txs: u64,
    last_log: Instant,
}

pub struct Indexer {
    /// None only while lent to a blocking task.
    store: Option<Store>,
    daemon: Arc<Daemon>,
    network: &'static Network,
    settings: IndexerSettings,
    /// Last applied block (committed or not).
    applied: Option<Tip>,
    /// Blocks were applied since the last commit.
    uncommitted: bool,
    tip_tx: watch::Sender<Option<Tip>>,
    changes: broadcast::Sender<Arc<Change>>,
    /// Scripts touched by blocks committed at the tip since the last change was sent; None
    /// when unknown (blocks were rolled back).
    touched: Option<HashSet<HashX>>,
    caught_up_tx: watch::Sender<bool>,
    commands: mpsc::Receiver<Command>,
    /// A command that arrived mid-sync, run by the main loop next.
    deferred: Option<Command>,
    progress: Progress,
}

impl Indexer {
    pub fn new(
        store: Store,
        daemon: Arc<Daemon>,
        network: &'static Network,
        settings: IndexerSettings,
    ) -> Result<(Indexer, IndexerHandle)> {
        let applied = Tip::of(&store.snapshot())?;
        let (tip_tx, tip) = watch::channel(applied);
        let (changes, _) = broadcast::channel(64);
        let (caught_up_tx, caught_up) = watch::channel(false);
        let (commands_tx, commands) = mpsc::channel(8);
        let now = Instant::now();
        let indexer = Indexer {
            store: Some(store),
            daemon,
            network,
            settings,
            applied,
            uncommitted: false,
            tip_tx,
            changes: changes.clone(),
            touched: Some(HashSet::new()),
            caught_up_tx,
            commands,
            deferred: None,
            progress: Progress {
                started: now,
                start_height: applied.map(|t| t.height),
                txs: 0,
                last_log: now,
            },
        };
        let handle = IndexerHandle {
            tip,
            changes,
            caught_up,
            commands: commands_tx,
        };
        Ok((indexer, handle))
    }

    /// Checks the node, then indexes until stopped or until an error it cannot get past.
    /// Whatever happens, the store holds only whole blocks.
    pub async fn run(mut self) -> Result<()> {
        let result = match self.main_loop().await {
            // Shutting down while waiting on the node: as good as a stop command.
            Err(IndexError::Daemon(daemon::Error::Stopped)) => {
                info!("the node client is stopped: the indexer stops");
                self.stop_here().await
            }
            result => result,
        };
        if let Err(e) = &result {
            warn!("indexer stopping: {e}");
            // Blocks applied before the failure are sound: keep them.
            if self.store.is_some() {
                if let Err(commit_error) = self.commit().await {
                    warn!("could not commit before stopping: {commit_error}");
                }
            }
        }
        result
    }

    /// Commits what is applied, for a clean stop.
    async fn stop_here(&mut self) -> Result<()> {
        self.commit().await?;
        info!("indexer stopped at height {}", fmt_height(self.applied));
        Ok(())
    }

    async fn main_loop(&mut self) -> Result<()> {
        let node = self.daemon.check().await?;
        // Time spent waiting for the node is no sync time: rates and ETAs count from here.
        let now = Instant::now();
        (self.progress.started, self.progress.last_log) = (now, now);
        self.log_startup();
        if let (Some(prune_height), false) = (node.prune_height, self.stores_txids()) {
            return Err(IndexError::Daemon(daemon::Error::Config(format!(
                "INDEX_MODE=lean asks the node for blocks whenever a query needs their txids, \
                 but the node is pruned (no blocks below height {prune_height}): remove prune= \
                 from bitcoin.conf, or use INDEX_MODE=full"
            ))));
        }
        if let Some(prune_height) = node.prune_height {
            let next = self.next_height();
            if prune_height > next {
                return Err(IndexError::Daemon(daemon::Error::Config(format!(
                    "the node is pruned and has no blocks below height {prune_height}, but the \
                     index needs them from height {next}: remove prune= from bitcoin.conf and \
                     let the node download the chain again"
                ))));
            }
        }
        let mut failures = 0u32;
        // What failed last: a block's height, or Some(None) for any other node error.
        let mut failing_height: Option<Option<u32>> = None;
        let mut last_message = String::new();
        loop {
            let step = match self.deferred.take() {
                Some(command) => self.run_command(command).await,
                None => self.step().await,
            };
            match step {
                Ok(Step::Busy) => (failures, failing_height) = (0, None),
                Ok(Step::Idle) => {
                    (failures, failing_height) = (0, None);
                    self.wait_for_poll().await;
                }
                Ok(Step::Stop(reply)) => {
                    self.stop_here().await?;
                    let _ = reply.send(());
                    return Ok(());
                }
                Err(Transient {
                    height: None,
                    message,
                }) => {
                    // The node answered a call with an error (e.g. mid-reorg): keep asking,
                    // logging each new complaint once.
                    failures = 0;
                    if failing_height != Some(None) || last_message != message {
                        warn!("{message}; retrying");
                    }
                    failing_height = Some(None);
                    last_message = message;
                    tokio::time::sleep(self.settings.poll_interval).await;
                }
                Err(Transient {
                    height: Some(height),
                    message,
                }) => {
                    // A block the node keeps sending wrong, or lacks: stop after a few tries.
                    failures = if failing_height == Some(Some(height)) {
                        failures + 1
                    } else {
                        1
                    };
                    failing_height = Some(Some(height));
                    if failures >= MAX_ATTEMPTS {
                        return Err(IndexError::BadBlock(format!(
                            "{message} ({failures} attempts); the index stays at height {}",
                            fmt_height(self.applied)
                        )));
                    }
                    warn!("{message}; retrying");
                    tokio::time::sleep(self.settings.poll_interval).await;
                }
                Err(Fatal(e)) => return Err(e),
            }
        }
    }

    /// Sleeps one poll interval, waking early for a command or a block announced by the node.
    async fn wait_for_poll(&mut self) {
        tokio::select! {
            _ = tokio::time::sleep(self.settings.poll_interval) => {}
            _ = self.settings.new_block.notified() => {}
            command = self.commands.recv() => {
                // All handles gone: nobody can stop us, so stop now.
                self.deferred = Some(command.unwrap_or(Command::Stop { reply: oneshot::channel().0 }));
            }
        }
    }

    async fn run_command(&mut self, command: Command) -> std::result::Result<Step, StepError> {
        match command {
            Command::Stop { reply } => Ok(Step::Stop(reply)),
            Command::Rollback { blocks, reply } => match self.forced_rollback(blocks).await {
                Err(IndexError::Store(e)) => {
                    let message = format!("rollback failed: {e}");
                    let _ = reply.send(Err(IndexError::Invalid(message)));
                    Err(Fatal(IndexError::Store(e)))
                }
                result => {
                    let _ = reply.send(result);
                    Ok(Step::Busy)
                }
            },
        }
    }

    /// One pass: compare with the node, then reorganise, sync forward, or report idle.
    async fn step(&mut self) -> std::result::Result<Step, StepError> {
        let best = self
            .daemon
            .best_block_hash()
            .await
            .map_err(StepError::daemon)?;
        if self.applied.map(|t| t.hash) == Some(best) {
            if !self.is_caught_up() && self.synced_most_of_the_index() {
                self.compact_all().await.map_err(Fatal)?;
            }
            self.reached_tip();
            self.install_finished_merges().await.map_err(Fatal)?;
            return Ok(Step::Idle);
        }
        let node_height = self.daemon.block_count().await.map_err(StepError::daemon)?;
        // Our side of the comparison is read from the committed snapshot.
        self.commit().await.map_err(Fatal)?;
        if let Some(tip) = self.applied {
            let at = tip.height.min(node_height);
            let node_hash = self
                .daemon
                .block_hash(at)
                .await
                .map_err(StepError::daemon)?;
            if node_hash != self.stored_hash(at).map_err(Fatal)? {
                self.reorg(tip, node_height).await?;
                return Ok(Step::Busy);
            }
            if tip.height >= node_height {
                // The node is behind us (e.g. reindexing); wait for it.
                self.reached_tip();
                return Ok(Step::Idle);
            }
        }
        self.sync(node_height).await
    }

    /// Fetches and applies blocks up to `node_height`, stopping early at a block that does not
    /// extend our tip (the next step then looks for the fork) or at a command.
    async fn sync(&mut self, node_height: u32) -> std::result::Result<Step, StepError> {
        let from = self.next_height();
        let fetch = FetchSettings {
            prefetch_bytes: prefetch_share(&self.settings),
            ..self.settings.fetch.clone()
        };
        let mut fetcher = Prefetcher::start(self.daemon.clone(), from, node_height, &fetch);
        // Not when the index is already at the node's height (a restart with nothing new).
        if !self.is_caught_up() && from <= node_height {
            info!("catching up to daemon height {node_height} from height {from}");
        }
        loop {
            if let Ok(command) = self.commands.try_recv() {
                self.deferred = Some(command);
                break;
            }
            let Some(first) = fetcher.next().await else {
                break;
            };
            let mut failure = None;
            let mut batch = Vec::new();
            match first {
                Ok(f) => batch.push(f),
                Err(e) => failure = Some(e),
            }
            let mut bytes = batch.first().map_or(0, |f| f.block.size);
            while failure.is_none() && batch.len() < APPLY_BATCH_BLOCKS && bytes < APPLY_BATCH_BYTES
            {
                match fetcher.next_ready().await {
                    None => break,
                    Some(Ok(f)) => {
                        bytes += f.block.size;
                        batch.push(f);
                    }
                    Some(Err(e)) => failure = Some(e),
                }
            }
            let linked = self.linked_prefix(&batch);
            let broken = linked < batch.len();
            if broken {
                let b = &batch[linked].block;
                info!(
                    "block {} at height {} does not extend our tip: checking for a reorganisation",
                    b.hash, b.height
                );
                batch.truncate(linked);
            }
            self.apply(batch, node_height).await?;
            if let Some(e) = failure {
                return Err(StepError::fetch(e));
            }
            if broken {
                return Ok(Step::Busy);
            }
        }
        drop(fetcher);
        self.commit().await.map_err(Fatal)?;
        Ok(Step::Busy)
    }

    /// How many blocks at the front of `batch` chain onto our tip.
    fn linked_prefix(&self, batch: &[Fetched]) -> usize {
        let mut prev = self.applied.map(|t| t.hash);
        for (i, f) in batch.iter().enumerate() {
            let links = match prev {
                None => f.block.height == 0,
                Some(p) => f.block.prev_hash == p,
            };
            if !links {
                return i;
            }
            prev = Some(f.block.hash);
        }
        batch.len()
    }

    /// Applies `batch` in one blocking call, committing as soon as the store's share of the
    /// cache is full (checked after each block) and at the tip.
    async fn apply(
        &mut self,
        batch: Vec<Fetched>,
        node_height: u32,
    ) -> std::result::Result<(), StepError> {
        let Some(last) = batch.last().map(|f| Tip {
            height: f.block.height,
            hash: f.block.hash,
        }) else {
            return Ok(());
        };
        let at_tip = self.is_caught_up();
        let budget = store_budget(&self.settings);
        let txs: u64 = batch.iter().map(|f| f.block.tx_count() as u64).sum();
        let started = Instant::now();
        let tips: Vec<Tip> = batch
            .iter()
            .map(|f| Tip {
                height: f.block.height,
                hash: f.block.hash,
            })
            .collect();
        let (applied, result, touched) = self
            .with_store(move |store| {
                // Only clients at the tip are told what changed; during sync nobody listens.
                let touched = match at_tip {
                    true => match touched_scripts(
                        &store.snapshot(),
                        batch.iter().map(|f| &f.block.data),
                    ) {
                        Ok(t) => Some(t),
                        Err(e) => return (0, Err(ApplyError::Block(e)), None),
                    },
                    false => None,
                };
                let mut flushed = None;
                for (i, f) in batch.iter().enumerate() {
                    if let Err(e) = store.apply_block(&f.block.data) {
                        return (i, Err(ApplyError::Block(e)), None);
                    }
                    let last = i + 1 == batch.len();
                    // At the tip, one commit per batch, so that one change names the whole
                    // batch's scripts; during sync, as soon as the cache is full.
                    let full = match at_tip {
                        true => last,
                        false => store.pending_bytes() > budget,
                    };
                    if !full {
                        continue;
                    }
                    let pending = store.pending_bytes();
                    let started = Instant::now();
                    // Each commit adds a run or segment per structure; merging right after,
                    // by the store's size-tiered policy, keeps lookups to a few files.
                    if let Err(e) = store.commit().and_then(|()| match at_tip {
                        true => store.compact_at_tip(),
                        false => store.compact(),
                    }) {
                        return (i + 1, Err(ApplyError::Store(e)), touched);
                    }
                    flushed = Some(Flushed {
                        bytes: pending,
                        took: started.elapsed(),
                        height: f.block.height,
                        all: last,
                    });
                }
                (batch.len(), Ok(flushed), touched)
            })
            .await
            .map_err(Fatal)?;
        if applied > 0 {
            self.applied = Some(tips[applied - 1]);
            self.uncommitted = true;
        }
        let flushed = match result {
            Ok(flushed) => flushed,
            Err(ApplyError::Block(e)) => {
                // Blocks before the bad one went in whole; run() commits them before stopping.
                let bad = tips[applied];
                return Err(Fatal(IndexError::BadBlock(format!(
                    "block {} at height {} cannot be indexed: {e}",
                    bad.hash, bad.height
                ))));
            }
            Err(ApplyError::Store(e)) => return Err(Fatal(IndexError::Store(e))),
        };
        if flushed.as_ref().is_some_and(|f| f.all) {
            self.uncommitted = false;
        }
        if let (Some(all), Some(new)) = (&mut self.touched, touched) {
            all.extend(new);
        }
        self.progress.txs += txs;
        if let Some(flushed) = flushed {
            self.publish();
            if at_tip {
                let blocks = match tips.len() {
                    1 => format!("block {}", last.hash),
                    n => format!("{n} blocks to {}", last.hash),
                };
                info!(
                    "indexed {blocks} at height {}: {txs} txs in {:.3}s",
                    last.height,
                    started.elapsed().as_secs_f64()
                );
            } else {
                info!(
                    "flushed {} MB at height {} in {:.1}s: {} txs in total",
                    flushed.bytes >> 20,
                    flushed.height,
                    flushed.took.as_secs_f64(),
                    self.store().snapshot().tx_count()
                );
            }
        }
        if !at_tip && self.progress.last_log.elapsed() >= PROGRESS_EVERY {
            self.log_progress(node_height);
        }
        Ok(())
    }

    /// Finds where the node's chain leaves ours and rolls back to it, within REORG_LIMIT.
    async fn reorg(&mut self, tip: Tip, node_height: u32) -> std::result::Result<(), StepError> {
        self.commit().await.map_err(Fatal)?;
        let limit = self.settings.reorg_limit;
        let mut top = tip.height.min(node_height);
        let fork = loop {
            let low = top.saturating_sub(FORK_SEARCH_BATCH - 1);
            let node_hashes = self
                .daemon
                .block_hashes(low..top + 1)
                .await
                .map_err(StepError::daemon)?;
            let mut found = None;
            for h in (low..=top).rev() {
                if node_hashes[(h - low) as usize] == self.stored_hash(h).map_err(Fatal)? {
                    found = Some(h);
                    break;
                }
            }
            if let Some(h) = found {
                break h;
            }
            if tip.height - low >= limit || low == 0 {
                return Err(Fatal(IndexError::ReorgTooDeep(format!(
                    "the node's chain forked from ours below height {low}, more than REORG_LIMIT \
                     ({limit}) blocks under our tip at height {}; the index is left unchanged at \
                     that height: rebuild it in an empty DB_DIRECTORY",
                    tip.height
                ))));
            }
            top = low - 1;
        };
        let depth = tip.height - fork;
        let covered = self.store().undo_covered();
        let forked = format!(
            "the node's chain forked from ours at height {fork}, {depth} blocks under our tip at \
             height {}",
            tip.height
        );
        if depth > limit {
            // The undo records may still reach the fork (REORG_LIMIT was lowered, or they
            // outlive it by up to 1/16): then a higher REORG_LIMIT follows the node.
            let remedy = match u64::from(depth) <= covered {
                true => format!(
                    "restart with REORG_LIMIT={depth} or more to follow the node's chain, or \
                     rebuild the index in an empty DB_DIRECTORY"
                ),
                false => "rebuild it in an empty DB_DIRECTORY".to_string(),
            };
            return Err(Fatal(IndexError::ReorgTooDeep(format!(
                "{forked}, more than REORG_LIMIT ({limit}); the index is left unchanged at that \
                 height: {remedy}"
            ))));
        }
        if u64::from(depth) > covered {
            return Err(Fatal(IndexError::ReorgTooDeep(format!(
                "{forked}, but undo records reach only {covered} blocks back (they were written \
                 under a lower REORG_LIMIT); the index is left unchanged at that height: rebuild \
                 it in an empty DB_DIRECTORY"
            ))));
        }
        warn!(
            "chain reorganisation: rolling back {depth} blocks from height {} to the fork point at height {fork}",
            tip.height
        );
        self.rollback(depth).await.map_err(Fatal)
    }

    async fn forced_rollback(&mut self, blocks: u32) -> Result<Option<u32>> {
        self.commit().await?;
        let Some(tip) = self.applied else {
            return Err(IndexError::Invalid(
                "the index is empty: nothing to roll back".into(),
            ));
        };
        if blocks > self.settings.reorg_limit {
            return Err(IndexError::Invalid(format!(
                "cannot roll back {blocks} blocks: REORG_LIMIT is {}",
                self.settings.reorg_limit
            )));
        }
        if blocks > tip.height {
            return Err(IndexError::Invalid(format!(
                "cannot roll back {blocks} blocks: the index is at height {}",
                tip.height
            )));
        }
        warn!(
            "rolling back {blocks} blocks from height {} (forced reorg)",
            tip.height
        );
        self.rollback(blocks).await?;
        Ok(self.applied.map(|t| t.height))
    }

    /// Undoes the last `blocks` blocks (the store commits the result). A lean index (no
    /// txids) cannot read the txids of the txs whose outputs become unspent again: it fetches
    /// the rolled-back blocks from the node for their spends, `LEAN_ROLLBACK_CHUNK` blocks
    /// per store rollback (a failure between chunks leaves a committed, consistent index
    /// that syncs forward again).
    async fn rollback(&mut self, blocks: u32) -> Result<()> {
        if blocks == 0 {
            return Ok(());
        }
        let (lean, chunk) = match self.stores_txids() {
            true => (false, blocks),
            false => (true, LEAN_ROLLBACK_CHUNK),
        };
        if lean {
            // The blocks it fetches are the committed ones (the store commits before a
            // rollback anyway).
            self.commit().await?;
        }
        let mut left = blocks;
        while left > 0 {
            let n = left.min(chunk);
            let spent = match lean {
                true => self.spent_txids_of_top(n).await?,
                false => Vec::new(),
            };
            let result = self
                .with_store(move |store| store.rollback(n, &spent))
                .await?;
            self.touched = None;
            self.applied = Tip::of(&self.store().snapshot())?;
            result?;
            left -= n;
        }
        Ok(())
    }

    /// The spent txids of the index's top `n` committed blocks, newest first, each block in
    /// input order, from the blocks the node still has (checked against the stored hashes
    /// and their merkle roots).
    async fn spent_txids_of_top(&self, n: u32) -> Result<Vec<Vec<Hash32>>> {
        let snap = self.store().snapshot();
        let Some(tip) = snap.height() else {
            return Ok(Vec::new());
        };
        let mut wanted = Vec::with_capacity(n as usize);
        for height in (tip + 1 - n.min(tip + 1)..=tip).rev() {
            wanted.push((height, header_hash(&snap.header(height)?)));
        }
        let daemon = Arc::clone(&self.daemon);
        stream::iter(wanted)
            .map(|(height, hash)| rolled_back_spends(Arc::clone(&daemon), height, hash))
            .buffered(LEAN_ROLLBACK_FETCHES)
            .try_collect()
            .await
    }

    /// Whether this run's catch-up wrote at least half of the index's transactions: then a
    /// full merge costs about what the sync did. A restart near the tip leaves the merging
    /// to `Store::compact`'s policies instead of rewriting a whole (mainnet-sized) index.
    fn synced_most_of_the_index(&self) -> bool {
        self.progress.txs.saturating_mul(2) >= self.store().snapshot().tx_count()
    }

    /// Merges the runs and segments that initial sync's flushes left into one per structure
    /// before serving: fewer files, no tombstones, each script's key stored once.
    async fn compact_all(&mut self) -> Result<()> {
        let started = Instant::now();
        if self.with_store(|store| store.compact_all()).await?? {
            info!(
                "compacted the index in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Installs a merge finished in the background now, not with the next block (minutes
    /// away on mainnet), so that the files it replaces stop taking disk space.
    async fn install_finished_merges(&mut self) -> Result<()> {
        if self.store().merge_done() {
            self.with_store(|store| store.compact_at_tip()).await??;
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        if self.uncommitted {
            self.with_store(|store| store.commit()).await??;
            self.uncommitted = false;
        }
        self.publish();
        Ok(())
    }

    /// Runs `f` on the store on the blocking pool (commits fsync; applying is CPU work).
    async fn with_store<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Store) -> T + Send + 'static,
    ) -> Result<T> {
        let mut store = self.store.take().ok_or(IndexError::Stopped)?;
        let (store, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut store);
            (store, out)
        })
        .await
        .map_err(|e| {
            IndexError::Store(ferrum_storage::Error::Invalid(format!(
                "store task failed: {e}"
            )))
        })?;
        self.store = Some(store);
        Ok(out)
    }

    /// Whether the index keeps txids (`INDEX_MODE=full`).
    fn stores_txids(&self) -> bool {
        self.store().snapshot().stores_txids()
    }

    fn store(&self) -> &Store {
        self.store
            .as_ref()
            .expect("store is only lent out during with_store")
    }

    fn stored_hash(&self, height: u32) -> Result<BlockHash> {
        Ok(header_hash(&self.store().snapshot().header(height)?))
    }

    fn next_height(&self) -> u32 {
        self.applied.map_or(0, |t| t.height + 1)
    }

    fn is_caught_up(&self) -> bool {
        *self.caught_up_tx.borrow()
    }

    /// Publishes the committed tip if it changed, and once caught up sends the change.
    fn publish(&mut self) {
        let tip = match Tip::of(&self.store().snapshot()) {
            Ok(tip) => tip,
            Err(e) => {
                warn!("cannot read the committed tip header: {e}");
                return;
            }
        };
        let changed = self.tip_tx.send_if_modified(|current| {
            let changed = *current != tip;
            *current = tip;
            changed
        });
        if changed && self.is_caught_up() {
            let touched = self.touched.replace(HashSet::new()).map(Arc::new);
            // No receiver is not an error: nobody is subscribed yet.
            let _ = self.changes.send(Arc::new(Change { tip, touched }));
        }
    }

    fn reached_tip(&mut self) {
        self.publish();
        if !self.is_caught_up() {
            let elapsed = self.progress.started.elapsed().as_secs_f64();
            info!(
                "caught up to height {}: {} txs indexed in {elapsed:.1}s",
                fmt_height(self.applied),
                self.progress.txs
            );
            self.caught_up_tx.send_replace(true);
            self.touched = Some(HashSet::new());
        }
    }

    fn log_startup(&self) {
        let snap = self.store().snapshot();
        info!("coin: {}, network: {}", self.network.coin, self.network.net);
        info!("height: {}", fmt_height(self.applied));
        info!(
            "tip: {}",
            self.applied.map_or_else(
                || BlockHash::all_zeros().to_string(),
                |t| t.hash.to_string()
            )
        );
        info!("tx count: {}", snap.tx_count());
        info!("reorg limit is {} blocks", self.settings.reorg_limit);
        info!("flushing index cache at {} MB", self.settings.cache_mb);
        info!("daemon at {}", self.daemon.current_url());
    }

    fn log_progress(&mut self, node_height: u32) {
        let now = Instant::now();
        let elapsed = now
            .duration_since(self.progress.started)
            .as_secs_f64()
            .max(1e-3);
        let height = self.applied.map_or(0, |t| t.height);
        let done = height.saturating_sub(self.progress.start_height.unwrap_or(0)) as f64;
        let remaining = node_height.saturating_sub(height) as f64;
        let eta = if done > 0.0 {
            remaining * elapsed / done
        } else {
            0.0
        };
        info!(
            "our height: {height} daemon: {node_height} cache {} MB, {:.0} tx/s, ETA {}",
            self.store().pending_bytes() >> 20,
            self.progress.txs as f64 / elapsed,
            fmt_duration(eta)
        );
        self.progress.last_log = now;
    }
}

/// A failed pass: transient ones (node hiccups, a bad block that may be re-sent) are retried a
/// few times; fatal ones stop the indexer.
enum StepError {
    /// `height` is the block concerned, if any: repeated failures on it stop the indexer.
    Transient {
        height: Option<u32>,
        message: String,
    },
    Fatal(IndexError),
}
use StepError::{Fatal, Transient};

impl StepError {
    fn daemon(e: daemon::Error) -> StepError {
        match e.is_final() {
            true => Fatal(IndexError::Daemon(e)),
            false => Transient {
                height: None,
                message: e.to_string(),
            },
        }
    }

    fn fetch(e: FetchError) -> StepError {
        match e {
            FetchError::Daemon { error, .. } if error.is_final() => {
                Fatal(IndexError::Daemon(error))
            }
            e => Transient {
                height: Some(e.height()),
                message: e.to_string(),
            },
        }
    }
}

fn fmt_height(tip: Option<Tip>) -> String {
    tip.map_or_else(|| "-1".to_string(), |t| t.height.to_string())
}

fn fmt_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    format!(
        "{}d {:02}h {:02}m {:02}s",
        s / 86400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// Bytes of blocks fetched ahead of the store: `CACHE_MB / 8`, at most the fetch setting.
fn prefetch_share(settings: &IndexerSettings) -> usize {
    settings
        .fetch
        .prefetch_bytes
        .min((settings.cache_mb << 20) / PREFETCH_SHARE_DIVISOR)
}

/// What the store's uncommitted buffers may hold before a commit: `CACHE_MB` less the
/// prefetch share.
fn store_budget(settings: &IndexerSettings) -> usize {
    (settings.cache_mb << 20) - prefetch_share(settings)
}

/// The spent txids, in input order, of block `hash` at `height`, which a lean rollback
/// undoes; the node must still have it.
async fn rolled_back_spends(
    daemon: Arc<Daemon>,
    height: u32,
    hash: BlockHash,
) -> Result<Vec<Hash32>> {
    let cannot = |why: String| {
        IndexError::Invalid(format!(
            "cannot roll back block {hash} at height {height}: {why}; a lean index \
             (INDEX_MODE=lean) reads the blocks it rolls back from the node, which must keep \
             them (bitcoind does, unless pruned): restore the block, or rebuild the index in an \
             empty DB_DIRECTORY"
        ))
    };
    let raw = daemon
        .block_raw(&hash)
        .await
        .map_err(|e| cannot(format!("the node cannot give it ({e})")))?;
    let parsed = tokio::task::spawn_blocking(move || parse_block(&raw, height, &hash))
        .await
        .map_err(|e| cannot(format!("block parse task failed: {e}")))?
        .map_err(|e| cannot(e.to_string()))?;
    Ok(parsed.data.spent_txids())
}

/// Why applying a batch stopped.
enum ApplyError {
    /// A block could not be applied (the blocks before it were).
    Block(ferrum_storage::Error),
    /// A commit or compaction failed.
    Store(ferrum_storage::Error),
}

/// The last commit made while applying a batch.
struct Flushed {
    bytes: usize,
    took: Duration,
    height: u32,
    /// It covered the whole batch.
    all: bool,
}
