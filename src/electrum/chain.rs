//! The methods answered from the chain in the store: headers (with `cp_height` proofs),
//! header subscriptions' result, transaction merkle branches and ids by position.

use std::sync::Arc;

use ferrum_storage::{Hash32, Snapshot};
use serde_json::{json, Value};

use super::args::{boolean_flag, non_negative_integer, non_negative_or, tx_hash, Integer};
use super::{block_charge, blocking, internal, txid_error, Shared};
use crate::hex::{hash_hex, push_hex, to_hex};
use crate::jsonrpc::{thousands, RpcError};
use crate::merkle::{branch_and_root, snapshot_tip};
use crate::session::{ProtocolVersion, SessionContext};
use crate::txids::{BlockTxids, Charged};

/// Most headers one `blockchain.block.headers` request returns (ElectrumX's MAX_CHUNK_SIZE).
pub const MAX_HEADERS: u64 = 2016;

fn out_of_range(height: &Integer) -> RpcError {
    RpcError::bad_request(format!("height {} out of range", height.thousands()))
}

/// Number of headers in the snapshot (chain height + 1).
fn header_count(snap: &Snapshot) -> u64 {
    snap.height().map_or(0, |h| u64::from(h) + 1)
}

/// ElectrumX's `raw_header`: the header at `height` and that height, or "height N out of
/// range".
pub fn raw_header(snap: &Snapshot, height: &Integer) -> Result<([u8; 80], u64), RpcError> {
    match height.get().filter(|&h| h < header_count(snap)) {
        Some(h) => Ok((snap.header(h as u32).map_err(internal)?, h)),
        None => Err(out_of_range(height)),
    }
}

/// The hash of the snapshot's tip (zeros for an empty store).
pub fn tip_hash(snap: &Snapshot) -> Result<Hash32, RpcError> {
    Ok(snapshot_tip(snap)
        .map_err(internal)?
        .map_or([0; 32], |(_, hash)| hash))
}

/// The `blockchain.headers.subscribe` result for the snapshot's tip.
pub fn header_subscription(snap: &Snapshot) -> Result<Value, RpcError> {
    let height = snap
        .height()
        .ok_or_else(|| out_of_range(&Integer::Small(0)))?;
    let header = snap.header(height).map_err(internal)?;
    Ok(json!({"hex": to_hex(&header), "height": height}))
}

/// ElectrumX's `_merkle_proof`: `{branch, root}` proving header `height` under `cp_height`.
async fn merkle_proof(
    shared: &Arc<Shared>,
    snap: Snapshot,
    cp_height: &Integer,
    height: u64,
) -> Result<Value, RpcError> {
    let max_height = snap.height().map_or(-1, i64::from);
    let in_range = cp_height
        .get()
        .filter(|&cp| height <= cp && cp as i64 <= max_height);
    let Some(cp_height) = in_range else {
        return Err(RpcError::bad_request(format!(
            "require header height {} <= cp_height {} <= chain height {}",
            thousands(height),
            cp_height.thousands(),
            if max_height < 0 {
                "-1".to_string()
            } else {
                thousands(max_height as u64)
            }
        )));
    };
    let shared = shared.clone();
    let (branch, root) = blocking(move || {
        let mut tree = shared.header_tree.lock().unwrap_or_else(|e| e.into_inner());
        tree.branch_and_root(&snap, cp_height as u32 + 1, height as u32)
            .map_err(internal)
    })
    .await?;
    Ok(json!({"branch": branch.iter().map(hash_hex).collect::<Vec<_>>(), "root": hash_hex(&root)}))
}

pub async fn block_header(
    shared: &Arc<Shared>,
    ctx: &SessionContext,
    height: &Value,
    cp_height: &Option<Value>,
) -> Result<Value, RpcError> {
    let height = non_negative_integer(height)?;
    let cp_height = non_negative_or(cp_height, 0)?;
    let snap = shared.reader.snapshot();
    let (header, height) = raw_header(&snap, &height)?;
    let header = to_hex(&header);
    let no_proof = cp_height == Integer::Small(0);
    ctx.bump_cost(if no_proof { 0.25 } else { 1.25 });
    if no_proof {
        return Ok(Value::String(header));
    }
    let mut result = merkle_proof(shared, snap, &cp_height, height).await?;
    result["header"] = Value::String(header);
    Ok(result)
}

