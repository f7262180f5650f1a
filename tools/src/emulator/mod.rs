//! A Bitcoin Core node emulator: serves a generated or loaded regtest chain over Core's
//! JSON-RPC and REST interfaces, with a control port to mine, reorg, fill the mempool, warm up
//! and go offline. Runs in-process (`Emulator::start`) or as the `ferrum-emulator` binary.

pub mod bench;
mod blockbuild;
mod chain;
pub mod client;
mod control;
mod http;
mod jsonrpc;
mod mempool;
mod methods;
mod node;
mod params;
mod rest;
pub mod txjson;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::time::Duration;

use bitcoin::blockdata::constants::genesis_block;
use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, Network, Transaction, Txid};
use serde_json::Value;
use tokio::sync::watch;

use crate::chainfile::ChainReader;
use crate::chaingen::{ChainGenerator, ChainParams};
pub use jsonrpc::RpcError;
use node::Node;

const WORKER_THREAD: &str = "ferrum-emulator";

/// Core's first warm-up message, used when none is given.
pub const DEFAULT_WARMUP_MESSAGE: &str = "Loading block index…";

/// Where the chain comes from.
pub enum ChainSource {
    /// `blocks` blocks of a deterministic generator (which keeps mining on demand).
    Generated { params: ChainParams, blocks: u32 },
    /// A chain file (genesis first); mining then makes the emulator's own blocks.
    File(PathBuf),
    /// Blocks given directly, genesis first (the regtest genesis is added if missing).
    Blocks(Vec<Block>),
}

/// How RPC clients authenticate.
pub enum Auth {
    /// Write a Core-style cookie (`__cookie__:<64 hex>`) at this path, or in a fresh temporary
    /// directory when None; the cookie is deleted on shutdown, as Core does.
    Cookie(Option<PathBuf>),
    /// Fixed `-rpcuser` / `-rpcpassword`.
    UserPass(String, String),
}

pub struct EmulatorConfig {
    pub source: ChainSource,
    /// Serve only blocks up to this height at start; later ones come with `mine`.
    pub initial_height: Option<u32>,
    /// Generated mempool transactions added at start (needs a generator past height 100).
    pub mempool_txs: u32,
    pub rpc_addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub auth: Auth,
    /// Start warming up (-28) with this message, for this long (None: until told).
    pub warmup: Option<(String, Option<Duration>)>,
    /// How many blocks back a reorg of a generated chain can reach.
    pub reorg_depth: usize,
    /// The address `getzmqnotifications` reports for `pubhashblock` (None: none, as a node
    /// started without `-zmqpubhashblock`). The emulator publishes nothing itself.
    pub zmq_pubhashblock: Option<String>,
}

impl EmulatorConfig {
    /// Loopback ports chosen by the OS, cookie auth in a temporary directory.
    pub fn new(source: ChainSource) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        EmulatorConfig {
            source,
            initial_height: None,
            mempool_txs: 0,
            rpc_addr: loopback,
            control_addr: loopback,
            auth: Auth::Cookie(None),
            warmup: None,
            reorg_depth: 10,
            zmq_pubhashblock: None,
        }
    }

    /// A small generated chain (`ChainParams::small(seed)`) of `blocks` blocks.
    pub fn generated(seed: u64, blocks: u32) -> Self {
        Self::new(ChainSource::Generated {
            params: ChainParams::small(seed),
            blocks,
        })
    }
}

/// State shared by the RPC, REST and control handlers.
pub(crate) struct Shared {
    node: RwLock<Node>,
    switch: Switch,
}

pub(crate) fn lock(node: &RwLock<Node>) -> RwLockWriteGuard<'_, Node> {
    node.write().unwrap_or_else(|p| p.into_inner())
}

