//! One client connection: its shared context (identity, negotiated version, cost, outgoing
//! queue), the read loop that decodes and dispatches requests, and the write loop.

pub mod cost;
pub mod methods;
pub mod version;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{FutureExt, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info};

use crate::jsonrpc::{
    join_batch, thousands, Codec, Incoming, Params, RawJson, Request, RpcError,
    EXCESSIVE_RESOURCE_USAGE, INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR, SERVER_BUSY,
};
use crate::services::Protocol;
use crate::transport::{MessageReader, MessageWriter, ReadEvent};
use cost::{
    Concurrency, Cost, CostParams, CONNECTION_COST, ERROR_BASE_COST, PARSE_ERROR_EXTRA_COST,
};
pub use version::ProtocolVersion;

/// The daemon's version, for the banner's `$DAEMON_VERSION` and `$DAEMON_SUBVERSION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonVersion {
    /// As `getnetworkinfo` reports it, e.g. 290100 for 29.1.0.
    pub version: u64,
    /// The user agent, e.g. `/Satoshi:29.1.0/`.
    pub subversion: String,
}

/// What the protocol layer needs from the rest of the server: the blockchain.* and
/// mempool.* methods, per-session state for subscriptions, and a few facts for server.*
/// and the local RPC.
///
/// Calls run on the async runtime, many at once: an implementation must move long store
/// reads to the blocking pool (`tokio::task::spawn_blocking`) rather than block here.
pub trait Backend: Send + Sync + 'static {
    /// Per-session state (subscriptions, status caches).
    type Session: Send + Sync + 'static;

    /// Called when a wallet connection is accepted. Keep `session` to send notifications.
    fn open_session(&self, session: &Arc<SessionContext>) -> Self::Session;

    /// Handles a method that is not `server.*`, for the session's negotiated protocol
    /// version. Unknown methods answer `RpcError::unknown_method(method)`; parameters are
    /// bound with `Params::bind`. Charge the request with `session.bump_cost`.
    fn call(
        &self,
        session: &Arc<SessionContext>,
        state: &Self::Session,
        method: &str,
        params: Params,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send;

    /// What the server actually calls: `call`, serialized. Override it to answer large
    /// results (histories, unspent lists) as JSON text built directly, skipping the
    /// `Value` tree; fall back to `call` for the rest.
    fn call_raw(
        &self,
        session: &Arc<SessionContext>,
        state: &Self::Session,
        method: &str,
        params: Params,
    ) -> impl Future<Output = Result<RawJson, RpcError>> + Send {
        async move {
            self.call(session, state, method, params)
                .await
                .map(RawJson::from)
        }
    }

    /// Called once when the connection has ended.
    fn close_session(&self, _session: &SessionContext, _state: &Self::Session) {}

    /// The node's version, for the banner.
    fn daemon_version(&self) -> impl Future<Output = Result<DaemonVersion, RpcError>> + Send;

    /// `server.peers.subscribe`: `[ip, host, [features]]` triples.
    fn peers(&self) -> Vec<Value> {
        Vec::new()
    }

    /// `server.add_peer`: whether the peer was accepted. False while discovery is off.
    fn add_peer(&self, _features: Value, _source: SocketAddr) -> impl Future<Output = bool> + Send {
        async { false }
    }

    /// Local RPC commands beyond getinfo, sessions, groups, disconnect, log and stop
    /// (daemon_url, query, reorg, peers, add_peer...).
    fn admin_call(
        &self,
        method: &str,
        _params: Params,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send {
        let error = RpcError::unknown_method(method);
        async move { Err(error) }
    }

    /// Extra `getinfo` members (daemon, daemon height, db height, peers, txs sent...).
    fn info(&self) -> Map<String, Value> {
        Map::new()
    }
}

/// Limits that apply to one connection.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    pub cost: CostParams,
    /// Responses over this many bytes are replaced by an error; zero: no limit.
    pub max_send: usize,
    /// Incoming messages over this many bytes close the connection; zero: no limit.
    pub max_recv: usize,
    pub request_timeout: Option<Duration>,
    pub session_timeout: Duration,
}

