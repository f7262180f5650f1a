//! The wallet-session dispatcher: the version-negotiation rules, the `server.*` methods,
//! and hand-off of every other method to the backend.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tracing::{error, info};

use super::version::{negotiate, ProtocolVersion};
use super::{count_method, Backend, Dispatch, Outcome, SessionContext};
use crate::config::Config;
use crate::jsonrpc::{py_str, truthy, Params, Request, RpcError, Signature, METHOD_NOT_FOUND};

/// The server's name and version, as `server.version` and `server.features` give it.
pub fn server_version() -> String {
    format!("ferrum {}", env!("CARGO_PKG_VERSION"))
}

/// Server-wide counts of requests by method (the local RPC's "request counts").
pub type MethodCounts = Arc<Mutex<HashMap<String, u64>>>;

/// What every wallet session of a server shares.
pub struct WalletServices<B: Backend> {
    pub config: Arc<Config>,
    pub backend: Arc<B>,
    /// The `server.features` result, fixed at start-up.
    pub features: Value,
    pub method_counts: MethodCounts,
}

/// The `server.features` result: hosts from REPORT_SERVICES and this server's facts.
pub fn server_features(config: &Config, genesis_hash: &str) -> Value {
    let mut hosts = Map::new();
    for service in &config.report_services {
        let ports = hosts
            .entry(service.host.features_key())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(ports) = ports {
            ports.insert(
                format!("{}_port", service.protocol.name()),
                json!(service.port),
            );
        }
    }
    json!({
        "hosts": hosts,
        "pruning": null,
        "server_version": server_version(),
        "protocol_min": ProtocolVersion::min().to_string(),
        "protocol_max": ProtocolVersion::max().to_string(),
        "genesis_hash": genesis_hash,
        "hash_function": "sha256",
        "services": config.report_services.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    })
}

/// One wallet connection's dispatcher, holding the backend's state for it.
pub struct WalletDispatch<B: Backend> {
    services: Arc<WalletServices<B>>,
    state: B::Session,
}

const NO_PARAMS: Signature = Signature::new(&[], 0);
const VERSION_PARAMS: Signature = Signature {
    names: &["client_name", "protocol_version"],
    required: 0,
    extras: true,
};
const PING_PARAMS: Signature = Signature::new(&["pong_len", "data"], 0);
const ADD_PEER_PARAMS: Signature = Signature::new(&["features"], 1);

fn count(services: &WalletServices<impl Backend>, ctx: &SessionContext, method: &str) {
    count_method(ctx, method);
    let mut counts = services
        .method_counts
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    *counts.entry(method.to_string()).or_default() += 1;
}

impl<B: Backend> WalletDispatch<B> {
    pub fn new(services: Arc<WalletServices<B>>, ctx: &Arc<SessionContext>) -> WalletDispatch<B> {
        let state = services.backend.open_session(ctx);
        WalletDispatch { services, state }
    }

    fn server_version_call(&self, ctx: &SessionContext, params: Params) -> Outcome {
        let args = match params.bind("server.version", &VERSION_PARAMS) {
            Ok(args) => args,
            Err(e) => return Outcome::reply(Err(e)),
        };
        ctx.bump_cost(0.5);
        if !ctx.mark_sv_seen() {
            return Outcome::reply(Err(RpcError::bad_request("server.version already sent")));
        }
        if let Some(name) = args[0].as_ref().filter(|v| truthy(v)) {
            let name = py_str(name);
            if self
                .services
                .config
                .drop_client
                .as_ref()
                .is_some_and(|re| re.is_match(&name))
            {
                info!(session = ctx.id(), "dropping client {name}");
                return Outcome::reply_and_disconnect(RpcError::bad_request(format!(
                    "unsupported client: {name}"
                )));
            }
            ctx.set_client_name(name.chars().take(100).collect());
        }
        let requested = args[1].as_ref();
        let Some(version) = negotiate(requested) else {
            let shown = requested.map(py_str).unwrap_or_else(|| "None".into());
            return Outcome::reply_and_disconnect(RpcError::bad_request(format!(
                "unsupported protocol version: {shown}"
            )));
        };
        let answer = json!([server_version(), version.to_string()]);
        ctx.set_protocol_version(version);
        Outcome::reply(Ok(answer))
    }

    async fn banner(&self, ctx: &SessionContext) -> Result<Value, RpcError> {
        ctx.bump_cost(0.5);
        let config = &self.services.config;
        // ElectrumX treats connections from its local Tor proxy as Tor clients.
        let file = if is_loopback(ctx.peer().ip()) {
            &config.tor_banner_file
        } else {
            &config.banner_file
        };
        if let Some(path) = file {
            match tokio::fs::read(path).await.map(String::from_utf8) {
                Ok(Ok(text)) => return Ok(Value::String(self.replaced_banner(text).await?)),
                Ok(Err(_)) => error!("reading banner file {}: not valid UTF-8", path.display()),
                Err(e) => error!("reading banner file {}: {e}", path.display()),
            }
        }
        Ok(Value::String(format!(
            "You are connected to a {} server.",
            server_version()
        )))
    }