/// Turns the RPC/REST listener off (closing every connection) and on again on the same port.
pub(crate) struct Switch {
    addr: SocketAddr,
    online: watch::Sender<bool>,
    handler: Mutex<Option<http::Handler>>,
    /// Hears when the current listener is closed.
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    runtime: tokio::runtime::Handle,
}

impl Switch {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn is_online(&self) -> bool {
        *self.online.borrow()
    }

    fn set_online(&self, up: bool) -> io::Result<()> {
        let handler = self.handler.lock().unwrap_or_else(|p| p.into_inner());
        if up == self.is_online() {
            return Ok(());
        }
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if !up {
            self.online.send_replace(false);
            // Return once the port refuses connections (bounded: the accept task is idle).
            // On one of our own workers (a control call), let the runtime move the worker's
            // queued tasks (the accept task may be among them) to another thread first.
            if let Some(rx) = stopped.take() {
                let wait = || {
                    let _ = rx.recv_timeout(Duration::from_secs(5));
                };
                if std::thread::current().name() == Some(WORKER_THREAD) {
                    tokio::task::block_in_place(wait);
                } else {
                    wait();
                }
            }
            return Ok(());
        }
        let handler = handler
            .clone()
            .ok_or_else(|| io::Error::other("server not started"))?;
        self.serve(http::bind(self.addr)?, handler, &mut stopped)
    }

    /// Serves the RPC port on `listener` (bound to `self.addr`) until set offline.
    fn serve(
        &self,
        listener: std::net::TcpListener,
        handler: http::Handler,
        stopped: &mut Option<std::sync::mpsc::Receiver<()>>,
    ) -> io::Result<()> {
        let _guard = self.runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        self.online.send_replace(true);
        let (tx, rx) = std::sync::mpsc::channel();
        *stopped = Some(rx);
        let online = self.online.subscribe();
        self.runtime
            .spawn(http::serve(listener, handler, online, Some(tx)));
        Ok(())
    }
}

/// A running emulator; dropping it stops the servers and deletes a cookie it wrote.
pub struct Emulator {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    rpc_addr: SocketAddr,
    control_addr: SocketAddr,
    credentials: String,
    cookie: Option<PathBuf>,
    temp_dir: Option<PathBuf>,
}

