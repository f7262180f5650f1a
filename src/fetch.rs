//! The block prefetcher: fetches block hashes in batches and blocks ahead of the indexer,
//! several at once, parsing each on the blocking pool, and hands them over in height order
//! with the bytes in flight bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bitcoin::BlockHash;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::blocks::{parse_block, BlockError, ParsedBlock};
use crate::daemon::{self, Daemon};

/// How far and how wide to fetch ahead.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// Bound on fetched-but-unindexed block bytes (by a running estimate of block sizes).
    pub prefetch_bytes: usize,
    /// Blocks downloaded at once.
    pub concurrency: usize,
    /// Heights per `getblockhash` batch.
    pub hash_batch: u32,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            prefetch_bytes: 64 << 20,
            concurrency: 4,
            hash_batch: 500,
        }
    }
}

/// Why a block could not be fetched.
#[derive(Debug)]
pub enum FetchError {
    Daemon { height: u32, error: daemon::Error },
    Block(BlockError),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Daemon { height, error } => {
                write!(f, "fetching block at height {height}: {error}")
            }
            FetchError::Block(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FetchError {}

impl FetchError {
    /// The height the failure is about.
    pub fn height(&self) -> u32 {
        match self {
            FetchError::Daemon { height, .. } => *height,
            FetchError::Block(BlockError::Malformed { height, .. })
            | FetchError::Block(BlockError::WrongHash { height, .. }) => *height,
        }
    }
}

/// A parsed block and its share of the prefetch budget, returned when it is dropped.
pub struct Fetched {
    pub block: ParsedBlock,
    _budget: OwnedSemaphorePermit,
}

/// A fetch in flight, with the height it is for.
type Pending = (u32, JoinHandle<Result<Fetched, FetchError>>);

/// Blocks `from..=to` in order. Dropping it cancels everything in flight.
pub struct Prefetcher {
    queue: mpsc::Receiver<Pending>,
    /// A handle taken off the queue by `next_ready` but not yet finished.
    peeked: VecDeque<Pending>,
    producer: JoinHandle<()>,
}

impl Prefetcher {
    pub fn start(daemon: Arc<Daemon>, from: u32, to: u32, settings: &FetchSettings) -> Prefetcher {
        let (tx, queue) = mpsc::channel(settings.concurrency.max(1) * 16);
        let producer = tokio::spawn(produce(daemon, from, to, settings.clone(), tx));
        Prefetcher {
            queue,
            peeked: VecDeque::new(),
            producer,
        }
    }

    /// The next block in height order; None after the last one.
    pub async fn next(&mut self) -> Option<Result<Fetched, FetchError>> {
        let pending = match self.peeked.pop_front() {
            Some(p) => p,
            None => self.queue.recv().await?,
        };
        Some(join(pending).await)
    }

    /// The next block if it is already fetched and parsed, without waiting.
    pub async fn next_ready(&mut self) -> Option<Result<Fetched, FetchError>> {
        if self.peeked.is_empty() {
            self.peeked.push_back(self.queue.try_recv().ok()?);
        }
        if !self.peeked.front()?.1.is_finished() {
            return None;
        }
        let pending = self.peeked.pop_front()?;
        Some(join(pending).await)
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.producer.abort();
        for (_, task) in self.peeked.drain(..) {
            task.abort();
        }
        while let Ok((_, task)) = self.queue.try_recv() {
            task.abort();
        }
    }
}

async fn join((height, task): Pending) -> Result<Fetched, FetchError> {
    match task.await {
        Ok(r) => r,
        // A fetch task only ends abnormally if it panicked: report it rather than propagate.
        Err(e) => Err(FetchError::Daemon {
            height,
            error: daemon::Error::Protocol(format!("block fetch task failed: {e}")),
        }),
    }
}

async fn produce(
    daemon: Arc<Daemon>,
    from: u32,
    to: u32,
    settings: FetchSettings,
    tx: mpsc::Sender<Pending>,
) {
    // Budget in KiB so that large budgets fit the semaphore's permit count.
    let budget_kib = (settings.prefetch_bytes >> 10).clamp(1, Semaphore::MAX_PERMITS) as u32;
    let budget = Arc::new(Semaphore::new(budget_kib as usize));
    let downloads = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let avg_size = Arc::new(AtomicUsize::new(0));
    let mut height = from;
    while height <= to {
        let count = settings.hash_batch.max(1).min(to - height + 1);
        let hashes = match daemon.block_hashes(height..height + count).await {
            Ok(h) => h,
            Err(error) => {
                let failed = tokio::spawn(async move { Err(FetchError::Daemon { height, error }) });
                let _ = tx.send((height, failed)).await;
                return;
            }
        };
        for (h, hash) in (height..).zip(hashes) {
            // Reserve this block's expected size, in order, so later blocks cannot starve it.
            let estimate = (avg_size.load(Ordering::Relaxed) >> 10).clamp(1, budget_kib as usize);
            let Ok(permit) = budget.clone().acquire_many_owned(estimate as u32).await else {
                return;
            };
            let task = tokio::spawn(fetch_one(
                daemon.clone(),
                h,
                hash,
                permit,
                downloads.clone(),
                avg_size.clone(),
            ));
            if tx.send((h, task)).await.is_err() {
                return; // the consumer is gone
            }
        }
        height += count;
    }
}

async fn fetch_one(
    daemon: Arc<Daemon>,
    height: u32,
    hash: BlockHash,
    budget: OwnedSemaphorePermit,
    downloads: Arc<Semaphore>,
    avg_size: Arc<AtomicUsize>,
) -> Result<Fetched, FetchError> {
    let raw = {
        let _slot = downloads.acquire().await.expect("semaphore never closed");
        daemon
            .block_raw(&hash)
            .await
            .map_err(|error| FetchError::Daemon { height, error })?
    };
    // Exponential moving average (1/8 weight) of block sizes, for the budget estimate.
    let old = avg_size.load(Ordering::Relaxed);
    let new = if old == 0 {
        raw.len()
    } else {
        old - old / 8 + raw.len() / 8
    };
    avg_size.store(new, Ordering::Relaxed);
    let block = tokio::task::spawn_blocking(move || parse_block(&raw, height, &hash))
        .await
        .map_err(|e| FetchError::Daemon {
            height,
            error: daemon::Error::Protocol(format!("block parse task failed: {e}")),
        })?
        .map_err(FetchError::Block)?;
    Ok(Fetched {
        block,
        _budget: budget,
    })
}
