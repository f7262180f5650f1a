//! Listeners and the session manager: binds SERVICES, accepts connections over each
//! transport, keeps the registry of live sessions, enforces MAX_SESSIONS, and runs the
//! periodic cost recalculation. Wallet listeners start separately from the local RPC.

mod admin;
mod groups;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

use crate::config::Config;
use crate::services::{Protocol, Service};
use crate::session::cost::CostParams;
use crate::session::methods::{server_features, MethodCounts, WalletDispatch, WalletServices};
use crate::session::{run_connection, until_true, Backend, SessionContext, SessionLimits};
use crate::transport::{accept_websocket, load_tls, LineReader, LineWriter};
use admin::AdminDispatch;
use groups::Groups;

/// TLS and WebSocket handshakes must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often session costs decay and concurrency is recalculated (ElectrumX: 300 s).
const RECALC_PERIOD: Duration = Duration::from_secs(300);

/// The live sessions.
struct Registry {
    sessions: Mutex<BTreeMap<u64, Arc<SessionContext>>>,
    /// Wallet sessions (not local RPC), watched by the listeners for MAX_SESSIONS.
    wallet_count: watch::Sender<usize>,
    next_id: AtomicU64,
    /// The local RPC's `log new`: log the requests of sessions yet to come.
    log_new: AtomicBool,
    groups: Groups,
    /// Transactions sent by sessions that have ended: `getinfo` counts the server's life.
    ended_txs_sent: AtomicU64,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<SessionContext>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, ctx: Arc<SessionContext>) -> usize {
        let mut sessions = self.lock();
        sessions.insert(ctx.id(), ctx);
        let wallets = sessions
            .values()
            .filter(|s| s.kind() != Protocol::Rpc)
            .count();
        self.wallet_count.send_replace(wallets);
        sessions.len()
    }

    fn remove(&self, id: u64) {
        let mut sessions = self.lock();
        if let Some(ended) = sessions.remove(&id) {
            self.ended_txs_sent
                .fetch_add(ended.txs_sent(), Ordering::Relaxed);
        }
        let wallets = sessions
            .values()
            .filter(|s| s.kind() != Protocol::Rpc)
            .count();
        self.wallet_count.send_replace(wallets);
    }

    fn snapshot(&self) -> Vec<Arc<SessionContext>> {
        self.lock().values().cloned().collect()
    }

    /// Transactions sent in the server's life, by ended sessions and open ones.
    fn txs_sent(&self) -> u64 {
        // Under the lock `remove` moves a session's count with, so none is counted twice.
        let sessions = self.lock();
        let open: u64 = sessions.values().map(|s| s.txs_sent()).sum();
        open + self.ended_txs_sent.load(Ordering::Relaxed)
    }
}

/// An Electrum server's protocol front: listeners, sessions and the local RPC.
pub struct Server<B: Backend> {
    config: Arc<Config>,
    services: Arc<WalletServices<B>>,
    registry: Registry,
    tls: Option<TlsAcceptor>,
    shutdown: watch::Sender<bool>,
    stop_requested: watch::Sender<bool>,
    listening: Mutex<Vec<(Service, SocketAddr)>>,
    started: Instant,
}

impl<B: Backend> Server<B> {
    /// Prepares a server; loads the TLS certificate when an ssl or wss service is
    /// configured, so a bad certificate stops start-up with a message naming the file.
    pub fn new(
        config: Arc<Config>,
        backend: Arc<B>,
        genesis_hash: &str,
    ) -> Result<Arc<Server<B>>, String> {
        let tls = match (&config.ssl_certfile, &config.ssl_keyfile) {
            (Some(cert), Some(key)) if config.services.iter().any(|s| s.protocol.is_tls()) => {
                Some(load_tls(cert, key)?)
            }
            _ => None,
        };
        let services = Arc::new(WalletServices {
            features: server_features(&config, genesis_hash),
            config: config.clone(),
            backend,
            method_counts: MethodCounts::default(),
        });
        Ok(Arc::new(Server {
            config,
            services,
            registry: Registry {
                sessions: Mutex::new(BTreeMap::new()),
                wallet_count: watch::Sender::new(0),
                next_id: AtomicU64::new(0),
                log_new: AtomicBool::new(false),
                groups: Groups::default(),
                ended_txs_sent: AtomicU64::new(0),
            },
            tls,
            shutdown: watch::Sender::new(false),
            stop_requested: watch::Sender::new(false),
            listening: Mutex::new(Vec::new()),
            started: Instant::now(),
        }))
    }

    /// Starts the local RPC listeners (rpc:// services). ElectrumX serves these from start-up.
    pub async fn start_rpc(self: &Arc<Self>) -> Result<(), String> {
        let services: Vec<Service> = self
            .config
            .services
            .iter()
            .filter(|s| s.protocol == Protocol::Rpc)
            .cloned()
            .collect();
        self.start(services).await
    }

