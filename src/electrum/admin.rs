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
use crate::query::{confirmed_history_from, confirmed_unspent_from, QueryError};
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
/// entries and unspent outputs each.
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
    let store = |e: QueryError| RpcError::bad_request(format!("db error: {e}"));
    // The local RPC is never charged.
    let txids = &txids.charged(&|_| {});
    let mut lines = Vec::new();
    for item in items {
        let Some(hashx) = arg_to_hashx(&py_str(item), network, &mut lines) else {
            continue;
        };
        let history = confirmed_history_from(snap, txids, &hashx, None).map_err(store)?;
        for (n, tx) in history.iter().take(limit as usize).enumerate() {
            lines.push(format!(
                "History #{}: height {} txid {}",
                thousands(n as u64),
                thousands(u64::from(tx.height)),
                hash_hex(&tx.txid)
            ));
        }
        if history.is_empty() || limit == 0 {
            lines.push("No history found".into());
        }
        let unspent = confirmed_unspent_from(snap, txids, &hashx).map_err(store)?;
        // As ElectrumX's loop, which stops when its count reaches the limit: never for 0.
        let shown = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        for (n, u) in unspent.iter().enumerate().take(shown) {
            lines.push(format!(
                "UTXO #{}: txid {} tx_pos {} height {} value {}",
                thousands(n as u64 + 1),
                hash_hex(&u.txid),
                thousands(u64::from(u.vout)),
                thousands(u64::from(u.height)),
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
    use super::*;

    #[test]
    fn coin_amounts_like_python_decimal() {
        assert_eq!(coins(0), "0");
        assert_eq!(coins(50), "0.0000005");
        assert_eq!(coins(5_000_000_000), "50");
        assert_eq!(coins(123_456_789_012), "1,234.56789012");
        assert_eq!(coins(1), "0.00000001");
    }
}
