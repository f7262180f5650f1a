//! The Electrum protocol's `blockchain.*` and `mempool.*` methods for the negotiated version
//! (1.4 to 1.6): the method table, argument binding, per-session subscriptions, and the
//! notifications sent when the chain or the mempool changes. Implements [`Backend`].

mod admin;
mod args;
mod chain;
mod history_cache;
mod node;
mod notify;
mod scripts;
mod status_cache;

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use ferrum_storage::{Hash32, HashX, Reader};
use serde_json::{json, Map, Value};
use tracing::{error, info, warn};

use crate::coin::Network;
use crate::daemon::Daemon;
use crate::indexer::IndexerHandle;
use crate::jsonrpc::{Params, RawJson, RpcError, Signature, INTERNAL_ERROR};
use crate::merkle::HeaderMerkle;
use crate::query::MempoolView;
use crate::session::{Backend, DaemonVersion, ProtocolVersion, SessionContext};
use crate::txids::{self, TxidError, Txids};
pub use node::Node;
use node::NodeCache;

/// A method's result: a JSON value, or JSON text already encoded (long lists, written
/// directly because a `Value` per entry costs more than reading the store).
#[derive(Debug)]
pub enum Reply {
    Value(Value),
    Json(String),
}

impl Reply {
    pub fn into_value(self) -> Result<Value, RpcError> {
        match self {
            Reply::Value(v) => Ok(v),
            Reply::Json(text) => serde_json::from_str(&text).map_err(internal),
        }
    }

    pub fn into_json(self) -> String {
        match self {
            Reply::Value(v) => v.to_string(),
            Reply::Json(text) => text,
        }
    }
}

/// What every session's methods share.
pub(crate) struct Shared {
    reader: Reader,
    network: &'static Network,
    node: Arc<dyn Node>,
    mempool: Arc<dyn MempoolView>,
    header_tree: Mutex<HeaderMerkle>,
    history_cache: history_cache::HistoryCache,
    status_cache: status_cache::StatusCache,
    node_cache: NodeCache,
    /// Txids of tx numbers: from the store, or (lean index) from the node's blocks.
    txids: Txids,
    sessions: Mutex<HashMap<u64, Arc<SessionState>>>,
    /// The `blockchain.headers.subscribe` result for the last tip announced.
    header_sub: Mutex<Option<Value>>,
    /// The indexer, for the local RPC's `reorg`; absent in tests that have no indexer.
    indexer: OnceLock<IndexerHandle>,
    /// The node client, for the local RPC's `daemon_url`; absent where a test node stands in.
    daemon: OnceLock<Arc<Daemon>>,
    /// Signalled when the node accepts a transaction broadcast through us, so the mempool is
    /// read at once instead of at the next poll.
    broadcasts: tokio::sync::Notify,
}

/// The protocol methods over the store, the node and the mempool. Cheap to clone.
#[derive(Clone)]
pub struct Electrum {
    shared: Arc<Shared>,
}

/// One session's subscriptions.
pub struct SessionState {
    ctx: Weak<SessionContext>,
    subs: Mutex<Subscriptions>,
}

#[derive(Default)]
struct Subscriptions {
    headers: bool,
    scripts: HashMap<HashX, ScriptSub>,
}

struct ScriptSub {
    /// As the client sent it: notifications name it so.
    scripthash: String,
    /// Last status computed for the client.
    status: Option<Hash32>,
    /// That status covered mempool transactions (so a new block may change it).
    in_mempool: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// aiorpcx's answer to a failure that is the server's, not the request's; the cause is logged.
pub(crate) fn internal(e: impl Display) -> RpcError {
    error!("internal error: {e}");
    RpcError::new(INTERNAL_ERROR, "internal server error")
}

/// A lean index's txids not had from the node: the node's fault, so a daemon error (code 2)
/// that says what was wrong; the store's errors are internal.
pub(crate) fn txid_error(e: TxidError) -> RpcError {
    match e {
        TxidError::Store(e) => internal(e),
        other => {
            warn!("{other}");
            RpcError::daemon_error(format!("daemon error: {other}"))
        }
    }
}

/// What charges the session `ctx` for the blocks a lean lookup fetches from the node.
pub(crate) fn block_charge(ctx: &Arc<SessionContext>) -> impl Fn(usize) + Send + Sync + 'static {
    let ctx = ctx.clone();
    move |blocks| ctx.bump_cost(blocks as f64 * txids::BLOCK_FETCH_COST)
}

