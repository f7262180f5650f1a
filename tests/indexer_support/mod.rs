//! Shared helpers for the indexer integration tests: an emulated node, the index state computed
//! independently from the node's blocks, a fault-injecting proxy, and running the indexer.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use bitcoin::{Block, BlockHash, OutPoint};
use ferrum::coin::Network;
use ferrum::config::IndexMode;
use ferrum::daemon::{Daemon, DaemonSettings};
use ferrum::indexer::{open_store_as, IndexError, Indexer, IndexerHandle, IndexerSettings, Tip};
use ferrum_storage::Snapshot;
pub use ferrum_tools::emulator::client::node_chain;
use ferrum_tools::emulator::{Emulator, EmulatorConfig};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn regtest() -> &'static Network {
    Network::lookup("Bitcoin", Some("regtest")).unwrap()
}

/// An emulated node with a generated chain of `blocks` blocks above genesis.
pub fn emulator(seed: u64, blocks: u32, reorg_depth: usize) -> Emulator {
    let mut config = EmulatorConfig::generated(seed, blocks);
    config.reorg_depth = reorg_depth;
    Emulator::start(config).unwrap()
}

/// What the index must hold for a chain, computed here from the blocks alone.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    pub headers: Vec<[u8; 80]>,
    pub txids: Vec<[u8; 32]>,
    /// key -> (txnum, vout, value), sorted.
    pub utxos: BTreeMap<[u8; 11], Vec<(u64, u32, u64)>>,
    pub history: BTreeMap<[u8; 11], Vec<u64>>,
}

fn key(script: &[u8]) -> [u8; 11] {
    sha256::Hash::hash(script).to_byte_array()[..11]
        .try_into()
        .unwrap()
}

fn indexed(script: &[u8]) -> bool {
    !(script.first() == Some(&0x6a) || script.starts_with(&[0x00, 0x6a]) || script.len() > 10_000)
}

pub fn expected(blocks: &[Block]) -> Expected {
    let mut e = Expected {
        headers: Vec::new(),
        txids: Vec::new(),
        utxos: BTreeMap::new(),
        history: BTreeMap::new(),
    };
    let mut unspent: HashMap<OutPoint, ([u8; 11], u64, u32, u64)> = HashMap::new();
    let mut txnum = 0u64;
    for (height, block) in blocks.iter().enumerate() {
        e.headers.push(
            bitcoin::consensus::serialize(&block.header)
                .try_into()
                .unwrap(),
        );
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            e.txids.push(txid.to_byte_array());
            let mut touched = BTreeSet::new();
            if !tx.is_coinbase() {
                for input in &tx.input {
                    let (k, ..) = unspent
                        .remove(&input.previous_output)
                        .expect("spent output exists");
                    touched.insert(k);
                }
            }
            for (vout, out) in tx.output.iter().enumerate() {
                let script = out.script_pubkey.as_bytes();
                if height == 0 || !indexed(script) {
                    continue;
                }
                let k = key(script);
                let op = OutPoint {
                    txid,
                    vout: vout as u32,
                };
                unspent.insert(op, (k, txnum, vout as u32, out.value.to_sat()));
                touched.insert(k);
            }
            for k in touched {
                e.history.entry(k).or_default().push(txnum);
            }
            txnum += 1;
        }
    }
    for (k, txnum, vout, value) in unspent.into_values() {
        e.utxos.entry(k).or_default().push((txnum, vout, value));
    }
    for list in e.utxos.values_mut() {
        list.sort();
    }
    e
}

/// Scripts whose history `new` blocks change, on top of the chain `before`.
pub fn touched_by(before: &[Block], new: &[Block]) -> BTreeSet<[u8; 11]> {
    let all: Vec<Block> = before.iter().chain(new).cloned().collect();
    let (old, now) = (expected(before), expected(&all));
    now.history
        .iter()
        .filter(|(k, txnums)| old.history.get(*k) != Some(*txnums))
        .map(|(k, _)| *k)
        .collect()
}

