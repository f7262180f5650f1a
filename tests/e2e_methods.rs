//! End-to-end method tests: the real `ferrum` binary indexes an emulated regtest chain, then
//! every Electrum method is checked over tcp, ssl, ws and wss against answers computed here
//! from the blocks alone; also bad inputs, notifications of a mined block and of a reorg,
//! 2016-header clamping, and a restart after SIGKILL.

mod mempool_support;
mod protocol_support;

use std::collections::HashMap;
use std::time::Duration;

use bitcoin::hex::DisplayHex;
use bitcoin::ScriptBuf;
use e2e_support::{
    fold_branch, node_call, node_chain, node_error, script_hash, FerrumProcess, Model,
};
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use ferrum_tools::emulator::{ChainSource, Emulator, EmulatorConfig};
use mempool_support::{e2e_support, node_state};
use protocol_support::{error_of, make_cert, Client};
use serde_json::{json, Value};

const SEED: u64 = 7;
const BLOCKS: u32 = 120;
/// The fee rate the emulated node estimates, in sat/kvB.
const FEE_RATE: u64 = 2500;

fn start_emulator() -> Emulator {
    let emu = Emulator::start(EmulatorConfig::new(ChainSource::Generated {
        params: ChainParams::medium(SEED),
        blocks: BLOCKS,
    }))
    .unwrap();
    emu.set_fee_rate(Some(FEE_RATE));
    emu
}

/// A TCP client without Nagle's delay: the shared client writes a message and its newline
/// separately, and the second write would otherwise wait for the server's delayed ACK.
async fn tcp_client(addr: std::net::SocketAddr) -> Client {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    Client::from_tcp(stream)
}

/// A result, failing on an error answer.
async fn ok(c: &mut Client, method: &str, params: Value) -> Value {
    let reply = c.call(1, method, params.clone()).await;
    match reply.get("result") {
        Some(result) => result.clone(),
        None => panic!("{method}({params}) failed: {reply}"),
    }
}

/// The (code, message) of an error answer.
async fn err(c: &mut Client, method: &str, params: Value) -> (i64, String) {
    error_of(&c.call(1, method, params).await)
}

fn assert_float(value: &Value, expected: f64, what: &str) {
    let got = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {value} is not a number"));
    assert!(
        (got - expected).abs() < 1e-12,
        "{what}: {got} != {expected}"
    );
}

/// Scripts worth asking about: the most reused ones, one used once, one fully spent, and one
/// never seen.
fn chosen_scripts(model: &Model) -> Vec<ScriptBuf> {
    let by_reuse = model.scripts_by_reuse();
    let mut chosen: Vec<ScriptBuf> = by_reuse[..3].to_vec();
    chosen.push(
        by_reuse
            .iter()
            .rev()
            .find(|s| model.histories[*s].len() == 1)
            .unwrap()
            .clone(),
    );
    chosen.push(
        by_reuse
            .iter()
            .find(|s| model.balance_json(s)["confirmed"] == 0)
            .expect("a fully spent script")
            .clone(),
    );
    chosen.push(ScriptBuf::from_bytes(vec![0x51, 0x52, 0x53]));
    chosen
}

/// A multi-input transaction and one with an OP_RETURN output, with their positions.
fn chosen_txs(model: &Model) -> Vec<(bitcoin::Txid, u32, u32)> {
    let mut picks = vec![(model.blocks[1].txdata[0].compute_txid(), 1, 0)];
    let mut found = |pred: &dyn Fn(&bitcoin::Transaction) -> bool| {
        let (h, p, tx) = model
            .blocks
            .iter()
            .enumerate()
            .skip(1)
            .flat_map(|(h, b)| b.txdata.iter().enumerate().map(move |(p, t)| (h, p, t)))
            .find(|(_, _, t)| pred(t))
            .expect("the chain has such a transaction");
        picks.push((tx.compute_txid(), h as u32, p as u32));
    };
    found(&|t| t.input.len() >= 3);
    found(&|t| t.output.iter().any(|o| o.script_pubkey.is_op_return()));
    let tip = model.tip();
    let last = model.blocks[tip as usize].txdata.len() - 1;
    picks.push((
        model.blocks[tip as usize].txdata[last].compute_txid(),
        tip,
        last as u32,
    ));
    picks
}

async fn check_server_methods(c: &mut Client, model: &Model) {
    assert_eq!(
        ok(c, "server.features", json!([])).await["genesis_hash"],
        json!(model.blocks[0].block_hash().to_string())
    );
    let features = ok(c, "server.features", json!([])).await;
    assert_eq!(features["protocol_min"], "1.4");
    assert_eq!(features["protocol_max"], "1.6");
    assert_eq!(features["hash_function"], "sha256");
    assert_eq!(features["pruning"], Value::Null);
    assert_eq!(ok(c, "server.ping", json!([])).await, Value::Null);
    let banner = ok(c, "server.banner", json!([])).await;
    assert!(
        banner
            .as_str()
            .unwrap()
            .starts_with("You are connected to a ferrum "),
        "{banner}"
    );
    assert_eq!(
        ok(c, "server.donation_address", json!([])).await,
        "bcrt1qdonation"
    );
}

