//! The local RPC (ElectrumX's LocalRPC on rpc://): getinfo, sessions, groups, disconnect,
//! log and stop here; every other command goes to `Backend::admin_call`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tracing::info;

use super::groups::SessionGroup;
use super::Server;
use crate::jsonrpc::{Params, Request, RpcError, Signature};
use crate::services::Protocol;
use crate::session::methods::server_version;
use crate::session::{Backend, Dispatch, Outcome, SessionContext};

const NO_PARAMS: Signature = Signature::new(&[], 0);
const SESSION_IDS: Signature = Signature::new(&["session_ids"], 1);

pub struct AdminDispatch<B: Backend> {
    server: Arc<Server<B>>,
}

/// ElectrumX's `formatted_time`: days, hours, minutes and maybe seconds.
pub fn formatted_time(secs: u64, sep: &str) -> String {
    let mut t = secs;
    let mut parts = Vec::new();
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        let value = t / n;
        if !parts.is_empty() || value > 0 {
            parts.push(if unit == "d" {
                format!("{value}d")
            } else {
                format!("{value:02}{unit}")
            });
        }
        t %= n;
    }
    if parts.len() < 3 {
        parts.push(format!("{t:02}s"));
    }
    parts.join(sep)
}

/// The session's protocol column: the negotiated version, ElectrumX's 1.4 before, RPC for
/// the local RPC.
fn protocol_column(session: &SessionContext) -> String {
    if session.kind() == Protocol::Rpc {
        return "RPC".into();
    }
    session
        .protocol_version()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "1.4".into())
}

fn flags(session: &SessionContext) -> String {
    let mut flags = session.kind().name()[..1].to_uppercase();
    if session.is_closing() {
        flags.push('C');
    }
    if session.is_logged() {
        flags.push('L');
    }
    flags.push_str(&session.max_concurrent().to_string());
    flags
}

fn peer_column(session: &SessionContext) -> String {
    session.peer().to_string()
}

/// Session ids, group names, the given special words, and the rest.
struct References {
    sessions: Vec<Arc<SessionContext>>,
    groups: Vec<Arc<SessionGroup>>,
    specials: BTreeSet<String>,
    unknown: Vec<String>,
}

impl<B: Backend> AdminDispatch<B> {
    pub fn new(server: Arc<Server<B>>) -> AdminDispatch<B> {
        AdminDispatch { server }
    }