/// Runs store work on the blocking pool so one long request never stalls the runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// ElectrumX's `getinfo` line for a cache.
fn cache_line((lookups, hits, entries): (u64, u64, usize)) -> String {
    let rate = hits as f64 / lookups.max(1) as f64;
    format!("{lookups} lookups, {hits} hits, {entries} entries, hitrate {rate:.4}")
}

/// The parameters of each method the negotiated `version` has (ElectrumX's handler table).
fn signature(method: &str, version: &ProtocolVersion) -> Option<Signature> {
    const SCRIPTHASH: Signature = Signature::new(&["scripthash"], 1);
    const NONE: Signature = Signature::new(&[], 0);
    let v16 = version.at_least(&[1, 6]);
    Some(match method {
        "blockchain.block.header" => Signature::new(&["height", "cp_height"], 1),
        "blockchain.block.headers" => Signature::new(&["start_height", "count", "cp_height"], 2),
        "blockchain.estimatefee" => Signature::new(&["number", "mode"], 1),
        "blockchain.headers.subscribe" | "mempool.get_fee_histogram" => NONE,
        "blockchain.relayfee" if !v16 => NONE,
        "blockchain.scripthash.get_balance"
        | "blockchain.scripthash.get_history"
        | "blockchain.scripthash.get_mempool"
        | "blockchain.scripthash.listunspent"
        | "blockchain.scripthash.subscribe" => SCRIPTHASH,
        "blockchain.scripthash.unsubscribe" if version.at_least(&[1, 4, 2]) => SCRIPTHASH,
        "blockchain.transaction.broadcast" => Signature::new(&["raw_tx"], 1),
        "blockchain.transaction.broadcast_package" if v16 => {
            Signature::new(&["raw_txs", "verbose"], 1)
        }
        "blockchain.transaction.get" => Signature::new(&["tx_hash", "verbose"], 1),
        "blockchain.transaction.get_merkle" => Signature::new(&["tx_hash", "height"], 2),
        "blockchain.transaction.id_from_pos" => Signature::new(&["height", "tx_pos", "merkle"], 2),
        "mempool.get_info" if v16 => NONE,
        _ => return None,
    })
}

const NULL: Value = Value::Null;

impl Electrum {
    /// The methods over the store `reader`, the node, and the mempool view (until the
    /// mempool mirror runs, `Arc::new(query::EmptyMempool)`).
    pub fn new(
        reader: Reader,
        network: &'static Network,
        daemon: Arc<Daemon>,
        mempool: Arc<dyn MempoolView>,
    ) -> Electrum {
        let electrum = Electrum::with_node(reader, network, daemon.clone(), mempool);
        let _ = electrum.shared.daemon.set(daemon);
        electrum
    }