async fn check_header_methods(c: &mut Client, model: &Model, v16: bool) {
    let tip = model.tip();
    assert_eq!(
        ok(c, "blockchain.headers.subscribe", json!([])).await,
        json!({"hex": model.header_hex(tip), "height": tip})
    );
    for height in [0, 1, 57, tip] {
        assert_eq!(
            ok(c, "blockchain.block.header", json!([height])).await,
            json!(model.header_hex(height))
        );
        assert_eq!(
            ok(c, "blockchain.block.header", json!([height, 0])).await,
            json!(model.header_hex(height))
        );
    }
    for (height, cp) in [(0, 0), (5, 60), (60, 60), (0, tip), (tip, tip), (33, 100)] {
        if cp == 0 {
            continue;
        }
        let proof = ok(c, "blockchain.block.header", json!([height, cp])).await;
        let mut expected = model.header_proof(height, cp);
        expected["header"] = json!(model.header_hex(height));
        assert_eq!(proof, expected, "header {height} under {cp}");
        let leaf = model.blocks[height as usize].block_hash().to_string();
        assert_eq!(
            json!(fold_branch(&leaf, &proof["branch"], height.into())),
            proof["root"]
        );
    }
    // (start, count, headers expected)
    let cases = [
        (0, 10, 10),
        (110, 50, tip + 1 - 110),
        (tip, 1, 1),
        (tip + 1, 5, 0),
        (0, 3000, tip + 1),
    ];
    for (start, count, n) in cases {
        let got = ok(c, "blockchain.block.headers", json!([start, count])).await;
        let headers: Vec<String> = (start..start + n).map(|h| model.header_hex(h)).collect();
        let expected = if v16 {
            json!({"count": n, "headers": headers, "max": 2016})
        } else {
            json!({"count": n, "hex": headers.concat(), "max": 2016})
        };
        assert_eq!(got, expected, "headers({start}, {count})");
    }
    // Past the tip, even beyond 32 bits, nothing comes back.
    let got = ok(c, "blockchain.block.headers", json!([4_294_967_297u64, 5])).await;
    assert_eq!(got["count"], 0, "{got}");
    // No headers, no proof and no cp_height check (as ElectrumX: `if cp_height and count`).
    for (start, count) in [(tip + 1, 5), (0, 0)] {
        let got = ok(c, "blockchain.block.headers", json!([start, count, 10])).await;
        let expected = if v16 {
            json!({"count": 0, "headers": [], "max": 2016})
        } else {
            json!({"count": 0, "hex": "", "max": 2016})
        };
        assert_eq!(got, expected);
    }
    // A proof of the last header returned.
    let got = ok(c, "blockchain.block.headers", json!([3, 5, 100])).await;
    let proof = model.header_proof(7, 100);
    assert_eq!(got["count"], 5);
    assert_eq!(got["branch"], proof["branch"]);
    assert_eq!(got["root"], proof["root"]);
    let leaf = model.blocks[7].block_hash().to_string();
    assert_eq!(json!(fold_branch(&leaf, &got["branch"], 7)), got["root"]);
}

async fn check_script_methods(c: &mut Client, model: &Model, v16: bool) {
    for script in chosen_scripts(model) {
        let sh = script_hash(&script);
        let what = format!("script {}", script.as_bytes().to_lower_hex_string());
        assert_eq!(
            ok(c, "blockchain.scripthash.get_balance", json!([sh])).await,
            model.balance_json(&script),
            "{what}"
        );
        assert_eq!(
            ok(c, "blockchain.scripthash.get_history", json!([sh])).await,
            model.history_json(&script),
            "{what}"
        );
        assert_eq!(
            ok(c, "blockchain.scripthash.listunspent", json!([sh])).await,
            model.listunspent_json(&script),
            "{what}"
        );
        assert_eq!(
            ok(c, "blockchain.scripthash.get_mempool", json!([sh])).await,
            json!([]),
            "{what}"
        );
        assert_eq!(
            ok(c, "blockchain.scripthash.subscribe", json!([sh])).await,
            model.status(&script),
            "{what}"
        );
        if !v16 {
            // Only from 1.4.2.
            assert_eq!(
                err(c, "blockchain.scripthash.unsubscribe", json!([sh])).await,
                (
                    -32601,
                    "unknown method \"blockchain.scripthash.unsubscribe\"".into()
                )
            );
            continue;
        }
        assert_eq!(
            ok(c, "blockchain.scripthash.unsubscribe", json!([sh])).await,
            json!(true)
        );
        assert_eq!(
            ok(c, "blockchain.scripthash.unsubscribe", json!([sh])).await,
            json!(false)
        );
    }
}

