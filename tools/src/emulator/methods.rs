//! The node RPC methods the Ferrum server calls, with Core's result shapes and errors.

use std::sync::RwLock;

use bitcoin::{BlockHash, Transaction, Txid};
use serde_json::{json, Map, Value};

use super::chain::{BlockEntry, Chain};
use super::jsonrpc::{code, hex_into, Dispatch, Reply, RpcError};
use super::mempool::{Mempool, Rejection, DEFAULT_MAX_FEE_RATE};
use super::node::Node;
use super::params::{self, Arg, Ty};
use super::txjson::{self, amount, Detail};

/// Every method served, for `help` and the method check.
pub const METHODS: &[&str] = &[
    "estimatesmartfee",
    "getbestblockhash",
    "getblock",
    "getblockchaininfo",
    "getblockcount",
    "getblockhash",
    "getblockheader",
    "getindexinfo",
    "getmempoolentry",
    "getmempoolinfo",
    "getnetworkinfo",
    "getrawmempool",
    "getrawtransaction",
    "getzmqnotifications",
    "help",
    "sendrawtransaction",
    "submitpackage",
    "testmempoolaccept",
    "uptime",
];

pub struct Rpc<'a> {
    pub node: &'a RwLock<Node>,
}

fn read(node: &RwLock<Node>) -> std::sync::RwLockReadGuard<'_, Node> {
    node.read().unwrap_or_else(|p| p.into_inner())
}

fn write(node: &RwLock<Node>) -> std::sync::RwLockWriteGuard<'_, Node> {
    node.write().unwrap_or_else(|p| p.into_inner())
}

