//! The local RPC commands the methods layer answers, in ElectrumX's words: `query` (a
//! script's or address's history, unspent outputs and balance as lines of text) and
//! `daemon_url` (switch the node client to other nodes at run time).

use std::str::FromStr;

use bitcoin::{Address, ScriptBuf};
use ferrum_storage::{HashX, Snapshot};
use serde_json::Value;

use crate::blocks::script_hashx;
use crate::coin::Network;
use crate::daemon::Daemon;
use crate::hex::{from_hex, hash_hex};
use crate::jsonrpc::truthy;
use crate::jsonrpc::{py_str, thousands, RpcError};
use crate::query::QueryError;
use crate::txids::Txids;

/// ElectrumX's `rpc_daemon_url`: a comma-separated list of node URLs replaces the node
/// client's (a falsy argument restores `DAEMON_URL`), the first becomes current. A bad
/// list is refused whole, "an error occurred: " and why, and the old list stays.
pub fn daemon_url(daemon: &Daemon, url: &Value) -> Result<String, RpcError> {
    let failed = |why: String| RpcError::bad_request(format!("an error occurred: {why}"));
    let urls = match url {
        Value::String(url) if !url.is_empty() => vec![url.clone()],
        url if !truthy(url) => daemon.configured_urls().to_vec(),
        // ElectrumX calls `.split(',')` on whatever came.
        other => {
            let kind = match other {
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_f64() => "float",
                Value::Number(_) => "int",
                Value::Array(_) => "list",
                _ => "dict",
            };
            return Err(failed(format!(
                "AttributeError(\"'{kind}' object has no attribute 'split'\")"
            )));
        }
    };
    daemon.set_urls(&urls).map_err(|e| failed(e.to_string()))?;
    Ok(format!("now using daemon at {}", daemon.current_url()))
}

/// ElectrumX's `SHORTNAME`: BTC on mainnet, XTN on the test networks.
fn short_name(network: &Network) -> &'static str {
    if network.chain == bitcoin::Network::Bitcoin {
        "BTC"
    } else {
        "XTN"
    }
}

/// Satoshis as Python formats `Decimal(value) / 10**8` with `,f`: grouped whole part,
/// fraction without trailing zeros.
fn coins(value: u64) -> String {
    let (whole, fraction) = (value / 100_000_000, value % 100_000_000);
    let fraction = format!("{fraction:08}");
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        thousands(whole)
    } else {
        format!("{}.{fraction}", thousands(whole))
    }
}

/// ElectrumX's `arg_to_hashX`: hex is a script, else an address of this network; else
/// nothing (skipped).
fn arg_to_hashx(arg: &str, network: &Network, lines: &mut Vec<String>) -> Option<HashX> {
    if let Some(script) = from_hex(arg) {
        lines.push(format!("Script: {arg}"));
        return Some(script_hashx(&ScriptBuf::from_bytes(script)));
    }
    let address = Address::from_str(arg)
        .ok()?
        .require_network(network.chain)
        .ok()?;
    lines.push(format!("Address: {arg}"));
    Some(script_hashx(&address.script_pubkey()))
}