    fn references(&self, items: Option<Value>, specials: &[&str]) -> Result<References, RpcError> {
        let items: Vec<String> = match items {
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => return Err(RpcError::bad_request("expected a list of session IDs")),
        };
        let live = self.server.registry.snapshot();
        let mut refs = References {
            sessions: Vec::new(),
            groups: Vec::new(),
            specials: BTreeSet::new(),
            unknown: Vec::new(),
        };
        for item in items {
            if !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()) {
                match live
                    .iter()
                    .find(|s| item.parse::<u64>().ok() == Some(s.id()))
                {
                    Some(s) if !refs.sessions.iter().any(|r| r.id() == s.id()) => {
                        refs.sessions.push(s.clone())
                    }
                    Some(_) => {}
                    None => refs.unknown.push(item),
                }
            } else if specials.contains(&item.to_lowercase().as_str()) {
                refs.specials.insert(item.to_lowercase());
            } else if let Some(group) = self.server.registry.groups.get(&item.to_lowercase()) {
                if !refs.groups.iter().any(|g| g.name() == group.name()) {
                    refs.groups.push(group);
                }
            } else {
                refs.unknown.push(item);
            }
        }
        refs.sessions.sort_by_key(|s| s.id());
        Ok(refs)
    }

    fn getinfo(&self) -> Value {
        let server = &self.server;
        let sessions = server.registry.snapshot();
        let counts = server
            .services
            .method_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let total: u64 = counts.values().sum();
        let mut info = Map::new();
        info.insert("coin".into(), json!(server.config.coin));
        info.insert(
            "groups".into(),
            json!(server.registry.groups.snapshot().len()),
        );
        info.insert("pid".into(), json!(std::process::id()));
        info.insert("request counts".into(), json!(counts));
        info.insert("request total".into(), json!(total));
        info.insert(
            "sessions".into(),
            json!({
                "count": sessions.len(),
                "count with subs_sh": sessions.iter().filter(|s| s.subscription_count() > 0).count(),
                "errors": sessions.iter().map(|s| s.stats().errors).sum::<u64>(),
                "logged": sessions.iter().filter(|s| s.is_logged()).count(),
                "pending requests": sessions.iter().map(|s| s.pending_requests()).sum::<usize>(),
                "subs_sh": sessions.iter().map(|s| s.subscription_count()).sum::<usize>(),
            }),
        );
        info.insert("txs sent".into(), json!(server.registry.txs_sent()));
        info.insert(
            "uptime".into(),
            json!(formatted_time(server.started.elapsed().as_secs(), " ")),
        );
        info.insert("version".into(), json!(server_version()));
        info.extend(server.services.backend.info());
        Value::Object(info)
    }

    fn sessions(&self) -> Value {
        let mut sessions = self.server.registry.snapshot();
        sessions.sort_by_key(|s| s.started_at());
        let rows: Vec<Value> = sessions
            .iter()
            .map(|s| {
                let stats = s.stats();
                json!([
                    s.id(),
                    flags(s),
                    peer_column(s),
                    s.client_name().chars().take(17).collect::<String>(),
                    protocol_column(s),
                    s.cost(),
                    s.extra_cost(),
                    s.pending_requests(),
                    s.txs_sent(),
                    s.subscription_count(),
                    stats.recv_count,
                    stats.recv_size,
                    stats.send_count,
                    stats.send_size,
                    s.uptime().as_secs_f64(),
                ])
            })
            .collect();
        Value::Array(rows)
    }

    /// Rows of name, sessions, cost, retained cost, pending requests, txs sent,
    /// subscriptions, messages and bytes received and sent.
    fn groups(&self) -> Value {
        let rows: Vec<Value> = self
            .server
            .registry
            .groups
            .snapshot()
            .iter()
            .map(|g| {
                let members = g.members();
                let stats: Vec<_> = members.iter().map(|m| m.stats()).collect();
                json!([
                    g.name(),
                    members.len(),
                    g.session_cost(),
                    g.retained_cost(),
                    members.iter().map(|m| m.pending_requests()).sum::<usize>(),
                    members.iter().map(|m| m.txs_sent()).sum::<u64>(),
                    members
                        .iter()
                        .map(|m| m.subscription_count())
                        .sum::<usize>(),
                    stats.iter().map(|s| s.recv_count).sum::<u64>(),
                    stats.iter().map(|s| s.recv_size).sum::<u64>(),
                    stats.iter().map(|s| s.send_count).sum::<u64>(),
                    stats.iter().map(|s| s.send_size).sum::<u64>(),
                ])
            })
            .collect();
        Value::Array(rows)
    }

    fn disconnect(&self, ids: Option<Value>) -> Result<Value, RpcError> {
        let refs = self.references(ids, &["all"])?;
        let mut result = Vec::new();
        let targets = if refs.specials.contains("all") {
            result.push("disconnecting all sessions".to_string());
            self.server.registry.snapshot()
        } else {
            result.extend(
                refs.sessions
                    .iter()
                    .map(|s| format!("disconnecting session {}", s.id())),
            );
            let mut targets = refs.sessions;
            for group in &refs.groups {
                result.push(format!("disconnecting group {}", group.name()));
                for member in group.members() {
                    if !targets.iter().any(|t| t.id() == member.id()) {
                        targets.push(member);
                    }
                }
            }
            targets
        };
        result.extend(refs.unknown.iter().map(|item| format!("unknown: {item}")));
        if !targets.is_empty() {
            let ids: Vec<String> = targets.iter().map(|s| s.id().to_string()).collect();
            info!(
                "local RPC request to disconnect session ids {}",
                ids.join(", ")
            );
        }
        for session in targets {
            session.close();
        }
        Ok(json!(result))
    }

    fn log(&self, ids: Option<Value>) -> Result<Value, RpcError> {
        let refs = self.references(ids, &["all", "none", "new"])?;
        let registry = &self.server.registry;
        let mut result = Vec::new();
        let toggled = |text: String, on: bool| {
            if on {
                format!("logging {text}")
            } else {
                format!("not logging {text}")
            }
        };
        if refs.specials.contains("all") {
            registry.snapshot().iter().for_each(|s| s.set_logged(true));
            registry.log_new.store(true, Ordering::Relaxed);
            result.push("logging all sessions".to_string());
        }
        if refs.specials.contains("none") {
            registry.snapshot().iter().for_each(|s| s.set_logged(false));
            registry.log_new.store(false, Ordering::Relaxed);
            result.push("logging no sessions".to_string());
        }
        if refs.specials.contains("new") {
            let on = !registry.log_new.load(Ordering::Relaxed);
            registry.log_new.store(on, Ordering::Relaxed);
            result.push(toggled("new sessions".into(), on));
        }
        let mut sessions = refs.sessions;
        // A group toggles its current members not named on their own.
        for group in &refs.groups {
            for member in group.members() {
                if !sessions.iter().any(|s| s.id() == member.id()) {
                    sessions.push(member);
                }
            }
        }
        for session in &sessions {
            let on = !session.is_logged();
            session.set_logged(on);
            result.push(toggled(format!("session {}", session.id()), on));
        }
        result.extend(refs.unknown.iter().map(|item| format!("unknown: {item}")));
        Ok(json!(result))
    }
}

impl<B: Backend> Dispatch for AdminDispatch<B> {
    async fn handle(&self, _ctx: &Arc<SessionContext>, request: Request) -> Outcome {
        let Request { method, params, id } = request;
        if id.is_none() {
            return Outcome::reply(Err(RpcError::unknown_method(&method)));
        }
        let signature = match method.as_str() {
            "getinfo" | "sessions" | "groups" | "stop" => NO_PARAMS,
            "disconnect" | "log" => SESSION_IDS,
            _ => {
                return Outcome::reply(
                    self.server
                        .services
                        .backend
                        .admin_call(&method, params)
                        .await,
                )
            }
        };
        {
            let mut counts = self
                .server
                .services
                .method_counts
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *counts.entry(method.clone()).or_default() += 1;
        }
        let arg = match Params::bind(params, &method, &signature) {
            Ok(args) => args.into_iter().next().flatten(),
            Err(e) => return Outcome::reply(Err(e)),
        };
        Outcome::reply(match method.as_str() {
            "getinfo" => Ok(self.getinfo()),
            "sessions" => Ok(self.sessions()),
            "groups" => Ok(self.groups()),
            "disconnect" => self.disconnect(arg),
            "log" => self.log(arg),
            _ => {
                info!("stop requested by local RPC");
                self.server.stop_requested.send_replace(true);
                Ok(json!("stopping"))
            }
        })
    }

    fn closed(&self, _ctx: &Arc<SessionContext>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formatting() {
        assert_eq!(formatted_time(5, " "), "05s");
        assert_eq!(formatted_time(65, " "), "01m 05s");
        assert_eq!(formatted_time(3_725, ""), "01h02m05s");
        assert_eq!(formatted_time(5_944, " "), "01h 39m 04s");
        assert_eq!(formatted_time(86_400 * 2 + 61, " "), "2d 00h 01m");
    }
}