impl Dispatch for Rpc<'_> {
    fn call(&self, method: &str, params: &Value) -> Result<Reply, RpcError> {
        if let Some(status) = read(self.node).warmup_peek() {
            return Err(RpcError::new(code::IN_WARMUP, status));
        }
        let bind = |args: &[Arg], required| params::bind(method, args, required, params);
        match method {
            "getblockchaininfo" => {
                bind(&[], 0)?;
                Ok(blockchain_info(&read(self.node).chain).into())
            }
            "getnetworkinfo" => {
                bind(&[], 0)?;
                Ok(network_info().into())
            }
            "getindexinfo" => {
                // The emulator finds confirmed transactions as a node with txindex=1 does.
                let p = bind(&[Arg("index_name", Ty::Str)], 0)?;
                let height = read(self.node).chain.height().unwrap_or(0);
                let info = json!({"synced": true, "best_block_height": height});
                Ok(match p[0].as_str() {
                    None | Some("txindex") => json!({ "txindex": info }),
                    Some(_) => json!({}),
                }
                .into())
            }
            "getzmqnotifications" => {
                bind(&[], 0)?;
                let node = read(self.node);
                Ok(match &node.zmq_pubhashblock {
                    Some(address) => {
                        json!([{"type": "pubhashblock", "address": address, "hwm": 1000}])
                    }
                    None => json!([]),
                }
                .into())
            }
            "getblockcount" => {
                bind(&[], 0)?;
                Ok(json!(read(self.node).chain.height().unwrap_or(0)).into())
            }
            "getbestblockhash" => {
                bind(&[], 0)?;
                let node = read(self.node);
                Ok(json!(node.chain.tip().map(|t| t.hash.to_string())).into())
            }
            "getblockhash" => {
                let p = bind(&[Arg("height", Ty::Num)], 1)?;
                let height = params::int(&p[0])?;
                let node = read(self.node);
                let tip = node.chain.height().unwrap_or(0) as i64;
                if !(0..=tip).contains(&height) {
                    return Err(RpcError::new(
                        code::INVALID_PARAMETER,
                        "Block height out of range",
                    ));
                }
                Ok(json!(node.chain.at(height as u32).map(|b| b.hash.to_string())).into())
            }
            "getblockheader" => {
                let p = bind(&[Arg("blockhash", Ty::Str), Arg("verbose", Ty::Bool)], 1)?;
                let hash: BlockHash = params::hash(&p[0], "blockhash")?;
                let node = read(self.node);
                let entry = block(&node.chain, &hash)?;
                if params::flag(&p[1], true) {
                    Ok(Value::Object(header_json(&node.chain, entry)).into())
                } else {
                    Ok(Reply::Raw(format!("\"{}\"", hex(&entry.raw[..80]))))
                }
            }
            "getblock" => {
                let p = bind(
                    &[Arg("blockhash", Ty::Str), Arg("verbosity|verbose", Ty::Any)],
                    1,
                )?;
                let hash: BlockHash = params::hash(&p[0], "blockhash")?;
                let verbosity = params::verbosity(&p[1], 1)?;
                let raw = {
                    let node = read(self.node);
                    let entry = block(&node.chain, &hash)?;
                    if verbosity > 0 {
                        return Ok(block_json(&node.chain, entry, verbosity).into());
                    }
                    entry.raw.clone()
                };
                // Hex-encode outside the lock: it is the slow part of serving a block.
                Ok(Reply::Hex(raw))
            }
            "getrawtransaction" => {
                let p = bind(
                    &[
                        Arg("txid", Ty::Str),
                        Arg("verbosity|verbose", Ty::Any),
                        Arg("blockhash", Ty::Str),
                    ],
                    1,
                )?;
                raw_transaction(&read(self.node), &p)
            }
            "getrawmempool" => {
                let p = bind(
                    &[Arg("verbose", Ty::Bool), Arg("mempool_sequence", Ty::Bool)],
                    0,
                )?;
                let (verbose, sequence) = (params::flag(&p[0], false), params::flag(&p[1], false));
                let node = read(self.node);
                let pool = &node.mempool;
                if verbose && sequence {
                    return Err(RpcError::new(
                        code::INVALID_PARAMETER,
                        "Verbose results cannot contain mempool sequence values.",
                    ));
                }
                Ok(mempool_json(pool, verbose, sequence).into())
            }
            "getmempoolentry" => {
                let p = bind(&[Arg("txid", Ty::Str)], 1)?;
                let txid: Txid = params::hash(&p[0], "txid")?;
                let node = read(self.node);
                let entry = node.mempool.get(&txid).ok_or_else(|| {
                    RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
                })?;
                Ok(node.mempool.entry_json(entry).into())
            }
            "getmempoolinfo" => {
                bind(&[], 0)?;
                Ok(read(self.node).mempool.info_json().into())
            }
            "estimatesmartfee" => {
                let p = bind(
                    &[Arg("conf_target", Ty::Num), Arg("estimate_mode", Ty::Str)],
                    1,
                )?;
                let target = params::int(&p[0])?;
                if !(1..=1008).contains(&target) {
                    return Err(RpcError::new(
                        code::INVALID_PARAMETER,
                        "Invalid conf_target, must be between 1 and 1008",
                    ));
                }
                let mode = p[1].as_str().unwrap_or("economical").to_ascii_lowercase();
                if !["unset", "economical", "conservative"].contains(&mode.as_str()) {
                    return Err(RpcError::new(
                        code::INVALID_PARAMETER,
                        "Invalid estimate_mode parameter, must be one of: \"unset\", \"economical\", \"conservative\"",
                    ));
                }
                Ok(match read(self.node).fee_rate {
                    Some(rate) => json!({"feerate": amount(rate), "blocks": target}),
                    None => {
                        json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0})
                    }
                }
                .into())
            }
            "sendrawtransaction" => {
                let p = bind(
                    &[
                        Arg("hexstring", Ty::Str),
                        Arg("maxfeerate", Ty::Any),
                        Arg("maxburnamount", Ty::Any),
                    ],
                    1,
                )?;
                let tx = decode_tx(
                    &p[0],
                    "TX decode failed. Make sure the tx has at least one input.",
                )?;
                let max_fee_rate = params::fee_rate(&p[1], DEFAULT_MAX_FEE_RATE)?;
                let txid = tx.compute_txid();
                let mut node = write(self.node);
                // Core looks for the outputs in its UTXO set before anything else.
                if node.chain.has_unspent_output(&tx) {
                    return Err(send_error(&Rejection::AlreadyConfirmed));
                }
                match node.submit(tx, Some(max_fee_rate), true) {
                    Ok(_) | Err(Rejection::AlreadyInMempool) => Ok(json!(txid.to_string()).into()),
                    Err(r) => Err(send_error(&r)),
                }
            }
            "testmempoolaccept" => {
                let p = bind(&[Arg("rawtxs", Ty::Arr), Arg("maxfeerate", Ty::Any)], 1)?;
                let raws = p[0].as_array().cloned().unwrap_or_default();
                if raws.len() != 1 {
                    return Err(RpcError::new(
                        code::INVALID_PARAMETER,
                        "Array must contain between 1 and 25 transactions.",
                    ));
                }
                let max_fee_rate = params::fee_rate(&p[1], DEFAULT_MAX_FEE_RATE)?;
                let tx = decode_tx(&raws[0], "TX decode failed: ")?;
                let node = read(self.node);
                let mut o = Map::new();
                o.insert("txid".into(), json!(tx.compute_txid().to_string()));
                o.insert("wtxid".into(), json!(tx.compute_wtxid().to_string()));
                match node.mempool.check(&tx, &node.chain, Some(max_fee_rate)) {
                    Ok(a) => {
                        o.insert("allowed".into(), json!(true));
                        o.insert("vsize".into(), json!(a.vsize));
                        o.insert("fees".into(), fees_json(&tx, a.fee, a.vsize));
                    }
                    Err(r) => {
                        o.insert("allowed".into(), json!(false));
                        match r {
                            Rejection::MissingInputs => {
                                o.insert("reject-reason".into(), json!("missing-inputs"));
                            }
                            Rejection::MaxFeeExceeded => {
                                o.insert("reject-reason".into(), json!("max-fee-exceeded"));
                            }
                            Rejection::Invalid { ref reason, .. } => {
                                o.insert("reject-reason".into(), json!(reason));
                                o.insert("reject-details".into(), json!(r.state_string()));
                            }
                            _ => {
                                o.insert("reject-reason".into(), json!(r.state_string()));
                                o.insert("reject-details".into(), json!(r.state_string()));
                            }
                        }
                    }
                }
                Ok(json!([o]).into())
            }
            "submitpackage" => {
                let p = bind(
                    &[
                        Arg("package", Ty::Arr),
                        Arg("maxfeerate", Ty::Any),
                        Arg("maxburnamount", Ty::Any),
                    ],
                    1,
                )?;
                submit_package(&mut write(self.node), &p)
            }
            "uptime" => {
                bind(&[], 0)?;
                Ok(json!(read(self.node).started.elapsed().as_secs()).into())
            }
            "help" => {
                bind(&[Arg("command", Ty::Str)], 0)?;
                Ok(json!(METHODS.join("\n")).into())
            }
            _ => Err(RpcError::new(code::METHOD_NOT_FOUND, "Method not found")),
        }
    }
}

