//! Mempool benchmarks, printed as figures (harness = false):
//! - `refresh`: `Mempool::refresh` taking in a 50,000-transaction mempool of the node
//!   emulator (generated: chains of unconfirmed spends, up to 3 inputs and 16 outputs), then
//!   a refresh with nothing new, then one with 1,000 new transactions;
//! - `latency`: the real `ferrum` binary with 100 TCP sessions x 100 script subscriptions
//!   (10,000): time from an `emu_addmempool` / `emu_mine` call on the emulator's control port
//!   to each notification a session receives; p50 and max per round. Run with the mempool
//!   polled every 100 ms, then every 1,000 ms (the default), blocks every 100 ms.
//!
//! Run: `cargo bench -p ferrum --bench mempool` (add `-- refresh` or `-- latency` for one).

#[path = "../tests/mempool_support/mod.rs"]
mod mempool_support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::Transaction;
use ferrum::coin::Network;
use ferrum::daemon::{Daemon, DaemonSettings};
use ferrum::indexer::{open_store, Indexer, IndexerSettings};
use ferrum::mempool::Mempool;
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use ferrum_tools::emulator::client::HttpClient;
use ferrum_tools::emulator::{ChainSource, Emulator, EmulatorConfig};
use mempool_support::{script_hash, Expected, Ferrum, Wallet};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const SEED: u64 = 3;
/// Blocks under the 50,000-tx mempool (medium preset with at most 3 inputs a transaction,
/// so that coins pile up: about 30,000 transactions, enough coins for the mempool).
const REFRESH_BLOCKS: u32 = 600;
/// Blocks of the medium preset (about 60 transactions each) for the latency rounds.
const BLOCKS: u32 = 300;
const MEMPOOL_TXS: u32 = 50_000;
const SESSIONS: usize = 100;
const SUBS_PER_SESSION: usize = 100;
/// Transactions each latency round adds.
const ROUND_TXS: u32 = 250;
const ADD_ROUNDS: usize = 8;

/// Emulator-only chains: signatures are not checked, and placeholders are fast to make.
fn placeholder(params: ChainParams) -> ChainParams {
    ChainParams {
        placeholder_signatures: true,
        ..params
    }
}

fn regtest() -> &'static Network {
    Network::lookup("Bitcoin", Some("regtest")).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn daemon(emu: &Emulator) -> Arc<Daemon> {
    let settings = DaemonSettings::new(vec![format!("{}@{}", emu.credentials(), emu.rpc_addr())]);
    Arc::new(Daemon::new(&settings, regtest()).unwrap())
}

