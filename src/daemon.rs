//! The node client: JSON-RPC and REST over keep-alive HTTP to bitcoind, with round-robin
//! failover across `DAEMON_URL`s, capped-backoff retries, bounded concurrency, and the start-up
//! checks (network, version, REST) whose errors say what to change.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bitcoin::base64::engine::general_purpose::STANDARD as BASE64;
use bitcoin::base64::Engine;
use bitcoin::BlockHash;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use crate::coin::Network;
use crate::hex::from_hex;
use crate::http::{HttpConn, HttpError, Response};

/// Oldest bitcoind accepted (0.21: signet, REST `blockhashbyheight`, stable `getblock` verbosity 0).
pub const MIN_NODE_VERSION: u64 = 210000;
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// JSON-RPC error code bitcoind returns while loading (RPC_IN_WARMUP).
const RPC_IN_WARMUP: i64 = -28;
/// RPC_INVALID_ADDRESS_OR_KEY: what `getblock` answers for an unknown block.
const RPC_NOT_FOUND: i64 = -5;
const RPC_METHOD_NOT_FOUND: i64 = -32601;

/// How to reach the node. Built by the configuration layer from the environment.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// `DAEMON_URL` entries; each may itself be a comma-separated list.
    pub urls: Vec<String>,
    /// Authenticate with bitcoind's `.cookie` file instead of (or when a URL lacks) user:password.
    pub cookie_file: Option<PathBuf>,
    /// Bound on one request, connect included.
    pub request_timeout: Duration,
    /// Requests in flight at once across all connections (bitcoind's rpcworkqueue is 16).
    pub max_concurrency: usize,
    /// Give up on an unreachable node after this long; None retries forever, as ElectrumX.
    pub give_up_after: Option<Duration>,
}

impl DaemonSettings {
    pub fn new(urls: Vec<String>) -> DaemonSettings {
        DaemonSettings {
            urls,
            cookie_file: None,
            request_timeout: Duration::from_secs(60),
            max_concurrency: 8,
            give_up_after: None,
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// The settings or the node's configuration are wrong; the message says what to change.
    Config(String),
    /// The node answered the call with an error.
    Rpc {
        method: String,
        code: i64,
        message: String,
    },
    /// The node has no block with this hash.
    MissingBlock(BlockHash),
    /// No node answered within `give_up_after`.
    Unavailable(String),
    /// [`Daemon::stop`] was called: the server is shutting down.
    Stopped,
    /// The node's answer made no sense.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) | Error::Unavailable(m) | Error::Protocol(m) => f.write_str(m),
            Error::Rpc {
                method,
                code,
                message,
            } => write!(f, "{method}: node error {code}: {message}"),
            Error::MissingBlock(hash) => write!(f, "the node has no block {hash}"),
            Error::Stopped => f.write_str("the node client is stopped: shutting down"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Asking again cannot help: the settings are wrong, no node answered in time, or the
    /// client is stopped.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Error::Config(_) | Error::Unavailable(_) | Error::Stopped
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One parsed `DAEMON_URL` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl DaemonUrl {
    /// Parses `[http://][user:pass@]host[:port][/]` (ElectrumX's syntax; IPv6 hosts in brackets).
    /// User and password may be percent-encoded, as in any URL.
    pub fn parse(url: &str, default_port: u16) -> Result<DaemonUrl> {
        let bad = |why: &str| {
            Error::Config(format!(
                "bad DAEMON_URL entry {:?}: {why}",
                without_password(url)
            ))
        };
        let mut rest = url.trim();
        if rest.len() >= 8 && rest[..8].eq_ignore_ascii_case("https://") {
            return Err(bad("https is not supported (bitcoind serves plain HTTP)"));
        }
        if rest.len() >= 7 && rest[..7].eq_ignore_ascii_case("http://") {
            rest = &rest[7..];
        } else if rest.contains("://") {
            return Err(bad("only http:// URLs are supported"));
        }
        // A password may hold '/' or '@': the host is what follows the last '@'.
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
        if hostport.contains('/') {
            return Err(bad("a path is not supported"));
        }
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(percent_decoded(user)), Some(percent_decoded(pass))),
                None => return Err(bad("expected user:password before '@'")),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad(&format!("bad IPv6 address {host:?}")));
            }
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
                ),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse()
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| bad(&format!("bad port {p:?}")))?,
        };
        Ok(DaemonUrl {
            host: host.to_string(),
            port,
            user,
            password,
        })
    }

    /// The URL as logged: no credentials, as ElectrumX's `logged_url`.
    pub fn logged(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}/", self.host, self.port)
        } else {
            format!("{}:{}/", self.host, self.port)
        }
    }
}

/// Parses every `DAEMON_URL` entry, splitting comma-separated lists.
pub fn parse_daemon_urls(urls: &[String], default_port: u16) -> Result<Vec<DaemonUrl>> {
    let parsed: Vec<DaemonUrl> = urls
        .iter()
        .flat_map(|u| u.split(','))
        .filter(|u| !u.trim().is_empty())
        .map(|u| DaemonUrl::parse(u, default_port))
        .collect::<Result<_>>()?;
    if parsed.is_empty() {
        return Err(Error::Config(
            "DAEMON_URL is empty: set it to user:password@host:port".into(),
        ));
    }
    Ok(parsed)
}

/// Reads bitcoind's `.cookie` file (`__cookie__:<password>`) as a `user:password` string.
pub fn read_cookie(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the node's cookie file {}: {e} (is bitcoind running with this datadir?)",
            path.display()
        ))
    })?;
    let cookie = text.trim();
    if !cookie.contains(':') {
        return Err(Error::Config(format!(
            "cookie file {} does not hold user:password",
            path.display()
        )));
    }
    Ok(cookie.to_string())
}

/// What the start-up checks learnt about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub version: u64,
    pub subversion: String,
    /// `/rest/` answers, so blocks are fetched in binary.
    pub rest: bool,
    /// Lowest height with block data, when the node prunes.
    pub prune_height: Option<u32>,
    /// The node keeps a transaction index (None: it cannot say, before 0.21).
    pub txindex: Option<bool>,
}

/// Why one attempt failed, and whether another node might do better.
struct Problem {
    message: String,
    on_recovery: &'static str,
}

enum Outcome<T> {
    Done(T),
    Retry(Problem),
    Fatal(Error),
}