fn block<'a>(
    chain: &'a Chain,
    hash: &BlockHash,
) -> Result<&'a std::sync::Arc<BlockEntry>, RpcError> {
    chain
        .by_hash(hash)
        .ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Block not found"))
}

fn decode_tx(v: &Value, message: &str) -> Result<Transaction, RpcError> {
    let s = v.as_str().unwrap_or_default();
    let fail = || {
        let message = if message.ends_with(": ") {
            format!("{message}{s} Make sure the tx has at least one input.")
        } else {
            message.to_string()
        };
        RpcError::new(code::DESERIALIZATION_ERROR, message)
    };
    let bytes: Vec<u8> = bitcoin::hex::FromHex::from_hex(s).map_err(|_| fail())?;
    let tx: Transaction = bitcoin::consensus::deserialize(&bytes).map_err(|_| fail())?;
    if tx.input.is_empty() {
        return Err(fail());
    }
    Ok(tx)
}

/// sendrawtransaction's error for a rejection (Core's `BroadcastTransaction` mapping).
fn send_error(r: &Rejection) -> RpcError {
    match r {
        Rejection::MissingInputs => {
            RpcError::new(code::TRANSACTION_ERROR, "bad-txns-inputs-missingorspent")
        }
        Rejection::AlreadyConfirmed => RpcError::new(
            code::TRANSACTION_ALREADY_IN_CHAIN,
            "Transaction outputs already in utxo set",
        ),
        Rejection::MaxFeeExceeded => RpcError::new(
            code::TRANSACTION_ERROR,
            "Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate)",
        ),
        other => RpcError::new(code::TRANSACTION_REJECTED, other.state_string()),
    }
}

