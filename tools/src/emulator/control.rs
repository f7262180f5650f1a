//! The control interface: `emu_*` JSON-RPC methods on their own port (no auth), so that a test
//! or script can drive the emulated node: mine, fill or evict the mempool, reorg, warm up, go
//! offline and come back, set the fee estimate.

use std::sync::Arc;
use std::time::Duration;

use bitcoin::Txid;
use serde_json::{json, Value};

use super::jsonrpc::{code, Dispatch, Reply, RpcError};
use super::params::{self, Arg, Ty};
use super::{lock, Shared, DEFAULT_WARMUP_MESSAGE};

pub struct Control {
    pub shared: Arc<Shared>,
}

fn failed(message: impl Into<String>) -> RpcError {
    RpcError::new(code::MISC_ERROR, message)
}

fn strings<T: ToString>(items: &[T]) -> Value {
    Value::Array(items.iter().map(|t| json!(t.to_string())).collect())
}

fn count(v: &Value, default: i64) -> Result<u32, RpcError> {
    let n = if v.is_null() {
        default
    } else {
        params::int(v)?
    };
    u32::try_from(n)
        .map_err(|_| RpcError::new(code::INVALID_PARAMETER, format!("count out of range: {n}")))
}

impl Dispatch for Control {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, RpcError> {
        let bind = |args: &[Arg], required| params::bind(method, args, required, params);
        let shared = &self.shared;
        let value = match method {
            "emu_mine" => {
                let p = bind(&[Arg("blocks", Ty::Num)], 0)?;
                strings(&lock(&shared.node).mine(count(&p[0], 1)?).map_err(failed)?)
            }
            "emu_addmempool" => {
                let p = bind(&[Arg("count", Ty::Num)], 0)?;
                strings(
                    &lock(&shared.node)
                        .add_generated(count(&p[0], 1)?)
                        .map_err(failed)?,
                )
            }
            "emu_evict" => {
                let p = bind(&[Arg("txid", Ty::Str)], 1)?;
                let txid: Txid = params::hash(&p[0], "txid")?;
                strings(&lock(&shared.node).evict(&txid))
            }
            "emu_reorg" => {
                let p = bind(
                    &[
                        Arg("depth", Ty::Num),
                        Arg("blocks", Ty::Num),
                        Arg("salt", Ty::Num),
                    ],
                    1,
                )?;
                let depth = count(&p[0], 1)?;
                let blocks = count(&p[1], depth as i64 + 1)?;
                let salt = count(&p[2], 1)? as u64;
                strings(
                    &lock(&shared.node)
                        .reorg(depth, blocks, salt)
                        .map_err(failed)?,
                )
            }
            "emu_warmup" => {
                let p = bind(&[Arg("message", Ty::Any), Arg("seconds", Ty::Num)], 0)?;
                let message = match &p[0] {
                    Value::Null => Some(DEFAULT_WARMUP_MESSAGE.to_string()),
                    Value::Bool(false) => None,
                    Value::String(s) => Some(s.clone()),
                    other => {
                        return Err(failed(format!(
                            "message must be a string, null or false, not {other}"
                        )))
                    }
                };
                let duration = match &p[1] {
                    Value::Null => None,
                    v => Some(Duration::from_secs_f64(v.as_f64().unwrap_or(0.0).max(0.0))),
                };
                lock(&shared.node).set_warmup(message, duration);
                Value::Null
            }
            "emu_offline" => {
                bind(&[], 0)?;
                shared
                    .switch
                    .set_online(false)
                    .map_err(|e| failed(e.to_string()))?;
                Value::Null
            }
            "emu_online" => {
                bind(&[], 0)?;
                shared
                    .switch
                    .set_online(true)
                    .map_err(|e| failed(e.to_string()))?;
                Value::Null
            }
            "emu_setfeerate" => {
                let p = bind(&[Arg("feerate", Ty::Any)], 0)?;
                let rate = if p[0].is_null() {
                    None
                } else {
                    Some(params::amount(&p[0])?)
                };
                lock(&shared.node).fee_rate = rate;
                Value::Null
            }
            "emu_info" => {
                bind(&[], 0)?;
                let mut node = lock(&shared.node);
                let warmup = node.warmup();
                json!({
                    "height": node.chain.height(),
                    "bestblockhash": node.chain.tip().map(|t| t.hash.to_string()),
                    "mempool": node.mempool.len(),
                    "warmup": warmup,
                    "online": shared.switch.is_online(),
                    "generator": node.has_generator(),
                    "rpc_port": shared.switch.addr().port(),
                })
            }
            _ => return Err(RpcError::new(code::METHOD_NOT_FOUND, "Method not found")),
        };
        Ok(value.into())
    }
}
