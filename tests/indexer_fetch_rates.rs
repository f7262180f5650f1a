//! Measures the block fetch routes (REST binary vs JSON-RPC hex, one or several connections)
//! and a full initial sync, against the emulator and a real regtest bitcoind. Measurements,
//! not checks: ignored by default; run in release with a chain file (e.g. from
//! `ferrum-chaingen --txs 200000`):
//!
//!   FERRUM_CHAIN=/tmp/bench.chain cargo test --release -p ferrum --test indexer_fetch_rates \
//!     -- --ignored --nocapture

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrum::coin::Network;
use ferrum::daemon::{Daemon, DaemonSettings};
use ferrum::fetch::{FetchSettings, Prefetcher};
use ferrum_tools::chainfile::ChainReader;
use ferrum_tools::emulator::{ChainSource, Emulator, EmulatorConfig};
use ferrum_tools::regtest::RegtestNode;

fn regtest() -> &'static Network {
    Network::lookup("Bitcoin", Some("regtest")).unwrap()
}

/// Fetches blocks 1..=height over each route and prints blocks/s and MB/s.
async fn measure(node: &str, settings: DaemonSettings, height: u32) {
    for rest in [true, false] {
        let daemon = Arc::new(Daemon::new(&settings, regtest()).unwrap());
        assert!(
            daemon.check().await.unwrap().rest,
            "the node must serve REST"
        );
        daemon.set_rest(rest);
        let route = if rest { "REST .bin" } else { "JSON-RPC hex" };

        // Raw transfer, one request at a time on one connection.
        let hashes = daemon.block_hashes(1..height + 1).await.unwrap();
        let started = Instant::now();
        let mut bytes = 0;
        for hash in &hashes {
            bytes += daemon.block_raw(hash).await.unwrap().len();
        }
        report(
            node,
            &format!("{route}, 1 connection, fetch only"),
            height,
            bytes,
            started.elapsed(),
        );

        // The prefetcher: hash batches, several downloads, parsing on the blocking pool.
        for concurrency in [1, 4] {
            let settings = FetchSettings {
                concurrency,
                ..FetchSettings::default()
            };
            let started = Instant::now();
            let mut fetcher = Prefetcher::start(daemon.clone(), 1, height, &settings);
            let mut bytes = 0;
            while let Some(block) = fetcher.next().await {
                bytes += block.unwrap().block.size;
            }
            let what = format!("{route}, prefetcher x{concurrency}, fetch + parse");
            report(node, &what, height, bytes, started.elapsed());
        }
    }
}

fn report(node: &str, route: &str, blocks: u32, bytes: usize, took: Duration) {
    let secs = took.as_secs_f64();
    println!(
        "{node:<9} {route:<45} {blocks} blocks {:.1} MB in {secs:.2}s: {:.0} blocks/s, {:.1} MB/s",
        bytes as f64 / 1e6,
        blocks as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
}

#[test]
#[ignore = "a measurement: run by hand in release with FERRUM_CHAIN set"]
fn fetch_routes_and_full_sync() {
    let path = std::env::var("FERRUM_CHAIN").expect("FERRUM_CHAIN names a chain file");
    let blocks: Vec<bitcoin::Block> = ChainReader::open(&path)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let height = blocks.len() as u32 - 1;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let emu = Emulator::start(EmulatorConfig::new(ChainSource::Blocks(blocks.clone()))).unwrap();
    let url = format!("{}@{}", emu.credentials(), emu.rpc_addr());
    rt.block_on(measure(
        "emulator",
        DaemonSettings::new(vec![url.clone()]),
        height,
    ));
    rt.block_on(full_sync("emulator", DaemonSettings::new(vec![url])));
    drop(emu);

    let node = RegtestNode::start().unwrap();
    for block in &blocks[1..] {
        node.submit_block(block).unwrap();
    }
    let mut settings = DaemonSettings::new(vec![format!("127.0.0.1:{}", node.rpc_port())]);
    settings.cookie_file = Some(node.cookie_path().to_path_buf());
    rt.block_on(measure("bitcoind", settings.clone(), height));
    rt.block_on(full_sync("bitcoind", settings));
}

/// Initial sync from `node` to its tip, end to end (fetch, parse, store, commits), with the
/// index size: the figure to compare with electrs and ElectrumX.
async fn full_sync(node: &str, settings: DaemonSettings) {
    use ferrum::indexer::{open_store, Indexer, IndexerSettings};
    let dir = tempfile::tempdir().unwrap();
    let daemon = Arc::new(Daemon::new(&settings, regtest()).unwrap());
    let settings = IndexerSettings::new(regtest());
    let store = open_store(
        dir.path(),
        regtest(),
        settings.reorg_limit,
        settings.cache_mb,
    )
    .unwrap();
    let reader = store.reader();
    let (indexer, handle) = Indexer::new(store, daemon, regtest(), settings).unwrap();
    let started = Instant::now();
    let task = tokio::spawn(indexer.run());
    handle.caught_up().wait_for(|c| *c).await.unwrap();
    let took = started.elapsed();
    handle.stop().await;
    task.await.unwrap().unwrap();
    let snap = reader.snapshot();
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "{node:<9} full sync: {} blocks, {} txs in {:.2}s ({:.0} tx/s); index {:.1} MB, {:.1} B/tx",
        snap.height().unwrap() + 1,
        snap.tx_count(),
        took.as_secs_f64(),
        snap.tx_count() as f64 / took.as_secs_f64(),
        bytes as f64 / 1e6,
        bytes as f64 / snap.tx_count() as f64
    );
}