    /// As [`Electrum::new`], with any implementation of the node's RPC.
    pub fn with_node(
        reader: Reader,
        network: &'static Network,
        node: Arc<dyn Node>,
        mempool: Arc<dyn MempoolView>,
    ) -> Electrum {
        Electrum {
            shared: Arc::new(Shared {
                reader,
                network,
                node: node.clone(),
                mempool,
                header_tree: Mutex::new(HeaderMerkle::new()),
                history_cache: Default::default(),
                status_cache: Default::default(),
                node_cache: NodeCache::default(),
                txids: Txids::new(node.clone(), txids::DEFAULT_CACHE_MB << 20),
                sessions: Mutex::new(HashMap::new()),
                header_sub: Mutex::new(None),
                indexer: OnceLock::new(),
                daemon: OnceLock::new(),
                broadcasts: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Bounds the lean index's cache of blocks' txids (`TXID_CACHE_MB`).
    pub fn with_txid_cache_mb(self, mb: usize) -> Electrum {
        self.shared
            .txids
            .set_cache_bytes(mb.saturating_mul(1 << 20));
        self
    }

    /// Lets the local RPC's `reorg` command reach the indexer.
    pub fn with_indexer(self, indexer: IndexerHandle) -> Electrum {
        let _ = self.shared.indexer.set(indexer);
        self
    }

    /// ElectrumX's `rpc_reorg`: roll back `count` blocks; the indexer then syncs forward.
    async fn admin_reorg(&self, params: Params) -> Result<Value, RpcError> {
        let mut args = params
            .bind("reorg", &Signature::new(&["count"], 1))?
            .into_iter();
        let count = args::non_negative_integer(&args.next().flatten().unwrap_or(Value::Null))?;
        let indexer = self.shared.indexer.get().filter(|i| i.is_caught_up());
        let Some(indexer) = indexer else {
            return Err(RpcError::bad_request("still catching up with daemon"));
        };
        let blocks = count
            .get()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| RpcError::bad_request(format!("cannot reorg {count} blocks")))?;
        indexer
            .force_rollback(blocks)
            .await
            .map_err(|e| RpcError::bad_request(e.to_string()))?;
        Ok(json!(format!(
            "scheduled a reorg of {} blocks",
            count.thousands()
        )))
    }

    /// Caches the header merkle tree for the store's chain, so the first `cp_height` proof
    /// does not pay for hashing every header. Runs on the blocking pool.
    pub async fn prepare(&self) -> Result<(), RpcError> {
        let shared = self.shared.clone();
        blocking(move || {
            let snap = shared.reader.snapshot();
            lock(&shared.header_tree).sync(&snap).map_err(internal)
        })
        .await
    }

    /// Handles one method for a session; long lists come back as JSON text.
    pub async fn call_reply(
        &self,
        ctx: &Arc<SessionContext>,
        state: &SessionState,
        method: &str,
        params: Params,
    ) -> Result<Reply, RpcError> {
        let version = ctx
            .protocol_version()
            .cloned()
            .unwrap_or_else(ProtocolVersion::min);
        let Some(sig) = signature(method, &version) else {
            return Err(RpcError::unknown_method(method));
        };
        let args = params.bind(method, &sig)?;
        let shared = &self.shared;
        let first = args.first().and_then(Option::as_ref).unwrap_or(&NULL);
        let value = match method {
            "blockchain.block.header" => chain::block_header(shared, ctx, first, &args[1]).await?,
            "blockchain.block.headers" => {
                chain::block_headers(shared, ctx, &version, &args).await?
            }
            "blockchain.estimatefee" => self.estimatefee(ctx, first, &args[1]).await?,
            "blockchain.headers.subscribe" => {
                lock(&state.subs).headers = true;
                ctx.bump_cost(0.25);
                self.header_sub_result()?
            }
            "blockchain.relayfee" => {
                ctx.bump_cost(1.0);
                shared.node_cache.relay_fee(&*shared.node).await?
            }
            "blockchain.scripthash.get_balance" => {
                return scripts::get_balance(shared, ctx, args::script_hash(first)?).await
            }
            "blockchain.scripthash.get_history" => {
                return scripts::get_history(shared, ctx, args::script_hash(first)?).await
            }
            "blockchain.scripthash.get_mempool" => {
                return scripts::get_mempool(shared, ctx, args::script_hash(first)?)
            }
            "blockchain.scripthash.listunspent" => {
                return scripts::listunspent(shared, ctx, args::script_hash(first)?).await
            }
            "blockchain.scripthash.subscribe" => self.subscribe(ctx, state, first).await?,
            "blockchain.scripthash.unsubscribe" => {
                ctx.bump_cost(0.1);
                let hashx = args::script_hash(first)?;
                let mut subs = lock(&state.subs);
                let removed = subs.scripts.remove(&hashx).is_some();
                if removed {
                    shared.status_cache.unsubscribed(&hashx);
                }
                ctx.set_subscription_count(subs.scripts.len());
                Value::Bool(removed)
            }
            "blockchain.transaction.broadcast" => self.broadcast(ctx, first).await?,
            "blockchain.transaction.broadcast_package" => {
                let raw_txs = args::list(first)?;
                let mut cost = 0.25;
                for raw_tx in raw_txs {
                    cost += args::hex_string(raw_tx)?.len() as f64 / 5000.0;
                }
                ctx.bump_cost(cost);
                let verbose = args[1].as_ref().is_some_and(crate::jsonrpc::truthy);
                let result = node::broadcast_package(&*shared.node, raw_txs, verbose).await?;
                shared.broadcasts.notify_one();
                for _ in raw_txs {
                    ctx.add_tx_sent();
                }
                result
            }
            "blockchain.transaction.get" => {
                args::tx_hash(first)?;
                let verbose = args::boolean_flag(&args[1], "verbose")?;
                ctx.bump_cost(1.0);
                node::transaction(&*shared.node, first.as_str().unwrap_or_default(), verbose)
                    .await?
            }
            "blockchain.transaction.get_merkle" => chain::get_merkle(shared, ctx, &args).await?,
            "blockchain.transaction.id_from_pos" => chain::id_from_pos(shared, ctx, &args).await?,
            "mempool.get_fee_histogram" => {
                ctx.bump_cost(1.0);
                let histogram = shared.mempool.fee_histogram();
                Value::Array(
                    histogram
                        .into_iter()
                        .map(|(rate, vsize)| json!([rate, vsize]))
                        .collect(),
                )
            }
            "mempool.get_info" => {
                ctx.bump_cost(1.0);
                shared.node_cache.mempool_info(&*shared.node).await?
            }
            _ => return Err(RpcError::unknown_method(method)),
        };
        Ok(Reply::Value(value))
    }

    async fn estimatefee(
        &self,
        ctx: &SessionContext,
        number: &Value,
        mode: &Option<Value>,
    ) -> Result<Value, RpcError> {
        let number = args::non_negative_integer(number)?;
        let mode = args::estimate_mode(mode)?;
        ctx.bump_cost(0.1);
        let tip = chain::tip_hash(&self.shared.reader.snapshot())?;
        let target = node::bucket_fee_target(number.saturating());
        let (feerate, asked) = self
            .shared
            .node_cache
            .estimate_fee(&*self.shared.node, tip, target, mode)
            .await?;
        if asked {
            ctx.bump_cost(2.0);
        }
        Ok(feerate)
    }

    /// Resolves after the node has accepted a transaction broadcast through this server
    /// (at once if one was accepted since the last call).
    pub async fn broadcast_accepted(&self) {
        self.shared.broadcasts.notified().await
    }

    async fn broadcast(&self, ctx: &SessionContext, raw_tx: &Value) -> Result<Value, RpcError> {
        let raw_tx = args::hex_string(raw_tx)?;
        ctx.bump_cost(0.25 + raw_tx.len() as f64 / 5000.0);
        let txid = node::broadcast(&*self.shared.node, raw_tx).await?;
        self.shared.broadcasts.notify_one();
        ctx.add_tx_sent();
        let client = args::version_tuple(ctx.client_name());
        if client != [0] && client < vec![3, 3, 3] {
            info!(
                "sent tx: {txid}. and warned user to upgrade their client from {}",
                ctx.client_name()
            );
            return Ok(Value::String(node::OLD_CLIENT_WARNING.to_string()));
        }
        info!("sent tx: {txid}");
        Ok(txid)
    }

    async fn subscribe(
        &self,
        ctx: &Arc<SessionContext>,
        state: &SessionState,
        scripthash: &Value,
    ) -> Result<Value, RpcError> {
        let hashx = args::script_hash(scripthash)?;
        let status = scripts::statuses(&self.shared, ctx, vec![hashx])
            .await?
            .remove(0)?;
        ctx.bump_cost(status.cost);
        let mut subs = lock(&state.subs);
        let scripthash = scripthash.as_str().unwrap_or_default().to_string();
        let sub = ScriptSub {
            scripthash,
            status: status.status,
            in_mempool: status.in_mempool,
        };
        // A closing session's subscriptions are released (`close_session`): add none.
        if !ctx.is_closing() && subs.scripts.insert(hashx, sub).is_none() {
            self.shared.status_cache.subscribed(hashx);
        }
        ctx.set_subscription_count(subs.scripts.len());
        Ok(scripts::status_value(&status.status))
    }

    fn header_sub_result(&self) -> Result<Value, RpcError> {
        let mut current = lock(&self.shared.header_sub);
        if current.is_none() {
            *current = Some(chain::header_subscription(&self.shared.reader.snapshot())?);
        }
        Ok(current.clone().unwrap_or(Value::Null))
    }

    /// Tells sessions what changed, as ElectrumX does: with `new_tip`, fee estimates are
    /// dropped and header subscribers get the store's new tip; scripts in `touched` are sent
    /// their status whatever it is, and (on a new tip, or with touched scripts) scripts whose
    /// last status covered the mempool are sent theirs if it changed. With `touched` None
    /// (the caller does not know what changed) every subscribed script is checked and sent
    /// its status if it changed. Returns when every session has been handled.
    pub async fn notify(&self, touched: Option<Arc<HashSet<HashX>>>, new_tip: bool) {
        notify::notify_all(&self.shared, touched, new_tip).await
    }
}

impl Backend for Electrum {
    type Session = Arc<SessionState>;

    fn open_session(&self, ctx: &Arc<SessionContext>) -> Arc<SessionState> {
        let state = Arc::new(SessionState {
            ctx: Arc::downgrade(ctx),
            subs: Mutex::new(Subscriptions::default()),
        });
        lock(&self.shared.sessions).insert(ctx.id(), state.clone());
        state
    }

    async fn call(
        &self,
        ctx: &Arc<SessionContext>,
        state: &Arc<SessionState>,
        method: &str,
        params: Params,
    ) -> Result<Value, RpcError> {
        self.call_reply(ctx, state, method, params)
            .await?
            .into_value()
    }

    /// Long lists go out as the JSON text they were written as.
    async fn call_raw(
        &self,
        ctx: &Arc<SessionContext>,
        state: &Arc<SessionState>,
        method: &str,
        params: Params,
    ) -> Result<RawJson, RpcError> {
        Ok(match self.call_reply(ctx, state, method, params).await? {
            Reply::Value(value) => RawJson::from(value),
            Reply::Json(text) => RawJson::from_json_unchecked(text),
        })
    }

    fn close_session(&self, ctx: &SessionContext, state: &Arc<SessionState>) {
        lock(&self.shared.sessions).remove(&ctx.id());
        for hashx in lock(&state.subs).scripts.drain().map(|(h, _)| h) {
            self.shared.status_cache.unsubscribed(&hashx);
        }
    }

    async fn daemon_version(&self) -> Result<DaemonVersion, RpcError> {
        let info = self
            .shared
            .node_cache
            .network_info(&*self.shared.node)
            .await?;
        Ok(DaemonVersion {
            version: info.get("version").and_then(Value::as_u64).unwrap_or(0),
            subversion: info
                .get("subversion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }

    /// `query` (ElectrumX's `rpc_query`) and `reorg`; other commands are the server's.
    async fn admin_call(&self, method: &str, params: Params) -> Result<Value, RpcError> {
        if method == "reorg" {
            return self.admin_reorg(params).await;
        }
        if let ("daemon_url", Some(daemon)) = (method, self.shared.daemon.get()) {
            let url = params.bind(method, &Signature::new(&["daemon_url"], 1))?;
            let url = url.into_iter().next().flatten().unwrap_or(Value::Null);
            return admin::daemon_url(daemon, &url).map(Value::String);
        }
        if method != "query" {
            return Err(RpcError::unknown_method(method));
        }
        let mut args = params
            .bind(method, &Signature::new(&["items", "limit"], 2))?
            .into_iter();
        let items = args.next().flatten().unwrap_or(Value::Null);
        let limit = args.next().flatten().unwrap_or(Value::Null);
        let limit = args::non_negative_integer(&limit)?.saturating();
        let shared = self.shared.clone();
        let lines = blocking(move || {
            let snap = shared.reader.snapshot();
            admin::query(&snap, &shared.txids, shared.network, &items, limit)
        })
        .await?;
        Ok(json!(lines))
    }

    fn info(&self) -> Map<String, Value> {
        let mut info = Map::new();
        info.insert(
            "db height".into(),
            json!(self.shared.reader.snapshot().height()),
        );
        let shared = &self.shared;
        let mut caches = json!({
            "estimatefee": cache_line(shared.node_cache.estimate_stats()),
            "history": cache_line(shared.history_cache.stats()),
            "status": cache_line(shared.status_cache.stats()),
        });
        if !shared.reader.snapshot().stores_txids() {
            caches["txids"] = json!(cache_line(shared.txids.stats()));
        }
        info.insert("caches".into(), caches);
        info
    }
}

#[cfg(test)]
mod tests;