/// `node_json` holds the node's own verbose answer for each of `chosen_txs`.
async fn check_tx_methods(c: &mut Client, model: &Model, node_json: &[Value]) {
    for ((txid, height, pos), node_json) in chosen_txs(model).into_iter().zip(node_json) {
        let tx = &model.blocks[height as usize].txdata[pos as usize];
        let hex = bitcoin::consensus::encode::serialize_hex(tx);
        let id = txid.to_string();
        assert_eq!(
            ok(c, "blockchain.transaction.get", json!([id])).await,
            json!(hex)
        );
        assert_eq!(
            ok(c, "blockchain.transaction.get", json!([id, false])).await,
            json!(hex)
        );
        let verbose = ok(c, "blockchain.transaction.get", json!([id, true])).await;
        assert_eq!(&verbose, node_json, "verbose is the node's answer");
        assert_eq!(verbose["txid"], json!(id));
        assert_eq!(verbose["hex"], json!(hex));
        assert_eq!(
            verbose["blockhash"],
            json!(model.blocks[height as usize].block_hash().to_string())
        );

        let branch = model.tx_branch(height, pos);
        let merkle = ok(c, "blockchain.transaction.get_merkle", json!([id, height])).await;
        assert_eq!(
            merkle,
            json!({"block_height": height, "merkle": branch, "pos": pos})
        );
        let root = model.blocks[height as usize].header.merkle_root;
        assert_eq!(
            fold_branch(&id, &merkle["merkle"], pos.into()),
            root.to_string()
        );
        assert_eq!(
            ok(
                c,
                "blockchain.transaction.id_from_pos",
                json!([height, pos])
            )
            .await,
            json!(id)
        );
        assert_eq!(
            ok(
                c,
                "blockchain.transaction.id_from_pos",
                json!([height, pos, true])
            )
            .await,
            json!({"tx_hash": id, "merkle": branch})
        );
    }
}

async fn check_fee_methods(c: &mut Client, v16: bool) {
    let rate = FEE_RATE as f64 / 1e8;
    assert_float(
        &ok(c, "blockchain.estimatefee", json!([2])).await,
        rate,
        "estimatefee",
    );
    assert_float(
        &ok(c, "blockchain.estimatefee", json!([6, "economical"])).await,
        rate,
        "estimatefee economical",
    );
    assert_eq!(
        ok(c, "mempool.get_fee_histogram", json!([])).await,
        json!([])
    );
    if v16 {
        assert_eq!(
            err(c, "blockchain.relayfee", json!([])).await,
            (-32601, "unknown method \"blockchain.relayfee\"".into())
        );
        let info = ok(c, "mempool.get_info", json!([])).await;
        for key in ["mempoolminfee", "minrelaytxfee", "incrementalrelayfee"] {
            assert_float(&info[key], 100.0 / 1e8, key);
        }
    } else {
        assert_float(
            &ok(c, "blockchain.relayfee", json!([])).await,
            100.0 / 1e8,
            "relayfee",
        );
        assert_eq!(
            err(c, "mempool.get_info", json!([])).await,
            (-32601, "unknown method \"mempool.get_info\"".into())
        );
    }
    let (code, message) = err(c, "blockchain.transaction.broadcast", json!(["00"])).await;
    assert_eq!(code, 1);
    assert_eq!(
        message,
        "the transaction was rejected by network rules.\n\n\
         TX decode failed. Make sure the tx has at least one input.\n[00]"
    );
}

/// Every method in a fresh session negotiating `version`.
async fn check_session(mut c: Client, model: &Model, node_json: &[Value], version: &str) {
    let hello = c.hello(version).await;
    assert_eq!(hello["result"][1], json!(version));
    assert!(hello["result"][0].as_str().unwrap().starts_with("ferrum "));
    let v16 = version == "1.6";
    check_server_methods(&mut c, model).await;
    check_header_methods(&mut c, model, v16).await;
    check_script_methods(&mut c, model, v16).await;
    check_tx_methods(&mut c, model, node_json).await;
    check_fee_methods(&mut c, v16).await;
}

/// A 1.6 session over plain TCP or WebSocket.
async fn session(server: &FerrumProcess, ws: bool) -> Client {
    let mut c = if ws {
        Client::ws(server.ws).await
    } else {
        tcp_client(server.tcp).await
    };
    c.hello("1.6").await;
    c
}

/// Results of a JSON-RPC batch, in request order; each must succeed.
async fn batch(c: &mut Client, calls: &[(&str, Value)]) -> Vec<Value> {
    let requests: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(id, (method, params))| {
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        })
        .collect();
    c.send(&Value::Array(requests).to_string()).await;
    let replies = c.recv_json().await;
    let mut results = vec![Value::Null; calls.len()];
    for reply in replies.as_array().expect("a batch answer") {
        let id = reply["id"].as_u64().unwrap() as usize;
        results[id] = match reply.get("result") {
            Some(r) => r.clone(),
            None => panic!("{}({}) failed: {reply}", calls[id].0, calls[id].1),
        };
    }
    results
}