fn fees_json(tx: &Transaction, fee: u64, vsize: u64) -> Value {
    json!({
        "base": amount(fee),
        "effective-feerate": amount(fee * 1000 / vsize.max(1)),
        "effective-includes": [tx.compute_wtxid().to_string()],
    })
}

fn submit_package(node: &mut Node, p: &[Value]) -> Result<Reply, RpcError> {
    let raws = p[0].as_array().cloned().unwrap_or_default();
    if raws.is_empty() || raws.len() > 25 {
        return Err(RpcError::new(
            code::INVALID_PARAMETER,
            "Array must contain between 1 and 25 transactions.",
        ));
    }
    let max_fee_rate = params::fee_rate(&p[1], DEFAULT_MAX_FEE_RATE)?;
    let txs = raws
        .iter()
        .map(|r| decode_tx(r, "TX decode failed: "))
        .collect::<Result<Vec<_>, _>>()?;
    let mut results = Map::new();
    let mut replaced = Vec::new();
    let mut failed = false;
    for tx in txs {
        let (txid, wtxid) = (tx.compute_txid(), tx.compute_wtxid());
        let mut o = Map::new();
        o.insert("txid".into(), json!(txid.to_string()));
        let existing = node.mempool.get(&txid).map(|e| (e.vsize, e.fee));
        match existing {
            Some((vsize, fee)) => {
                o.insert("vsize".into(), json!(vsize));
                o.insert("fees".into(), json!({"base": amount(fee)}));
            }
            // Core does not count package transactions as unbroadcast.
            None => match node.submit(tx.clone(), Some(max_fee_rate).filter(|r| *r > 0), false) {
                Ok(a) => {
                    o.insert("vsize".into(), json!(a.vsize));
                    o.insert("fees".into(), fees_json(&tx, a.fee, a.vsize));
                    replaced.extend(a.replaced.iter().map(|t| t.to_string()));
                }
                Err(r) => {
                    failed = true;
                    let message = match r {
                        Rejection::MaxFeeExceeded => "max feerate exceeded".to_string(),
                        other => other.state_string(),
                    };
                    o.insert("error".into(), json!(message));
                }
            },
        }
        results.insert(wtxid.to_string(), Value::Object(o));
    }
    let msg = if failed {
        "transaction failed"
    } else {
        "success"
    };
    Ok(
        json!({"package_msg": msg, "tx-results": results, "replaced-transactions": replaced})
            .into(),
    )
}

