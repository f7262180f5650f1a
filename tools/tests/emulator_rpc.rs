//! The emulator's RPC and REST ports alone: HTTP keep-alive, auth, JSON-RPC framing and status
//! codes, batches, block and transaction calls, REST, and sendrawtransaction's checks.

use bitcoin::hashes::Hash;
use bitcoin::{Amount, Block, Transaction};
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use ferrum_tools::emulator::client::{read_cookie, HttpClient};
use ferrum_tools::emulator::{Auth, Emulator, EmulatorConfig};
use serde_json::{json, Value};

const SEED: u64 = 11;
const BLOCKS: u32 = 105;

fn start() -> Emulator {
    Emulator::start(EmulatorConfig::generated(SEED, BLOCKS)).expect("emulator starts")
}

fn client(emu: &Emulator) -> HttpClient {
    HttpClient::connect(emu.rpc_addr())
        .unwrap()
        .with_auth(emu.credentials())
}

/// A generator in the same state as the emulator's, to make transactions it has not seen.
fn twin_generator() -> ChainGenerator {
    let mut gen = ChainGenerator::new(ChainParams::small(SEED));
    for _ in 0..BLOCKS {
        gen.next_block();
    }
    gen
}

fn ok(c: &mut HttpClient, method: &str, params: Value) -> Value {
    c.call(method, params)
        .unwrap()
        .unwrap_or_else(|e| panic!("{method}: {e:?}"))
}

fn err(c: &mut HttpClient, method: &str, params: Value) -> (i32, String) {
    let e = c.call(method, params).unwrap().expect_err("an error");
    (e.code, e.message)
}

#[test]
fn one_connection_serves_many_requests() {
    let emu = start();
    let mut c = client(&emu);
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(BLOCKS));
    for height in 0..=BLOCKS {
        let hash = ok(&mut c, "getblockhash", json!([height]));
        let hex = ok(&mut c, "getblock", json!([hash, 0]));
        let block: Block =
            bitcoin::consensus::encode::deserialize_hex(hex.as_str().unwrap()).unwrap();
        assert_eq!(block.block_hash().to_string(), hash.as_str().unwrap());
        let header = ok(&mut c, "getblockheader", json!([hash, false]));
        assert_eq!(header.as_str().unwrap(), &hex.as_str().unwrap()[..160]);
    }
    assert_eq!(
        ok(&mut c, "getbestblockhash", json!([])),
        json!(emu.best_hash().to_string())
    );
}

#[test]
fn auth_is_required_and_checked() {
    let emu = start();
    let body = br#"{"method":"getblockcount","params":[],"id":1}"#;
    let mut anonymous = HttpClient::connect(emu.rpc_addr()).unwrap();
    let r = anonymous.request("POST", "/", body).unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"jsonrpc\"")
    );
    let mut wrong = HttpClient::connect(emu.rpc_addr())
        .unwrap()
        .with_auth("__cookie__:00");
    assert_eq!(wrong.request("POST", "/", body).unwrap().status, 401);
    // The cookie file holds what the server accepts.
    let cookie = read_cookie(emu.cookie_path().unwrap()).unwrap();
    assert!(cookie.starts_with("__cookie__:") && cookie.len() == 11 + 64);
    let mut right = HttpClient::connect(emu.rpc_addr())
        .unwrap()
        .with_auth(&cookie);
    assert_eq!(right.request("POST", "/", body).unwrap().status, 200);
    // REST needs no auth, as in Core.
    assert_eq!(anonymous.get("/rest/chaininfo.json").unwrap().status, 200);

    let mut config = EmulatorConfig::generated(SEED, 3);
    config.auth = Auth::UserPass("alice".into(), "s3cret".into());
    let emu = Emulator::start(config).unwrap();
    assert!(emu.cookie_path().is_none());
    let mut c = HttpClient::connect(emu.rpc_addr())
        .unwrap()
        .with_auth("alice:s3cret");
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(3));
    let mut bad = HttpClient::connect(emu.rpc_addr())
        .unwrap()
        .with_auth("alice:nope");
    assert_eq!(bad.request("POST", "/", body).unwrap().status, 401);
}

