//! `ferrum`: the server. Reads ElectrumX's environment variables, indexes the node's chain
//! into DB_DIRECTORY, mirrors the node's mempool, and serves Electrum wallets once the index
//! has caught up and the mempool is synced. The local RPC service answers from the start.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrum::coin::Network;
use ferrum::config::Config;
use ferrum::daemon::{Daemon, DaemonSettings};
use ferrum::electrum::Electrum;
use ferrum::indexer::{open_store_as, Indexer, IndexerHandle, IndexerSettings};
use ferrum::mempool::{self, Mempool};
use ferrum::merkle::snapshot_tip;
use ferrum::rlimit;
use ferrum::server::Server;
use ferrum_storage::{Hash32, HashX, Reader, Snapshot};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// How long a new tip's notification waits for the mempool to be read at that tip (the
/// node is a block ahead of the index) before it goes out with the block's changes alone.
const MAX_NOTIFY_DELAY: Duration = Duration::from_secs(10);
/// The least time between mempool reads prompted by broadcasts, so a stream of them cannot
/// keep the node busy listing its mempool.
const MIN_BROADCAST_REFRESH_GAP: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    // glibc serves big buffers from its heaps once a large free has raised its dynamic mmap
    // threshold, and keeps what they free: RSS during sync reached 3x CACHE_MB. A fixed 1 MiB
    // threshold maps every big buffer, so freeing one returns it (docs/BENCHMARKS.md, "Apply
    // path and memory"; capping arenas at 2 as well saved a little more memory for 13% CPU).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    if let Some(exit) = answer_arguments() {
        return exit;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ferrum: {}", e.0);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_max_level(config.log_level)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = fit_sessions_to_open_files(config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferrum: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "\
usage: ferrum

An Electrum server. Like ElectrumX it takes no arguments: it is configured by environment
variables. The main ones:
  DB_DIRECTORY   the index directory (required)
  DAEMON_URL     user:password@host[:port] of bitcoind's RPC, comma-separated for failover
                 (required; or DAEMON_COOKIE_FILE for the cookie)
  COIN, NET      Bitcoin, and mainnet, testnet, testnet4, signet or regtest
  SERVICES       e.g. tcp://:50001,ssl://:50002,rpc://127.0.0.1:8000
                 (ssl and wss also need SSL_CERTFILE and SSL_KEYFILE)
  CACHE_MB       memory for the index cache during sync (default 1200)
All of them, and the admin commands and log lines: docs/OPERATIONS.md.";

/// `--help` and `--version`: the exit to take, or None to run. Anything else is an error,
/// not silently ignored.
fn answer_arguments() -> Option<ExitCode> {
    let first = std::env::args_os().nth(1)?;
    match first.to_str() {
        Some("-h" | "--help") => println!("{USAGE}"),
        Some("-V" | "--version") => println!("ferrum {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!(
                "ferrum: unexpected argument {first:?}: ferrum takes no arguments; it is \
                 configured by environment variables (ferrum --help)"
            );
            return Some(ExitCode::from(2));
        }
    }
    Some(ExitCode::SUCCESS)
}

/// Raises the open-files limit and lowers MAX_SESSIONS to fit it, as ElectrumX does.
fn fit_sessions_to_open_files(mut config: Config) -> Config {
    match rlimit::raise_open_files_limit() {
        Ok(limit) => {
            let sane = rlimit::sane_max_sessions(config.max_sessions, limit);
            if sane < config.max_sessions {
                warn!(
                    "lowered maximum sessions from {} to {} because your open file limit is {}",
                    config.max_sessions, sane, limit
                );
                config.max_sessions = sane;
            }
        }
        Err(e) => warn!("{e}"),
    }
    config
}

