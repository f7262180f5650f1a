//! New-block notifications from the node's ZMQ `hashblock` publisher (`DAEMON_ZMQ`).
//!
//! Each notification wakes the indexer at once instead of at its next poll. Polling stays on:
//! a publisher drops messages when its queue is full and a TCP connection can die silently,
//! so ZMQ only makes blocks arrive sooner, never decides whether they arrive.

pub mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::daemon::{self, Daemon};

/// The topic bitcoind's `-zmqpubhashblock` publishes.
const TOPIC: &[u8] = b"hashblock";
/// The bitcoin.conf line the log suggests.
const CONF_LINE: &str = "zmqpubhashblock=tcp://127.0.0.1:28332";
/// Bound on connecting and on the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive: a node that vanishes (power cut, cable) sends no FIN, and a subscriber
/// would wait on it forever. Probes after a minute of silence, every 10 s, 3 tries: a dead
/// connection is noticed within about 90 s (polling covers the gap).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
const MIN_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// JSON-RPC "method not found": a node built without ZMQ has no `getzmqnotifications`.
const RPC_METHOD_NOT_FOUND: i64 = -32601;

/// `DAEMON_ZMQ`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// Ask the node (`getzmqnotifications`) where it publishes `hashblock`.
    Auto,
    Off,
    /// Subscribe here, whatever the node says (its bind address may not be reachable as is).
    Endpoint(Endpoint),
}

impl Setting {
    /// `auto` (also empty), `off`, or `tcp://host:port`.
    pub fn parse(value: &str) -> Option<Setting> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Setting::Auto),
            "off" => Some(Setting::Off),
            _ => Endpoint::parse(value.trim()).map(Setting::Endpoint),
        }
    }
}

/// A TCP endpoint as ZMQ writes it: `tcp://host:port`, IPv6 hosts in brackets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(address: &str) -> Option<Endpoint> {
        let rest = address.strip_prefix("tcp://")?;
        let (host, port) = rest.rsplit_once(':')?;
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.strip_suffix(']')?,
            None if host.contains(':') => return None,
            None => host,
        };
        let port = port.parse().ok().filter(|&p| p != 0)?;
        (!host.is_empty()).then(|| Endpoint {
            host: host.to_string(),
            port,
        })
    }

    /// A publisher bound to every interface is reached at the node's RPC host.
    fn reachable(self, node_host: &str) -> Endpoint {
        match self.host.as_str() {
            "*" | "0.0.0.0" | "::" => Endpoint {
                host: node_host.to_string(),
                port: self.port,
            },
            _ => self,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "tcp://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "tcp://{}:{}", self.host, self.port)
        }
    }
}

/// Starts following the node's block notifications as `setting` says; the returned `Notify`
/// is signalled once per notification (and never when `Off`).
pub fn spawn(setting: Setting, daemon: Arc<Daemon>) -> Arc<Notify> {
    let notify = Arc::new(Notify::new());
    if setting == Setting::Off {
        info!("ZMQ block notifications off (DAEMON_ZMQ=off): polling the node for blocks");
    } else {
        tokio::spawn(follow(setting, daemon, notify.clone()));
    }
    notify
}

/// Where to subscribe, or why not.
enum Found {
    At(Endpoint),
    /// The node publishes no `hashblock` (or the RPC failed): the message says so.
    Nowhere(String),
}

