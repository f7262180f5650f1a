//! The `blockchain.scripthash.*` methods: balance, history, mempool, unspent outputs and
//! status, with ElectrumX's costs and history limit. Long lists are written straight to
//! JSON text: building a `Value` per entry costs more than the store reads.

use std::sync::Arc;

use ferrum_storage::{Hash32, HashX, Snapshot};
use serde_json::{json, Value};

use super::history_cache::Tip;
use super::status_cache::Source;
use super::{block_charge, blocking, internal, txid_error, Reply, Shared};
use crate::hex::{push_hash_hex, to_hex};
use crate::jsonrpc::{RpcError, HISTORY_TOO_LARGE};
use crate::merkle::snapshot_tip;
use crate::query::{self, ConfirmedTx, MempoolTx, QueryError, Unspent};
use crate::session::SessionContext;
use crate::status::{history, push_i32, push_u64};
use crate::txids::TxidSource;

/// ElectrumX's `limited_history` bound: what fits in a response of `max_send` bytes at
/// about 99 bytes an entry (no bound without a response limit).
pub fn history_limit(max_send: usize) -> Option<usize> {
    (max_send > 0).then(|| (max_send.saturating_sub(100) / 99).max(1))
}

/// ElectrumX's cost of reading a history of `len` entries (uncached).
fn history_cost(len: usize) -> f64 {
    0.2 + len as f64 * 0.001
}

fn query_error(e: QueryError) -> RpcError {
    match e {
        QueryError::Store(e) => internal(e),
        QueryError::Txids(e) => txid_error(e),
        QueryError::HistoryTooLarge { limit } => {
            RpcError::new(HISTORY_TOO_LARGE, "history too large").with_cost(history_cost(limit))
        }
    }
}

/// The snapshot's chain tip, which cached histories are valid for.
fn tip(snap: &Snapshot) -> Result<Option<Tip>, RpcError> {
    snapshot_tip(snap).map_err(internal)
}

/// ElectrumX's `limited_history` through the history cache: the confirmed history and the
/// cost to charge (0.1 for a hit), txids from `txids`.
fn limited_history(
    shared: &Shared,
    snap: &Snapshot,
    txids: &dyn TxidSource,
    tip: Option<Tip>,
    hashx: &HashX,
    limit: Option<usize>,
) -> Result<(Arc<Vec<ConfirmedTx>>, f64), RpcError> {
    if let Some(history) = tip.and_then(|tip| shared.history_cache.get(tip, hashx)) {
        if let Some(limit) = limit.filter(|&limit| history.len() >= limit) {
            return Err(query_error(QueryError::HistoryTooLarge { limit }));
        }
        return Ok((history, 0.1));
    }
    let history =
        Arc::new(query::confirmed_history(snap, txids, hashx, limit).map_err(query_error)?);
    if let Some(tip) = tip {
        shared.history_cache.insert(tip, *hashx, history.clone());
    }
    let cost = history_cost(history.len());
    Ok((history, cost))
}

/// A script's status, whether its history has mempool entries, and the cost to charge.
pub struct Status {
    pub status: Option<Hash32>,
    pub in_mempool: bool,
    pub cost: f64,
}

/// ElectrumX's `address_status` of each script for the session `ctx`, computed together on
/// the blocking pool. The confirmed part comes from the status cache; only the mempool part
/// is hashed anew. Blocks a lean index fetches are charged to `ctx` as they are asked for.
pub async fn statuses(
    shared: &Arc<Shared>,
    ctx: &Arc<SessionContext>,
    hashxs: Vec<HashX>,
) -> Result<Vec<Result<Status, RpcError>>, RpcError> {
    let (snap, shared) = (shared.reader.snapshot(), shared.clone());
    let limit = history_limit(ctx.limits().max_send);
    let charge = block_charge(ctx);
    blocking(move || {
        let tip = tip(&snap)?;
        let txids = shared.txids.charged(&charge);
        Ok(hashxs
            .iter()
            .map(|hashx| {
                let part = shared
                    .status_cache
                    .confirmed(&snap, &txids, tip, hashx, || {
                        limited_history(&shared, &snap, &txids, tip, hashx, limit)
                    })?;
                let cost = match part.source {
                    Source::Read { cost } => cost,
                    Source::Cached => 0.1,
                    Source::Extended(_) => history_cost(part.count),
                };
                if let Some(limit) = limit.filter(|&limit| part.count >= limit) {
                    return Err(query_error(QueryError::HistoryTooLarge { limit }));
                }
                let unconfirmed = shared.mempool.history(hashx);
                let mut hasher = part.hasher;
                for m in &unconfirmed {
                    hasher.add(&m.txid, m.height());
                }
                let cost = cost + 0.1 + hasher.text_len() as f64 * 0.00002;
                Ok(Status {
                    status: hasher.finish(),
                    in_mempool: !unconfirmed.is_empty(),
                    cost,
                })
            })
            .collect())
    })
    .await
}

/// A status as sent: hex, or null for no history.
pub fn status_value(status: &Option<Hash32>) -> Value {
    status
        .as_ref()
        .map_or(Value::Null, |s| Value::String(to_hex(s)))
}

pub async fn get_balance(
    shared: &Arc<Shared>,
    ctx: &SessionContext,
    hashx: HashX,
) -> Result<Reply, RpcError> {
    let (snap, mempool) = (shared.reader.snapshot(), shared.mempool.clone());
    let balance =
        blocking(move || query::balance(&snap, &*mempool, &hashx).map_err(query_error)).await?;
    ctx.bump_cost(1.0 + balance.outputs as f64 / 50.0);
    Ok(Reply::Value(
        json!({"confirmed": balance.confirmed, "unconfirmed": balance.unconfirmed}),
    ))
}