#[test]
fn cookie_is_deleted_on_shutdown() {
    let emu = start();
    let path = emu.cookie_path().unwrap().to_path_buf();
    assert!(path.exists());
    drop(emu);
    assert!(!path.exists());
}

#[test]
fn status_codes_follow_core() {
    let emu = start();
    let mut c = client(&emu);
    let post = |c: &mut HttpClient, body: &str| {
        let r = c.request("POST", "/", body.as_bytes()).unwrap();
        (r.status, r.json().ok())
    };
    let (status, body) = post(
        &mut c,
        r#"{"id":1,"method":"getblockhash","params":[9999]}"#,
    );
    assert_eq!(status, 500);
    assert_eq!(
        body.unwrap(),
        json!({"result": null, "error": {"code": -8, "message": "Block height out of range"}, "id": 1})
    );
    let (status, body) = post(&mut c, r#"{"id":"x","method":"nosuch"}"#);
    assert_eq!(status, 404);
    assert_eq!(body.unwrap()["error"]["code"], -32601);
    let (status, body) = post(&mut c, r#"{"jsonrpc":"2.0","id":1,"method":"nosuch"}"#);
    assert_eq!(status, 200);
    assert_eq!(
        body.unwrap(),
        json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 1})
    );
    let (status, body) = post(
        &mut c,
        r#"{"jsonrpc":"2.0","id":2,"method":"getblockcount"}"#,
    );
    assert_eq!(
        (status, body.unwrap()),
        (200, json!({"jsonrpc": "2.0", "result": BLOCKS, "id": 2}))
    );
    let (status, body) = post(&mut c, "not json");
    assert_eq!(status, 500);
    assert_eq!(
        body.unwrap()["error"],
        json!({"code": -32700, "message": "Parse error"})
    );
    let (status, _) = post(&mut c, r#"{"jsonrpc":"2.0","method":"getblockcount"}"#);
    assert_eq!(status, 204, "a 2.0 notification gets no body");
    let (status, body) = post(&mut c, r#"{"id":1,"params":[]}"#);
    assert_eq!(status, 400);
    assert_eq!(
        body.unwrap()["error"],
        json!({"code": -32600, "message": "Missing method"})
    );
    assert_eq!(c.get("/").unwrap().status, 405);
    // The connection survived every error.
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(BLOCKS));
}

#[test]
fn batches_answer_each_call_with_http_200() {
    let emu = start();
    let mut c = client(&emu);
    let body = json!([
        {"id": 1, "method": "getblockcount"},
        {"id": 2, "method": "nosuch"},
        {"jsonrpc": "2.0", "method": "getblockcount"},
        {"id": 3, "method": "getblockhash", "params": {"height": 0}},
        7
    ]);
    let r = c.request("POST", "/", body.to_string().as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    let replies = r.json().unwrap();
    let replies = replies.as_array().unwrap();
    assert_eq!(replies.len(), 4, "the notification gets no reply");
    assert_eq!(
        replies[0],
        json!({"result": BLOCKS, "error": null, "id": 1})
    );
    assert_eq!(replies[1]["error"]["code"], -32601);
    let genesis = bitcoin::blockdata::constants::genesis_block(bitcoin::Network::Regtest);
    assert_eq!(
        replies[2]["result"],
        json!(genesis.block_hash().to_string())
    );
    assert_eq!(
        replies[3]["error"],
        json!({"code": -32600, "message": "Invalid Request object"})
    );
    let notifications = json!([{"jsonrpc": "2.0", "method": "getblockcount"}]);
    let r = c
        .request("POST", "/", notifications.to_string().as_bytes())
        .unwrap();
    assert_eq!(r.status, 204);
    let r = c.request("POST", "/", b"[]").unwrap();
    assert_eq!((r.status, r.json().unwrap()), (200, json!([])));
}

#[test]
fn parameter_errors_read_like_core() {
    let emu = start();
    let mut c = client(&emu);
    assert_eq!(
        err(&mut c, "getblock", json!(["00"])),
        (
            -8,
            "blockhash must be of length 64 (not 2, for '00')".into()
        )
    );
    let zero = "0".repeat(64);
    assert_eq!(
        err(&mut c, "getblock", json!([zero])),
        (-5, "Block not found".into())
    );
    assert_eq!(
        err(&mut c, "getblockheader", json!([zero])),
        (-5, "Block not found".into())
    );
    assert_eq!(err(&mut c, "getblockhash", json!(["x"])).0, -3);
    assert_eq!(err(&mut c, "getblockhash", json!([])).0, -1);
    assert_eq!(
        err(&mut c, "getblockhash", json!([-1])),
        (-8, "Block height out of range".into())
    );
    assert_eq!(
        err(&mut c, "getrawtransaction", json!([zero])),
        (-5, "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.".into())
    );
    assert_eq!(
        err(&mut c, "getmempoolentry", json!([zero])),
        (-5, "Transaction not in mempool".into())
    );
    assert_eq!(err(&mut c, "estimatesmartfee", json!([0])).0, -8);
    assert_eq!(err(&mut c, "estimatesmartfee", json!([2, "FAST"])).0, -8);
    assert_eq!(err(&mut c, "getrawmempool", json!([true, true])).0, -8);
}

#[test]
fn blocks_and_transactions_render_like_core() {
    let emu = start();
    let mut c = client(&emu);
    let hash = ok(&mut c, "getblockhash", json!([BLOCKS - 1]));
    let v1 = ok(&mut c, "getblock", json!([hash, 1]));
    assert_eq!(v1["height"], json!(BLOCKS - 1));
    assert_eq!(v1["confirmations"], json!(2));
    assert_eq!(v1["nextblockhash"], json!(emu.best_hash().to_string()));
    let v2 = ok(&mut c, "getblock", json!([hash, 2]));
    let txs = v2["tx"].as_array().unwrap();
    assert_eq!(txs.len(), v1["tx"].as_array().unwrap().len());
    assert!(txs[0].get("fee").is_none(), "a coinbase has no fee");
    if let Some(spend) = txs.get(1) {
        assert!(spend["fee"].as_f64().unwrap() > 0.0);
        let txid = spend["txid"].as_str().unwrap();
        let verbose = ok(&mut c, "getrawtransaction", json!([txid, true]));
        assert_eq!(verbose["blockhash"], hash);
        assert_eq!(verbose["confirmations"], json!(2));
        assert_eq!(verbose["hex"], spend["hex"]);
        let with_prevouts = ok(&mut c, "getrawtransaction", json!([txid, 2]));
        assert!(with_prevouts["vin"][0]["prevout"]["value"]
            .as_f64()
            .is_some());
    }
    let genesis_hash = ok(&mut c, "getblockhash", json!([0]));
    let genesis_coinbase = ok(&mut c, "getblock", json!([genesis_hash, 1]))["tx"][0].clone();
    assert_eq!(
        err(&mut c, "getrawtransaction", json!([genesis_coinbase])).0,
        -5
    );
    let info = ok(&mut c, "getblockchaininfo", json!([]));
    assert_eq!(info["blocks"], json!(BLOCKS));
    assert_eq!(info["chain"], "regtest");
}

#[test]
fn rest_serves_blocks_headers_and_hashes() {
    let emu = start();
    let mut c = client(&emu);
    let hash = ok(&mut c, "getblockhash", json!([50]))
        .as_str()
        .unwrap()
        .to_string();
    let hex = ok(&mut c, "getblock", json!([hash, 0]))
        .as_str()
        .unwrap()
        .to_string();
    let bin = c.get(&format!("/rest/block/{hash}.bin")).unwrap();
    assert_eq!(
        (bin.status, bin.header("content-type")),
        (200, Some("application/octet-stream"))
    );
    assert_eq!(
        bitcoin::hex::DisplayHex::to_lower_hex_string(&bin.body[..]),
        hex
    );
    assert_eq!(
        c.get(&format!("/rest/block/{hash}.hex")).unwrap().body,
        format!("{hex}\n").into_bytes()
    );
    let headers = c
        .get(&format!("/rest/headers/{hash}.bin?count=10"))
        .unwrap();
    assert_eq!(headers.body.len(), 800);
    assert_eq!(&headers.body[..80], &bin.body[..80]);
    let tail = c
        .get(&format!("/rest/headers/{}.bin?count=2000", emu.best_hash()))
        .unwrap();
    assert_eq!(tail.body.len(), 80, "headers stop at the tip");
    let by_height = c.get("/rest/blockhashbyheight/50.hex").unwrap();
    assert_eq!(by_height.body, format!("{hash}\n").into_bytes());
    let raw_hash = c.get("/rest/blockhashbyheight/50.bin").unwrap().body;
    assert_eq!(
        bitcoin::BlockHash::from_slice(&raw_hash)
            .unwrap()
            .to_string(),
        hash
    );
    let zero = "0".repeat(64);
    let missing = c.get(&format!("/rest/block/{zero}.bin")).unwrap();
    assert_eq!(
        (missing.status, missing.body),
        (404, format!("{zero} not found\r\n").into_bytes())
    );
    let bad = c.get("/rest/block/xyz.bin").unwrap();
    assert_eq!(
        (bad.status, bad.body),
        (400, b"Invalid hash: xyz\r\n".to_vec())
    );
    assert_eq!(c.get(&format!("/rest/block/{hash}")).unwrap().status, 404);
    assert_eq!(
        c.get(&format!("/rest/headers/{hash}.bin?count=0"))
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        c.get("/rest/blockhashbyheight/9999.bin").unwrap().status,
        404
    );
    assert_eq!(c.get("/rest/blockhashbyheight/-1.bin").unwrap().status, 400);
    assert_eq!(
        c.get("/rest/chaininfo.json").unwrap().json().unwrap()["blocks"],
        json!(BLOCKS)
    );
    assert_eq!(c.get("/rest/nosuch").unwrap().status, 404);
}

/// `tx` paying one satoshi less fee... or more: same inputs, different txid.
fn with_output_change(tx: &Transaction, delta: i64) -> Transaction {
    let mut tx = tx.clone();
    let out = &mut tx.output[0];
    out.value = Amount::from_sat((out.value.to_sat() as i64 + delta) as u64);
    tx
}

#[test]
fn sendrawtransaction_checks_inputs_fees_and_conflicts() {
    let emu = start();
    let mut c = client(&emu);
    let mut gen = twin_generator();
    let tx = gen.mempool_tx();
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let txid = tx.compute_txid().to_string();
    let accepted = ok(&mut c, "testmempoolaccept", json!([[hex]]));
    assert_eq!(accepted[0]["allowed"], json!(true));
    assert_eq!(ok(&mut c, "sendrawtransaction", json!([hex])), json!(txid));
    assert_eq!(
        ok(&mut c, "sendrawtransaction", json!([hex])),
        json!(txid),
        "resending is fine"
    );
    assert_eq!(ok(&mut c, "getrawmempool", json!([])), json!([txid]));
    let entry = ok(&mut c, "getmempoolentry", json!([txid]));
    assert_eq!(entry["ancestorcount"], json!(1));
    assert_eq!(entry["unbroadcast"], json!(true));
    let verbose = ok(&mut c, "getrawtransaction", json!([txid, true]));
    assert!(verbose.get("blockhash").is_none());
    assert_eq!(ok(&mut c, "getmempoolinfo", json!([]))["size"], json!(1));

    // A double spend paying less fee is refused; one paying enough more replaces it.
    let cheaper = with_output_change(&tx, 1);
    let (code, message) = err(
        &mut c,
        "sendrawtransaction",
        json!([bitcoin::consensus::encode::serialize_hex(&cheaper)]),
    );
    assert_eq!(code, -26);
    assert!(message.starts_with(&format!(
        "insufficient fee, rejecting replacement {}",
        cheaper.compute_txid()
    )));
    let rejected = ok(
        &mut c,
        "testmempoolaccept",
        json!([[bitcoin::consensus::encode::serialize_hex(&cheaper)]]),
    );
    assert_eq!(rejected[0]["reject-reason"], "insufficient fee");
    let richer = with_output_change(&tx, -10_000);
    let richer_id = ok(
        &mut c,
        "sendrawtransaction",
        json!([bitcoin::consensus::encode::serialize_hex(&richer)]),
    );
    assert_eq!(ok(&mut c, "getrawmempool", json!([])), json!([richer_id]));

    // Inputs that do not exist.
    let mut orphan = tx.clone();
    orphan.input[0].previous_output.txid = bitcoin::Txid::all_zeros();
    let orphan_hex = bitcoin::consensus::encode::serialize_hex(&orphan);
    assert_eq!(
        err(&mut c, "sendrawtransaction", json!([orphan_hex])),
        (-25, "bad-txns-inputs-missingorspent".into())
    );
    let missing = ok(&mut c, "testmempoolaccept", json!([[orphan_hex]]));
    assert_eq!(missing[0]["reject-reason"], "missing-inputs");
    assert!(missing[0].get("reject-details").is_none());
    // Spending more than the inputs.
    let overspend = with_output_change(&richer, 100_000_000_000);
    let (code, message) = err(
        &mut c,
        "sendrawtransaction",
        json!([bitcoin::consensus::encode::serialize_hex(&overspend)]),
    );
    assert_eq!(code, -26);
    assert!(
        message.starts_with("bad-txns-in-belowout, value in ("),
        "{message}"
    );
    assert_eq!(
        err(&mut c, "sendrawtransaction", json!(["00"])),
        (
            -22,
            "TX decode failed. Make sure the tx has at least one input.".into()
        )
    );
    // A confirmed transaction.
    let mined =
        ok(&mut c, "getblock", json!([emu.best_hash().to_string(), 2]))["tx"][1]["hex"].clone();
    if !mined.is_null() {
        assert_eq!(err(&mut c, "sendrawtransaction", json!([mined])).0, -27);
    }
}

#[test]
fn submitpackage_accepts_parent_and_child() {
    let emu = start();
    let mut c = client(&emu);
    let mut gen = twin_generator();
    let txs: Vec<Transaction> = (0..6).map(|_| gen.mempool_tx()).collect();
    // Pick a parent and a child that spends it (the generator chains some of its transactions).
    let pair = txs.iter().enumerate().find_map(|(i, child)| {
        txs[..i]
            .iter()
            .find(|p| {
                child
                    .input
                    .iter()
                    .all(|inp| inp.previous_output.txid == p.compute_txid())
            })
            .map(|p| (p.clone(), child.clone()))
    });
    let (parent, child) = match pair {
        Some(p) => p,
        None => (txs[0].clone(), txs[1].clone()),
    };
    let hexes: Vec<String> = [&parent, &child]
        .iter()
        .map(|t| bitcoin::consensus::encode::serialize_hex(*t))
        .collect();
    let result = ok(&mut c, "submitpackage", json!([hexes]));
    if result["package_msg"] == "success" {
        let results = result["tx-results"].as_object().unwrap();
        assert_eq!(results.len(), 2);
        assert!(results.contains_key(&child.compute_wtxid().to_string()));
        assert_eq!(ok(&mut c, "getmempoolinfo", json!([]))["size"], json!(2));
    } else {
        // The two are unrelated and one spends an output the other needs: each has a result.
        assert_eq!(result["tx-results"].as_object().unwrap().len(), 2);
    }
}

#[test]
fn named_parameters_work() {
    let emu = start();
    let mut c = client(&emu);
    let hash = ok(&mut c, "getblockhash", json!({"height": 3}));
    let header = ok(
        &mut c,
        "getblockheader",
        json!({"blockhash": hash, "verbose": true}),
    );
    assert_eq!(header["height"], json!(3));
    assert_eq!(
        err(&mut c, "getblockhash", json!({"heigth": 3})),
        (-8, "Unknown named parameter heigth".into())
    );
}
