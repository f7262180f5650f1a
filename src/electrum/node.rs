//! The methods answered by the node: fee estimates (cached per block), relay fee and
//! mempool fee settings (cached a minute, as ElectrumX), broadcasts and raw transactions,
//! with ElectrumX's wording for the node's errors; and the node's blocks, for a lean index.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bitcoin::BlockHash;
use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};
use tracing::info;

use crate::daemon::{self, Daemon};
use crate::hex::from_hex;
use crate::jsonrpc::{py_str, RpcError};
use ferrum_storage::Hash32;

/// The node's JSON-RPC, as the methods use it (a trait so tests can script the node).
pub trait Node: Send + Sync + 'static {
    fn call<'a>(&'a self, method: &'a str, params: Value) -> BoxFuture<'a, daemon::Result<Value>>;

    /// The serialized block `hash`: `getblock <hash> 0` (the node client prefers REST).
    fn block<'a>(&'a self, hash: &'a BlockHash) -> BoxFuture<'a, daemon::Result<Vec<u8>>> {
        Box::pin(async move {
            let what = format!("getblock {hash}");
            match self.call("getblock", json!([hash.to_string(), 0])).await? {
                Value::String(hex) => from_hex(&hex)
                    .ok_or_else(|| daemon::Error::Protocol(format!("{what}: reply is not hex"))),
                _ => Err(daemon::Error::Protocol(format!(
                    "{what}: reply is not a string"
                ))),
            }
        })
    }
}

impl Node for Daemon {
    fn call<'a>(&'a self, method: &'a str, params: Value) -> BoxFuture<'a, daemon::Result<Value>> {
        Box::pin(Daemon::call(self, method, params))
    }

    fn block<'a>(&'a self, hash: &'a BlockHash) -> BoxFuture<'a, daemon::Result<Vec<u8>>> {
        Box::pin(self.block_raw(hash))
    }
}

/// ElectrumX's `daemon error: {e!r}` (code 2) for a failed node call.
pub fn daemon_error(error: &daemon::Error) -> RpcError {
    match error {
        daemon::Error::Rpc { code, message, .. } => RpcError::daemon_error(format!(
            "daemon error: DaemonError({})",
            py_str(&json!({"code": code, "message": message}))
        )),
        other => RpcError::daemon_error(format!("daemon error: {other}")),
    }
}

/// ElectrumX's fee target buckets (fees.h): fewer distinct targets, more cache hits.
pub fn bucket_fee_target(n: u64) -> u64 {
    match n {
        0..=1 => 1,
        2..=12 | 25 => n,
        13..=48 => n / 2 * 2,
        49..=1008 => n / 24 * 24,
        _ => 1008,
    }
}

/// How long `getnetworkinfo` and `getmempoolinfo` answers are reused.
const NODE_INFO_TTL: Duration = Duration::from_secs(60);

/// A fee estimate's key: (block target, estimate mode).
type EstimateKey = (u64, Option<String>);