    /// Starts the wallet listeners (tcp, ssl, ws, wss). ElectrumX does this only once the
    /// index has caught up with the node.
    pub async fn start_wallets(self: &Arc<Self>) -> Result<(), String> {
        let services: Vec<Service> = self
            .config
            .services
            .iter()
            .filter(|s| s.protocol != Protocol::Rpc)
            .cloned()
            .collect();
        info!("max session count: {}", self.config.max_sessions);
        info!(
            "session timeout: {} seconds",
            self.config.session_timeout.as_secs()
        );
        info!("max send (response) size {} bytes", self.config.max_send);
        info!("max recv (request) size {} bytes", self.config.max_recv);
        if let Some(re) = &self.config.drop_client {
            info!("drop clients matching: {}", re.as_str());
        }
        for service in &self.config.report_services {
            info!("advertising service {service}");
        }
        self.start(services).await?;
        tokio::spawn(self.clone().periodic());
        Ok(())
    }

    async fn start(self: &Arc<Self>, services: Vec<Service>) -> Result<(), String> {
        for service in services {
            let listener = bind(&service).await?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("{service}: {e}"))?;
            info!(
                "{} server listening on {}",
                service.protocol.name().to_uppercase(),
                service.address()
            );
            self.listening
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((service.clone(), addr));
            tokio::spawn(self.clone().accept_loop(service, listener));
        }
        Ok(())
    }

    /// The services listened on and their bound addresses.
    pub fn listening(&self) -> Vec<(Service, SocketAddr)> {
        self.listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The live sessions, wallet and local RPC.
    pub fn sessions(&self) -> Vec<Arc<SessionContext>> {
        self.registry.snapshot()
    }

    /// Resolves when the local RPC `stop` command was received.
    pub async fn stop_requested(&self) {
        until_true(&mut self.stop_requested.subscribe()).await;
    }

    /// Stops listening and closes every session, waiting up to 3 s for them to end.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let sessions = self.registry.snapshot();
        info!("closing {} active sessions", sessions.len());
        for session in &sessions {
            session.close();
        }
        let mut count = self.registry.wallet_count.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(3), count.wait_for(|n| *n == 0)).await;
    }

    fn limits(&self, protocol: Protocol) -> SessionLimits {
        let config = &self.config;
        if protocol == Protocol::Rpc {
            // ElectrumX's LocalRPC: no timeouts and no response limit.
            return SessionLimits {
                cost: CostParams::unlimited(config.initial_concurrent.max(1)),
                max_send: 0,
                max_recv: config.max_recv,
                request_timeout: None,
                session_timeout: config.session_timeout,
            };
        }
        SessionLimits {
            cost: CostParams::from_config(config),
            max_send: config.max_send,
            max_recv: config.max_recv,
            request_timeout: Some(config.request_timeout),
            session_timeout: config.session_timeout,
        }
    }

    async fn accept_loop(self: Arc<Self>, service: Service, listener: TcpListener) {
        let mut shutdown = self.shutdown.subscribe();
        let mut listener = Some(listener);
        let max = self.config.max_sessions;
        let low_watermark = max * 19 / 20;
        loop {
            if service.protocol != Protocol::Rpc && *self.registry.wallet_count.borrow() >= max {
                if listener.take().is_some() {
                    info!(
                        "maximum sessions {max} reached, stopping new connections until count drops to {low_watermark}"
                    );
                }
                let mut count = self.registry.wallet_count.subscribe();
                tokio::select! {
                    _ = until_true(&mut shutdown) => return,
                    _ = count.wait_for(|n| *n <= low_watermark) => {}
                }
                continue;
            }
            let Some(current) = listener.as_ref() else {
                match bind(&service).await {
                    Ok(l) => {
                        info!("resuming listening for incoming connections on {service}");
                        listener = Some(l);
                    }
                    Err(e) => {
                        error!("{e}");
                        tokio::select! {
                            _ = until_true(&mut shutdown) => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
                continue;
            };
            let accepted = tokio::select! {
                _ = until_true(&mut shutdown) => return,
                accepted = current.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
                    let log_me = self.registry.log_new.load(Ordering::Relaxed);
                    let (ctx, outgoing) = SessionContext::new(
                        id,
                        service.protocol,
                        peer,
                        self.limits(service.protocol),
                        log_me,
                    );
                    if service.protocol != Protocol::Rpc {
                        let config = &self.config;
                        self.registry.groups.join(
                            &ctx,
                            config.session_group_by_subnet_ipv4,
                            config.session_group_by_subnet_ipv6,
                        );
                    }
                    let total = self.registry.add(ctx.clone());
                    // ANON_LOGS keeps client addresses out of the log.
                    let shown = if self.config.anon_logs {
                        "xx.xx.xx.xx:xx".to_string()
                    } else {
                        peer.to_string()
                    };
                    info!(
                        session = id,
                        "{} {shown}, {total} total",
                        service.protocol.name().to_uppercase()
                    );
                    let server = self.clone();
                    tokio::spawn(async move {
                        server.connection(stream, ctx.clone(), outgoing).await;
                        server.registry.remove(ctx.id());
                        server.registry.groups.leave(&ctx);
                    });
                }
                // Running out of file descriptors and the like: pause instead of spinning.
                Err(e) => {
                    error!("{service}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(
        self: &Arc<Self>,
        stream: TcpStream,
        ctx: Arc<SessionContext>,
        outgoing: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) {
        let _ = stream.set_nodelay(true);
        let protocol = ctx.kind();
        let max_recv = self.config.max_recv;
        let acceptor = match (&self.tls, protocol.is_tls()) {
            (Some(acceptor), true) => Some(acceptor.clone()),
            _ => None,
        };
        let Some(acceptor) = acceptor else {
            if protocol.is_websocket() {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_websocket(stream, max_recv))
                    .await
                {
                    Ok(Ok((reader, writer))) => self.run(reader, writer, ctx, outgoing).await,
                    Ok(Err(e)) => info!(session = ctx.id(), "{e}"),
                    Err(_) => info!(session = ctx.id(), "websocket handshake timed out"),
                }
            } else {
                let (read, write) = stream.into_split();
                self.run(
                    LineReader::new(read, max_recv),
                    LineWriter::new(write),
                    ctx,
                    outgoing,
                )
                .await
            }
            return;
        };
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return info!(session = ctx.id(), "TLS handshake failed: {e}"),
            Err(_) => return info!(session = ctx.id(), "TLS handshake timed out"),
        };
        if protocol.is_websocket() {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_websocket(tls, max_recv)).await {
                Ok(Ok((reader, writer))) => self.run(reader, writer, ctx, outgoing).await,
                Ok(Err(e)) => info!(session = ctx.id(), "{e}"),
                Err(_) => info!(session = ctx.id(), "websocket handshake timed out"),
            }
        } else {
            let (read, write) = tokio::io::split(tls);
            self.run(
                LineReader::new(read, max_recv),
                LineWriter::new(write),
                ctx,
                outgoing,
            )
            .await
        }
    }

    async fn run<R, W>(
        self: &Arc<Self>,
        reader: R,
        writer: W,
        ctx: Arc<SessionContext>,
        outgoing: tokio::sync::mpsc::Receiver<Vec<u8>>,
    ) where
        R: crate::transport::MessageReader,
        W: crate::transport::MessageWriter,
    {
        if ctx.kind() == Protocol::Rpc {
            let dispatch = Arc::new(AdminDispatch::new(self.clone()));
            run_connection(reader, writer, ctx, outgoing, dispatch).await;
        } else {
            let dispatch = Arc::new(WalletDispatch::new(self.services.clone(), &ctx));
            run_connection(reader, writer, ctx, outgoing, dispatch).await;
        }
    }

    /// ElectrumX's periodic jobs: cost decay with subscriptions, and session statistics.
    async fn periodic(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        let log_every = self.config.log_sessions;
        let mut recalc =
            tokio::time::interval_at(tokio::time::Instant::now() + RECALC_PERIOD, RECALC_PERIOD);
        let mut log = tokio::time::interval_at(
            tokio::time::Instant::now() + log_every.max(Duration::from_secs(1)),
            log_every.max(Duration::from_secs(1)),
        );
        loop {
            tokio::select! {
                _ = until_true(&mut shutdown) => return,
                _ = recalc.tick() => {
                    let refund = RECALC_PERIOD.as_secs_f64() * self.config.cost_hard_limit / 5000.0;
                    self.registry.groups.decay(refund);
                    for session in self.registry.snapshot() {
                        session.recalc_cost();
                    }
                }
                _ = log.tick(), if !log_every.is_zero() => {
                    let sessions = self.registry.snapshot();
                    let subs: usize = sessions.iter().map(|s| s.subscription_count()).sum();
                    info!("{} sessions, {} subscriptions, uptime {}", sessions.len(), subs, admin::formatted_time(self.started.elapsed().as_secs(), " "));
                }
            }
        }
    }
}

/// Binds a service: all interfaces is IPv6's dual-stack wildcard, or IPv4's without IPv6.
async fn bind(service: &Service) -> Result<TcpListener, String> {
    let result = match &service.host {
        crate::services::Host::AllInterfaces => match TcpListener::bind(("::", service.port)).await
        {
            Ok(listener) => Ok(listener),
            Err(_) => TcpListener::bind(("0.0.0.0", service.port)).await,
        },
        crate::services::Host::Ip(ip) => TcpListener::bind((*ip, service.port)).await,
        crate::services::Host::Name(name) => TcpListener::bind((name.as_str(), service.port)).await,
    };
    result.map_err(|e| {
        format!(
            "{} server failed to listen on {}: {e}",
            service.protocol.name().to_uppercase(),
            service.address()
        )
    })
}

/// Serves until the local RPC `stop` command: local RPC at once, wallets when
/// `wallets_ready` resolves (after the index caught up), then shuts down.
pub async fn serve<B: Backend>(
    config: Arc<Config>,
    backend: Arc<B>,
    genesis_hash: &str,
    wallets_ready: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let server = Server::new(config, backend, genesis_hash)?;
    server.start_rpc().await?;
    tokio::select! {
        _ = server.stop_requested() => {}
        _ = wallets_ready => {
            server.start_wallets().await?;
            server.stop_requested().await;
        }
    }
    server.shutdown().await;
    Ok(())
}
