//! Notifications to subscribed sessions when the chain or the mempool changes, with
//! ElectrumX's rules for which scripts are re-checked and which statuses are sent.

use std::collections::HashSet;
use std::sync::Arc;

use ferrum_storage::HashX;
use serde_json::Value;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{chain, lock, scripts, SessionState, Shared};

/// See [`super::Electrum::notify`].
pub(super) async fn notify_all(
    shared: &Arc<Shared>,
    touched: Option<Arc<HashSet<HashX>>>,
    new_tip: bool,
) {
    // Each tip is announced once, and only the store's latest: calls that queued up behind
    // a slow one (a reorg's blocks, a burst of blocks) coalesce into one announcement.
    let mut header = None;
    if new_tip {
        shared.node_cache.new_block();
        match chain::header_subscription(&shared.reader.snapshot()) {
            Ok(v) => {
                let mut announced = lock(&shared.header_sub);
                if announced.as_ref() != Some(&v) {
                    *announced = Some(v.clone());
                    header = Some(v);
                }
            }
            Err(e) => warn!("no header to announce: {}", e.message),
        }
    }
    let sessions: Vec<Arc<SessionState>> = lock(&shared.sessions).values().cloned().collect();
    let mut tasks = JoinSet::new();
    for state in sessions {
        let (shared, touched, header) = (shared.clone(), touched.clone(), header.clone());
        tasks.spawn(async move {
            notify_session(&shared, &state, touched.as_deref(), new_tip, header).await
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn notify_session(
    shared: &Arc<Shared>,
    state: &SessionState,
    touched: Option<&HashSet<HashX>>,
    new_tip: bool,
    header: Option<Value>,
) {
    let Some(ctx) = state.ctx.upgrade() else {
        return;
    };
    if ctx.is_closing() {
        return;
    }
    // Scripts to re-check; each is sent only if its status differs from the last one the
    // session was given. ElectrumX also re-sends unchanged statuses of touched scripts, but
    // here a poll and a block's change can both cover one state: never send it twice.
    let (send_header, plan): (bool, Vec<HashX>) = {
        let subs = lock(&state.subs);
        let plan = match touched {
            None => subs.scripts.keys().copied().collect(),
            Some(touched) => {
                let hit = subs.scripts.keys().any(|h| touched.contains(h));
                let in_mempool = subs.scripts.values().any(|s| s.in_mempool);
                if hit || (new_tip && in_mempool) {
                    subs.scripts
                        .iter()
                        .filter(|(h, s)| touched.contains(*h) || s.in_mempool)
                        .map(|(h, _)| *h)
                        .collect()
                } else {
                    Vec::new()
                }
            }
        };
        (new_tip && subs.headers, plan)
    };
    if let (true, Some(header)) = (send_header, header) {
        ctx.notify("blockchain.headers.subscribe", &[header]);
    }
    if plan.is_empty() {
        return;
    }
    let results = match scripts::statuses(shared, &ctx, plan.clone()).await {
        Ok(results) => results,
        Err(e) => {
            warn!(
                session = ctx.id(),
                "statuses for notifications: {}", e.message
            );
            return;
        }
    };
    let mut sends = Vec::new();
    {
        let mut subs = lock(&state.subs);
        for (hashx, result) in plan.into_iter().zip(results) {
            let Some(sub) = subs.scripts.get_mut(&hashx) else {
                continue;
            };
            match result {
                Ok(status) => {
                    ctx.bump_cost(status.cost);
                    let changed = status.status != sub.status;
                    sub.status = status.status;
                    sub.in_mempool = status.in_mempool;
                    if changed {
                        sends.push((
                            sub.scripthash.clone(),
                            scripts::status_value(&status.status),
                        ));
                    }
                }
                // ElectrumX drops a subscription whose status it cannot compute.
                Err(_) => {
                    let scripthash = sub.scripthash.clone();
                    subs.scripts.remove(&hashx);
                    shared.status_cache.unsubscribed(&hashx);
                    sends.push((scripthash, Value::Null));
                }
            }
        }
        ctx.set_subscription_count(subs.scripts.len());
    }
    if !sends.is_empty() {
        info!(
            session = ctx.id(),
            "notified of {} address{}",
            sends.len(),
            if sends.len() == 1 { "" } else { "es" }
        );
    }
    for (scripthash, status) in sends {
        ctx.notify(
            "blockchain.scripthash.subscribe",
            &[Value::String(scripthash), status],
        );
    }
}

#[cfg(test)]
mod tests;