/// One `DAEMON_URL` entry with its idle connections.
struct Node {
    url: DaemonUrl,
    /// Its genesis block is the network's: checked before the node first serves a request.
    on_network: AtomicBool,
    pool: Mutex<Vec<HttpConn>>,
    /// The problem last logged and what to log when it clears.
    last_problem: Mutex<Option<(String, &'static str)>>,
}

/// The node client shared by the indexer, mempool and protocol layers.
pub struct Daemon {
    /// Replaced whole by [`Daemon::set_urls`]; requests in flight keep the list they started with.
    nodes: RwLock<Arc<Vec<Node>>>,
    /// `DAEMON_URL` as configured: what the `daemon_url` admin command restores.
    configured: Vec<String>,
    /// The network every node must be on; its RPC port is the URLs' default.
    network: &'static Network,
    cookie_file: Option<PathBuf>,
    cookie: Mutex<Option<String>>,
    /// Index of the node in use (modulo the list's length).
    current: AtomicUsize,
    /// Signalled whenever the node in use changes (failover, [`Daemon::set_urls`]).
    node_changed: watch::Sender<()>,
    /// Set once by [`Daemon::stop`]: requests waiting on a node end at once.
    stopped: watch::Sender<bool>,
    permits: Semaphore,
    timeout: Duration,
    give_up_after: Option<Duration>,
    next_id: AtomicU64,
    rest: AtomicBool,
    /// [`Daemon::check`] passed: from then on a node not yet used is checked on first use.
    checked: AtomicBool,
}

impl Daemon {
    pub fn new(settings: &DaemonSettings, network: &'static Network) -> Result<Daemon> {
        let daemon = Daemon {
            nodes: RwLock::new(Arc::new(Vec::new())),
            configured: settings.urls.clone(),
            network,
            cookie_file: settings.cookie_file.clone(),
            cookie: Mutex::new(None),
            current: AtomicUsize::new(0),
            node_changed: watch::Sender::new(()),
            stopped: watch::Sender::new(false),
            permits: Semaphore::new(settings.max_concurrency.max(1)),
            timeout: settings.request_timeout,
            give_up_after: settings.give_up_after,
            next_id: AtomicU64::new(1),
            rest: AtomicBool::new(true),
            checked: AtomicBool::new(false),
        };
        daemon.set_urls(&settings.urls)?;
        Ok(daemon)
    }

    /// The `DAEMON_URL` entries the client was started with.
    pub fn configured_urls(&self) -> &[String] {
        &self.configured
    }

    /// Replaces the node list and rotates to its first entry (the `daemon_url` admin command).
    /// On error the current list stays.
    pub fn set_urls(&self, urls: &[String]) -> Result<()> {
        let urls = parse_daemon_urls(urls, self.network.rpc_port)?;
        if self.cookie_file.is_none() {
            if let Some(u) = urls.iter().find(|u| u.user.is_none()) {
                return Err(Error::Config(format!(
                    "DAEMON_URL {} has no user:password and no cookie file is set",
                    u.logged()
                )));
            }
        }
        for (n, url) in urls.iter().enumerate() {
            let status = if n == 0 { " (current)" } else { "" };
            info!("daemon #{} at {}{status}", n + 1, url.logged());
        }
        let nodes = urls
            .into_iter()
            .map(|url| Node {
                url,
                pool: Mutex::new(Vec::new()),
                on_network: AtomicBool::new(false),
                last_problem: Mutex::new(None),
            })
            .collect::<Vec<_>>();
        // The same node again (new credentials, say) is no change of node.
        let moved = !self.nodes().is_empty() && self.current_url() != nodes[0].url.logged();
        *self.nodes.write().expect("nodes lock") = Arc::new(nodes);
        self.current.store(0, Ordering::Relaxed);
        if moved {
            self.node_changed.send_replace(());
        }
        Ok(())
    }

    fn nodes(&self) -> Arc<Vec<Node>> {
        self.nodes.read().expect("nodes lock").clone()
    }

    /// Marked changed whenever the node in use changes, so that whatever follows that node
    /// (its ZMQ publisher) can follow it to the next.
    pub fn node_changes(&self) -> watch::Receiver<()> {
        self.node_changed.subscribe()
    }

    /// The node currently used.
    pub fn current_node(&self) -> DaemonUrl {
        let nodes = self.nodes();
        nodes[self.current.load(Ordering::Relaxed) % nodes.len()]
            .url
            .clone()
    }

    /// The node currently used, as logged.
    pub fn current_url(&self) -> String {
        self.current_node().logged()
    }

    /// Ends every request, in flight or to come, with [`Error::Stopped`]: at shutdown no
    /// caller should wait out a node that is down.
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Whether blocks are fetched over REST (set by [`Daemon::check`]).
    pub fn rest_enabled(&self) -> bool {
        self.rest.load(Ordering::Relaxed)
    }

    /// Forces the JSON-RPC hex route for blocks (benchmarks; REST-less nodes).
    pub fn set_rest(&self, enabled: bool) {
        self.rest.store(enabled, Ordering::Relaxed);
    }

    /// One JSON-RPC call. Warm-up and connection problems are retried; node errors are not.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let body = self.call_body(method, params);
        self.exchange(method, "POST", "/", &body, |resp| {
            call_outcome(method, resp)
        })
        .await
    }