/// The same view read back from a store snapshot (no txids from a lean one).
pub fn actual(snap: &Snapshot) -> Expected {
    let blocks = snap.height().map_or(0, |h| h + 1);
    let mut utxos: BTreeMap<[u8; 11], Vec<(u64, u32, u64)>> = BTreeMap::new();
    snap.for_each_utxo(|k, u| {
        utxos
            .entry(*k)
            .or_default()
            .push((u.txnum, u.vout, u.value))
    })
    .unwrap();
    let mut history = BTreeMap::new();
    snap.for_each_history(|k, txnums| {
        history.insert(*k, txnums.to_vec());
    })
    .unwrap();
    Expected {
        headers: (0..blocks).map(|h| snap.header(h).unwrap()).collect(),
        txids: match snap.stores_txids() {
            true => (0..snap.tx_count())
                .map(|t| snap.txid(t).unwrap())
                .collect(),
            false => Vec::new(),
        },
        utxos,
        history,
    }
}

/// The emulated node's whole chain, genesis first.
pub fn emulator_chain(emu: &Emulator) -> Vec<Block> {
    node_chain(emu.rpc_addr(), emu.credentials()).unwrap()
}

/// Asserts the snapshot holds exactly `blocks`, also through the per-key lookups; a lean
/// one, which holds no txids, must find every unspent output by its txid.
pub fn assert_index_matches(snap: &Snapshot, blocks: &[Block]) {
    let want = expected(blocks);
    let got = actual(snap);
    assert_eq!(got.headers.len(), want.headers.len(), "block count");
    assert!(got.headers == want.headers, "headers differ");
    if snap.stores_txids() {
        assert_eq!(got.txids.len(), want.txids.len(), "tx count");
        assert!(got.txids == want.txids, "txids differ");
    } else {
        assert_eq!(snap.tx_count(), want.txids.len() as u64, "tx count");
        for (&(txnum, vout, value), k) in want
            .utxos
            .iter()
            .flat_map(|(k, l)| l.iter().map(move |u| (u, k)))
        {
            let found = snap.unspent(&want.txids[txnum as usize], vout).unwrap();
            let found = found.map(|(key, u)| (key, u.txnum, u.value));
            assert_eq!(
                found,
                Some((*k, txnum, value)),
                "unspent {txnum}:{vout} by txid"
            );
        }
    }
    assert!(got.utxos == want.utxos, "UTXO sets differ");
    assert!(got.history == want.history, "histories differ");
    for (k, list) in want.utxos.iter().take(50) {
        let utxos: Vec<_> = snap
            .utxos(k)
            .unwrap()
            .iter()
            .map(|u| (u.txnum, u.vout, u.value))
            .collect();
        assert_eq!(&utxos, list);
    }
    for (k, list) in want.history.iter().take(50) {
        assert_eq!(&snap.history(k).unwrap(), list);
    }
}

pub fn daemon_for(url: String) -> Arc<Daemon> {
    let mut settings = DaemonSettings::new(vec![url]);
    settings.give_up_after = Some(Duration::from_secs(20));
    Arc::new(Daemon::new(&settings, regtest()).unwrap())
}

pub fn emulator_daemon(emu: &Emulator) -> Arc<Daemon> {
    daemon_for(format!("{}@{}", emu.credentials(), emu.rpc_addr()))
}

pub fn settings(reorg_limit: u32) -> IndexerSettings {
    let mut s = IndexerSettings::new(regtest());
    s.reorg_limit = reorg_limit;
    s.poll_interval = Duration::from_millis(100);
    s
}

/// A running indexer over a store in `dir`.
pub struct Running {
    pub handle: IndexerHandle,
    pub task: JoinHandle<Result<(), IndexError>>,
    pub reader: ferrum_storage::Reader,
}

