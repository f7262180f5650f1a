//! `ferrum`: the server. Reads ElectrumX's environment variables, indexes the node's chain
//! into DB_DIRECTORY, and serves Electrum wallets once the index has caught up. The local
//! RPC service answers from the start.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use ferrum::coin::Network;
use ferrum::config::Config;
use ferrum::daemon::{Daemon, DaemonSettings};
use ferrum::electrum::Electrum;
use ferrum::indexer::{open_store, Indexer, IndexerHandle, IndexerSettings};
use ferrum::query::EmptyMempool;
use ferrum::server::Server;
use tokio::sync::broadcast::error::RecvError;
use tracing::{error, info};

fn main() -> ExitCode {
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
    let db_dir = config.db_dir.clone();
    let store = tokio::task::spawn_blocking(move || open_store(&db_dir, network, reorg_limit))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let reader = store.reader();

    let mut settings = IndexerSettings::new(network);
    settings.cache_mb = config.cache_mb as usize;
    settings.reorg_limit = reorg_limit;
    settings.poll_interval = config.daemon_poll_interval_blocks;
    let (indexer, handle) =
        Indexer::new(store, daemon.clone(), network, settings).map_err(|e| e.to_string())?;

    let electrum =
        Electrum::new(reader, network, daemon, Arc::new(EmptyMempool)).with_indexer(handle.clone());
    tokio::spawn(forward_changes(electrum.clone(), handle.clone()));
    let mut indexer_task = tokio::spawn(indexer.run());

    let server = Server::new(
        Arc::new(config),
        Arc::new(electrum.clone()),
        network.genesis_hash,
    )?;
    server.start_rpc().await?;

    tokio::pin!(shutdown);
    let wallets = serve_wallets_when_caught_up(&server, &electrum, &handle);
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
    handle.stop().await;
    if !indexer_task.is_finished() {
        let _ = indexer_task.await;
    }
    outcome
}

/// ElectrumX serves wallets only once the index has caught up with the node.
async fn serve_wallets_when_caught_up(
    server: &Arc<Server<Electrum>>,
    electrum: &Electrum,
    handle: &IndexerHandle,
) -> Result<(), String> {
    let mut caught_up = handle.caught_up();
    caught_up
        .wait_for(|&done| done)
        .await
        .map_err(|_| "the indexer stopped before catching up".to_string())?;
    electrum.prepare().await.map_err(|e| e.message)?;
    server.start_wallets().await
}

/// Passes each committed tip to the methods layer, which notifies subscribed sessions.
async fn forward_changes(electrum: Electrum, handle: IndexerHandle) {
    let mut changes = handle.subscribe_changes();
    loop {
        match changes.recv().await {
            Ok(change) => electrum.notify(change.touched.clone(), true).await,
            // Missed changes: re-check every subscription rather than guess.
            Err(RecvError::Lagged(_)) => electrum.notify(None, true).await,
            Err(RecvError::Closed) => return,
        }
    }
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