/// Every script the chain touched: history, status, balance and UTXOs, in batches of
/// requests, a fresh session per hundred scripts to stay clear of the cost limits.
async fn check_every_script(server: &FerrumProcess, model: &Model) {
    let scripts = model.scripts_by_reuse();
    // The chain must stay interesting: many scripts, one heavily reused.
    assert!(scripts.len() > 1000, "{} scripts", scripts.len());
    assert!(model.histories[&scripts[0]].len() > 100);
    for chunk in scripts.chunks(100) {
        let mut c = session(server, true).await;
        let calls: Vec<(&str, Value)> = chunk
            .iter()
            .flat_map(|s| {
                let sh = json!([script_hash(s)]);
                [
                    ("blockchain.scripthash.get_history", sh.clone()),
                    ("blockchain.scripthash.subscribe", sh.clone()),
                    ("blockchain.scripthash.get_balance", sh.clone()),
                    ("blockchain.scripthash.listunspent", sh),
                ]
            })
            .collect();
        let results = batch(&mut c, &calls).await;
        for (script, got) in chunk.iter().zip(results.chunks(4)) {
            let what = script.as_bytes().to_lower_hex_string();
            assert_eq!(got[0], model.history_json(script), "history of {what}");
            assert_eq!(got[1], model.status(script), "status of {what}");
            assert_eq!(got[2], model.balance_json(script), "balance of {what}");
            assert_eq!(got[3], model.listunspent_json(script), "utxos of {what}");
        }
    }
}

/// Every transaction: raw hex, merkle branch by txid and by position, in batches.
async fn check_every_tx(server: &FerrumProcess, model: &Model) {
    let txs: Vec<(u32, u32, &bitcoin::Transaction)> = model
        .blocks
        .iter()
        .enumerate()
        .skip(1)
        .flat_map(|(h, b)| {
            b.txdata
                .iter()
                .enumerate()
                .map(move |(p, t)| (h as u32, p as u32, t))
        })
        .collect();
    for chunk in txs.chunks(100) {
        let mut c = session(server, true).await;
        let calls: Vec<(&str, Value)> = chunk
            .iter()
            .flat_map(|(h, p, t)| {
                let id = t.compute_txid().to_string();
                [
                    ("blockchain.transaction.get", json!([id])),
                    ("blockchain.transaction.get_merkle", json!([id, h])),
                    ("blockchain.transaction.id_from_pos", json!([h, p, true])),
                ]
            })
            .collect();
        let results = batch(&mut c, &calls).await;
        for ((h, p, t), got) in chunk.iter().zip(results.chunks(3)) {
            let id = t.compute_txid().to_string();
            let branch = model.tx_branch(*h, *p);
            assert_eq!(got[0], json!(bitcoin::consensus::encode::serialize_hex(*t)));
            assert_eq!(
                got[1],
                json!({"block_height": h, "merkle": branch, "pos": p}),
                "{id}"
            );
            assert_eq!(got[2], json!({"tx_hash": id, "merkle": branch}));
        }
    }
}

/// Every header, plain and proved under the tip, in one batch; each proof folds to its root.
async fn check_every_header(server: &FerrumProcess, model: &Model) {
    let tip = model.tip();
    let mut c = session(server, true).await;
    let calls: Vec<(&str, Value)> = (0..=tip)
        .flat_map(|h| {
            [
                ("blockchain.block.header", json!([h])),
                ("blockchain.block.header", json!([h, tip])),
            ]
        })
        .collect();
    let results = batch(&mut c, &calls).await;
    for (h, got) in (0..=tip).zip(results.chunks(2)) {
        assert_eq!(got[0], json!(model.header_hex(h)));
        let mut expected = model.header_proof(h, tip);
        expected["header"] = json!(model.header_hex(h));
        assert_eq!(got[1], expected, "header {h}");
        let leaf = model.blocks[h as usize].block_hash().to_string();
        assert_eq!(
            json!(fold_branch(&leaf, &got[1]["branch"], h.into())),
            got[1]["root"]
        );
    }
}

/// Python's `f"{n:,d}"`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The local RPC: `getinfo`'s height and `query`'s lines for the most reused script.
async fn check_local_rpc(server: &FerrumProcess, model: &Model) {
    let mut c = tcp_client(server.rpc).await;
    let info = ok(&mut c, "getinfo", json!([])).await;
    assert_eq!(info["db height"], json!(model.tip()));

    let script = &model.scripts_by_reuse()[0];
    let hex = script.as_bytes().to_lower_hex_string();
    let mut lines = vec![format!("Script: {hex}")];
    for (n, (txid, height)) in model.histories[script].iter().take(3).enumerate() {
        lines.push(format!(
            "History #{n}: height {} txid {txid}",
            grouped((*height).into())
        ));
    }
    let utxos = model.listunspent_json(script);
    for (n, u) in utxos.as_array().unwrap().iter().take(3).enumerate() {
        lines.push(format!(
            "UTXO #{}: txid {} tx_pos {} height {} value {}",
            n + 1,
            u["tx_hash"].as_str().unwrap(),
            u["tx_pos"],
            grouped(u["height"].as_u64().unwrap()),
            grouped(u["value"].as_u64().unwrap())
        ));
    }
    let balance = model.balance_json(script)["confirmed"].as_u64().unwrap();
    let fraction = format!("{:08}", balance % 100_000_000);
    let fraction = fraction.trim_end_matches('0');
    let coins = if fraction.is_empty() {
        grouped(balance / 100_000_000)
    } else {
        format!("{}.{fraction}", grouped(balance / 100_000_000))
    };
    lines.push(format!("Balance: {coins} XTN"));
    assert_eq!(ok(&mut c, "query", json!([[hex], 3])).await, json!(lines));
}