pub fn start_indexer(dir: &Path, daemon: Arc<Daemon>, settings: IndexerSettings) -> Running {
    start_indexer_in(dir, daemon, settings, IndexMode::Full)
}

/// A running indexer over a store in `dir` built in `mode`.
pub fn start_indexer_in(
    dir: &Path,
    daemon: Arc<Daemon>,
    settings: IndexerSettings,
    mode: IndexMode,
) -> Running {
    // Logs show with `--nocapture` and RUST_LOG=info.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let store = open_store_as(
        dir,
        regtest(),
        settings.reorg_limit,
        settings.cache_mb,
        mode,
    )
    .unwrap();
    let reader = store.reader();
    let (indexer, handle) = Indexer::new(store, daemon, regtest(), settings).unwrap();
    let task = tokio::spawn(indexer.run());
    Running {
        handle,
        task,
        reader,
    }
}

impl Running {
    /// Stops the indexer and checks that it ended without error.
    pub async fn stop(self) {
        self.handle.stop().await;
        self.task.await.unwrap().unwrap();
    }
}

/// Indexes `emu`'s chain into `dir` up to its current tip, then stops the indexer.
pub async fn index_to_tip(dir: &Path, emu: &Emulator, settings: IndexerSettings) -> Tip {
    let run = start_indexer(dir, emulator_daemon(emu), settings);
    let tip = wait_for_tip(&run.handle, emu.best_hash()).await;
    run.stop().await;
    tip
}

/// Waits until the committed tip is `hash`.
pub async fn wait_for_tip(handle: &IndexerHandle, hash: BlockHash) -> Tip {
    let mut tips = handle.tip();
    let found = tokio::time::timeout(WAIT, tips.wait_for(|t| t.is_some_and(|t| t.hash == hash)))
        .await
        .expect("indexer reached the tip in time")
        .expect("indexer running");
    found.unwrap()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `ferrum-db verify` on `dir`: must succeed; returns the whole-index digest line.
pub fn verify_digest(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrum-db"))
        .arg("verify")
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "verify failed: {stdout}");
    assert!(stdout.ends_with("ok\n"), "{stdout}");
    stdout
        .lines()
        .find(|l| l.starts_with("index digest: "))
        .unwrap()
        .to_string()
}

/// How the proxy tampers with one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flip a byte in the middle of the block.
    Corrupt,
    /// Answer with another block's bytes.
    WrongBlock(BlockHash),
    /// Say the block does not exist (REST 404, RPC -5).
    Missing,
    /// Reverse the order of the block's transactions: well formed, the right header, but
    /// not the transactions its merkle root commits to.
    ReorderTxs,
}

/// A proxy in front of a node that can refuse REST, tamper with chosen blocks and say the
/// node is pruned.
pub struct Proxy {
    pub port: u16,
    pub rest: Arc<Mutex<bool>>,
    pub faults: Arc<Mutex<HashMap<BlockHash, Fault>>>,
    /// `getblockchaininfo` says `pruned` with this `pruneheight`.
    pub pruned: Arc<Mutex<Option<u32>>>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rest = Arc::new(Mutex::new(true));
        let faults: Arc<Mutex<HashMap<BlockHash, Fault>>> = Arc::default();
        let pruned: Arc<Mutex<Option<u32>>> = Arc::default();
        let (r, f, p) = (rest.clone(), faults.clone(), pruned.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (r, f, p) = (r.clone(), f.clone(), p.clone());
                tokio::spawn(proxy_connection(stream, upstream, r, f, p));
            }
        });
        Proxy {
            port,
            rest,
            faults,
            pruned,
        }
    }
}