fn control(emu: &Emulator, method: &str, params: Value) -> Value {
    HttpClient::connect(emu.control_addr())
        .unwrap()
        .call(method, params.clone())
        .unwrap()
        .unwrap_or_else(|e| panic!("{method}({params}): {e:?}"))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Indexes the emulator's chain into `dir` and returns a reader of the store.
async fn index(
    dir: &std::path::Path,
    emu: &Emulator,
    daemon: Arc<Daemon>,
) -> ferrum_storage::Reader {
    let mut settings = IndexerSettings::new(regtest());
    settings.poll_interval = Duration::from_millis(100);
    let store = open_store(dir, regtest(), settings.reorg_limit, settings.cache_mb).unwrap();
    let reader = store.reader();
    let (indexer, handle) = Indexer::new(store, daemon, regtest(), settings).unwrap();
    let task = tokio::spawn(indexer.run());
    let tip = emu.best_hash();
    handle
        .tip()
        .wait_for(|t| t.is_some_and(|t| t.hash == tip))
        .await
        .unwrap();
    handle.stop().await;
    task.await.unwrap().unwrap();
    reader
}

fn bench_refresh() {
    let start = Instant::now();
    let mut config = EmulatorConfig::new(ChainSource::Generated {
        params: placeholder(ChainParams {
            max_inputs: 3,
            ..ChainParams::medium(SEED)
        }),
        blocks: REFRESH_BLOCKS,
    });
    config.mempool_txs = MEMPOOL_TXS;
    let emu = Emulator::start(config).unwrap();
    println!(
        "refresh: emulator up in {:.1} s: height {}, {MEMPOOL_TXS} mempool transactions",
        start.elapsed().as_secs_f64(),
        emu.height()
    );
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let node = daemon(&emu);
    let reader = rt.block_on(index(dir.path(), &emu, node.clone()));
    let snap = reader.snapshot();
    let info = control(&emu, "emu_info", json!([]));
    println!(
        "refresh: chain indexed ({} transactions); mempool of {} transactions, {} vB",
        snap.tx_count(),
        info["mempool"],
        HttpClient::connect(emu.rpc_addr())
            .unwrap()
            .with_auth(emu.credentials())
            .call("getmempoolinfo", json!([]))
            .unwrap()
            .unwrap()["bytes"]
    );
    let t = Instant::now();
    let ids = rt.block_on(node.call("getrawmempool", json!([]))).unwrap();
    println!(
        "refresh: for scale, the node's getrawmempool of {} txids alone takes {}",
        ids.as_array().map_or(0, Vec::len),
        ms(t.elapsed())
    );
    let mut firsts = Vec::new();
    for run in 0..3 {
        let mempool = Mempool::new();
        let t = Instant::now();
        let touched = rt.block_on(mempool.refresh(&node, &snap)).unwrap();
        let first = t.elapsed();
        assert_eq!(mempool.tx_count(), MEMPOOL_TXS as usize);
        let t = Instant::now();
        let idle = rt.block_on(mempool.refresh(&node, &snap)).unwrap();
        let unchanged = t.elapsed();
        assert!(idle.is_empty());
        println!(
            "refresh run {run}: 50,000 new txs in {} ({} scripts touched); unchanged mempool in {}",
            ms(first),
            touched.len(),
            ms(unchanged)
        );
        firsts.push(first);
        if run == 2 {
            control(&emu, "emu_addmempool", json!([1000]));
            let t = Instant::now();
            rt.block_on(mempool.refresh(&node, &snap)).unwrap();
            println!(
                "refresh: 1,000 new txs on top of 50,000 in {}",
                ms(t.elapsed())
            );
            assert_eq!(mempool.tx_count(), MEMPOOL_TXS as usize + 1000);
        }
    }
    firsts.sort();
    println!(
        "refresh: 50,000-tx mempool taken in: median {}",
        ms(firsts[1])
    );
}

/// Latencies of one round: from the control call to each notification.
fn report(round: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    println!(
        "latency {round}: {} notifications, p50 {}, max {}",
        latencies.len(),
        ms(p50),
        ms(max)
    );
}

fn bench_latency(poll_ms: u64) {
    println!("latency: DAEMON_POLL_INTERVAL_MEMPOOL={poll_ms}");
    let params = placeholder(ChainParams::medium(SEED));
    // A twin of the emulator's generator predicts what each round adds and mines.
    let mut twin = ChainGenerator::new(params.clone());
    let mut blocks = vec![twin.genesis()];
    blocks.extend((0..BLOCKS).map(|_| twin.next_block()));
    let mut rounds: Vec<Vec<Transaction>> = Vec::new();
    for _ in 0..ADD_ROUNDS {
        rounds.push((0..ROUND_TXS).map(|_| twin.mempool_tx()).collect());
    }
    let all: Vec<Transaction> = rounds.iter().flatten().cloned().collect();
    let mined = twin.next_block();
    let predicted = Expected::new(blocks.clone(), all);
    let hashes = |e: &Expected, txs: &[Transaction]| -> HashSet<String> {
        txs.iter()
            .flat_map(|t| e.touched_scripts(t))
            .map(|s| script_hash(&s))
            .collect()
    };
    let round_scripts: Vec<HashSet<String>> =
        rounds.iter().map(|txs| hashes(&predicted, txs)).collect();
    // Subscriptions: every script the rounds touch, topped up with other scripts of the
    // chain to 10,000.
    let mut subscribed: BTreeSet<String> = round_scripts.iter().flatten().cloned().collect();
    let touched = subscribed.len();
    for script in blocks
        .iter()
        .flat_map(|b| &b.txdata)
        .flat_map(|t| &t.output)
        .map(|o| &o.script_pubkey)
    {
        if subscribed.len() >= SESSIONS * SUBS_PER_SESSION {
            break;
        }
        if !script.is_op_return() {
            subscribed.insert(script_hash(script));
        }
    }
    assert!(
        touched <= SESSIONS * SUBS_PER_SESSION,
        "{touched} touched scripts"
    );
    let subscribed: Vec<String> = subscribed.into_iter().collect();

    let emu = Emulator::start(EmulatorConfig::new(ChainSource::Generated {
        params,
        blocks: BLOCKS,
    }))
    .unwrap();
    let server = Ferrum::start(
        emu.rpc_addr().port(),
        emu.cookie_path().unwrap(),
        &[("DAEMON_POLL_INTERVAL_MEMPOOL", &poll_ms.to_string())],
    );
    let rt = runtime();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, String)>();
    let t = Instant::now();
    let forwarders = rt.block_on(async {
        let mut sessions = Vec::new();
        for chunk in subscribed.chunks(SUBS_PER_SESSION) {
            let chunk = chunk.to_vec();
            let addr = server.tcp;
            sessions.push(tokio::spawn(async move {
                let mut w = Wallet::connect(addr, "1.4").await;
                for sh in &chunk {
                    w.call("blockchain.scripthash.subscribe", json!([sh])).await;
                }
                w
            }));
        }
        let mut forwarders = Vec::new();
        for session in sessions {
            let mut w = session.await.unwrap();
            let tx = tx.clone();
            // Forwards the session's notifications until aborted.
            forwarders.push(tokio::spawn(async move {
                while let Some((at, note)) = w.notification_within(Duration::from_secs(3600)).await
                {
                    let sh = note["params"][0].as_str().unwrap_or_default().to_string();
                    if tx.send((at, sh)).is_err() {
                        return;
                    }
                }
            }));
        }
        forwarders
    });
    println!(
        "latency: {} sessions x {SUBS_PER_SESSION} = {} subscriptions in {:.1} s; the rounds touch {touched}",
        subscribed.len().div_ceil(SUBS_PER_SESSION),
        subscribed.len(),
        t.elapsed().as_secs_f64()
    );
    let subscribed: HashSet<String> = subscribed.into_iter().collect();
    let mut collect = |expected: &HashSet<String>, start: Instant| -> Vec<Duration> {
        let mut seen: HashMap<String, Instant> = HashMap::new();
        rt.block_on(async {
            while !expected.iter().all(|sh| seen.contains_key(sh)) {
                let (at, sh) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
                    .await
                    .expect("notifications within 2 minutes")
                    .unwrap();
                seen.insert(sh, at);
            }
            // Late extras (none expected) still count.
            while let Ok(Some((at, sh))) =
                tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            {
                seen.insert(sh, at);
            }
        });
        seen.values().map(|at| *at - start).collect()
    };
    let mut all_rounds = Vec::new();
    for (i, expected) in round_scripts.iter().enumerate() {
        // Rounds start at phases spread over the poll interval (each round ends half a
        // second after its last notification, which would otherwise fix the phase).
        std::thread::sleep(Duration::from_millis(
            poll_ms * i as u64 / ADD_ROUNDS as u64,
        ));
        let start = Instant::now();
        control(&emu, "emu_addmempool", json!([ROUND_TXS]));
        let mut latencies = collect(expected, start);
        report(
            &format!("emu_addmempool {ROUND_TXS} (round {i})"),
            &mut latencies,
        );
        all_rounds.extend(latencies);
    }
    report("emu_addmempool, all rounds", &mut all_rounds);
    // Mining the 2,000 transactions: every script they touch is notified.
    let in_block: HashSet<String> = {
        let mut with_block = blocks.clone();
        with_block.push(mined.clone());
        let e = Expected::new(with_block, Vec::new());
        hashes(&e, &mined.txdata)
            .into_iter()
            .filter(|sh| subscribed.contains(sh))
            .collect()
    };
    let start = Instant::now();
    control(&emu, "emu_mine", json!([1]));
    let mut latencies = collect(&in_block, start);
    report(
        &format!("emu_mine of {} txs", mined.txdata.len()),
        &mut latencies,
    );
    rt.block_on(async {
        for task in forwarders {
            task.abort();
            let _ = task.await;
        }
    });
    server.stop();
}

fn main() {
    // `cargo bench` passes `--bench`; a bare word picks one benchmark.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    if wanted("refresh") {
        bench_refresh();
    }
    if wanted("latency") {
        bench_latency(100);
        bench_latency(1000);
    }
}