pub async fn get_history(
    shared: &Arc<Shared>,
    ctx: &Arc<SessionContext>,
    hashx: HashX,
) -> Result<Reply, RpcError> {
    let (snap, shared) = (shared.reader.snapshot(), shared.clone());
    let limit = history_limit(ctx.limits().max_send);
    let charge = block_charge(ctx);
    // Rendered on the blocking pool too: long histories take milliseconds to write.
    let (text, cost, unconfirmed) = blocking(move || {
        let txids = shared.txids.charged(&charge);
        let (confirmed, cost) =
            limited_history(&shared, &snap, &txids, tip(&snap)?, &hashx, limit)?;
        let unconfirmed = shared.mempool.history(&hashx);
        Ok((
            history_json(&confirmed, &unconfirmed),
            cost,
            unconfirmed.len(),
        ))
    })
    .await?;
    ctx.bump_cost(cost);
    ctx.bump_cost(0.25 + unconfirmed as f64 / 50.0);
    Ok(Reply::Json(text))
}

pub fn get_mempool(
    shared: &Arc<Shared>,
    ctx: &SessionContext,
    hashx: HashX,
) -> Result<Reply, RpcError> {
    let unconfirmed = shared.mempool.history(&hashx);
    ctx.bump_cost(0.25 + unconfirmed.len() as f64 / 50.0);
    Ok(Reply::Json(history_json(&[], &unconfirmed)))
}

pub async fn listunspent(
    shared: &Arc<Shared>,
    ctx: &Arc<SessionContext>,
    hashx: HashX,
) -> Result<Reply, RpcError> {
    let (snap, shared) = (shared.reader.snapshot(), shared.clone());
    let charge = block_charge(ctx);
    let (text, considered) = blocking(move || {
        let txids = shared.txids.charged(&charge);
        let (unspent, considered) =
            query::unspent(&snap, &txids, &*shared.mempool, &hashx).map_err(query_error)?;
        Ok((unspent_json(&unspent), considered))
    })
    .await?;
    ctx.bump_cost(1.0 + considered as f64 / 50.0);
    Ok(Reply::Json(text))
}

fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("JSON written from ASCII pieces")
}

/// `[{"tx_hash", "height"}..., {"tx_hash", "height", "fee"}...]` as JSON text.
pub fn history_json(confirmed: &[ConfirmedTx], unconfirmed: &[MempoolTx]) -> String {
    let mut out = Vec::with_capacity(2 + (confirmed.len() + unconfirmed.len()) * 100);
    out.push(b'[');
    for (i, item) in history(confirmed, unconfirmed).iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"tx_hash\":\"");
        push_hash_hex(&mut out, &item.txid);
        out.extend_from_slice(b"\",\"height\":");
        push_i32(&mut out, item.height);
        if let Some(fee) = item.fee {
            out.extend_from_slice(b",\"fee\":");
            push_u64(&mut out, fee);
        }
        out.push(b'}');
    }
    out.push(b']');
    into_string(out)
}

/// `[{"tx_hash", "tx_pos", "height", "value"}...]` as JSON text.
pub fn unspent_json(unspent: &[Unspent]) -> String {
    let mut out = Vec::with_capacity(2 + unspent.len() * 120);
    out.push(b'[');
    for (i, u) in unspent.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"tx_hash\":\"");
        push_hash_hex(&mut out, &u.txid);
        out.extend_from_slice(b"\",\"tx_pos\":");
        push_u64(&mut out, u64::from(u.vout));
        out.extend_from_slice(b",\"height\":");
        push_u64(&mut out, u64::from(u.height));
        out.extend_from_slice(b",\"value\":");
        push_u64(&mut out, u.value);
        out.push(b'}');
    }
    out.push(b']');
    into_string(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::hash_hex;

    #[test]
    fn limits_follow_max_send() {
        assert_eq!(history_limit(1_000_000), Some(10_100));
        assert_eq!(history_limit(0), None);
        assert_eq!(history_limit(50), Some(1));
    }

    #[test]
    fn json_text_matches_serde() {
        let t = |b: u8| [b; 32];
        let confirmed = [ConfirmedTx {
            txid: t(1),
            height: 7,
        }];
        let mempool = [
            MempoolTx {
                txid: t(2),
                fee: 150,
                unconfirmed_inputs: false,
            },
            MempoolTx {
                txid: t(3),
                fee: 0,
                unconfirmed_inputs: true,
            },
        ];
        let text = history_json(&confirmed, &mempool);
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            json!([
                {"tx_hash": hash_hex(&t(1)), "height": 7},
                {"tx_hash": hash_hex(&t(2)), "height": 0, "fee": 150},
                {"tx_hash": hash_hex(&t(3)), "height": -1, "fee": 0},
            ])
        );
        assert_eq!(history_json(&[], &[]), "[]");
        let unspent = [Unspent {
            txid: t(4),
            vout: 3,
            height: 100,
            value: u64::MAX,
        }];
        let parsed: Value = serde_json::from_str(&unspent_json(&unspent)).unwrap();
        assert_eq!(
            parsed,
            json!([{"tx_hash": hash_hex(&t(4)), "tx_pos": 3, "height": 100, "value": u64::MAX}])
        );
    }
}