    async fn replaced_banner(&self, banner: String) -> Result<String, RpcError> {
        let daemon = self.services.backend.daemon_version().await?;
        let v = daemon.version;
        let daemon_version = format!("{}.{}.{}", v / 10_000, (v % 10_000) / 100, v % 100);
        let pairs = [
            ("$SERVER_VERSION", env!("CARGO_PKG_VERSION").to_string()),
            ("$SERVER_SUBVERSION", server_version()),
            ("$DAEMON_VERSION", daemon_version),
            ("$DAEMON_SUBVERSION", daemon.subversion),
            (
                "$DONATION_ADDRESS",
                self.services.config.donation_address.clone(),
            ),
        ];
        Ok(pairs
            .iter()
            .fold(banner, |text, (from, to)| text.replace(from, to)))
    }

    async fn server_method(
        &self,
        ctx: &Arc<SessionContext>,
        method: &str,
        signature: &Signature,
        params: Params,
    ) -> Result<Value, RpcError> {
        let args = params.bind(method, signature)?;
        let services = &self.services;
        match method {
            "server.ping" => {
                ctx.bump_cost(0.1);
                Ok(Value::Null)
            }
            "server.banner" => self.banner(ctx).await,
            "server.donation_address" => {
                ctx.bump_cost(0.1);
                Ok(Value::String(services.config.donation_address.clone()))
            }
            "server.features" => {
                ctx.bump_cost(0.2);
                Ok(services.features.clone())
            }
            "server.peers.subscribe" => {
                ctx.bump_cost(1.0);
                Ok(Value::Array(services.backend.peers()))
            }
            _ => {
                ctx.bump_cost(100.0);
                let features = args.into_iter().next().flatten().unwrap_or(Value::Null);
                Ok(Value::Bool(
                    services.backend.add_peer(features, ctx.peer()).await,
                ))
            }
        }
    }
}

/// The parameters of the `server.*` methods answered here; None for the backend's methods.
fn server_signature(method: &str) -> Option<Signature> {
    Some(match method {
        "server.ping" => PING_PARAMS,
        "server.add_peer" => ADD_PEER_PARAMS,
        "server.banner"
        | "server.donation_address"
        | "server.features"
        | "server.peers.subscribe" => NO_PARAMS,
        _ => return None,
    })
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        v4 => v4.is_loopback(),
    }
}

const IDENTIFY_FIRST: &str = "use server.version to identify client";

impl<B: Backend> Dispatch for WalletDispatch<B> {
    async fn handle(&self, ctx: &Arc<SessionContext>, request: Request) -> Outcome {
        let Request { method, params, id } = request;
        let is_version = method == "server.version" && id.is_some();
        if !is_version && (!ctx.sv_seen() || ctx.protocol_version().is_none()) {
            info!(
                session = ctx.id(),
                "closing session: server.version must be first msg. got: {method}"
            );
            return Outcome::reply_and_disconnect(RpcError::bad_request(IDENTIFY_FIRST));
        }
        if id.is_none() {
            // Protocols 1.4 to 1.6 define no client notifications.
            count(&self.services, ctx, "invalid method");
            return Outcome::reply(Err(RpcError::unknown_method(&method)));
        }
        if is_version {
            count(&self.services, ctx, &method);
            return self.server_version_call(ctx, params);
        }
        if let Some(signature) = server_signature(&method) {
            count(&self.services, ctx, &method);
            return Outcome::reply(self.server_method(ctx, &method, &signature, params).await);
        }
        let result = self
            .services
            .backend
            .call_raw(ctx, &self.state, &method, params)
            .await;
        let unknown = matches!(&result, Err(e) if e.code == METHOD_NOT_FOUND);
        count(
            &self.services,
            ctx,
            if unknown { "invalid method" } else { &method },
        );
        Outcome::reply_raw(result)
    }

    fn closed(&self, ctx: &Arc<SessionContext>) {
        self.services.backend.close_session(ctx, &self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_from_report_services() {
        let config = Config::from_pairs(&[
            ("DB_DIRECTORY", "/d"),
            ("DAEMON_URL", "u:p@h"),
            (
                "REPORT_SERVICES",
                "tcp://e.com:50001,ssl://e.com:50002,wss://[2001:db9::1]:50004",
            ),
        ])
        .unwrap();
        let f = server_features(&config, "00ab");
        assert_eq!(
            f["hosts"],
            json!({"e.com": {"tcp_port": 50001, "ssl_port": 50002}, "2001:db9::1": {"wss_port": 50004}})
        );
        assert_eq!(f["genesis_hash"], "00ab");
        assert_eq!(f["hash_function"], "sha256");
        assert_eq!(f["protocol_min"], "1.4");
        assert_eq!(f["protocol_max"], "1.6");
        assert_eq!(f["pruning"], Value::Null);
        assert_eq!(
            f["server_version"],
            format!("ferrum {}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            f["services"],
            json!([
                "tcp://e.com:50001",
                "ssl://e.com:50002",
                "wss://[2001:db9::1]:50004"
            ])
        );
    }
}