impl Emulator {
    /// Loads the chain, then serves RPC/REST and the control port.
    pub fn start(config: EmulatorConfig) -> io::Result<Emulator> {
        let node = load(&config)?;
        let rpc_listener = http::bind(config.rpc_addr)?;
        let rpc_addr = rpc_listener.local_addr()?;
        let control_listener = http::bind(config.control_addr)?;
        let control_addr = control_listener.local_addr()?;
        let (credentials, cookie, temp_dir) = credentials(&config.auth, rpc_addr.port())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(WORKER_THREAD)
            .enable_all()
            .build()?;
        let (online, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            node: RwLock::new(node),
            switch: Switch {
                addr: rpc_addr,
                online,
                handler: Mutex::new(None),
                stopped: Mutex::new(None),
                runtime: runtime.handle().clone(),
            },
        });
        let rpc_handler: http::Handler = {
            let shared = shared.clone();
            let credentials = credentials.clone();
            Arc::new(move |req: http::Request| {
                let path = req.path();
                if path.starts_with("/rest/") {
                    rest::handle(&req, &shared.node)
                } else if path == "/" || path.starts_with("/wallet/") {
                    jsonrpc::handle(
                        &req,
                        Some(&credentials),
                        &methods::Rpc { node: &shared.node },
                    )
                } else {
                    http::Response::empty(404)
                }
            })
        };
        *shared
            .switch
            .handler
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(rpc_handler.clone());
        let control_handler: http::Handler = {
            let shared = shared.clone();
            Arc::new(move |req: http::Request| {
                jsonrpc::handle(
                    &req,
                    None,
                    &control::Control {
                        shared: shared.clone(),
                    },
                )
            })
        };
        let serving = || -> io::Result<()> {
            // The RPC port is served on the listener bound above: dropping it to bind again
            // would let another process take the port in between.
            let mut stopped = shared
                .switch
                .stopped
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            shared
                .switch
                .serve(rpc_listener, rpc_handler, &mut stopped)?;
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(control_listener)?;
            let (_keep, rx) = watch::channel(true);
            runtime.spawn(async move {
                let _keep = _keep;
                http::serve(listener, control_handler, rx, None).await
            });
            Ok(())
        };
        if let Err(e) = serving() {
            // Dropping a runtime blocks, which panics when the caller is async (a test).
            runtime.shutdown_background();
            return Err(e);
        }
        Ok(Emulator {
            shared,
            runtime: Some(runtime),
            rpc_addr,
            control_addr,
            credentials,
            cookie,
            temp_dir,
        })
    }

    /// `http://127.0.0.1:PORT/`: JSON-RPC (POST) and REST (`/rest/...`).
    pub fn rpc_url(&self) -> String {
        format!("http://{}/", self.rpc_addr)
    }

    /// `http://127.0.0.1:PORT/rest`.
    pub fn rest_url(&self) -> String {
        format!("http://{}/rest", self.rpc_addr)
    }

    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The control port's address (`emu_*` JSON-RPC methods, no auth).
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// The cookie file, when cookie auth is on.
    pub fn cookie_path(&self) -> Option<&Path> {
        self.cookie.as_deref()
    }

    /// `user:password` accepted by the RPC port.
    pub fn credentials(&self) -> &str {
        &self.credentials
    }

    fn node(&self) -> RwLockWriteGuard<'_, Node> {
        lock(&self.shared.node)
    }

    pub fn height(&self) -> u32 {
        self.node().chain.height().unwrap_or(0)
    }

    pub fn best_hash(&self) -> BlockHash {
        self.node()
            .chain
            .tip()
            .map_or(BlockHash::all_zeros(), |t| t.hash)
    }

    /// Mines `count` blocks (held-back ones first); returns their hashes.
    pub fn mine(&self, count: u32) -> Result<Vec<BlockHash>, String> {
        self.node().mine(count)
    }

    /// Adds `count` generated transactions to the mempool.
    pub fn add_mempool_txs(&self, count: u32) -> Result<Vec<Txid>, String> {
        self.node().add_generated(count)
    }

    /// Submits a transaction as sendrawtransaction does (RPC error on rejection).
    pub fn submit(&self, tx: Transaction) -> Result<Txid, RpcError> {
        let raw = bitcoin::consensus::encode::serialize_hex(&tx);
        let params = Value::Array(vec![Value::String(raw)]);
        let rpc = methods::Rpc {
            node: &self.shared.node,
        };
        jsonrpc::Dispatch::call(&rpc, "sendrawtransaction", &params)?;
        Ok(tx.compute_txid())
    }

    /// Removes a mempool transaction and its descendants; returns what was removed.
    pub fn evict(&self, txid: &Txid) -> Vec<Txid> {
        self.node().evict(txid)
    }

    /// Replaces the last `depth` blocks with `blocks` new ones; returns the new hashes.
    pub fn reorg(&self, depth: u32, blocks: u32, salt: u64) -> Result<Vec<BlockHash>, String> {
        self.node().reorg(depth, blocks, salt)
    }

    /// Answers -28 with `message` (None: stop warming up), for `duration` or until told.
    pub fn set_warmup(&self, message: Option<&str>, duration: Option<Duration>) {
        self.node()
            .set_warmup(message.map(str::to_string), duration)
    }

    /// Offline closes every RPC/REST connection and refuses new ones; online listens again on
    /// the same port.
    pub fn set_online(&self, up: bool) -> io::Result<()> {
        self.shared.switch.set_online(up)
    }

    /// The rate estimatesmartfee reports, in sat/kvB (None: "Insufficient data").
    pub fn set_fee_rate(&self, sat_per_kvb: Option<u64>) {
        self.node().fee_rate = sat_per_kvb;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
        if let Some(cookie) = &self.cookie {
            let _ = std::fs::remove_file(cookie);
        }
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The accepted `user:password`, the cookie written (if any) and a temporary dir made for it.
fn credentials(auth: &Auth, port: u16) -> io::Result<(String, Option<PathBuf>, Option<PathBuf>)> {
    match auth {
        Auth::UserPass(user, pass) => Ok((format!("{user}:{pass}"), None, None)),
        Auth::Cookie(path) => {
            let (path, temp_dir) = match path {
                Some(p) => (p.clone(), None),
                None => {
                    let dir = std::env::temp_dir()
                        .join(format!("ferrum-emulator-{}-{port}", std::process::id()));
                    std::fs::create_dir_all(&dir)?;
                    (dir.join(".cookie"), Some(dir))
                }
            };
            let secret: [u8; 32] = bitcoin::secp256k1::rand::random();
            let credentials = format!("__cookie__:{}", methods::hex(&secret));
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &credentials)?;
            std::fs::rename(&tmp, &path)?;
            Ok((credentials, Some(path), temp_dir))
        }
    }
}