async fn follow(setting: Setting, daemon: Arc<Daemon>, notify: Arc<Notify>) {
    // With `auto` the publisher is the node in use's: when another node takes over (failover,
    // the `daemon_url` command), the old one's publisher may well stay up, and listening to it
    // would leave new blocks to polling. An explicit endpoint stays whatever the node.
    let mut node_changes = (setting == Setting::Auto).then(|| daemon.node_changes());
    let mut retry = MIN_RETRY;
    // The last problem logged, so that a problem that persists is logged once.
    let mut last_problem: Option<String> = None;
    loop {
        if let Some(changes) = &mut node_changes {
            // Marked before asking the node, so a change while asking is not missed.
            changes.mark_unchanged();
        }
        // Asked outside the race below: a failover made by this very call would otherwise
        // cancel it and start it again, at once and forever while no node answers.
        let found = match &setting {
            Setting::Endpoint(endpoint) => Found::At(endpoint.clone()),
            _ => discover(&daemon).await,
        };
        if daemon.is_stopped() {
            return; // shutting down
        }
        let attempt = async {
            let (problem, served) = subscription(found, &notify).await;
            // A publisher that drops every connection at once is retried ever more slowly,
            // and its complaint logged once; one that served a while is not.
            if served {
                last_problem = None;
                retry = MIN_RETRY;
            }
            if last_problem.as_ref() != Some(&problem) {
                warn!("{problem}; polling the node for blocks, retrying ZMQ");
                last_problem = Some(problem);
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(MAX_RETRY);
        };
        let moved = tokio::select! {
            () = attempt => false,
            () = node_changed(&mut node_changes) => true,
        };
        if moved {
            info!(
                "the node in use changed to {}: looking up its ZMQ publisher again",
                daemon.current_url()
            );
            // A new node: its problems are news, and it is asked at once.
            last_problem = None;
            retry = MIN_RETRY;
        }
    }
}

/// Subscribes to the publisher found and listens to it until that fails: why it stopped, and
/// whether the subscription served a while.
async fn subscription(found: Found, notify: &Notify) -> (String, bool) {
    let endpoint = match found {
        Found::Nowhere(why) => return (why, false),
        Found::At(endpoint) => endpoint,
    };
    let mut subscriber = match subscribe(&endpoint).await {
        Ok(subscriber) => subscriber,
        Err(e) => return (format!("cannot subscribe to {endpoint}: {e}"), false),
    };
    info!("subscribed to the node's block notifications at {endpoint}");
    // Blocks may have come while we were not listening.
    notify.notify_one();
    let since = tokio::time::Instant::now();
    let e = receive(&mut subscriber, notify).await;
    (
        format!("block notifications from {endpoint} stopped: {e}"),
        since.elapsed() >= MAX_RETRY,
    )
}

/// Resolves when the node in use changes; never without `changes` (an explicit endpoint).
async fn node_changed(changes: &mut Option<watch::Receiver<()>>) {
    if let Some(changes) = changes {
        // The sender lives in the `Daemon` this task holds: it cannot close under us.
        if changes.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

async fn discover(daemon: &Daemon) -> Found {
    let reply = match daemon.call("getzmqnotifications", json!([])).await {
        Ok(reply) => reply,
        Err(daemon::Error::Rpc { code, .. }) if code == RPC_METHOD_NOT_FOUND => {
            return Found::Nowhere(format!(
                "the node was built without ZMQ (it has no getzmqnotifications): a bitcoind \
                 built with ZMQ and {CONF_LINE} in bitcoin.conf announces new blocks at once"
            ))
        }
        Err(e) => return Found::Nowhere(format!("getzmqnotifications failed: {e}")),
    };
    match hashblock_address(&reply) {
        Err(e) => Found::Nowhere(format!("getzmqnotifications: {e}")),
        Ok(None) => Found::Nowhere(format!(
            "the node publishes no hashblock over ZMQ; add {CONF_LINE} to bitcoin.conf to \
             learn of new blocks at once"
        )),
        Ok(Some(address)) => match Endpoint::parse(address) {
            Some(endpoint) => Found::At(endpoint.reachable(&daemon.current_node().host)),
            None => Found::Nowhere(format!(
                "the node publishes hashblock at {address:?}, which is not a tcp://host:port \
                 endpoint; set DAEMON_ZMQ=tcp://host:port to one Ferrum can reach"
            )),
        },
    }
}

/// The `pubhashblock` address in a `getzmqnotifications` reply.
fn hashblock_address(reply: &Value) -> Result<Option<&str>, String> {
    let entries = reply
        .as_array()
        .ok_or_else(|| "reply is not an array".to_string())?;
    for entry in entries {
        if entry.get("type").and_then(Value::as_str) == Some("pubhashblock") {
            return match entry.get("address").and_then(Value::as_str) {
                Some(address) => Ok(Some(address)),
                None => Err("the pubhashblock entry has no address".into()),
            };
        }
    }
    Ok(None)
}

async fn subscribe(endpoint: &Endpoint) -> Result<wire::Subscriber<TcpStream>, String> {
    let connect = async {
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        keep_alive(&stream).map_err(|e| format!("cannot set TCP keepalive: {e}"))?;
        wire::Subscriber::handshake(stream, TOPIC)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no handshake within {}s", CONNECT_TIMEOUT.as_secs()))?
}

fn keep_alive(stream: &TcpStream) -> std::io::Result<()> {
    let params = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&params)
}

/// Signals `notify` for each block notification until the connection fails.
async fn receive(subscriber: &mut wire::Subscriber<TcpStream>, notify: &Notify) -> String {
    loop {
        let parts = match subscriber.next_message().await {
            Ok(parts) => parts,
            Err(e) => return e.to_string(),
        };
        // Subscriptions match prefixes: skip any longer topic.
        if parts[0] != TOPIC {
            continue;
        }
        match parts.get(1).map(Vec::as_slice) {
            Some(hash) if hash.len() == 32 => {
                debug!("ZMQ: new block {}", crate::hex::to_hex(hash));
                notify.notify_one();
            }
            _ => return "a hashblock notification without a 32-byte hash".to_string(),
        }
    }
}

#[cfg(test)]
mod tests;
