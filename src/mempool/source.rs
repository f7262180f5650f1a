//! Where the mirror reads the node's mempool: the txids with the tip they belong to, and raw
//! transactions in batches. [`Source`] is implemented by the node client and, in tests, by
//! a scripted fake.

use ferrum_storage::Hash32;
use serde_json::{json, Value};

use crate::daemon::{self, Daemon};
use crate::hex::{from_hex, hash_hex, parse_hash};

/// Core's RPC_INVALID_ADDRESS_OR_KEY: "No such mempool or blockchain transaction".
const RPC_NO_SUCH_TX: i64 = -5;

/// The node's mempool at one tip.
pub(crate) struct NodeMempool {
    /// The node's best block hash (internal byte order).
    pub tip: Hash32,
    /// Txids in internal byte order.
    pub txids: Vec<Hash32>,
}

pub(crate) trait Source {
    /// The node's mempool txids and its tip; None when a block arrived while they were read.
    async fn mempool(&self) -> daemon::Result<Option<NodeMempool>>;
    /// The serialized transactions, one slot per txid: None for one the node no longer has.
    async fn transactions(&self, txids: &[Hash32]) -> daemon::Result<Vec<Option<Vec<u8>>>>;
}

fn hash_of(method: &str, value: &Value) -> daemon::Result<Hash32> {
    value
        .as_str()
        .and_then(parse_hash)
        .ok_or_else(|| daemon::Error::Protocol(format!("{method}: {value} is not a hash")))
}

impl Source for Daemon {
    /// `getbestblockhash`, `getrawmempool`, `getbestblockhash` in one batch: Core runs a
    /// batch's calls in order, so equal hashes mean the txids belong to that tip.
    async fn mempool(&self) -> daemon::Result<Option<NodeMempool>> {
        let calls = [
            ("getbestblockhash", json!([])),
            ("getrawmempool", json!([false])),
            ("getbestblockhash", json!([])),
        ];
        let mut replies = self.batch(&calls).await?.into_iter();
        let mut next = || {
            replies.next().unwrap_or_else(|| {
                Err(daemon::Error::Protocol(
                    "getrawmempool: replies missing".into(),
                ))
            })
        };
        let before = hash_of("getbestblockhash", &next()?)?;
        let ids = next()?;
        let after = hash_of("getbestblockhash", &next()?)?;
        if before != after {
            return Ok(None);
        }
        let Value::Array(ids) = ids else {
            return Err(daemon::Error::Protocol(format!(
                "getrawmempool: reply is not an array: {ids}"
            )));
        };
        let txids = ids
            .iter()
            .map(|id| hash_of("getrawmempool", id))
            .collect::<daemon::Result<Vec<_>>>()?;
        Ok(Some(NodeMempool { tip: after, txids }))
    }

    async fn transactions(&self, txids: &[Hash32]) -> daemon::Result<Vec<Option<Vec<u8>>>> {
        let calls: Vec<(&str, Value)> = txids
            .iter()
            .map(|txid| ("getrawtransaction", json!([hash_hex(txid), false])))
            .collect();
        let replies = self.batch(&calls).await?;
        let mut out = Vec::with_capacity(replies.len());
        for (txid, reply) in txids.iter().zip(replies) {
            out.push(match reply {
                Ok(Value::String(hex)) => Some(from_hex(&hex).ok_or_else(|| {
                    daemon::Error::Protocol(format!(
                        "getrawtransaction {}: reply is not hex",
                        hash_hex(txid)
                    ))
                })?),
                Ok(other) => {
                    return Err(daemon::Error::Protocol(format!(
                        "getrawtransaction {}: reply is not a string: {other}",
                        hash_hex(txid)
                    )))
                }
                // Mined or evicted since the txids were read.
                Err(daemon::Error::Rpc { code, .. }) if code == RPC_NO_SUCH_TX => None,
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }
}