async fn run(config: Config) -> Result<(), String> {
    // Registered first and kept for the whole run: a signal future re-created between phases
    // would drop a SIGTERM that arrives in the gap.
    let shutdown = shutdown_signal();
    let network =
        Network::lookup(&config.coin, Some(config.net.name())).map_err(|e| e.to_string())?;
    info!(
        "ferrum {} starting for {}",
        env!("CARGO_PKG_VERSION"),
        network.db_name()
    );

    let mut daemon_settings = DaemonSettings::new(vec![config.daemon_url.clone()]);
    daemon_settings.cookie_file = config.daemon_cookie_file.clone();
    let daemon = Arc::new(Daemon::new(&daemon_settings, network).map_err(|e| e.to_string())?);

    let reorg_limit = config.reorg_limit.unwrap_or(network.reorg_limit);
    let (db_dir, cache_mb) = (config.db_dir.clone(), config.cache_mb as usize);
    let mode = config.index_mode;
    info!("index mode: {mode}");
    let store = tokio::task::spawn_blocking(move || {
        open_store_as(&db_dir, network, reorg_limit, cache_mb, mode)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let reader = store.reader();

    let mut settings = IndexerSettings::new(network);
    settings.cache_mb = config.cache_mb as usize;
    settings.reorg_limit = reorg_limit;
    settings.poll_interval = config.daemon_poll_interval_blocks;
    settings.new_block = ferrum::zmq::spawn(config.daemon_zmq.clone(), daemon.clone());
    let (indexer, handle) =
        Indexer::new(store, daemon.clone(), network, settings).map_err(|e| e.to_string())?;

    let mempool = Arc::new(Mempool::new());
    let electrum = Electrum::new(reader.clone(), network, daemon.clone(), mempool.clone())
        .with_txid_cache_mb(config.txid_cache_mb as usize)
        .with_indexer(handle.clone());
    let (mempool_synced, synced) = watch::channel(false);
    let follower = Follower {
        electrum: electrum.clone(),
        handle: handle.clone(),
        mempool,
        daemon: daemon.clone(),
        reader,
        interval: config.daemon_poll_interval_mempool,
        synced: mempool_synced,
    };
    tokio::spawn(follower.run());
    let mut indexer_task = tokio::spawn(indexer.run());

    let server = Server::new(
        Arc::new(config),
        Arc::new(electrum.clone()),
        network.genesis_hash,
    )?;
    server.start_rpc().await?;

    tokio::pin!(shutdown);
    let wallets = serve_wallets_when_caught_up(&server, &electrum, &handle, synced);
    tokio::pin!(wallets);
    let mut serving = false;
    let outcome = loop {
        tokio::select! {
            _ = server.stop_requested() => break Ok(()),
            _ = &mut shutdown => break Ok(()),
            result = &mut indexer_task => break indexer_ended(result),
            result = &mut wallets, if !serving => match result {
                Ok(()) => serving = true,
                Err(e) => break Err(e),
            },
        }
    };
    info!("shutting down");
    server.shutdown().await;
    // Nothing waits out a node that is down: the indexer commits what it has and stops.
    daemon.stop();
    handle.stop().await;
    if !indexer_task.is_finished() {
        let _ = indexer_task.await;
    }
    outcome
}

/// ElectrumX serves wallets only once the index has caught up with the node and the
/// mempool has been synced.
async fn serve_wallets_when_caught_up(
    server: &Arc<Server<Electrum>>,
    electrum: &Electrum,
    handle: &IndexerHandle,
    mut mempool_synced: watch::Receiver<bool>,
) -> Result<(), String> {
    // Either wait ends only when the indexer has ended (the mempool task stops with it):
    // then wait on, and let `run` report the indexer's own reason, not this.
    let mut caught_up = handle.caught_up();
    if caught_up.wait_for(|&done| done).await.is_err() {
        return std::future::pending().await;
    }
    electrum.prepare().await.map_err(|e| e.message)?;
    if mempool_synced.wait_for(|&done| done).await.is_err() {
        return std::future::pending().await;
    }
    server.start_wallets().await
}

/// The one task that orders notifications, as ElectrumX's `Notifications` does: a new tip
/// is announced only once the mempool has been refreshed at it, with the block's and the
/// mempool's scripts in one notification (no client sees a transient status); between
/// blocks the mempool is polled every `DAEMON_POLL_INTERVAL_MEMPOOL` and its changes are
/// notified. Polling starts once the index has caught up.
struct Follower {
    electrum: Electrum,
    handle: IndexerHandle,
    mempool: Arc<Mempool>,
    daemon: Arc<Daemon>,
    reader: Reader,
    interval: Duration,
    synced: watch::Sender<bool>,
}

/// New tips not yet notified: the scripts they touched (None: unknown, check everything)
/// and when the first of them arrived.
struct PendingTip {
    touched: Option<HashSet<HashX>>,
    since: Instant,
}

impl PendingTip {
    fn add(pending: &mut Option<PendingTip>, touched: Option<&HashSet<HashX>>) {
        let p = pending.get_or_insert_with(|| PendingTip {
            touched: Some(HashSet::new()),
            since: Instant::now(),
        });
        match (&mut p.touched, touched) {
            (Some(all), Some(more)) => all.extend(more.iter().copied()),
            (all, _) => *all = None,
        }
    }

    /// The scripts to re-check for this tip: its own, `more`, and those `held` for it (which
    /// this empties). None: check everything.
    fn into_touched(
        self,
        held: &mut HashSet<HashX>,
        more: HashSet<HashX>,
    ) -> Option<Arc<HashSet<HashX>>> {
        let all = self.touched.map(|mut t| {
            t.extend(more);
            t.extend(held.drain());
            Arc::new(t)
        });
        held.clear();
        all
    }
}

impl Follower {
    async fn run(self) {
        let mut changes = self.handle.subscribe_changes();
        let mut caught_up = self.handle.caught_up();
        let caught_up = async move { caught_up.wait_for(|&done| done).await.is_ok() };
        tokio::pin!(caught_up);
        let (mut started, mut polling) = (false, false);
        let mut pending: Option<PendingTip> = None;
        // The tip of the last header notification. A poll that finds the index already past
        // it (the block's change is on its way) holds its scripts for that change, so each
        // block gives one notification, header first.
        let mut announced: Option<Hash32> = None;
        let mut held: HashSet<HashX> = HashSet::new();
        let mut next_poll = tokio::time::Instant::now();
        let mut last_refresh = tokio::time::Instant::now();
        let mut last_error: Option<String> = None;
        loop {
            let kick_after = last_refresh + MIN_BROADCAST_REFRESH_GAP;
            let broadcast = async {
                tokio::time::sleep_until(kick_after).await;
                self.electrum.broadcast_accepted().await
            };
            tokio::select! {
                change = changes.recv() => {
                    let mut change = Some(change);
                    // Tips already queued go out in the same notification.
                    while let Some(next) = change.take() {
                        match next {
                            Ok(c) => PendingTip::add(&mut pending, c.touched.as_deref()),
                            // Missed changes: re-check every subscription rather than guess.
                            Err(RecvError::Lagged(_)) => PendingTip::add(&mut pending, None),
                            Err(RecvError::Closed) => return,
                        }
                        change = match changes.try_recv() {
                            Ok(c) => Some(Ok(c)),
                            Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                            Err(TryRecvError::Empty | TryRecvError::Closed) => None,
                        };
                    }
                }
                _ = tokio::time::sleep_until(next_poll), if polling => {}
                // A wallet's own broadcast: read the mempool now, not at the next poll.
                _ = broadcast, if polling => {}
                ok = &mut caught_up, if !started => {
                    started = true;
                    polling = ok;
                    announced = tip_of(&self.reader.snapshot());
                    if ok {
                        info!("mempool: reading the node's mempool; this can take some time");
                    }
                }
            }
            if !polling {
                if let Some(tip) = pending.take() {
                    let touched = tip.into_touched(&mut held, HashSet::new());
                    self.electrum.notify(touched, true).await;
                }
                continue;
            }
            let started_at = Instant::now();
            let snap = self.reader.snapshot();
            let snap_tip = tip_of(&snap);
            let refreshed = self.mempool.refresh(&self.daemon, &snap).await;
            if self.daemon.is_stopped() {
                return; // shutting down: its error is no news
            }
            next_poll = tokio::time::Instant::now() + self.interval;
            last_refresh = tokio::time::Instant::now();
            match refreshed {
                Ok(touched) => {
                    if last_error.take().is_some() {
                        info!("mempool: refreshing again");
                    }
                    if !*self.synced.borrow() {
                        info!(
                            "mempool: synced {} transactions in {:.2}s",
                            self.mempool.tx_count(),
                            started_at.elapsed().as_secs_f64()
                        );
                        self.synced.send_replace(true);
                    }
                    match pending.take() {
                        Some(tip) => {
                            announced = snap_tip;
                            let all = tip.into_touched(&mut held, touched);
                            self.electrum.notify(all, true).await;
                        }
                        None if snap_tip != announced => held.extend(touched),
                        None if !touched.is_empty() => {
                            self.electrum.notify(Some(Arc::new(touched)), false).await;
                        }
                        None => {}
                    }
                }
                Err(e) => {
                    let unsynced = matches!(e, mempool::Error::Unsynced(_));
                    let message = e.to_string();
                    if unsynced {
                        debug!("{message}");
                    } else if last_error.as_ref() != Some(&message) {
                        warn!("{message}; the mempool is read again next round");
                        last_error = Some(message);
                    }
                    // A node a block ahead of the index: that block brings its own refresh.
                    // Otherwise (or if it is late), the tip is not held back any longer.
                    let late = pending
                        .as_ref()
                        .is_some_and(|p| p.since.elapsed() >= MAX_NOTIFY_DELAY);
                    if !unsynced || late {
                        if let Some(tip) = pending.take() {
                            announced = tip_of(&self.reader.snapshot());
                            let all = tip.into_touched(&mut held, HashSet::new());
                            self.electrum.notify(all, true).await;
                        }
                    }
                }
            }
        }
    }
}

/// The hash of a snapshot's tip header (None for an empty store or an unreadable header).
fn tip_of(snap: &Snapshot) -> Option<Hash32> {
    snapshot_tip(snap).ok().flatten().map(|(_, hash)| hash)
}

fn indexer_ended(
    result: Result<ferrum::indexer::Result<()>, tokio::task::JoinError>,
) -> Result<(), String> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("indexer stopped: {e}")),
        Err(e) => Err(format!("indexer task failed: {e}")),
    }
}

/// SIGTERM or Ctrl-C. SIGTERM is caught from the moment this is called, not first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let Ok(mut term) = term else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
}