pub async fn block_headers(
    shared: &Arc<Shared>,
    ctx: &SessionContext,
    version: &ProtocolVersion,
    args: &[Option<Value>],
) -> Result<Value, RpcError> {
    let start = non_negative_integer(args[0].as_ref().unwrap_or(&Value::Null))?;
    let requested = non_negative_integer(args[1].as_ref().unwrap_or(&Value::Null))?;
    let cp_height = non_negative_or(&args[2], 0)?;
    // Beyond u64 the cost is past any limit either way.
    let requested = requested.saturating();
    let mut cost = requested as f64 / 50.0;
    let snap = shared.reader.snapshot();
    // A start beyond the chain (however far) has no headers.
    let start = start.get().unwrap_or(u64::MAX);
    let count = requested
        .min(MAX_HEADERS)
        .min(header_count(&snap).saturating_sub(start));
    let mut headers = Vec::with_capacity(count as usize);
    for height in start..start + count {
        headers.push(snap.header(height as u32).map_err(internal)?);
    }
    let mut result = if version.at_least(&[1, 6]) {
        json!({"count": count, "max": MAX_HEADERS, "headers": headers.iter().map(|h| to_hex(h)).collect::<Vec<_>>()})
    } else {
        let mut hex = Vec::with_capacity(headers.len() * 160);
        for h in &headers {
            push_hex(&mut hex, h);
        }
        json!({"count": count, "hex": String::from_utf8(hex).map_err(internal)?, "max": MAX_HEADERS})
    };
    if count > 0 && cp_height != Integer::Small(0) {
        cost += 1.0;
        let proof = merkle_proof(shared, snap, &cp_height, start + count - 1).await?;
        result["branch"] = proof["branch"].clone();
        result["root"] = proof["root"].clone();
    }
    ctx.bump_cost(cost);
    Ok(result)
}

/// The txids of the block at `height`, in block order, and ElectrumX's cost of reading them.
fn block_txids(
    snap: &Snapshot,
    txids: &Charged,
    height: &Integer,
) -> Result<(BlockTxids, f64), RpcError> {
    let count = header_count(snap);
    let Some(height) = height.get().filter(|&h| h < count) else {
        return Err(RpcError::bad_request(format!(
            "db error: DBError('block {} not on disk (>{})')",
            height.thousands(),
            if count == 0 {
                "-1".to_string()
            } else {
                thousands(count - 1)
            }
        )));
    };
    let txids = txids.block(snap, height as u32).map_err(txid_error)?;
    let cost = 0.25 + txids.len() as f64 * 0.0001;
    Ok((txids, cost))
}

/// A merkle branch of a block's txids as displayed, and its cost.
fn tx_branch(txids: &[Hash32], pos: usize) -> (Vec<String>, f64) {
    let (branch, _root) = branch_and_root(txids, pos, None).expect("position checked");
    (
        branch.iter().map(hash_hex).collect(),
        txids.len() as f64 / 2500.0,
    )
}

fn no_tx_at(pos: &Integer, height: &Integer) -> RpcError {
    RpcError::bad_request(format!(
        "no tx at position {} in block at height {}",
        pos.thousands(),
        height.thousands()
    ))
}

pub async fn get_merkle(
    shared: &Arc<Shared>,
    ctx: &Arc<SessionContext>,
    args: &[Option<Value>],
) -> Result<Value, RpcError> {
    let txid = tx_hash(args[0].as_ref().unwrap_or(&Value::Null))?;
    let height = non_negative_integer(args[1].as_ref().unwrap_or(&Value::Null))?;
    let (snap, shared) = (shared.reader.snapshot(), shared.clone());
    let (_, block_height) = raw_header(&snap, &height)?;
    let charge = block_charge(ctx);
    let (branch, pos, cost) = blocking(move || {
        let txids = shared.txids.charged(&charge);
        let (txids, txids_cost) = block_txids(&snap, &txids, &height)?;
        let Some(pos) = txids.iter().position(|t| *t == txid) else {
            return Err(RpcError::bad_request(format!(
                "tx {} not in block at height {}",
                hash_hex(&txid),
                thousands(block_height)
            )));
        };
        let (branch, merkle_cost) = tx_branch(&txids, pos);
        Ok((branch, pos, txids_cost + merkle_cost))
    })
    .await?;
    ctx.bump_cost(cost);
    Ok(json!({"block_height": block_height, "merkle": branch, "pos": pos}))
}

pub async fn id_from_pos(
    shared: &Arc<Shared>,
    ctx: &Arc<SessionContext>,
    args: &[Option<Value>],
) -> Result<Value, RpcError> {
    let height = args[0].as_ref().unwrap_or(&Value::Null);
    let tx_pos = non_negative_integer(args[1].as_ref().unwrap_or(&Value::Null))?;
    let height = non_negative_integer(height)?;
    let merkle = boolean_flag(&args[2], "merkle")?;
    let (snap, shared) = (shared.reader.snapshot(), shared.clone());
    let charge = block_charge(ctx);
    let (result, cost) = blocking(move || {
        let txids = shared.txids.charged(&charge);
        let (txids, txids_cost) = block_txids(&snap, &txids, &height)?;
        let pos = tx_pos
            .get()
            .and_then(|p| usize::try_from(p).ok())
            .filter(|&p| p < txids.len())
            .ok_or_else(|| no_tx_at(&tx_pos, &height))?;
        let txid = hash_hex(&txids[pos]);
        if !merkle {
            return Ok((Value::String(txid), txids_cost));
        }
        let (branch, merkle_cost) = tx_branch(&txids, pos);
        Ok((
            json!({"tx_hash": txid, "merkle": branch}),
            txids_cost + merkle_cost,
        ))
    })
    .await?;
    ctx.bump_cost(cost);
    Ok(result)
}