    fn call_body(&self, method: &str, params: Value) -> Vec<u8> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "1.0", "id": id, "method": method, "params": params});
        serde_json::to_vec(&body).expect("JSON values serialize")
    }

    /// A JSON-RPC batch in one request. The outer error is for the whole exchange; each call's
    /// own error comes back in its slot. Retried whole if any call meets a warming-up node.
    pub async fn batch(&self, calls: &[(&str, Value)]) -> Result<Vec<Result<Value>>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let first_id = self
            .next_id
            .fetch_add(calls.len() as u64, Ordering::Relaxed);
        let body: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (m, p))| json!({"jsonrpc": "1.0", "id": first_id + i as u64, "method": m, "params": p}))
            .collect();
        let body = serde_json::to_vec(&body).expect("JSON values serialize");
        let what = format!("batch of {} {}", calls.len(), calls[0].0);
        self.exchange(&what, "POST", "/", &body, |resp| {
            let replies = match parse_json(&resp) {
                Ok(Value::Array(items)) => items,
                Ok(Value::Object(o)) => {
                    // A batch-level error (e.g. warm-up) comes back as a single object.
                    return match rpc_result(&what, Value::Object(o)) {
                        Err(Error::Rpc { code, message, .. }) if code == RPC_IN_WARMUP => {
                            Outcome::Retry(warming_up(&message))
                        }
                        Err(e) => Outcome::Fatal(e),
                        Ok(_) => Outcome::Fatal(Error::Protocol(format!(
                            "{what}: the node answered a batch with a single result"
                        ))),
                    };
                }
                Ok(_) => {
                    return Outcome::Fatal(Error::Protocol(format!(
                        "{what}: reply is not an array"
                    )))
                }
                Err(o) => return o,
            };
            let mut slots: Vec<Option<Result<Value>>> = (0..calls.len()).map(|_| None).collect();
            for reply in replies {
                let slot = reply
                    .get("id")
                    .and_then(Value::as_u64)
                    .and_then(|id| id.checked_sub(first_id))
                    .filter(|&i| (i as usize) < calls.len());
                let Some(i) = slot else {
                    return Outcome::Fatal(Error::Protocol(format!(
                        "{what}: reply with unknown id"
                    )));
                };
                let i = i as usize;
                let result = rpc_result(calls[i].0, reply);
                if let Err(Error::Rpc { code, message, .. }) = &result {
                    if *code == RPC_IN_WARMUP {
                        return Outcome::Retry(warming_up(message));
                    }
                }
                slots[i] = Some(result);
            }
            match slots.into_iter().collect::<Option<Vec<_>>>() {
                Some(all) => Outcome::Done(all),
                None => Outcome::Fatal(Error::Protocol(format!("{what}: replies missing"))),
            }
        })
        .await
    }

    /// GET a REST path; None when the node answers 404.
    pub async fn rest_get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.exchange(path, "GET", path, &[], |resp| match resp.status {
            200 => Outcome::Done(Some(resp.body)),
            404 => Outcome::Done(None),
            s => Outcome::Fatal(Error::Protocol(format!(
                "GET {path}: HTTP {s} {}: {}",
                resp.reason,
                String::from_utf8_lossy(&resp.body).trim()
            ))),
        })
        .await
    }

    pub async fn block_count(&self) -> Result<u32> {
        let v = self.call("getblockcount", json!([])).await?;
        as_height("getblockcount", &v)
    }

    pub async fn best_block_hash(&self) -> Result<BlockHash> {
        let v = self.call("getbestblockhash", json!([])).await?;
        as_block_hash("getbestblockhash", &v)
    }

    pub async fn block_hash(&self, height: u32) -> Result<BlockHash> {
        let v = self.call("getblockhash", json!([height])).await?;
        as_block_hash("getblockhash", &v)
    }

    /// Hashes of the blocks at `heights`, in one batch.
    pub async fn block_hashes(&self, heights: Range<u32>) -> Result<Vec<BlockHash>> {
        let calls: Vec<(&str, Value)> = heights.map(|h| ("getblockhash", json!([h]))).collect();
        self.batch(&calls)
            .await?
            .into_iter()
            .map(|r| as_block_hash("getblockhash", &r?))
            .collect()
    }

    /// The serialized block: REST binary when enabled, else `getblock <hash> 0` hex.
    pub async fn block_raw(&self, hash: &BlockHash) -> Result<Vec<u8>> {
        if self.rest_enabled() {
            if let Some(raw) = self.rest_get(&format!("/rest/block/{hash}.bin")).await? {
                return Ok(raw);
            }
            // 404: the block is unknown, or this node (after a failover) has REST off; ask
            // over JSON-RPC, which tells the two apart.
        }
        match self.call("getblock", json!([hash.to_string(), 0])).await {
            Ok(Value::String(hex)) => from_hex(&hex)
                .ok_or_else(|| Error::Protocol(format!("getblock {hash}: reply is not hex"))),
            Ok(_) => Err(Error::Protocol(format!(
                "getblock {hash}: reply is not a string"
            ))),
            Err(Error::Rpc { code, .. }) if code == RPC_NOT_FOUND => {
                Err(Error::MissingBlock(*hash))
            }
            Err(e) => Err(e),
        }
    }

    /// Start-up checks: the node is on the client's network, recent enough, and whether REST
    /// and a txindex are on.
    pub async fn check(&self) -> Result<NodeInfo> {
        let network = self.network;
        let genesis = self.block_hash(0).await?;
        // The node that answered, which need not be the first if that one is down.
        let url = self.current_url();
        if genesis != network.genesis() {
            return Err(Error::Config(format!(
                "the node at {url} is on another network: its genesis block is {genesis}, but \
                 {network} starts with {}; point DAEMON_URL at a {} node or set COIN/NET to match",
                network.genesis_hash, network.net
            )));
        }
        self.mark_on_network();
        let netinfo = self.call("getnetworkinfo", json!([])).await?;
        let version = netinfo
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                Error::Protocol("getnetworkinfo: reply has no numeric version".into())
            })?;
        let subversion = netinfo
            .get("subversion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if version < MIN_NODE_VERSION {
            return Err(Error::Config(format!(
                "the node at {url} runs version {version} ({subversion}); Ferrum needs bitcoind \
                 0.21.0 or later"
            )));
        }
        let chaininfo = self.call("getblockchaininfo", json!([])).await?;
        let prune_height = match chaininfo.get("pruned").and_then(Value::as_bool) {
            Some(true) => Some(
                chaininfo
                    .get("pruneheight")
                    .and_then(Value::as_u64)
                    .and_then(|h| u32::try_from(h).ok())
                    .unwrap_or(0),
            ),
            _ => None,
        };
        let txindex = match self.call("getindexinfo", json!([])).await {
            Ok(indexes) => Some(indexes.get("txindex").is_some()),
            Err(Error::Rpc { code, .. }) if code == RPC_METHOD_NOT_FOUND => None,
            Err(e) => return Err(e),
        };
        if txindex == Some(false) {
            warn!(
                "the node at {url} keeps no transaction index: wallets cannot fetch confirmed \
                 transactions (blockchain.transaction.get), so Electrum wallets cannot load \
                 their histories; add txindex=1 to bitcoin.conf"
            );
        }
        let rest = self
            .rest_get(&format!("/rest/block/{genesis}.bin"))
            .await?
            .is_some();
        self.set_rest(rest);
        if rest {
            info!("daemon {url}: {subversion}, fetching blocks in binary over REST");
        } else {
            warn!(
                "REST is disabled on the node at {url}: fetching blocks as hex over JSON-RPC; \
                 add rest=1 to bitcoin.conf for faster sync"
            );
        }
        Ok(NodeInfo {
            version,
            subversion: subversion.to_string(),
            rest,
            prune_height,
            txindex,
        })
    }

    /// Runs one HTTP exchange against the current node, retrying and failing over until
    /// `classify` accepts or rejects the response, or until the client is stopped.
    async fn exchange<T>(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: &[u8],
        classify: impl Fn(Response) -> Outcome<T>,
    ) -> Result<T> {
        let retried = async {
            let started = Instant::now();
            let mut backoff = INITIAL_BACKOFF;
            let mut failed_in_round = 0;
            loop {
                let nodes = self.nodes();
                let idx = self.current.load(Ordering::Relaxed) % nodes.len();
                let node = &nodes[idx];
                let problem = match self.checked_attempt(node, method, path, body).await {
                    Ok(resp) => match classify(resp) {
                        Outcome::Done(v) => {
                            recovered(node);
                            return Ok(v);
                        }
                        Outcome::Fatal(e) => {
                            recovered(node);
                            return Err(e);
                        }
                        Outcome::Retry(p) => p,
                    },
                    Err(p) => p,
                };
                report(node, &problem);
                if let Some(limit) = self.give_up_after {
                    if started.elapsed() >= limit {
                        return Err(Error::Unavailable(format!(
                            "{what}: gave up after {:.1}s: daemon {}: {}",
                            started.elapsed().as_secs_f64(),
                            node.url.logged(),
                            problem.message
                        )));
                    }
                }
                failed_in_round += 1;
                if nodes.len() > 1 {
                    self.failover(&nodes, idx);
                }
                // Try every node once before sleeping, then back off (capped) between rounds.
                if failed_in_round >= nodes.len() {
                    failed_in_round = 0;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let mut stopped = self.stopped.subscribe();
        tokio::select! {
            biased; // once stopped, nothing more is sent
            _ = stopped.wait_for(|stopped| *stopped) => Err(Error::Stopped),
            result = retried => result,
        }
    }

    /// The node in use passed [`Daemon::check`]: it is on the network, and from now on every
    /// other node is checked before it is used.
    fn mark_on_network(&self) {
        let nodes = self.nodes();
        let idx = self.current.load(Ordering::Relaxed) % nodes.len();
        nodes[idx].on_network.store(true, Ordering::Relaxed);
        self.checked.store(true, Ordering::Relaxed);
    }

    /// [`Daemon::attempt`], once the node is known to be on the network. A failover entry on
    /// another network would otherwise feed the index its blocks.
    async fn checked_attempt(
        &self,
        node: &Node,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::result::Result<Response, Problem> {
        if self.checked.load(Ordering::Relaxed) && !node.on_network.load(Ordering::Relaxed) {
            self.check_network(node).await?;
            node.on_network.store(true, Ordering::Relaxed);
        }
        self.attempt(node, method, path, body).await
    }

    /// Asks `node` for its genesis block; another network's is a problem that keeps it unused.
    async fn check_network(&self, node: &Node) -> std::result::Result<(), Problem> {
        let body = self.call_body("getblockhash", json!([0]));
        let resp = self.attempt(node, "POST", "/", &body).await?;
        let problem = |message: String| Problem {
            message,
            on_recovery: "running normally",
        };
        let genesis = match call_outcome("getblockhash", resp) {
            Outcome::Done(v) => {
                as_block_hash("getblockhash", &v).map_err(|e| problem(e.to_string()))?
            }
            Outcome::Retry(p) => return Err(p),
            Outcome::Fatal(e) => return Err(problem(e.to_string())),
        };
        let network = self.network;
        if genesis != network.genesis() {
            return Err(problem(format!(
                "on another network: its genesis block is {genesis}, but {network} starts with \
                 {}; it is not used: fix or remove this DAEMON_URL entry",
                network.genesis_hash
            )));
        }
        Ok(())
    }

    /// One request to node `idx`, on a pooled connection (or a fresh one if the pooled one
    /// turns out to be stale).
    async fn attempt(
        &self,
        node: &Node,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::result::Result<Response, Problem> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closed");
        let url = &node.url;
        let auth = self.authorization(url)?;
        let pooled = node.pool.lock().expect("pool lock").pop();
        let result = match pooled {
            Some(mut conn) => match self
                .timed(&mut conn, method, path, auth.as_deref(), body)
                .await
            {
                // A keep-alive connection the node closed while idle: retry on a fresh one.
                Err(HttpError::Io(e)) if e.kind() != std::io::ErrorKind::TimedOut => {
                    self.fresh(url, method, path, auth.as_deref(), body).await
                }
                r => r.map(|resp| (conn, resp)),
            },
            None => self.fresh(url, method, path, auth.as_deref(), body).await,
        };
        let (conn, resp) = result.map_err(|e| Problem {
            message: match e {
                HttpError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    format!("timed out after {:.0}s", self.timeout.as_secs_f64())
                }
                HttpError::Io(e) => {
                    format!("connection problem ({e}); check that bitcoind is running")
                }
                // The P2P port, say: nothing that speaks HTTP.
                e @ HttpError::Malformed(_) => format!(
                    "{e}; is this the node's RPC port (rpcport, {} by default on {})?",
                    self.network.rpc_port, self.network
                ),
            },
            on_recovery: "connection restored",
        })?;
        if resp.keep_alive {
            node.pool.lock().expect("pool lock").push(conn);
        }
        match resp.status {
            401 => {
                // A restarted bitcoind writes a new cookie: read it again next time.
                *self.cookie.lock().expect("cookie lock") = None;
                Err(Problem {
                    message: "daemon service refused: HTTP 401 Unauthorized; check the \
                              user:password in DAEMON_URL or the cookie file"
                        .into(),
                    on_recovery: "running normally",
                })
            }
            403 => Err(Problem {
                message: "daemon service refused: HTTP 403 Forbidden; add rpcallowip=<this \
                          host> to bitcoin.conf"
                    .into(),
                on_recovery: "running normally",
            }),
            503 => Err(Problem {
                message: unavailable_reason(&resp.body),
                on_recovery: "running normally",
            }),
            _ => Ok(resp),
        }
    }

    async fn fresh(
        &self,
        url: &DaemonUrl,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> std::result::Result<(HttpConn, Response), HttpError> {
        let mut conn = tokio::time::timeout(self.timeout, HttpConn::connect(&url.host, url.port))
            .await
            .map_err(|_| HttpError::Io(std::io::ErrorKind::TimedOut.into()))??;
        let resp = self.timed(&mut conn, method, path, auth, body).await?;
        Ok((conn, resp))
    }

    async fn timed(
        &self,
        conn: &mut HttpConn,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: &[u8],
    ) -> std::result::Result<Response, HttpError> {
        tokio::time::timeout(self.timeout, conn.request(method, path, auth, body))
            .await
            .map_err(|_| HttpError::Io(std::io::ErrorKind::TimedOut.into()))?
    }

    fn authorization(&self, url: &DaemonUrl) -> std::result::Result<Option<String>, Problem> {
        if let (Some(user), Some(pass)) = (&url.user, &url.password) {
            return Ok(Some(format!(
                "Basic {}",
                BASE64.encode(format!("{user}:{pass}"))
            )));
        }
        let Some(path) = &self.cookie_file else {
            return Ok(None);
        };
        let mut cached = self.cookie.lock().expect("cookie lock");
        if cached.is_none() {
            let cookie = read_cookie(path).map_err(|e| Problem {
                message: e.to_string(),
                on_recovery: "running normally",
            })?;
            *cached = Some(format!("Basic {}", BASE64.encode(cookie)));
        }
        Ok(cached.clone())
    }

    fn failover(&self, nodes: &[Node], from: usize) {
        let next = (from + 1) % nodes.len();
        if self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // Round and round nodes that are all down: said once per node, until it recovers.
            let known_down = nodes[next]
                .last_problem
                .lock()
                .expect("problem lock")
                .is_some();
            match known_down {
                false => info!("failing over to daemon {}", nodes[next].url.logged()),
                true => debug!("failing over to daemon {}", nodes[next].url.logged()),
            }
            self.node_changed.send_replace(());
        }
    }
}

/// Logs a problem once per change of state, not once per retry.
fn report(node: &Node, problem: &Problem) {
    let mut last = node.last_problem.lock().expect("problem lock");
    if last.as_ref().map(|(m, _)| m) != Some(&problem.message) {
        warn!(
            "daemon {}: {}; retrying",
            node.url.logged(),
            problem.message
        );
        *last = Some((problem.message.clone(), problem.on_recovery));
    }
}

fn recovered(node: &Node) {
    let mut last = node.last_problem.lock().expect("problem lock");
    if let Some((_, state)) = last.take() {
        info!("daemon {}: {state}", node.url.logged());
    }
}

/// Why bitcoind answered HTTP 503, from the body it sends with it.
fn unavailable_reason(body: &[u8]) -> String {
    match String::from_utf8_lossy(body).trim() {
        "Work queue depth exceeded" => {
            "work queue full (HTTP 503); raise rpcworkqueue in bitcoin.conf".into()
        }
        "Request rejected during server shutdown" => "the node is shutting down (HTTP 503)".into(),
        "" => "the node is unavailable (HTTP 503)".into(),
        other => format!("the node is unavailable (HTTP 503: {other})"),
    }
}

fn warming_up(message: &str) -> Problem {
    Problem {
        message: format!("node is warming up ({message})"),
        on_recovery: "running normally",
    }
}

/// `url` with its password (if any) masked, for error messages.
fn without_password(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// `s` with its `%XX` escapes decoded; a `%` not followed by two hex digits stays as it is.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a JSON-RPC reply body. bitcoind answers errors with HTTP 404/500 and a JSON body,
/// so any status with a JSON body is a reply.
fn parse_json<T>(resp: &Response) -> std::result::Result<Value, Outcome<T>> {
    match serde_json::from_slice(&resp.body) {
        Ok(v) => Ok(v),
        Err(e) if resp.status == 200 => Err(Outcome::Fatal(Error::Protocol(format!(
            "the node sent invalid JSON: {e}"
        )))),
        Err(_) => Err(Outcome::Retry(Problem {
            message: format!(
                "daemon service refused: HTTP {} {}: {}",
                resp.status,
                resp.reason,
                String::from_utf8_lossy(&resp.body).trim()
            ),
            on_recovery: "running normally",
        })),
    }
}

/// What one JSON-RPC call's response means: its result, a node still warming up (retried),
/// or an error.
fn call_outcome(method: &str, resp: Response) -> Outcome<Value> {
    let reply = match parse_json(&resp) {
        Ok(v) => v,
        Err(o) => return o,
    };
    match rpc_result(method, reply) {
        Err(Error::Rpc { code, message, .. }) if code == RPC_IN_WARMUP => {
            Outcome::Retry(warming_up(&message))
        }
        Err(e) => Outcome::Fatal(e),
        Ok(v) => Outcome::Done(v),
    }
}

/// Splits a JSON-RPC reply object into its result or its error.
fn rpc_result(method: &str, mut reply: Value) -> Result<Value> {
    let error = reply
        .get_mut("error")
        .map(Value::take)
        .unwrap_or(Value::Null);
    if !error.is_null() {
        return Err(Error::Rpc {
            method: method.to_string(),
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string(),
        });
    }
    match reply.get_mut("result") {
        Some(v) => Ok(v.take()),
        None => Err(Error::Protocol(format!(
            "{method}: reply has neither result nor error"
        ))),
    }
}

fn as_height(method: &str, v: &Value) -> Result<u32> {
    v.as_u64()
        .and_then(|h| u32::try_from(h).ok())
        .ok_or_else(|| Error::Protocol(format!("{method}: expected a height, got {v}")))
}

fn as_block_hash(method: &str, v: &Value) -> Result<BlockHash> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("{method}: expected a block hash, got {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A request as the fake node saw it.
    struct Seen {
        path: String,
        auth: Option<String>,
        body: Value,
    }

    type Handler = dyn Fn(&Seen) -> Option<(u16, String)> + Send + Sync;

    /// A scripted HTTP node on 127.0.0.1. The handler returns (status, JSON body), or None to
    /// drop the connection without answering.
    struct FakeNode {
        port: u16,
        requests: Arc<AtomicUsize>,
        connections: Arc<AtomicUsize>,
    }

    impl FakeNode {
        async fn start(close_after_each: bool, handler: Arc<Handler>) -> FakeNode {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let requests = Arc::new(AtomicUsize::new(0));
            let connections = Arc::new(AtomicUsize::new(0));
            let (reqs, conns) = (requests.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    conns.fetch_add(1, Ordering::SeqCst);
                    let (handler, reqs) = (handler.clone(), reqs.clone());
                    tokio::spawn(async move {
                        let mut stream = BufReader::new(stream);
                        loop {
                            let Some(seen) = read_request(&mut stream).await else {
                                return;
                            };
                            reqs.fetch_add(1, Ordering::SeqCst);
                            let Some((status, body)) = handler(&seen) else {
                                return;
                            };
                            let reply = format!(
                                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream.get_mut().write_all(reply.as_bytes()).await.is_err()
                                || close_after_each
                            {
                                return;
                            }
                        }
                    });
                }
            });
            FakeNode {
                port,
                requests,
                connections,
            }
        }

        fn url(&self) -> String {
            format!("u:p@127.0.0.1:{}", self.port)
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    async fn read_request(stream: &mut BufReader<tokio::net::TcpStream>) -> Option<Seen> {
        let mut line = String::new();
        stream.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
        let path = line.split(' ').nth(1)?.to_string();
        let (mut len, mut auth) = (0, None);
        loop {
            let mut h = String::new();
            stream.read_line(&mut h).await.ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(": ")?;
            match name {
                "Content-Length" => len = value.parse().ok()?,
                "Authorization" => auth = Some(value.to_string()),
                _ => {}
            }
        }
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await.ok()?;
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Some(Seen { path, auth, body })
    }

    fn reply(id: &Value, result: Value) -> String {
        json!({"result": result, "error": null, "id": id}).to_string()
    }

    fn error_reply(id: &Value, code: i64, message: &str) -> String {
        json!({"result": null, "error": {"code": code, "message": message}, "id": id}).to_string()
    }

    fn daemon(urls: Vec<String>) -> Daemon {
        daemon_on(urls, Network::lookup("Bitcoin", Some("regtest")).unwrap())
    }

    fn daemon_on(urls: Vec<String>, network: &'static Network) -> Daemon {
        let mut settings = DaemonSettings::new(urls);
        settings.give_up_after = Some(Duration::from_secs(2));
        settings.request_timeout = Duration::from_secs(5);
        Daemon::new(&settings, network).unwrap()
    }

    #[test]
    fn daemon_urls_parse_like_electrumx() {
        let p = |s: &str| DaemonUrl::parse(s, 8332).unwrap();
        let full = DaemonUrl {
            host: "node.example".into(),
            port: 18443,
            user: Some("alice".into()),
            password: Some("s:e@cret".into()),
        };
        assert_eq!(p("http://alice:s:e@cret@node.example:18443/"), full);
        assert_eq!(p("alice:s:e@cret@node.example:18443"), full);
        assert_eq!(p(" HTTP://alice:s:e@cret@node.example:18443 "), full);
        let default_port = p("alice:pw@10.0.0.1");
        assert_eq!(
            (default_port.host.as_str(), default_port.port),
            ("10.0.0.1", 8332)
        );
        let v6 = p("u:p@[::1]:9000/");
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.logged()),
            ("::1", 9000, "[::1]:9000/".to_string())
        );
        assert_eq!(p("[::1]").port, 8332);
        let bare = p("localhost:1234");
        assert_eq!(bare.logged(), "localhost:1234/");
        assert_eq!((bare.user, bare.password), (None, None));
    }

    #[test]
    fn bad_daemon_urls_say_what_is_wrong() {
        let e = |s: &str| DaemonUrl::parse(s, 8332).unwrap_err().to_string();
        // The password never shows.
        assert_eq!(e("https://u:p@h:1"), "bad DAEMON_URL entry \"https://u:***@h:1\": https is not supported (bitcoind serves plain HTTP)");
        assert_eq!(
            e("u:p@h:notaport"),
            "bad DAEMON_URL entry \"u:***@h:notaport\": bad port \"notaport\""
        );
        assert_eq!(
            e("useronly@h:1"),
            "bad DAEMON_URL entry \"useronly@h:1\": expected user:password before '@'"
        );
        assert_eq!(e("u:p@:1"), "bad DAEMON_URL entry \"u:***@:1\": no host");
        assert_eq!(
            e("u:p@h:0"),
            "bad DAEMON_URL entry \"u:***@h:0\": bad port \"0\""
        );
        assert_eq!(
            e("u:p@[zz]:1"),
            "bad DAEMON_URL entry \"u:***@[zz]:1\": bad IPv6 address \"zz\""
        );
        assert_eq!(
            e("u:p@h:1/wallet/x"),
            "bad DAEMON_URL entry \"u:***@h:1/wallet/x\": a path is not supported"
        );
        assert_eq!(
            e("zmq://h:1"),
            "bad DAEMON_URL entry \"zmq://h:1\": only http:// URLs are supported"
        );
    }

    #[test]
    fn passwords_may_hold_slashes_and_percent_escapes() {
        let p = |s: &str| DaemonUrl::parse(s, 8332).unwrap();
        let slash = p("http://u:a/b@c@h:1/");
        assert_eq!(
            (slash.password.as_deref(), slash.host.as_str(), slash.port),
            (Some("a/b@c"), "h", 1)
        );
        let escaped = p("us%65r:p%40ss%2Fw%zz%4@h:1");
        assert_eq!(escaped.user.as_deref(), Some("user"));
        // Only %XX with two hex digits is an escape.
        assert_eq!(escaped.password.as_deref(), Some("p@ss/w%zz%4"));
        assert_eq!(p("u:%+1@h").password.as_deref(), Some("%+1"));
    }

    #[test]
    fn comma_separated_lists_and_missing_credentials() {
        let urls =
            parse_daemon_urls(&["a:b@h1:1, c:d@h2".into(), "e:f@h3:3".into()], 18443).unwrap();
        let hosts: Vec<_> = urls.iter().map(DaemonUrl::logged).collect();
        assert_eq!(hosts, ["h1:1/", "h2:18443/", "h3:3/"]);
        assert_eq!(
            parse_daemon_urls(&[" ".into()], 1).unwrap_err().to_string(),
            "DAEMON_URL is empty: set it to user:password@host:port"
        );
        let net = Network::lookup("Bitcoin", Some("regtest")).unwrap();
        let err = Daemon::new(&DaemonSettings::new(vec!["h:1".into()]), net)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "DAEMON_URL h:1/ has no user:password and no cookie file is set"
        );
    }

    #[tokio::test]
    async fn cookie_file_becomes_basic_auth_and_is_reread_after_401() {
        let dir = tempfile::tempdir().unwrap();
        let cookie = dir.path().join(".cookie");
        std::fs::write(&cookie, "__cookie__:first\n").unwrap();
        let expected = Arc::new(Mutex::new(format!(
            "Basic {}",
            BASE64.encode(b"__cookie__:second")
        )));
        let exp = expected.clone();
        let node = FakeNode::start(
            false,
            Arc::new(move |seen: &Seen| {
                if seen.auth.as_deref() != Some(exp.lock().unwrap().as_str()) {
                    return Some((401, String::new()));
                }
                Some((200, reply(&seen.body["id"], json!(7))))
            }),
        )
        .await;
        let mut settings = DaemonSettings::new(vec![format!("127.0.0.1:{}", node.port)]);
        settings.cookie_file = Some(cookie.clone());
        settings.give_up_after = Some(Duration::from_secs(3));
        let net = Network::lookup("Bitcoin", Some("regtest")).unwrap();
        let daemon = Daemon::new(&settings, net).unwrap();
        // The node restarted and wrote a new cookie: the first 401 makes the client re-read it.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::write(&cookie, "__cookie__:second\n").unwrap();
        });
        assert_eq!(daemon.block_count().await.unwrap(), 7);
        writer.await.unwrap();
        assert!(node.requests() >= 2);
    }

    #[tokio::test]
    async fn warm_up_is_retried_until_the_node_is_ready() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let node = FakeNode::start(
            false,
            Arc::new(move |seen: &Seen| {
                let id = &seen.body["id"];
                if c.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Some((500, error_reply(id, -28, "Loading block index…")));
                }
                Some((200, reply(id, json!(101))))
            }),
        )
        .await;
        let daemon = daemon(vec![node.url()]);
        assert_eq!(daemon.block_count().await.unwrap(), 101);
        assert_eq!(node.requests(), 3);
        // One connection served all three requests (keep-alive).
        assert_eq!(node.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn node_errors_are_not_retried() {
        let node = FakeNode::start(
            false,
            Arc::new(|seen: &Seen| {
                Some((
                    500,
                    error_reply(&seen.body["id"], -8, "Block height out of range"),
                ))
            }),
        )
        .await;
        let daemon = daemon(vec![node.url()]);
        let err = daemon.block_hash(5).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "getblockhash: node error -8: Block height out of range"
        );
        assert_eq!(node.requests(), 1);
    }

    #[tokio::test]
    async fn stop_ends_calls_waiting_on_a_node_that_is_down() {
        let node = FakeNode::start(
            false,
            Arc::new(|_: &Seen| Some((503, "Work queue depth exceeded".into()))),
        )
        .await;
        let mut settings = DaemonSettings::new(vec![node.url()]);
        settings.give_up_after = None; // as the server runs: retry for ever
        let network = Network::lookup("Bitcoin", Some("regtest")).unwrap();
        let daemon = Arc::new(Daemon::new(&settings, network).unwrap());
        let waiting = tokio::spawn({
            let daemon = daemon.clone();
            async move { daemon.block_count().await }
        });
        while node.requests() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!daemon.is_stopped());
        daemon.stop();
        let error = waiting.await.unwrap().unwrap_err();
        assert!(matches!(error, Error::Stopped), "{error:?}");
        assert_eq!(
            error.to_string(),
            "the node client is stopped: shutting down"
        );
        // Later calls end at once, without asking the node.
        let asked = node.requests();
        assert!(matches!(daemon.block_count().await, Err(Error::Stopped)));
        assert_eq!(node.requests(), asked);
    }

    #[tokio::test]
    async fn a_failover_node_on_another_network_is_never_used() {
        const REGTEST: &str = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206";
        const TESTNET: &str = "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943";
        let a_up = Arc::new(AtomicBool::new(true));
        let b_genesis = Arc::new(Mutex::new(TESTNET));
        let b_asked = Arc::new(Mutex::new(Vec::<String>::new()));
        let up = a_up.clone();
        let a = FakeNode::start(
            false,
            Arc::new(move |seen: &Seen| {
                let id = &seen.body["id"];
                Some(
                    match (up.load(Ordering::SeqCst), seen.body["method"].as_str()) {
                        (false, _) => (503, "Work queue depth exceeded".into()),
                        (true, Some("getblockhash")) => (200, reply(id, json!(REGTEST))),
                        (true, _) => (200, reply(id, json!(1))),
                    },
                )
            }),
        )
        .await;
        let (genesis, asked) = (b_genesis.clone(), b_asked.clone());
        let b = FakeNode::start(
            false,
            Arc::new(move |seen: &Seen| {
                let method = seen.body["method"].as_str().unwrap_or_default();
                asked.lock().unwrap().push(method.to_string());
                let id = &seen.body["id"];
                Some(match method {
                    "getblockhash" => (200, reply(id, json!(*genesis.lock().unwrap()))),
                    _ => (200, reply(id, json!(2))),
                })
            }),
        )
        .await;
        let daemon = daemon(vec![a.url(), b.url()]);
        assert_eq!(daemon.block_hash(0).await.unwrap().to_string(), REGTEST);
        daemon.mark_on_network(); // what `check` does once the genesis matches
                                  // A fails: the call goes round A and B until it gives up, and B serves none of it.
        a_up.store(false, Ordering::SeqCst);
        assert!(matches!(
            daemon.block_count().await,
            Err(Error::Unavailable(_))
        ));
        let b_asked_only_genesis = |asked: &[String]| asked.iter().all(|m| m == "getblockhash");
        assert!(b_asked_only_genesis(&b_asked.lock().unwrap()));
        assert!(!b_asked.lock().unwrap().is_empty());
        // B alone (the `daemon_url` command): the reason, word for word.
        daemon.set_urls(&[b.url()]).unwrap();
        let error = daemon.block_count().await.unwrap_err().to_string();
        let why = format!(
            "daemon 127.0.0.1:{}/: on another network: its genesis block is {TESTNET}, but \
             Bitcoin regtest starts with {REGTEST}; it is not used: fix or remove this \
             DAEMON_URL entry",
            b.port
        );
        assert!(
            error.starts_with("getblockcount: gave up after "),
            "{error}"
        );
        assert!(error.ends_with(&why), "{error}");
        assert!(b_asked_only_genesis(&b_asked.lock().unwrap()));
        // Once it is on the network, it serves.
        *b_genesis.lock().unwrap() = REGTEST;
        assert_eq!(daemon.block_count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_port_that_does_not_speak_http_gets_a_hint() {
        // What bitcoind's P2P port sends: its network magic and a version message.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream
                    .write_all(b"\xfa\xbf\xb5\xdaversion\0\0\0\0\0\r\n")
                    .await;
            }
        });
        let error = daemon(vec![format!("u:p@127.0.0.1:{port}")])
            .block_count()
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(": malformed HTTP response: ")
                && error.ends_with(
                    "; is this the node's RPC port (rpcport, 18443 by default on Bitcoin \
                     regtest)?"
                ),
            "{error}"
        );
    }

    #[test]
    fn a_503_says_why_from_its_body() {
        assert_eq!(
            unavailable_reason(b"Work queue depth exceeded"),
            "work queue full (HTTP 503); raise rpcworkqueue in bitcoin.conf"
        );
        assert_eq!(
            unavailable_reason(b"Request rejected during server shutdown"),
            "the node is shutting down (HTTP 503)"
        );
        assert_eq!(
            unavailable_reason(b""),
            "the node is unavailable (HTTP 503)"
        );
        assert_eq!(
            unavailable_reason(b"Service temporarily unavailable: Loading"),
            "the node is unavailable (HTTP 503: Service temporarily unavailable: Loading)"
        );
    }

    #[tokio::test]
    async fn failover_goes_round_robin() {
        let healthy: Arc<Vec<AtomicBool>> = Arc::new(vec![
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(true),
        ]);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let healthy = healthy.clone();
            nodes.push(
                FakeNode::start(
                    false,
                    Arc::new(move |seen: &Seen| {
                        if !healthy[i].load(Ordering::SeqCst) {
                            return Some((503, "Work queue depth exceeded".into()));
                        }
                        Some((200, reply(&seen.body["id"], json!(i))))
                    }),
                )
                .await,
            );
        }
        let daemon = daemon(nodes.iter().map(FakeNode::url).collect());
        assert_eq!(daemon.block_count().await.unwrap(), 2);
        let counts = |n: &[FakeNode]| n.iter().map(FakeNode::requests).collect::<Vec<_>>();
        assert_eq!(counts(&nodes), [1, 1, 1]);
        assert_eq!(
            daemon.current_url(),
            format!("127.0.0.1:{}/", nodes[2].port)
        );
        // The third node fails: the next one after it, wrapping round, is the first.
        healthy[2].store(false, Ordering::SeqCst);
        healthy[0].store(true, Ordering::SeqCst);
        assert_eq!(daemon.block_count().await.unwrap(), 0);
        assert_eq!(counts(&nodes), [2, 1, 2]);
    }

    #[tokio::test]
    async fn set_urls_replaces_the_list_and_rotates_to_its_first_entry() {
        let mut nodes = Vec::new();
        for i in 0..2 {
            nodes.push(
                FakeNode::start(
                    false,
                    Arc::new(move |seen: &Seen| Some((200, reply(&seen.body["id"], json!(i))))),
                )
                .await,
            );
        }
        let daemon = daemon(vec![nodes[1].url()]);
        assert_eq!(daemon.block_count().await.unwrap(), 1);
        let err = daemon.set_urls(&["u:p@h:bad".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad DAEMON_URL entry \"u:***@h:bad\": bad port \"bad\""
        );
        assert_eq!(daemon.block_count().await.unwrap(), 1);
        daemon
            .set_urls(&[format!("{},{}", nodes[0].url(), nodes[1].url())])
            .unwrap();
        assert_eq!(
            daemon.current_url(),
            format!("127.0.0.1:{}/", nodes[0].port)
        );
        assert_eq!(daemon.block_count().await.unwrap(), 0);
        assert_eq!(
            daemon.configured_urls(),
            [nodes[1].url()],
            "kept to restore"
        );
    }

    #[tokio::test]
    async fn changes_of_the_node_in_use_are_signalled() {
        let mut nodes = Vec::new();
        for i in 0..2 {
            nodes.push(
                FakeNode::start(
                    false,
                    Arc::new(move |seen: &Seen| {
                        (i == 1).then(|| (200, reply(&seen.body["id"], json!(i))))
                    }),
                )
                .await,
            );
        }
        let daemon = daemon(vec![nodes[1].url()]);
        let mut changes = daemon.node_changes();
        let changed = |c: &mut watch::Receiver<()>| {
            let changed = c.has_changed().unwrap();
            c.mark_unchanged();
            changed
        };
        assert_eq!(daemon.block_count().await.unwrap(), 1);
        assert!(!changed(&mut changes), "requests to the same node");
        assert!(daemon.set_urls(&["u:p@h:bad".into()]).is_err());
        assert!(!changed(&mut changes), "a refused list");
        // The same node under other credentials is no change of node.
        daemon
            .set_urls(&[nodes[1].url().replace("u:p", "v:q")])
            .unwrap();
        assert!(!changed(&mut changes), "the same node");
        daemon
            .set_urls(&[format!("{},{}", nodes[0].url(), nodes[1].url())])
            .unwrap();
        assert!(changed(&mut changes), "another node by daemon_url");
        // The first node drops every request: failing over to the second is a change too.
        assert_eq!(daemon.block_count().await.unwrap(), 1);
        assert!(changed(&mut changes), "failover");
        assert!(!changed(&mut changes));
    }

    #[tokio::test]
    async fn unreachable_nodes_give_up_with_the_reason() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let daemon = daemon(vec![format!("u:p@127.0.0.1:{port}")]);
        let err = daemon.block_count().await.unwrap_err().to_string();
        assert!(
            err.starts_with("getblockcount: gave up after ")
                && err.contains(&format!(": daemon 127.0.0.1:{port}/: connection problem ("))
                && err.ends_with("); check that bitcoind is running"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stale_keep_alive_connections_are_replaced() {
        let node = FakeNode::start(
            true,
            Arc::new(|seen: &Seen| Some((200, reply(&seen.body["id"], json!(3))))),
        )
        .await;
        let daemon = daemon(vec![node.url()]);
        for _ in 0..3 {
            assert_eq!(daemon.block_count().await.unwrap(), 3);
        }
        assert_eq!(node.connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn batches_map_replies_by_id_with_per_call_errors() {
        let node = FakeNode::start(false, Arc::new(|seen: &Seen| {
            let mut replies: Vec<Value> = seen.body.as_array().unwrap().iter().map(|call| {
                let h = call["params"][0].as_u64().unwrap();
                if h > 1 {
                    json!({"result": null, "error": {"code": -8, "message": "Block height out of range"}, "id": call["id"]})
                } else {
                    json!({"result": format!("{:064x}", h + 1), "error": null, "id": call["id"]})
                }
            }).collect();
            replies.reverse(); // order must not matter
            Some((200, Value::Array(replies).to_string()))
        }))
        .await;
        let daemon = daemon(vec![node.url()]);
        let hashes = daemon.block_hashes(0..2).await.unwrap();
        assert_eq!(hashes[1].to_string(), format!("{:064x}", 2));
        let err = daemon.block_hashes(0..3).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "getblockhash: node error -8: Block height out of range"
        );
    }

    #[tokio::test]
    async fn check_rejects_another_network_and_detects_rest() {
        let regtest = Network::lookup("Bitcoin", Some("regtest")).unwrap();
        let mainnet = Network::lookup("Bitcoin", Some("mainnet")).unwrap();
        let genesis_block = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
        let raw = bitcoin::consensus::serialize(&genesis_block);
        let rest_on = Arc::new(AtomicBool::new(false));
        let rest = rest_on.clone();
        let hex = crate::hex::to_hex(&raw);
        let node = FakeNode::start(
            false,
            Arc::new(move |seen: &Seen| {
                if seen.path.starts_with("/rest/") {
                    return Some(if rest.load(Ordering::SeqCst) {
                        (200, "x".into())
                    } else {
                        (404, String::new())
                    });
                }
                let id = &seen.body["id"];
                Some((
                    200,
                    match seen.body["method"].as_str().unwrap() {
                        "getblockhash" => reply(id, json!(regtest.genesis_hash)),
                        "getnetworkinfo" => reply(
                            id,
                            json!({"version": 300000, "subversion": "/Satoshi:30.0.0/"}),
                        ),
                        "getblockchaininfo" => reply(id, json!({"pruned": false})),
                        // With REST on, a txindex too.
                        "getindexinfo" => match rest.load(Ordering::SeqCst) {
                            true => reply(id, json!({"txindex": {"synced": true}})),
                            false => reply(id, json!({})),
                        },
                        "getblock" => reply(id, json!(hex)),
                        m => error_reply(id, -32601, &format!("Method not found: {m}")),
                    },
                ))
            }),
        )
        .await;
        let daemon = daemon(vec![node.url()]);
        let info = daemon.check().await.unwrap();
        assert_eq!(
            (info.version, info.rest, info.prune_height, info.txindex),
            (300000, false, None, Some(false))
        );
        assert!(!daemon.rest_enabled());
        // Without REST, blocks come as JSON-RPC hex.
        assert_eq!(daemon.block_raw(&regtest.genesis()).await.unwrap(), raw);
        rest_on.store(true, Ordering::SeqCst);
        let info = daemon.check().await.unwrap();
        assert_eq!((info.rest, info.txindex), (true, Some(true)));

        let on_mainnet = daemon_on(vec![node.url()], mainnet);
        let err = on_mainnet.check().await.unwrap_err().to_string();
        assert_eq!(err, format!(
            "the node at 127.0.0.1:{}/ is on another network: its genesis block is {}, but \
             Bitcoin mainnet starts with {}; point DAEMON_URL at a mainnet node or set COIN/NET to match",
            node.port, regtest.genesis_hash, mainnet.genesis_hash));

        // The first URL refuses: the error names the node that answered, not the first.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = format!("u:p@{}", listener.local_addr().unwrap());
        drop(listener);
        let two = daemon_on(vec![refused, node.url()], mainnet);
        let err = two.check().await.unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "the node at 127.0.0.1:{}/ is on another",
                node.port
            )),
            "{err}"
        );
    }
}