async fn proxy_connection(
    stream: TcpStream,
    upstream: std::net::SocketAddr,
    rest: Arc<Mutex<bool>>,
    faults: Arc<Mutex<HashMap<BlockHash, Fault>>>,
    pruned: Arc<Mutex<Option<u32>>>,
) {
    let mut down = BufReader::new(stream);
    let Ok(mut up) = ferrum::http::HttpConn::connect("127.0.0.1", upstream.port()).await else {
        return;
    };
    loop {
        let mut line = String::new();
        if down.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let (mut len, mut auth) = (0usize, None);
        loop {
            let mut h = String::new();
            down.read_line(&mut h).await.unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(": ") {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => len = value.parse().unwrap(),
                    "authorization" => auth = Some(value.to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        down.read_exact(&mut body).await.unwrap();
        let (status, mut reply) = if path.starts_with("/rest/") && !*rest.lock().unwrap() {
            (404, Vec::new())
        } else {
            let resp = up
                .request(&method, &path, auth.as_deref(), &body)
                .await
                .unwrap();
            (resp.status, resp.body)
        };
        let faults = faults.lock().unwrap().clone();
        tamper(
            &path,
            &body,
            &mut reply,
            status,
            &faults,
            &mut up,
            auth.as_deref(),
        )
        .await;
        if let Some(height) = *pruned.lock().unwrap() {
            report_pruned(&body, &mut reply, height);
        }
        let status = if reply.is_empty() && status == 200 {
            404
        } else {
            status
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if down
            .get_mut()
            .write_all(&[head.as_bytes(), &reply].concat())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Makes a `getblockchaininfo` reply say the node is pruned below `height`.
fn report_pruned(body: &[u8], reply: &mut Vec<u8>, height: u32) {
    let call: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if call["method"] != "getblockchaininfo" {
        return;
    }
    let mut answer: serde_json::Value = serde_json::from_slice(reply).unwrap();
    answer["result"]["pruned"] = json!(true);
    answer["result"]["pruneheight"] = json!(height);
    *reply = answer.to_string().into_bytes();
}

/// Applies a fault to a REST block or a `getblock` reply for a tampered hash.
async fn tamper(
    path: &str,
    body: &[u8],
    reply: &mut Vec<u8>,
    status: u16,
    faults: &HashMap<BlockHash, Fault>,
    up: &mut ferrum::http::HttpConn,
    auth: Option<&str>,
) {
    if status != 200 {
        return;
    }
    let rest_hash = path
        .strip_prefix("/rest/block/")
        .and_then(|p| p.strip_suffix(".bin"))
        .and_then(|h| h.parse::<BlockHash>().ok());
    let call: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let rpc_hash = (call["method"] == "getblock")
        .then(|| {
            call["params"][0]
                .as_str()
                .and_then(|h| h.parse::<BlockHash>().ok())
        })
        .flatten();
    let Some(fault) = rest_hash.or(rpc_hash).and_then(|h| faults.get(&h).copied()) else {
        return;
    };
    let mut raw = match rest_hash {
        Some(_) => reply.clone(),
        None => {
            let v: serde_json::Value = serde_json::from_slice(reply).unwrap();
            hex_decode(v["result"].as_str().unwrap())
        }
    };
    match fault {
        Fault::Corrupt => {
            let at = (raw.len() / 2 + 40).min(raw.len() - 1);
            raw[at] ^= 0x55;
        }
        Fault::WrongBlock(other) => {
            let resp = up
                .request("GET", &format!("/rest/block/{other}.bin"), auth, &[])
                .await
                .unwrap();
            raw = resp.body;
        }
        Fault::Missing => raw.clear(),
        Fault::ReorderTxs => {
            let mut block: Block = bitcoin::consensus::deserialize(&raw).unwrap();
            block.txdata.reverse();
            raw = bitcoin::consensus::serialize(&block);
        }
    }
    *reply = match (rest_hash, fault) {
        (Some(_), _) => raw,
        (None, Fault::Missing) => json!({"result": null, "error": {"code": -5, "message": "Block not found"}, "id": call["id"]})
            .to_string()
            .into_bytes(),
        (None, _) => json!({"result": hex_encode(&raw), "error": null, "id": call["id"]}).to_string().into_bytes(),
    };
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