/// Bad arguments, each with its exact code and message, each in a fresh session (every error
/// costs 100, and ten of them would reach the throttling limit).
async fn check_bad_inputs(server: &FerrumProcess, ws: bool, model: &Model) {
    let tip = model.tip();
    let (txid, height, _) = chosen_txs(model)[1];
    let id = txid.to_string();
    let bad_request = |m: &str| (1, m.to_string());
    let cases: Vec<(&str, Value, (i64, String))> = vec![
        ("server.version", json!(["again", "1.4"]), bad_request("server.version already sent")),
        ("blockchain.scripthash.get_balance", json!(["zz"]), bad_request("zz is not a valid script hash")),
        ("blockchain.scripthash.get_history", json!(["abcd"]), bad_request("abcd is not a valid script hash")),
        ("blockchain.scripthash.listunspent", json!([5]), bad_request("5 is not a valid script hash")),
        ("blockchain.scripthash.subscribe", json!([format!("{id}00")]), bad_request(&format!("{id}00 is not a valid script hash"))),
        ("blockchain.block.header", json!([-1]), bad_request("-1 should be a non-negative integer")),
        ("blockchain.block.header", json!(["abc"]), bad_request("abc should be a non-negative integer")),
        ("blockchain.block.header", json!([tip + 1]), bad_request(&format!("height {} out of range", tip + 1))),
        ("blockchain.block.header", json!([1_000_000]), bad_request("height 1,000,000 out of range")),
        ("blockchain.block.header", json!([10, 5]), bad_request(&format!("require header height 10 <= cp_height 5 <= chain height {tip}"))),
        ("blockchain.block.header", json!([5, tip + 10]), bad_request(&format!("require header height 5 <= cp_height {} <= chain height {tip}", tip + 10))),
        ("blockchain.block.headers", json!([0, -5]), bad_request("-5 should be a non-negative integer")),
        ("blockchain.block.headers", json!([10, 5, 12]), bad_request(&format!("require header height 14 <= cp_height 12 <= chain height {tip}"))),
        ("blockchain.block.headers", json!([null, 1]), bad_request("None should be a non-negative integer")),
        ("blockchain.transaction.get", json!(["xyz"]), bad_request("xyz should be a transaction hash")),
        ("blockchain.transaction.get", json!([id, "yes"]), bad_request("\"verbose\" must be a boolean")),
        ("blockchain.transaction.get_merkle", json!([id, tip + 5]), bad_request(&format!("height {} out of range", tip + 5))),
        ("blockchain.transaction.get_merkle", json!([id, height + 1]), bad_request(&format!("tx {id} not in block at height {}", height + 1))),
        ("blockchain.transaction.get_merkle", json!([id, -2]), bad_request("-2 should be a non-negative integer")),
        ("blockchain.transaction.id_from_pos", json!([1, 999]), bad_request("no tx at position 999 in block at height 1")),
        ("blockchain.transaction.id_from_pos", json!([1000, 0]), bad_request(&format!("db error: DBError('block 1,000 not on disk (>{tip})')"))),
        ("blockchain.transaction.id_from_pos", json!([1, 0, "x"]), bad_request("\"merkle\" must be a boolean")),
        ("blockchain.transaction.broadcast", json!(["xyz"]), bad_request("xyz should be a hex string")),
        ("blockchain.estimatefee", json!(["abc"]), bad_request("abc should be a non-negative integer")),
        ("blockchain.estimatefee", json!([2, "fast"]), bad_request("unknown estimatefee mode: FAST")),
        ("blockchain.scripthash.get_balance", json!([]), (-32602, "0 arguments passed to method \"blockchain.scripthash.get_balance\" but it requires 1".into())),
        ("blockchain.block.headers", json!([1]), (-32602, "1 argument passed to method \"blockchain.block.headers\" but it requires 2".into())),
        ("blockchain.headers.subscribe", json!([1]), (-32602, "1 argument passed to method blockchain.headers.subscribe taking at most 0".into())),
        ("blockchain.nosuch", json!([]), (-32601, "unknown method \"blockchain.nosuch\"".into())),
        ("blockchain.block.header", json!([4_294_967_297u64]), bad_request("height 4,294,967,297 out of range")),
        ("blockchain.transaction.get_merkle", json!([id, 4_294_967_297u64]), bad_request("height 4,294,967,297 out of range")),
        ("blockchain.transaction.id_from_pos", json!([4_294_967_297u64, 0]), bad_request(&format!("db error: DBError('block 4,294,967,297 not on disk (>{tip})')"))),
        ("blockchain.transaction.id_from_pos", json!([1, 4_294_967_296u64]), bad_request("no tx at position 4,294,967,296 in block at height 1")),
        ("blockchain.block.header", json!("x"), (-32602, "invalid request arguments: x".into())),
        ("blockchain.block.header", json!({"foo": 1}), (-32602, "method \"blockchain.block.header\" requires parameter \"height\"".into())),
        ("blockchain.block.header", json!({"height": 1, "foo": 1, "bar": 2}), (-32602, "method \"blockchain.block.header\" does not take parameters \"bar\", \"foo\"".into())),
        ("blockchain.transaction.get", json!({"verbose": true}), (-32602, "method \"blockchain.transaction.get\" requires parameter \"tx_hash\"".into())),
    ];
    for (method, params, expected) in cases {
        let mut c = session(server, ws).await;
        assert_eq!(
            err(&mut c, method, params.clone()).await,
            expected,
            "{method}({params})"
        );
        // The session survives it.
        assert_eq!(ok(&mut c, "server.ping", json!([])).await, Value::Null);
    }

    // A huge count is answered clamped to the chain, but charged as asked (count / 50, as
    // ElectrumX does), so the next request finds the session over its hard cost limit.
    let mut c = session(server, ws).await;
    let got = ok(
        &mut c,
        "blockchain.block.headers",
        json!([5, 1_000_000_000u64]),
    )
    .await;
    assert_eq!(got["count"], json!(tip + 1 - 5));
    assert_eq!(got["headers"].as_array().unwrap().len() as u32, tip + 1 - 5);
    assert_eq!(
        err(&mut c, "server.ping", json!([])).await,
        (-101, "excessive resource usage".into())
    );
    c.assert_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_over_every_transport() {
    let emu = start_emulator();
    let model = Model::new(node_chain(&emu));
    let cert_dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = make_cert(cert_dir.path()) else {
        return;
    };
    let node_json: Vec<Value> = chosen_txs(&model)
        .iter()
        .map(|(txid, _, _)| node_call(&emu, "getrawtransaction", json!([txid.to_string(), true])))
        .collect();
    let server = FerrumProcess::start(&emu, &cert, &key);

    for version in ["1.4", "1.6"] {
        check_session(tcp_client(server.tcp).await, &model, &node_json, version).await;
        check_session(
            Client::tls(server.ssl, &cert).await,
            &model,
            &node_json,
            version,
        )
        .await;
        check_session(Client::ws(server.ws).await, &model, &node_json, version).await;
        check_session(
            Client::wss(server.wss, &cert).await,
            &model,
            &node_json,
            version,
        )
        .await;
    }

    check_every_script(&server, &model).await;
    check_local_rpc(&server, &model).await;
    check_every_tx(&server, &model).await;
    check_every_header(&server, &model).await;
    check_bad_inputs(&server, false, &model).await;
    check_bad_inputs(&server, true, &model).await;

    // Named parameters work like positional ones.
    let mut c = session(&server, false).await;
    assert_eq!(
        ok(&mut c, "blockchain.block.header", json!({"height": 7})).await,
        json!(model.header_hex(7))
    );
    assert_eq!(
        ok(
            &mut c,
            "blockchain.transaction.id_from_pos",
            json!({"height": 1, "tx_pos": 0})
        )
        .await,
        json!(model.blocks[1].txdata[0].compute_txid().to_string())
    );
    // A [min, max] range negotiates the highest common version ("1.6.0" > "1.6" as tuples).
    let mut c = tcp_client(server.tcp).await;
    assert_eq!(
        ok(&mut c, "server.version", json!(["range", ["1.4", "1.6.0"]])).await[1],
        "1.6"
    );
    let mut c = tcp_client(server.tcp).await;
    assert_eq!(
        ok(&mut c, "server.version", json!(["default"])).await[1],
        "1.4"
    );
    let mut c = tcp_client(server.tcp).await;
    assert_eq!(
        err(&mut c, "server.version", json!(["exact", "1.6.0"])).await,
        (1, "unsupported protocol version: 1.6.0".into())
    );
    c.assert_closed().await;

    // Anything before server.version closes the session.
    let mut c = Client::tls(server.ssl, &cert).await;
    assert_eq!(
        err(&mut c, "blockchain.headers.subscribe", json!([])).await,
        (1, "use server.version to identify client".into())
    );
    c.assert_closed().await;
    // So does an unsupported version.
    let mut c = Client::wss(server.wss, &cert).await;
    assert_eq!(
        err(&mut c, "server.version", json!(["old", "1.2"])).await,
        (1, "unsupported protocol version: 1.2".into())
    );
    c.assert_closed().await;

    // A node refusal is passed on as code 2 with the node's error, ElectrumX style.
    let unknown = "ab".repeat(32);
    let (code, message) = node_error(&emu, "getrawtransaction", json!([unknown, 0]));
    let mut c = session(&server, true).await;
    assert_eq!(
        err(&mut c, "blockchain.transaction.get", json!([unknown])).await,
        (
            2,
            format!("daemon error: DaemonError({{'code': {code}, 'message': '{message}'}})")
        )
    );

    // Broadcasts reach the node: a confirmed transaction is refused with the node's message,
    // a new one (made by the same generator as the chain, so it spends real outputs) is
    // accepted and lands in the node's mempool.
    let mut c = session(&server, false).await;
    let coinbase =
        bitcoin::consensus::encode::serialize_hex(&model.blocks[BLOCKS as usize].txdata[0]);
    assert_eq!(
        err(
            &mut c,
            "blockchain.transaction.broadcast",
            json!([coinbase])
        )
        .await,
        (
            1,
            format!(
                "the transaction was rejected by network rules.\n\n\
                 Transaction outputs already in utxo set\n[{coinbase}]"
            )
        )
    );
    let mut gen = ChainGenerator::new(ChainParams::medium(SEED));
    for _ in 0..BLOCKS {
        gen.next_block();
    }
    let tx = gen.mempool_tx();
    let txid = tx.compute_txid().to_string();
    assert_eq!(
        ok(
            &mut c,
            "blockchain.transaction.broadcast",
            json!([bitcoin::consensus::encode::serialize_hex(&tx)])
        )
        .await,
        json!(txid)
    );
    assert_eq!(node_call(&emu, "getrawmempool", json!([])), json!([txid]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mined_block_and_a_reorg_are_notified() {
    let emu = start_emulator();
    let model = Model::new(node_chain(&emu));
    // The emulator keeps mining with the same deterministic generator: predict its next block.
    let mut gen = ChainGenerator::new(ChainParams::medium(SEED));
    for _ in 0..BLOCKS {
        gen.next_block();
    }
    let next = gen.next_block();
    // A script the next block spends from (it has a history) and one it pays.
    let spent = next.txdata[1..]
        .iter()
        .flat_map(|t| &t.input)
        .find_map(|i| model.output(&i.previous_output))
        .expect("the next block spends a confirmed output")
        .script_pubkey
        .clone();
    let paid = next.txdata[0].output[0].script_pubkey.clone();

    let cert_dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = make_cert(cert_dir.path()) else {
        return;
    };
    let server = FerrumProcess::start(&emu, &cert, &key);
    let mut c = Client::ws(server.ws).await;
    c.hello("1.4").await;
    ok(&mut c, "blockchain.headers.subscribe", json!([])).await;
    for script in [&spent, &paid] {
        assert_eq!(
            ok(
                &mut c,
                "blockchain.scripthash.subscribe",
                json!([script_hash(script)])
            )
            .await,
            model.status(script)
        );
    }

    // A 1.6 session (over TLS) that unsubscribes hears only of the new tip.
    let mut quitter = Client::tls(server.ssl, &cert).await;
    quitter.hello("1.6").await;
    ok(&mut quitter, "blockchain.headers.subscribe", json!([])).await;
    let sh = json!([script_hash(&paid)]);
    ok(&mut quitter, "blockchain.scripthash.subscribe", sh.clone()).await;
    assert_eq!(
        ok(&mut quitter, "blockchain.scripthash.unsubscribe", sh).await,
        true
    );

    emu.mine(1).unwrap();
    let chain = node_chain(&emu);
    assert_eq!(
        chain.last().unwrap(),
        &next,
        "the generator predicted the block"
    );
    let after = Model::new(chain);
    let tip = after.tip();
    let mut expected = vec![
        json!({"jsonrpc": "2.0", "method": "blockchain.headers.subscribe",
               "params": [{"hex": after.header_hex(tip), "height": tip}]}),
    ];
    for script in [&spent, &paid] {
        assert_ne!(after.status(script), model.status(script));
        expected.push(
            json!({"jsonrpc": "2.0", "method": "blockchain.scripthash.subscribe",
                             "params": [script_hash(script), after.status(script)]}),
        );
    }
    let mut got: Vec<Value> = Vec::new();
    for _ in 0..expected.len() {
        got.push(c.recv_json().await);
    }
    let key = |v: &Value| v.to_string();
    got.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(got, expected);
    assert_eq!(
        quitter.recv_json().await["method"],
        "blockchain.headers.subscribe"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), quitter.recv_json())
            .await
            .is_err(),
        "no notification for an unsubscribed script"
    );

    // Queries see the new block too.
    assert_eq!(
        ok(
            &mut c,
            "blockchain.scripthash.get_history",
            json!([script_hash(&paid)])
        )
        .await,
        after.history_json(&paid)
    );

    // A reorganisation replaces the last two blocks with three others: watch scripts the
    // replaced blocks touched.
    let before = after;
    let mut watched: Vec<ScriptBuf> = before
        .scripts_by_reuse()
        .into_iter()
        .filter(|s| before.histories[s].last().unwrap().1 + 1 >= tip)
        .take(30)
        .collect();
    watched.extend([spent.clone(), paid.clone()]);
    watched.sort();
    watched.dedup();
    for script in &watched {
        assert_eq!(
            ok(
                &mut c,
                "blockchain.scripthash.subscribe",
                json!([script_hash(script)])
            )
            .await,
            before.status(script)
        );
    }
    // Like Core, the node puts the replaced blocks' transactions back into its mempool:
    // the expected state is the new chain plus that mempool.
    emu.reorg(2, 3, 99).unwrap();
    let expected = node_state(&emu);
    assert!(
        !expected.mempool_txids().is_empty(),
        "the reorg refills the mempool"
    );
    let after = &expected.chain;
    assert_eq!(after.tip(), tip + 1);
    let changed: Vec<&ScriptBuf> = watched
        .iter()
        .filter(|s| expected.status(s) != before.status(s))
        .collect();
    assert!(!changed.is_empty(), "the reorg changes some watched script");

    // Notifications until the new tip's, then until a quiet second: the last of each kind
    // must be the new state.
    let tip = after.tip();
    let new_tip = json!({"hex": after.header_hex(tip), "height": tip});
    let mut last_header = None;
    let mut last_status: HashMap<String, Value> = HashMap::new();
    loop {
        let wait = if last_header.as_ref() == Some(&new_tip) {
            Duration::from_secs(1)
        } else {
            // Under the client's own 10 s limit, which panics.
            Duration::from_secs(8)
        };
        let Ok(note) = tokio::time::timeout(wait, c.recv_json()).await else {
            break;
        };
        match note["method"].as_str().unwrap() {
            "blockchain.headers.subscribe" => last_header = Some(note["params"][0].clone()),
            "blockchain.scripthash.subscribe" => {
                let sh = note["params"][0].as_str().unwrap().to_string();
                last_status.insert(sh, note["params"][1].clone());
            }
            other => panic!("unexpected notification {other}: {note}"),
        }
    }
    assert_eq!(last_header, Some(new_tip));
    for script in &watched {
        let sh = script_hash(script);
        let got = last_status.get(&sh);
        if changed.contains(&script) {
            assert_eq!(got, Some(&expected.status(script)), "script {sh}");
        } else if let Some(got) = got {
            assert_eq!(got, &expected.status(script), "script {sh}");
        }
        assert_eq!(
            ok(&mut c, "blockchain.scripthash.get_history", json!([sh])).await,
            expected.history(script)
        );
    }
}

/// A chain longer than one chunk: counts are clamped to 2016, in both answer forms, with proofs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_requests_are_clamped_at_2016() {
    let tip = 2030;
    let emu = Emulator::start(EmulatorConfig::generated(SEED, tip)).unwrap();
    let model = Model::new(node_chain(&emu));
    let cert_dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = make_cert(cert_dir.path()) else {
        return;
    };
    let server = FerrumProcess::start(&emu, &cert, &key);
    for version in ["1.4", "1.6"] {
        let mut c = tcp_client(server.tcp).await;
        c.hello(version).await;
        for (start, count, cp) in [
            (0, 5000, 0),
            (10, 2017, 0),
            (3, 2016, tip),
            (14, 10_000, 2029),
        ] {
            let got = ok(
                &mut c,
                "blockchain.block.headers",
                json!([start, count, cp]),
            )
            .await;
            let headers: Vec<String> = (start..start + 2016).map(|h| model.header_hex(h)).collect();
            assert_eq!(got["count"], 2016);
            assert_eq!(got["max"], 2016);
            if version == "1.6" {
                assert_eq!(got["headers"], json!(headers));
            } else {
                assert_eq!(got["hex"], json!(headers.concat()));
            }
            if cp > 0 {
                let last = start + 2015;
                let proof = model.header_proof(last, cp);
                assert_eq!(got["branch"], proof["branch"]);
                assert_eq!(got["root"], proof["root"]);
                let leaf = model.blocks[last as usize].block_hash().to_string();
                assert_eq!(
                    json!(fold_branch(&leaf, &got["branch"], last.into())),
                    got["root"]
                );
            } else {
                assert_eq!(got.get("branch"), None);
            }
        }
        // This node has no fee estimate.
        assert_eq!(ok(&mut c, "blockchain.estimatefee", json!([6])).await, -1);
        // Past the clamp, the proof rule uses the last header actually returned.
        assert_eq!(
            err(&mut c, "blockchain.block.headers", json!([10, 5000, 2000])).await,
            (
                1,
                "require header height 2,025 <= cp_height 2,000 <= chain height 2,030".into()
            )
        );
    }
}

/// Killed mid-life and restarted on the same store after the node moved on, the server
/// catches up and answers exactly as the chain says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_restarts_on_its_store() {
    let emu = start_emulator();
    let cert_dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = make_cert(cert_dir.path()) else {
        return;
    };
    let db = cert_dir.path().join("db");
    let first = FerrumProcess::start_in(&emu, &cert, &key, &db, tempfile::tempdir().unwrap());
    let mut c = session(&first, false).await;
    assert_eq!(
        ok(&mut c, "blockchain.headers.subscribe", json!([])).await["height"],
        BLOCKS
    );
    drop(c);
    drop(first);

    emu.mine(2).unwrap();
    let model = Model::new(node_chain(&emu));
    let server = FerrumProcess::start_in(&emu, &cert, &key, &db, tempfile::tempdir().unwrap());
    let mut c = session(&server, true).await;
    // The wallet ports open only once caught up.
    assert_eq!(
        ok(&mut c, "blockchain.headers.subscribe", json!([])).await,
        json!({"hex": model.header_hex(BLOCKS + 2), "height": BLOCKS + 2})
    );
    check_every_script(&server, &model).await;
}