/// Builds the node state from the configured source.
fn load(config: &EmulatorConfig) -> io::Result<Node> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let limit = config.initial_height.unwrap_or(u32::MAX);
    let mut node;
    match &config.source {
        ChainSource::Generated { params, blocks } => {
            let mut gen = ChainGenerator::new(params.clone());
            let genesis = bitcoin::consensus::serialize(&gen.genesis());
            let served = (*blocks).min(limit);
            let remember_from = served.saturating_sub(config.reorg_depth as u32 + 1);
            node = Node::new(None, config.reorg_depth);
            node.connect(genesis).map_err(|e| invalid(e.to_string()))?;
            if remember_from == 0 {
                node.push_history(gen.clone());
            }
            let mut blocks_made = Vec::new();
            for height in 1..=served {
                let raw = bitcoin::consensus::serialize(&gen.next_block());
                if height > remember_from {
                    blocks_made.push((raw, gen.clone()));
                } else {
                    node.connect(raw).map_err(|e| invalid(e.to_string()))?;
                }
            }
            node.attach_generator(gen);
            for (raw, state) in blocks_made {
                node.connect_with_state(raw, state)
                    .map_err(|e| invalid(e.to_string()))?;
            }
            if config.mempool_txs > 0 {
                node.add_generated(config.mempool_txs).map_err(invalid)?;
            }
        }
        ChainSource::File(path) => {
            node = Node::new(None, config.reorg_depth);
            let reader = ChainReader::open(path)?;
            for block in reader {
                add_block(&mut node, block?, limit)?;
            }
        }
        ChainSource::Blocks(blocks) => {
            node = Node::new(None, config.reorg_depth);
            for block in blocks {
                add_block(&mut node, block.clone(), limit)?;
            }
        }
    }
    if node.chain.tip().is_none() {
        return Err(invalid("the chain has no blocks".into()));
    }
    if let Some((message, duration)) = &config.warmup {
        node.set_warmup(Some(message.clone()), *duration);
    }
    node.zmq_pubhashblock = config.zmq_pubhashblock.clone();
    Ok(node)
}

fn add_block(node: &mut Node, block: Block, limit: u32) -> io::Result<()> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let genesis = genesis_block(Network::Regtest);
    if node.chain.tip().is_none() && block.header.prev_blockhash == genesis.block_hash() {
        node.connect(bitcoin::consensus::serialize(&genesis))
            .map_err(|e| invalid(e.to_string()))?;
    }
    let raw = bitcoin::consensus::serialize(&block);
    let next = node.chain.height().map_or(0, |h| h + 1);
    if next > limit || node.has_held_back() {
        node.hold_back(raw);
        return Ok(());
    }
    node.connect(raw).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}