fn raw_transaction(node: &Node, p: &[Value]) -> Result<Reply, RpcError> {
    let txid: Txid = params::hash(&p[0], "parameter 1")?;
    let chain = &node.chain;
    if chain.at(0).is_some_and(|g| g.txids.first() == Some(&txid)) {
        return Err(RpcError::new(
            code::INVALID_ADDRESS_OR_KEY,
            "The genesis block coinbase is not considered an ordinary transaction and cannot be retrieved",
        ));
    }
    let verbosity = params::verbosity(&p[1], 0)?;
    let mut given_block = None;
    if !p[2].is_null() {
        let hash: BlockHash = params::hash(&p[2], "parameter 3")?;
        let entry = chain
            .by_hash(&hash)
            .ok_or_else(|| RpcError::new(code::INVALID_ADDRESS_OR_KEY, "Block hash not found"))?;
        given_block = Some(entry.clone());
    }
    let found = match &given_block {
        Some(b) => b
            .txids
            .iter()
            .position(|t| *t == txid)
            .and_then(|i| b.tx(i))
            .map(|tx| (tx, Some(b.clone()))),
        None => match node.mempool.get(&txid) {
            Some(e) => Some((e.tx.clone(), None)),
            None => chain.tx(&txid).map(|(tx, b)| (tx, Some(b))),
        },
    };
    let Some((tx, block)) = found else {
        let what = if given_block.is_some() {
            "No such transaction found in the provided block"
        } else {
            "No such mempool or blockchain transaction"
        };
        return Err(RpcError::new(
            code::INVALID_ADDRESS_OR_KEY,
            format!("{what}. Use gettransaction for wallet transactions."),
        ));
    };
    if verbosity <= 0 {
        return Ok(Reply::Raw(format!(
            "\"{}\"",
            bitcoin::consensus::encode::serialize_hex(&tx)
        )));
    }
    let mut o = Map::new();
    if let Some(b) = &given_block {
        o.insert("in_active_chain".into(), json!(chain.is_active(b)));
    }
    let prevouts = match (&block, verbosity >= 2) {
        (Some(_), true) => chain.prevouts(&tx),
        _ => None,
    };
    o.extend(txjson::tx_to_json(
        &tx,
        prevouts.as_deref(),
        Detail::WithPrevouts,
    ));
    if let Some(b) = block {
        o.insert("blockhash".into(), json!(b.hash.to_string()));
        if chain.is_active(&b) {
            o.insert("confirmations".into(), json!(chain.confirmations(&b)));
            o.insert("time".into(), json!(b.header.time));
            o.insert("blocktime".into(), json!(b.header.time));
        } else {
            o.insert("confirmations".into(), json!(0));
        }
    }
    Ok(Value::Object(o).into())
}

/// Core's `MempoolToJSON` (getrawmempool, REST mempool contents).
pub fn mempool_json(pool: &Mempool, verbose: bool, sequence: bool) -> Value {
    if verbose {
        let map: Map<String, Value> = pool
            .entries()
            .map(|e| (e.txid.to_string(), pool.entry_json(e)))
            .collect();
        return Value::Object(map);
    }
    let txids: Vec<String> = pool.by_score().iter().map(|e| e.txid.to_string()).collect();
    if sequence {
        return json!({"txids": txids, "mempool_sequence": pool.sequence()});
    }
    json!(txids)
}

/// Core's `blockheaderToJSON`.
pub fn header_json(chain: &Chain, b: &BlockEntry) -> Map<String, Value> {
    let h = &b.header;
    let mut o = Map::new();
    o.insert("hash".into(), json!(b.hash.to_string()));
    o.insert("confirmations".into(), json!(chain.confirmations(b)));
    o.insert("height".into(), json!(b.height));
    o.insert("version".into(), json!(h.version.to_consensus()));
    o.insert(
        "versionHex".into(),
        json!(format!("{:08x}", h.version.to_consensus())),
    );
    o.insert("merkleroot".into(), json!(h.merkle_root.to_string()));
    o.insert("time".into(), json!(h.time));
    o.insert("mediantime".into(), json!(b.median_time));
    o.insert("nonce".into(), json!(h.nonce));
    o.insert(
        "bits".into(),
        json!(format!("{:08x}", h.bits.to_consensus())),
    );
    o.insert("target".into(), json!(hex(&h.target().to_be_bytes())));
    o.insert(
        "difficulty".into(),
        json!(difficulty(h.bits.to_consensus())),
    );
    o.insert("chainwork".into(), json!(hex(&b.chainwork.to_be_bytes())));
    o.insert("nTx".into(), json!(b.txids.len()));
    if b.height > 0 {
        o.insert(
            "previousblockhash".into(),
            json!(h.prev_blockhash.to_string()),
        );
    }
    if let Some(next) = chain.next_hash(b) {
        o.insert("nextblockhash".into(), json!(next.to_string()));
    }
    o
}