impl SessionLimits {
    /// No cost limit (10 requests at once), no size limits, no request timeout, 10 minutes of
    /// idleness allowed: for in-process clients such as tests and benchmarks.
    pub fn unlimited() -> SessionLimits {
        SessionLimits {
            cost: CostParams::unlimited(10),
            max_send: 0,
            max_recv: 0,
            request_timeout: None,
            session_timeout: Duration::from_secs(600),
        }
    }
}

/// Counters shown by the local RPC `sessions` command.
#[derive(Clone, Debug, Default)]
pub struct SessionStats {
    pub errors: u64,
    pub recv_count: u64,
    pub recv_size: u64,
    pub send_count: u64,
    pub send_size: u64,
}

struct Accounting {
    cost: Cost,
    stats: SessionStats,
}

/// Outgoing messages queued per session; a client this far behind on notifications is
/// disconnected rather than let it hold memory or stall the notifier.
const OUTGOING_QUEUE: usize = 1024;
/// Requests read but not yet answered, batch members each counted; reading pauses beyond
/// this, so one client cannot queue unbounded work (one batch may still pass it once).
const MAX_PENDING_REQUESTS: usize = 1024;
/// Members of one batch handled at a time: each waits its turn, so a batch of 85,000
/// neither holds 85,000 futures at once nor starts all their request timeouts together.
const BATCH_CONCURRENCY: usize = 32;
/// A write blocked this long means the client stopped reading (aiorpcx's max_send_delay).
const MAX_SEND_DELAY: Duration = Duration::from_secs(20);

/// The state of one connection shared by its tasks, the session manager and the backend.
pub struct SessionContext {
    id: u64,
    kind: Protocol,
    peer: SocketAddr,
    started: Instant,
    started_at: SystemTime,
    limits: SessionLimits,
    sv_seen: AtomicBool,
    version: OnceLock<ProtocolVersion>,
    client_name: OnceLock<String>,
    log_me: AtomicBool,
    accounting: Mutex<Accounting>,
    concurrency: Arc<Concurrency>,
    codec: Mutex<Codec>,
    outgoing: mpsc::Sender<Vec<u8>>,
    closing: watch::Sender<bool>,
    /// Over the hard cost limit: every request after that is refused, and it is said once.
    over_limit: AtomicBool,
    pending: AtomicUsize,
    subscriptions: AtomicUsize,
    txs_sent: AtomicU64,
    method_counts: Mutex<HashMap<String, u64>>,
    group: OnceLock<Arc<dyn CostGroup>>,
    /// The cost as of its last change, readable by group members without locking.
    published_cost: AtomicU64,
}