/// The `query` lines for `items` (scripts in hex or addresses), at most `limit` history
/// entries and unspent outputs each. Only the txids printed are read: in a lean index each
/// is a block fetched from the node, and a script's history may span thousands.
pub fn query(
    snap: &Snapshot,
    txids: &Txids,
    network: &Network,
    items: &Value,
    limit: u64,
) -> Result<Vec<String>, RpcError> {
    let Value::Array(items) = items else {
        return Err(RpcError::bad_request(format!(
            "{} should be a list",
            py_str(items)
        )));
    };
    let db = |e: QueryError| RpcError::bad_request(format!("db error: {e}"));
    let store = |e: ferrum_storage::Error| db(e.into());
    // The txids and heights of the first `shown` of `txnums` (the local RPC is not charged).
    let resolve = |txnums: &[u64], shown: usize| {
        let shown = &txnums[..txnums.len().min(shown)];
        let ids = txids.txids(snap, shown).map_err(|e| db(e.into()))?;
        Ok::<_, RpcError>(ids.into_iter().zip(snap.tx_heights(shown).map_err(store)?))
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut lines = Vec::new();
    for item in items {
        let Some(hashx) = arg_to_hashx(&py_str(item), network, &mut lines) else {
            continue;
        };
        let history = snap.history(&hashx).map_err(store)?;
        for (n, (txid, height)) in resolve(&history, limit)?.enumerate() {
            lines.push(format!(
                "History #{}: height {} txid {}",
                thousands(n as u64),
                thousands(u64::from(height)),
                hash_hex(&txid)
            ));
        }
        if history.is_empty() || limit == 0 {
            lines.push("No history found".into());
        }
        let unspent = snap.utxos(&hashx).map_err(store)?;
        // As ElectrumX's loop, which stops when its count reaches the limit: never for 0.
        let shown = if limit == 0 { usize::MAX } else { limit };
        let txnums: Vec<u64> = unspent.iter().map(|u| u.txnum).collect();
        for (n, (u, (txid, height))) in unspent.iter().zip(resolve(&txnums, shown)?).enumerate() {
            lines.push(format!(
                "UTXO #{}: txid {} tx_pos {} height {} value {}",
                thousands(n as u64 + 1),
                hash_hex(&txid),
                thousands(u64::from(u.vout)),
                thousands(u64::from(height)),
                thousands(u.value)
            ));
        }
        if unspent.is_empty() {
            lines.push("No UTXOs found".into());
        }
        let balance = unspent
            .iter()
            .map(|u| u.value)
            .fold(0u64, u64::saturating_add);
        lines.push(format!(
            "Balance: {} {}",
            coins(balance),
            short_name(network)
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::hex::to_hex;
    use crate::txids::tests::{fixture, honest, node};

    /// In a lean index `query` fetches the blocks of the txids it prints, no others, and
    /// prints what a full index does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn query_reads_only_the_txids_it_prints() {
        let f = Arc::new(fixture(110));
        let regtest = Network::lookup("Bitcoin", Some("regtest")).unwrap();
        // The script with the most history entries, in hex.
        let full = f.full.snapshot();
        let script = f.blocks[1..]
            .iter()
            .flat_map(|b| &b.txdata)
            .flat_map(|t| &t.output)
            .map(|o| &o.script_pubkey)
            .max_by_key(|s| full.history(&script_hashx(s)).unwrap().len())
            .unwrap();
        let hashx = script_hashx(script);
        let (history, utxos) = (full.history(&hashx).unwrap(), full.utxos(&hashx).unwrap());
        assert!(history.len() >= 20 && utxos.len() >= 3, "{}", history.len());
        let items = Value::from(vec![to_hex(script.as_bytes())]);
        let block_of = |txnums: &[u64]| -> BTreeSet<u32> {
            full.tx_heights(txnums).unwrap().into_iter().collect()
        };
        // More blocks than a limit of 1 shows (a history entry and an output).
        assert!(block_of(&history).len() > 2);
        let utxo_txnums: Vec<u64> = utxos.iter().map(|u| u.txnum).collect();
        for limit in [0, 1, 3, u64::MAX] {
            let shown = usize::try_from(limit).unwrap_or(usize::MAX);
            let mut blocks = block_of(&history[..history.len().min(shown)]);
            let shown_utxos = if limit == 0 {
                utxos.len()
            } else {
                shown.min(utxos.len())
            };
            blocks.extend(block_of(&utxo_txnums[..shown_utxos]));
            let chain_node = node(&f, honest);
            let txids = Txids::new(chain_node.clone(), 1 << 20);
            let (f2, items2) = (f.clone(), items.clone());
            let lean_lines = tokio::task::spawn_blocking(move || {
                query(&f2.lean.snapshot(), &txids, regtest, &items2, limit).unwrap()
            })
            .await
            .unwrap();
            let txids = Txids::new(chain_node.clone(), 1 << 20);
            let full_lines = query(&full, &txids, regtest, &items, limit).unwrap();
            assert_eq!(lean_lines, full_lines, "limit {limit}");
            let printed = |what: &str| lean_lines.iter().filter(|l| l.starts_with(what)).count();
            assert_eq!(
                (printed("History #"), printed("UTXO #")),
                (history.len().min(shown), shown_utxos),
                "limit {limit}"
            );
            let fetched: BTreeSet<u32> = chain_node
                .calls
                .lock()
                .unwrap()
                .iter()
                .map(|hash| {
                    f.blocks
                        .iter()
                        .position(|b| b.block_hash() == *hash)
                        .unwrap() as u32
                })
                .collect();
            assert_eq!(fetched, blocks, "limit {limit}");
            assert_eq!(chain_node.calls.lock().unwrap().len(), blocks.len());
        }
    }

    #[test]
    fn coin_amounts_like_python_decimal() {
        assert_eq!(coins(0), "0");
        assert_eq!(coins(50), "0.0000005");
        assert_eq!(coins(5_000_000_000), "50");
        assert_eq!(coins(123_456_789_012), "1,234.56789012");
        assert_eq!(coins(1), "0.00000001");
    }
}