/// Answers of the node that are cached: fee estimates per (target, mode) until the tip
/// changes, and the info calls for a minute.
#[derive(Default)]
pub struct NodeCache {
    estimates: Mutex<HashMap<EstimateKey, (Hash32, Value)>>,
    /// Cache misses wait here, so a burst of requests asks the node once.
    estimate_fetch: tokio::sync::Mutex<()>,
    info: Mutex<HashMap<&'static str, (Instant, Value)>>,
    estimate_lookups: AtomicU64,
    estimate_hits: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NodeCache {
    /// Drops every fee estimate: called before subscribers hear of a new block.
    pub fn new_block(&self) {
        lock(&self.estimates).clear();
    }

    fn cached_estimate(&self, key: &EstimateKey, tip: &Hash32) -> Option<Value> {
        let hit = lock(&self.estimates)
            .get(key)
            .filter(|(at, _)| at == tip)
            .map(|(_, v)| v.clone());
        if hit.is_some() {
            self.estimate_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// (lookups, hits, estimates held), for the local RPC's `getinfo`.
    pub fn estimate_stats(&self) -> (u64, u64, usize) {
        let held = lock(&self.estimates).len();
        (
            self.estimate_lookups.load(Ordering::Relaxed),
            self.estimate_hits.load(Ordering::Relaxed),
            held,
        )
    }

    /// `estimatesmartfee`'s `feerate`, or -1 when the node has no estimate. The bool says
    /// whether the node was asked (ElectrumX charges a cache miss).
    pub async fn estimate_fee(
        &self,
        node: &dyn Node,
        tip: Hash32,
        target: u64,
        mode: Option<String>,
    ) -> Result<(Value, bool), RpcError> {
        let key = (target, mode);
        self.estimate_lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(v) = self.cached_estimate(&key, &tip) {
            return Ok((v, false));
        }
        let _fetching = self.estimate_fetch.lock().await;
        if let Some(v) = self.cached_estimate(&key, &tip) {
            return Ok((v, false));
        }
        let params = match &key.1 {
            Some(mode) => json!([target, mode]),
            None => json!([target]),
        };
        let answer = node
            .call("estimatesmartfee", params)
            .await
            .map_err(|e| daemon_error(&e))?;
        let feerate = answer.get("feerate").cloned().unwrap_or(json!(-1));
        lock(&self.estimates).insert(key, (tip, feerate.clone()));
        Ok((feerate, true))
    }

    async fn info(&self, node: &dyn Node, method: &'static str) -> Result<Value, RpcError> {
        if let Some((at, v)) = lock(&self.info).get(method) {
            if at.elapsed() < NODE_INFO_TTL {
                return Ok(v.clone());
            }
        }
        let v = node
            .call(method, json!([]))
            .await
            .map_err(|e| daemon_error(&e))?;
        lock(&self.info).insert(method, (Instant::now(), v.clone()));
        Ok(v)
    }

    /// `getnetworkinfo`, cached.
    pub async fn network_info(&self, node: &dyn Node) -> Result<Value, RpcError> {
        self.info(node, "getnetworkinfo").await
    }

    /// `blockchain.relayfee`: `getnetworkinfo`'s `relayfee`.
    pub async fn relay_fee(&self, node: &dyn Node) -> Result<Value, RpcError> {
        let info = self.network_info(node).await?;
        field(&info, "getnetworkinfo", "relayfee")
    }

    /// `mempool.get_info`: three fee settings from `getmempoolinfo`.
    pub async fn mempool_info(&self, node: &dyn Node) -> Result<Value, RpcError> {
        let info = self.info(node, "getmempoolinfo").await?;
        let mut out = Map::new();
        for name in ["mempoolminfee", "minrelaytxfee", "incrementalrelayfee"] {
            out.insert(name.to_string(), field(&info, "getmempoolinfo", name)?);
        }
        Ok(Value::Object(out))
    }
}

fn field(info: &Value, method: &str, name: &str) -> Result<Value, RpcError> {
    info.get(name)
        .cloned()
        .ok_or_else(|| RpcError::daemon_error(format!("daemon error: {method} has no {name}")))
}

/// `blockchain.transaction.broadcast`: the txid, or ElectrumX's rejection text (code 1).
pub async fn broadcast(node: &dyn Node, raw_tx: &str) -> Result<Value, RpcError> {
    match node.call("sendrawtransaction", json!([raw_tx])).await {
        Ok(txid) => Ok(txid),
        Err(daemon::Error::Rpc { message, .. }) => {
            info!("error sending transaction: {message}");
            Err(RpcError::bad_request(format!(
                "the transaction was rejected by network rules.\n\n{message}\n[{raw_tx}]"
            )))
        }
        Err(other) => Err(daemon_error(&other)),
    }
}

/// ElectrumX's note to Electrum clients older than 3.3.3 after a successful broadcast.
pub const OLD_CLIENT_WARNING: &str = "<br/><br/>Your transaction was successfully broadcast.<br/><br/>\
However, you are using a VULNERABLE version of Electrum.<br/>Download the new version from the usual place:<br/>\
https://electrum.org/<br/><br/>";

/// `blockchain.transaction.broadcast_package`: `submitpackage`'s answer as is (verbose), or
/// `{"success"}` plus the per-transaction errors.
pub async fn broadcast_package(
    node: &dyn Node,
    raw_txs: &[Value],
    verbose: bool,
) -> Result<Value, RpcError> {
    let answer = match node.call("submitpackage", json!([raw_txs])).await {
        Ok(answer) => answer,
        Err(daemon::Error::Rpc { message, .. }) => {
            info!("error submitting package: {message}");
            return Err(RpcError::bad_request(format!(
                "the tx package was rejected by network rules.\n\n{message}."
            )));
        }
        Err(other) => return Err(daemon_error(&other)),
    };
    info!("broadcasted package: len(raw_txs)={}", raw_txs.len());
    if verbose {
        return Ok(answer);
    }
    let mut out = Map::new();
    out.insert(
        "success".into(),
        json!(answer.get("package_msg").and_then(Value::as_str) == Some("success")),
    );
    let errors: Vec<Value> = answer
        .get("tx-results")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|results| results.values())
        .filter(|tx| tx.get("error").is_some_and(crate::jsonrpc::truthy))
        .map(|tx| json!({"txid": tx.get("txid").cloned().unwrap_or(Value::Null), "error": tx["error"]}))
        .collect();
    if !errors.is_empty() {
        out.insert("errors".into(), Value::Array(errors));
    }
    Ok(Value::Object(out))
}

/// `blockchain.transaction.get`: `getrawtransaction` with verbosity 0 or 1.
pub async fn transaction(node: &dyn Node, tx_hash: &str, verbose: bool) -> Result<Value, RpcError> {
    node.call("getrawtransaction", json!([tx_hash, u8::from(verbose)]))
        .await
        .map_err(|e| daemon_error(&e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    type Script = dyn Fn(&str, &Value) -> daemon::Result<Value> + Send + Sync;

    /// A scripted node that records its calls.
    pub struct FakeNode {
        pub calls: Mutex<Vec<(String, Value)>>,
        script: Box<Script>,
    }

    impl FakeNode {
        pub fn new(
            script: impl Fn(&str, &Value) -> daemon::Result<Value> + Send + Sync + 'static,
        ) -> Arc<FakeNode> {
            Arc::new(FakeNode {
                calls: Mutex::new(Vec::new()),
                script: Box::new(script),
            })
        }

        pub fn calls(&self) -> Vec<(String, Value)> {
            lock(&self.calls).clone()
        }
    }

    impl Node for FakeNode {
        fn call<'a>(
            &'a self,
            method: &'a str,
            params: Value,
        ) -> BoxFuture<'a, daemon::Result<Value>> {
            let result = (self.script)(method, &params);
            lock(&self.calls).push((method.to_string(), params));
            Box::pin(async move { result })
        }
    }

    pub fn rpc_error(code: i64, message: &str) -> daemon::Error {
        daemon::Error::Rpc {
            method: "m".into(),
            code,
            message: message.into(),
        }
    }

    #[test]
    fn fee_target_buckets() {
        let got: Vec<u64> = [0, 1, 2, 12, 13, 14, 25, 26, 48, 49, 50, 1008, 1009]
            .iter()
            .map(|&n| bucket_fee_target(n))
            .collect();
        assert_eq!(got, [1, 1, 2, 12, 12, 14, 25, 26, 48, 48, 48, 1008, 1008]);
    }

    #[test]
    fn node_error_wording() {
        let e = daemon_error(&rpc_error(-5, "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."));
        assert_eq!(e.code, 2);
        assert_eq!(
            e.message,
            "daemon error: DaemonError({'code': -5, 'message': 'No such mempool or blockchain transaction. Use gettransaction for wallet transactions.'})"
        );
    }

    #[tokio::test]
    async fn estimates_are_cached_per_tip() {
        let node = FakeNode::new(|_, params| {
            Ok(if params.as_array().unwrap().len() == 2 {
                json!({"feerate": 0.0002})
            } else {
                json!({"errors": ["x"]})
            })
        });
        let cache = NodeCache::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            cache.estimate_fee(&*node, a, 6, None).await.unwrap(),
            (json!(-1), true)
        );
        assert_eq!(
            cache.estimate_fee(&*node, a, 6, None).await.unwrap(),
            (json!(-1), false)
        );
        assert_eq!(
            cache
                .estimate_fee(&*node, a, 6, Some("ECONOMICAL".into()))
                .await
                .unwrap(),
            (json!(0.0002), true)
        );
        assert_eq!(
            cache.estimate_fee(&*node, b, 6, None).await.unwrap(),
            (json!(-1), true)
        );
        cache.new_block();
        assert_eq!(
            cache.estimate_fee(&*node, b, 6, None).await.unwrap(),
            (json!(-1), true)
        );
        let calls = node.calls();
        assert_eq!(calls.len(), 4);
        assert_eq!(cache.estimate_stats(), (5, 1, 1));
        assert_eq!(
            calls[1],
            ("estimatesmartfee".into(), json!([6, "ECONOMICAL"]))
        );
    }

    #[tokio::test]
    async fn broadcast_rejections() {
        let node = FakeNode::new(|method, _| match method {
            "sendrawtransaction" => Err(rpc_error(-26, "min relay fee not met")),
            _ => Err(rpc_error(-25, "package topology disallowed")),
        });
        let e = broadcast(&*node, "00ff").await.unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                1,
                "the transaction was rejected by network rules.\n\nmin relay fee not met\n[00ff]"
            )
        );
        let e = broadcast_package(&*node, &[json!("00")], false)
            .await
            .unwrap_err();
        assert_eq!(
            e.message,
            "the tx package was rejected by network rules.\n\npackage topology disallowed."
        );
    }

    #[tokio::test]
    async fn package_results() {
        let answer = json!({"package_msg": "transaction failed", "tx-results": {
            "w1": {"txid": "t1", "vsize": 100},
            "w2": {"txid": "t2", "error": "bad-txns-inputs-missingorspent"}}});
        let node = FakeNode::new(move |_, _| Ok(answer.clone()));
        let got = broadcast_package(&*node, &[json!("00"), json!("11")], false)
            .await
            .unwrap();
        assert_eq!(
            got,
            json!({"success": false, "errors": [{"txid": "t2", "error": "bad-txns-inputs-missingorspent"}]})
        );
        assert_eq!(
            node.calls()[0],
            ("submitpackage".into(), json!([["00", "11"]]))
        );
        let verbose = broadcast_package(&*node, &[json!("00")], true)
            .await
            .unwrap();
        assert_eq!(verbose["package_msg"], "transaction failed");
        let ok = FakeNode::new(|_, _| Ok(json!({"package_msg": "success", "tx-results": {}})));
        assert_eq!(
            broadcast_package(&*ok, &[json!("00")], false)
                .await
                .unwrap(),
            json!({"success": true})
        );
    }

    #[tokio::test]
    async fn info_calls_are_cached() {
        let node = FakeNode::new(|method, _| {
            Ok(match method {
                "getnetworkinfo" => json!({"relayfee": 0.00001}),
                _ => {
                    json!({"mempoolminfee": 0.00001, "minrelaytxfee": 0.00001, "incrementalrelayfee": 0.00001, "size": 3})
                }
            })
        });
        let cache = NodeCache::default();
        assert_eq!(cache.relay_fee(&*node).await.unwrap(), json!(0.00001));
        assert_eq!(cache.relay_fee(&*node).await.unwrap(), json!(0.00001));
        let info = cache.mempool_info(&*node).await.unwrap();
        assert_eq!(
            info,
            json!({"mempoolminfee": 0.00001, "minrelaytxfee": 0.00001, "incrementalrelayfee": 0.00001})
        );
        assert_eq!(node.calls().len(), 2);
    }
}