/// A group of sessions whose members bear each other's costs (ElectrumX's session groups).
pub trait CostGroup: Send + Sync {
    /// The cost a member bears for the rest of its group.
    fn extra_cost(&self, session_id: u64) -> f64;
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionContext {
    /// A new session and the receiving end of its outgoing queue.
    pub fn new(
        id: u64,
        kind: Protocol,
        peer: SocketAddr,
        limits: SessionLimits,
        log_me: bool,
    ) -> (Arc<SessionContext>, mpsc::Receiver<Vec<u8>>) {
        let (outgoing, receiver) = mpsc::channel(OUTGOING_QUEUE);
        let concurrency = Concurrency::new(limits.cost.initial_concurrent);
        let mut cost = Cost::new(limits.cost.clone());
        cost.recalc(0.0, &concurrency, Instant::now());
        if kind != Protocol::Rpc {
            cost.bump(CONNECTION_COST, 0.0, &concurrency);
        }
        let published_cost = AtomicU64::new(cost.value().to_bits());
        let ctx = SessionContext {
            id,
            kind,
            peer,
            started: Instant::now(),
            started_at: SystemTime::now(),
            limits,
            sv_seen: AtomicBool::new(false),
            version: OnceLock::new(),
            client_name: OnceLock::new(),
            log_me: AtomicBool::new(log_me),
            accounting: Mutex::new(Accounting {
                cost,
                stats: SessionStats::default(),
            }),
            concurrency,
            codec: Mutex::new(Codec::new()),
            outgoing,
            closing: watch::Sender::new(false),
            over_limit: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            txs_sent: AtomicU64::new(0),
            method_counts: Mutex::new(HashMap::new()),
            group: OnceLock::new(),
            published_cost,
        };
        (Arc::new(ctx), receiver)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn kind(&self) -> Protocol {
        self.kind
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The negotiated protocol version; None until `server.version` succeeded.
    pub fn protocol_version(&self) -> Option<&ProtocolVersion> {
        self.version.get()
    }

    /// The client's name from `server.version` (at most 100 characters), or "unknown".
    pub fn client_name(&self) -> &str {
        self.client_name
            .get()
            .map(String::as_str)
            .unwrap_or("unknown")
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Charges the session for work done on its behalf.
    pub fn bump_cost(&self, delta: f64) {
        self.charge(|_| delta);
    }

    /// Updates the accounting; `update` returns the cost to add.
    fn charge(&self, update: impl FnOnce(&mut Accounting) -> f64) {
        // The group's cost is read before taking our lock: members never wait on each other.
        let extra = self.extra_cost();
        let mut acc = lock(&self.accounting);
        let delta = update(&mut acc);
        acc.cost.bump(delta, extra, &self.concurrency);
        self.published_cost
            .store(acc.cost.value().to_bits(), Ordering::Relaxed);
    }

    pub fn cost(&self) -> f64 {
        f64::from_bits(self.published_cost.load(Ordering::Relaxed))
    }

    /// The cost borne for the session's group (ElectrumX's "XCost").
    pub fn extra_cost(&self) -> f64 {
        self.group.get().map_or(0.0, |g| g.extra_cost(self.id))
    }

    /// Puts the session in a group; the session manager does this once, on connection.
    pub fn join_group(&self, group: Arc<dyn CostGroup>) {
        let _ = self.group.set(group);
    }

    pub fn stats(&self) -> SessionStats {
        lock(&self.accounting).stats.clone()
    }

    /// Recalculates decay and concurrency; the manager calls this periodically.
    pub fn recalc_cost(&self) {
        let subs = self.subscriptions.load(Ordering::Relaxed);
        let extra = self.extra_cost();
        let mut acc = lock(&self.accounting);
        acc.cost.set_subscriptions(subs);
        acc.cost.recalc(extra, &self.concurrency, Instant::now());
        self.published_cost
            .store(acc.cost.value().to_bits(), Ordering::Relaxed);
    }

    /// The backend reports how many subscriptions the session holds: they slow cost decay
    /// and appear in the local RPC's listings.
    pub fn set_subscription_count(&self, count: usize) {
        self.subscriptions.store(count, Ordering::Relaxed);
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Counts a broadcast transaction (shown by the local RPC).
    pub fn add_tx_sent(&self) {
        self.txs_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn txs_sent(&self) -> u64 {
        self.txs_sent.load(Ordering::Relaxed)
    }

    pub fn pending_requests(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn max_concurrent(&self) -> i64 {
        self.concurrency.max_concurrent()
    }

    pub fn is_logged(&self) -> bool {
        self.log_me.load(Ordering::Relaxed)
    }

    pub fn set_logged(&self, value: bool) {
        self.log_me.store(value, Ordering::Relaxed);
    }

    pub fn method_counts(&self) -> HashMap<String, u64> {
        lock(&self.method_counts).clone()
    }

    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Starts closing: reading stops, queued messages are still written.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Sends a notification. False if the session is gone or closing; a client whose queue
    /// is full cannot keep up and is disconnected.
    pub fn notify(&self, method: &str, params: &[Value]) -> bool {
        if self.is_closing() {
            return false;
        }
        let message = lock(&self.codec).encode_notification(method, params);
        match self.outgoing.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                info!(
                    session = self.id,
                    "disconnecting: client cannot keep up with notifications"
                );
                self.close();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn bump_errors(&self, extra_cost: f64) {
        self.charge(|acc| {
            acc.stats.errors += 1;
            ERROR_BASE_COST + extra_cost
        });
    }

    fn received(&self, bytes: usize) {
        self.charge(|acc| {
            acc.stats.recv_count += 1;
            acc.stats.recv_size += bytes as u64;
            acc.cost.bw_cost(bytes)
        });
    }

    fn sent(&self, bytes: usize) {
        self.charge(|acc| {
            acc.stats.send_count += 1;
            acc.stats.send_size += bytes as u64;
            acc.cost.bw_cost(bytes)
        });
    }

    fn count_method(&self, method: &str) {
        *lock(&self.method_counts)
            .entry(method.to_string())
            .or_default() += 1;
    }

    pub(crate) fn sv_seen(&self) -> bool {
        self.sv_seen.load(Ordering::SeqCst)
    }

    /// Marks `server.version` as received; false if it already was.
    pub(crate) fn mark_sv_seen(&self) -> bool {
        !self.sv_seen.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn set_client_name(&self, name: String) {
        let _ = self.client_name.set(name);
    }

    pub(crate) fn set_protocol_version(&self, version: ProtocolVersion) {
        let _ = self.version.set(version);
    }

    async fn send(&self, message: Vec<u8>) {
        // Fails only when the writer is gone, and then there is no one to answer.
        let _ = self.outgoing.send(message).await;
    }
}

/// The result of handling one request.
pub struct Outcome {
    pub result: Result<RawJson, RpcError>,
    /// Close the connection once the answer is sent (aiorpcx's ReplyAndDisconnect).
    pub disconnect: bool,
}

impl Outcome {
    pub fn reply(result: Result<Value, RpcError>) -> Outcome {
        Outcome::reply_raw(result.map(RawJson::from))
    }

    pub fn reply_raw(result: Result<RawJson, RpcError>) -> Outcome {
        Outcome {
            result,
            disconnect: false,
        }
    }

    pub fn reply_and_disconnect(error: RpcError) -> Outcome {
        Outcome {
            result: Err(error),
            disconnect: true,
        }
    }
}

/// Handles the requests of one kind of connection (wallet or local RPC).
pub trait Dispatch: Send + Sync + 'static {
    fn handle(
        &self,
        ctx: &Arc<SessionContext>,
        request: Request,
    ) -> impl Future<Output = Outcome> + Send;
    /// Called once the connection has ended.
    fn closed(&self, ctx: &Arc<SessionContext>);
}

/// Runs a connection to its end: reads and dispatches until the peer leaves, the session
/// idles out or is closed, then lets queued answers drain.
pub async fn run_connection<R, W, D>(
    mut reader: R,
    writer: W,
    ctx: Arc<SessionContext>,
    outgoing: mpsc::Receiver<Vec<u8>>,
    dispatch: Arc<D>,
) where
    R: MessageReader,
    W: MessageWriter,
    D: Dispatch,
{
    let write_task = tokio::spawn(write_loop(writer, outgoing, ctx.clone()));
    // Each task gives back the number of requests it answered (a batch's members).
    let mut tasks: JoinSet<usize> = JoinSet::new();
    let mut in_flight = 0;
    let mut closing = ctx.closing.subscribe();
    let mut idle_deadline = tokio::time::Instant::now() + ctx.limits.session_timeout;
    let mut peer_left = false;
    loop {
        tokio::select! {
            biased;
            _ = until_true(&mut closing) => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                Ok(answered) => in_flight -= answered,
                // Handlers' panics are caught; one past them leaves the session unsound.
                Err(e) => {
                    error!(session = ctx.id, "closing session: a request task failed: {e}");
                    break;
                }
            },
            _ = tokio::time::sleep_until(idle_deadline) => {
                info!(session = ctx.id, "closing stale session");
                break;
            }
            event = reader.read(), if in_flight < MAX_PENDING_REQUESTS => match event {
                Ok(ReadEvent::Message(message)) => {
                    idle_deadline = tokio::time::Instant::now() + ctx.limits.session_timeout;
                    ctx.received(message.len() + 1);
                    in_flight += on_message(&ctx, &dispatch, &mut tasks, message).await;
                }
                Ok(ReadEvent::Oversize) => {
                    info!(session = ctx.id, "closing session: request too large");
                    ctx.bump_errors(0.0);
                    let text = format!("request too large (over {} bytes)", thousands(ctx.limits.max_recv as u64));
                    let error = RpcError::new(INVALID_REQUEST, text);
                    let reply = lock(&ctx.codec).encode_error(&error, &Value::Null);
                    ctx.send(reply).await;
                    break;
                }
                Ok(ReadEvent::Closed) => {
                    peer_left = true;
                    break;
                }
                Err(e) => {
                    debug!(session = ctx.id, "read error: {e}");
                    break;
                }
            },
        }
    }
    if peer_left {
        // A client may half-close after its last request: answer what it asked, unless it
        // is gone altogether (the writer failed) or the session is closed meanwhile.
        loop {
            tokio::select! {
                biased;
                _ = until_true(&mut closing) => break,
                done = tasks.join_next() => if done.is_none() { break },
            }
        }
    }
    tasks.abort_all();
    ctx.close();
    let _ = write_task.await;
    dispatch.closed(&ctx);
}

/// Decodes and dispatches one message; returns how many requests it left running.
async fn on_message<D: Dispatch>(
    ctx: &Arc<SessionContext>,
    dispatch: &Arc<D>,
    tasks: &mut JoinSet<usize>,
    message: Vec<u8>,
) -> usize {
    if ctx.is_logged() {
        info!(
            session = ctx.id,
            "processing {}",
            String::from_utf8_lossy(&message)
        );
    }
    let decoded = lock(&ctx.codec).decode(&message);
    match decoded {
        Err(error) => {
            debug!(session = ctx.id, "protocol error: {}", error.message);
            let extra = if error.code == PARSE_ERROR {
                PARSE_ERROR_EXTRA_COST
            } else {
                0.0
            };
            ctx.bump_errors(extra);
            if let Some(reply) = error.reply {
                ctx.send(reply).await;
            }
            0
        }
        Ok(Incoming::Single(request)) => {
            // Negotiation finishes before the next message is read, so requests pipelined
            // behind server.version see its outcome (ElectrumX waits for it likewise).
            let negotiating = !ctx.sv_seen() && request.method == "server.version";
            let answer = answer_single(ctx.clone(), dispatch.clone(), request);
            if negotiating {
                answer.await;
                return 0;
            }
            tasks.spawn(async move {
                answer.await;
                1
            });
            1
        }
        Ok(Incoming::Batch(members)) => {
            let (ctx, dispatch) = (ctx.clone(), dispatch.clone());
            let count = members.len();
            tasks.spawn(async move {
                run_batch(&ctx, &*dispatch, members).await;
                count
            });
            count
        }
    }
}

async fn answer_single<D: Dispatch>(ctx: Arc<SessionContext>, dispatch: Arc<D>, request: Request) {
    let id = request.id.clone();
    let (outcome, timed_out) = throttled(&ctx, &*dispatch, request, deadline(&ctx)).await;
    if timed_out {
        log_timeout(&ctx, "incoming request");
    }
    if let Some(id) = id {
        let reply = lock(&ctx.codec).encode_response(&outcome.result, &id, ctx.limits.max_send);
        ctx.send(reply).await;
    }
    if outcome.disconnect {
        ctx.close();
    }
}

async fn run_batch<D: Dispatch>(
    ctx: &Arc<SessionContext>,
    dispatch: &D,
    members: Vec<Result<Request, Vec<u8>>>,
) {
    let answers_expected = members
        .iter()
        .any(|m| matches!(m, Ok(Request { id: Some(_), .. })));
    // One deadline for all members, as if they had all started now (aiorpcx starts them
    // together): members still waiting their turn at it are answered "server busy".
    let deadline = deadline(ctx);
    let timeouts = AtomicUsize::new(0);
    let timeouts = &timeouts;
    let futures = members.into_iter().map(|member| async move {
        match member {
            Err(reply) => (Some(reply), false),
            Ok(request) => {
                let id = request.id.clone();
                let (outcome, timed_out) = throttled(ctx, dispatch, request, deadline).await;
                if timed_out {
                    timeouts.fetch_add(1, Ordering::Relaxed);
                }
                let reply = id.map(|id| lock(&ctx.codec).encode_response(&outcome.result, &id, 0));
                (reply, outcome.disconnect)
            }
        }
    });
    let answers: Vec<_> = futures_util::stream::iter(futures)
        .buffered(BATCH_CONCURRENCY)
        .collect()
        .await;
    match timeouts.load(Ordering::Relaxed) {
        0 => {}
        n => log_timeout(ctx, &format!("{n} of {} batch requests", answers.len())),
    }
    let disconnect = answers.iter().any(|(_, d)| *d);
    if answers_expected {
        // Like aiorpcx, the running size decides: members past the limit become errors.
        let max = ctx.limits.max_send;
        let mut size = 0;
        let parts: Vec<Vec<u8>> = answers
            .into_iter()
            .filter_map(|(reply, _)| reply)
            .map(|part| {
                size += part.len() + 2;
                if max > 0 && size > max {
                    let id = serde_json::from_slice::<Value>(&part)
                        .ok()
                        .and_then(|v| v.get("id").cloned());
                    lock(&ctx.codec).oversized(&id.unwrap_or(Value::Null), max)
                } else {
                    part
                }
            })
            .collect();
        ctx.send(join_batch(&parts)).await;
    }
    if disconnect {
        ctx.close();
    }
}

/// When a request starting now must be answered by (REQUEST_TIMEOUT), if ever.
fn deadline(ctx: &SessionContext) -> Option<tokio::time::Instant> {
    ctx.limits
        .request_timeout
        .map(|limit| tokio::time::Instant::now() + limit)
}

fn log_timeout(ctx: &SessionContext, what: &str) {
    let secs = ctx.limits.request_timeout.unwrap_or_default().as_secs_f64();
    info!(session = ctx.id, "{what} timed out after {secs} secs");
}

/// aiorpcx's `_throttled_request`: timeout, concurrency slot, cost sleep, then the handler.
/// Also says whether it timed out (the caller logs it).
async fn throttled<D: Dispatch>(
    ctx: &Arc<SessionContext>,
    dispatch: &D,
    request: Request,
    deadline: Option<tokio::time::Instant>,
) -> (Outcome, bool) {
    ctx.pending.fetch_add(1, Ordering::Relaxed);
    let work = async {
        let Ok(_slot) = ctx.concurrency.enter().await else {
            if !ctx.over_limit.swap(true, Ordering::Relaxed) {
                info!(session = ctx.id, "disconnecting: excessive resource usage");
            }
            return Outcome::reply_and_disconnect(RpcError::new(
                EXCESSIVE_RESOURCE_USAGE,
                "excessive resource usage",
            ));
        };
        let sleep = lock(&ctx.accounting).cost.sleep();
        if !sleep.is_zero() {
            tokio::time::sleep(sleep).await;
        }
        let method = request.method.clone();
        // A failing handler answers its request, like aiorpcx, instead of leaving it hanging.
        match AssertUnwindSafe(dispatch.handle(ctx, request))
            .catch_unwind()
            .await
        {
            Ok(outcome) => outcome,
            Err(_) => {
                error!(session = ctx.id, "internal error handling {method}");
                Outcome::reply(Err(RpcError::new(INTERNAL_ERROR, "internal server error")))
            }
        }
    };
    let (outcome, timed_out) = match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, work).await {
            Ok(outcome) => (outcome, false),
            Err(_) => {
                let busy = RpcError::new(SERVER_BUSY, "server busy - request timed out");
                (Outcome::reply(Err(busy)), true)
            }
        },
        None => (work.await, false),
    };
    if let Err(error) = &outcome.result {
        ctx.bump_errors(error.cost);
    }
    ctx.pending.fetch_sub(1, Ordering::Relaxed);
    (outcome, timed_out)
}

/// Resolves once the flag is set (or its sender is gone). Returns nothing: a borrowed
/// `watch::Ref` kept in a `select!` would make the enclosing future `!Send`.
pub(crate) async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Counts a dispatched method in the session's statistics.
pub(crate) fn count_method(ctx: &SessionContext, method: &str) {
    ctx.count_method(method);
}

async fn write_loop<W: MessageWriter>(
    mut writer: W,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    ctx: Arc<SessionContext>,
) {
    let mut closing = ctx.closing.subscribe();
    loop {
        let message = tokio::select! {
            biased;
            message = outgoing.recv() => message,
            _ = until_true(&mut closing) => outgoing.try_recv().ok(),
        };
        let Some(message) = message else { break };
        let size = message.len() + 1;
        match tokio::time::timeout(MAX_SEND_DELAY, writer.write(message)).await {
            Ok(Ok(())) => ctx.sent(size),
            Ok(Err(e)) => {
                debug!(session = ctx.id, "write error: {e}");
                break;
            }
            Err(_) => {
                info!(session = ctx.id, "disconnecting: client stopped reading");
                break;
            }
        }
    }
    ctx.close();
    writer.shutdown().await;
}