/// Core's `blockToJSON` for verbosity 1 (txids), 2 (transactions) and 3 (with prevouts).
pub fn block_json(chain: &Chain, b: &BlockEntry, verbosity: i64) -> Value {
    let mut o = header_json(chain, b);
    o.insert("strippedsize".into(), json!(b.stripped_size));
    o.insert("size".into(), json!(b.raw.len()));
    o.insert("weight".into(), json!(b.weight));
    let txs = b.txs();
    if let Some((cb, input)) = txs.first().and_then(|cb| Some((cb, cb.input.first()?))) {
        let mut c = Map::new();
        c.insert("version".into(), json!(cb.version.0));
        c.insert("locktime".into(), json!(cb.lock_time.to_consensus_u32()));
        c.insert("sequence".into(), json!(input.sequence.0));
        c.insert("coinbase".into(), json!(hex(input.script_sig.as_bytes())));
        if let Some(w) = input.witness.iter().next() {
            c.insert("witness".into(), json!(hex(w)));
        }
        o.insert("coinbase_tx".into(), Value::Object(c));
    }
    let list: Vec<Value> = if verbosity == 1 {
        b.txids.iter().map(|t| json!(t.to_string())).collect()
    } else {
        // Core has undo data for every connected block but the genesis block.
        let detail = if verbosity >= 3 {
            Detail::WithPrevouts
        } else {
            Detail::Plain
        };
        txs.iter()
            .map(|tx| {
                let prevouts = if b.height > 0 && chain.is_active(b) {
                    chain.prevouts(tx)
                } else {
                    None
                };
                Value::Object(txjson::tx_to_json(tx, prevouts.as_deref(), detail))
            })
            .collect()
    };
    o.insert("tx".into(), Value::Array(list));
    Value::Object(o)
}

/// Core's `GetDifficulty`.
fn difficulty(bits: u32) -> f64 {
    let mut shift = (bits >> 24) & 0xff;
    let mut diff = 0x0000ffff as f64 / (bits & 0x00ffffff) as f64;
    while shift < 29 {
        diff *= 256.0;
        shift += 1;
    }
    while shift > 29 {
        diff /= 256.0;
        shift -= 1;
    }
    diff
}

/// Core's getblockchaininfo (also served as REST chaininfo).
pub fn blockchain_info(chain: &Chain) -> Value {
    let Some(tip) = chain.tip() else {
        return json!({});
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Core stays in initial block download while its tip is more than a day old.
    let ibd = (tip.header.time as u64) < now.saturating_sub(24 * 3600);
    json!({
        "chain": "regtest",
        "blocks": tip.height,
        "headers": tip.height,
        "bestblockhash": tip.hash.to_string(),
        "bits": format!("{:08x}", tip.header.bits.to_consensus()),
        "target": hex(&tip.header.target().to_be_bytes()),
        "difficulty": difficulty(tip.header.bits.to_consensus()),
        "time": tip.header.time,
        "mediantime": tip.median_time,
        "verificationprogress": 1.0,
        "initialblockdownload": ibd,
        "chainwork": hex(&tip.chainwork.to_be_bytes()),
        "size_on_disk": chain.size_on_disk(),
        "pruned": false,
        "warnings": [],
    })
}

fn network_info() -> Value {
    let network = |name: &str, reachable: bool| {
        json!({"name": name, "limited": !reachable, "reachable": reachable, "proxy": "",
               "proxy_randomize_credentials": false})
    };
    json!({
        "version": 319900,
        "subversion": "/Satoshi:31.99.0(ferrum-emulator)/",
        "protocolversion": 70017,
        "localservices": "0000000000000c09",
        "localservicesnames": ["NETWORK", "WITNESS", "NETWORK_LIMITED", "P2P_V2"],
        "localrelay": true,
        "timeoffset": 0,
        "networkactive": true,
        "connections": 0,
        "connections_in": 0,
        "connections_out": 0,
        "networks": [network("ipv4", true), network("ipv6", true), network("onion", false),
                     network("i2p", false), network("cjdns", false)],
        "relayfee": amount(100),
        "incrementalfee": amount(100),
        "localaddresses": [],
        "warnings": [],
    })
}

/// Lower-case hex.
pub fn hex(data: &[u8]) -> String {
    let mut out = Vec::with_capacity(data.len() * 2);
    hex_into(&mut out, data);
    String::from_utf8(out).unwrap_or_default()
}
