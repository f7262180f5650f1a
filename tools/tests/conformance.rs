//! Keeps the emulator honest: the same generated chain is loaded into the emulator and submitted
//! to a real regtest Bitcoin Core, then the same scripted calls go to both and the answers are
//! compared: HTTP status, JSON shape (keys and types, recursively) and values wherever they are
//! deterministic, error codes and messages, REST bytes. Covers blocks, transactions, mempool
//! (submission, rejections, RBF, packages), mining and a reorg. Every difference is reported.
//! Needs the cached bitcoind (`tools/bitcoind.sh path` builds it the first time).

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Amount, Block, Transaction};
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use ferrum_tools::emulator::client::{read_cookie, HttpClient, HttpResponse};
use ferrum_tools::emulator::{ChainSource, Emulator, EmulatorConfig};
use ferrum_tools::regtest::RegtestNode;
use serde_json::{json, Value};

const SEED: u64 = 31;
const BLOCKS: u32 = 110;

/// Keys whose values differ between two honest nodes (clock, disk, process); types still count.
const VOLATILE: &[&str] = &[
    "size_on_disk",
    "verificationprogress",
    "warnings",
    "usage",
    "subversion",
];

struct Pair {
    core: HttpClient,
    emu: HttpClient,
    failures: Vec<String>,
    compared: usize,
}

/// Records every difference between Core's value `a` and the emulator's `b`.
fn diff(at: &str, a: &Value, b: &Value, volatile: &[&str], out: &mut Vec<String>) {
    diff_in(at, a, b, volatile, false, out)
}

/// `inside_volatile`: under a volatile key, where only shapes count.
fn diff_in(
    at: &str,
    a: &Value,
    b: &Value,
    volatile: &[&str],
    inside_volatile: bool,
    out: &mut Vec<String>,
) {
    let key = at.rsplit('.').next().unwrap_or(at);
    let ignore_value = inside_volatile || volatile.contains(&key) || VOLATILE.contains(&key);
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().filter(|k| !y.contains_key(*k)) {
                out.push(format!("{at}.{k}: missing in emulator (core: {})", x[k]));
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{at}.{k}: extra in emulator ({})", y[k]));
            }
            for (k, v) in x {
                if let Some(w) = y.get(k) {
                    diff_in(&format!("{at}.{k}"), v, w, volatile, ignore_value, out);
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() && !ignore_value {
                out.push(format!(
                    "{at}: {} items in core, {} in emulator",
                    x.len(),
                    y.len()
                ));
            }
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff_in(&format!("{at}[{i}]"), v, w, volatile, ignore_value, out);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            if !ignore_value && (x - y).abs() > 1e-12 * x.abs().max(1.0) {
                out.push(format!("{at}: core {x}, emulator {y}"));
            }
        }
        (x, y) if std::mem::discriminant(x) == std::mem::discriminant(y) => {
            if !ignore_value && x != y {
                out.push(format!("{at}: core {x}, emulator {y}"));
            }
        }
        (x, y) => out.push(format!("{at}: type differs: core {x}, emulator {y}")),
    }
}

/// How much of an error must match.
#[derive(Clone, Copy, PartialEq)]
enum Errors {
    CodeAndMessage,
    /// Core answers with its help text, which the emulator does not carry.
    CodeOnly,
}

impl Pair {
    /// The same call to both; returns Core's answer.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, (i32, String)> {
        self.call_with(method, params, &[], Errors::CodeAndMessage)
    }

    fn call_with(
        &mut self,
        method: &str,
        params: Value,
        volatile: &[&str],
        errors: Errors,
    ) -> Result<Value, (i32, String)> {
        self.compared += 1;
        let what = format!("{method} {params}");
        let core = self
            .core
            .call(method, params.clone())
            .expect("core answers");
        let emu = self.emu.call(method, params).expect("emulator answers");
        match (&core, &emu) {
            (Ok(a), Ok(b)) => {
                let mut out = Vec::new();
                diff("result", a, b, volatile, &mut out);
                self.failures
                    .extend(out.into_iter().map(|d| format!("{what}: {d}")));
            }
            (Err(a), Err(b)) => {
                let same =
                    a.code == b.code && (errors == Errors::CodeOnly || a.message == b.message);
                if !same {
                    self.failures
                        .push(format!("{what}: core error {a:?}, emulator error {b:?}"));
                }
            }
            _ => self
                .failures
                .push(format!("{what}: core {core:?}, emulator {emu:?}")),
        }
        core.map_err(|e| (e.code, e.message))
    }

    /// The same raw HTTP request to both: status, content type and body must match.
    fn http(&mut self, method: &str, path: &str, body: &str, json_body: bool) {
        self.compared += 1;
        let a = self
            .core
            .request(method, path, body.as_bytes())
            .expect("core answers");
        let b = self
            .emu
            .request(method, path, body.as_bytes())
            .expect("emulator answers");
        let what = format!("{method} {path} {body}");
        self.compare_http(&what, &a, &b, json_body);
    }

    fn compare_http(&mut self, what: &str, a: &HttpResponse, b: &HttpResponse, json_body: bool) {
        if a.status != b.status {
            self.failures.push(format!(
                "{what}: HTTP {} from core, {} from emulator",
                a.status, b.status
            ));
        }
        if a.header("content-type") != b.header("content-type") {
            self.failures.push(format!(
                "{what}: content type {:?} from core, {:?} from emulator",
                a.header("content-type"),
                b.header("content-type")
            ));
        }
        if json_body && a.status == 200 && !a.body.is_empty() {
            match (a.json(), b.json()) {
                (Ok(x), Ok(y)) => {
                    let mut out = Vec::new();
                    diff("body", &x, &y, &[], &mut out);
                    self.failures
                        .extend(out.into_iter().map(|d| format!("{what}: {d}")));
                }
                _ => self
                    .failures
                    .push(format!("{what}: body is not JSON on both")),
            }
        } else if a.body != b.body {
            self.failures.push(format!(
                "{what}: bodies differ: core {:?}, emulator {:?}",
                String::from_utf8_lossy(&a.body[..a.body.len().min(200)]),
                String::from_utf8_lossy(&b.body[..b.body.len().min(200)])
            ));
        }
    }

    fn get(&mut self, path: &str) {
        let json = path.contains(".json");
        self.http("GET", path, "", json);
    }

    /// Both mempools hold the same txids (Core's listing order is its own).
    fn same_mempool(&mut self) {
        let mut a = self.core.call("getrawmempool", json!([])).unwrap().unwrap();
        let mut b = self.emu.call("getrawmempool", json!([])).unwrap().unwrap();
        for list in [&mut a, &mut b] {
            if let Value::Array(items) = list {
                items.sort_by_key(|v| v.to_string());
            }
        }
        if a != b {
            self.failures
                .push(format!("getrawmempool: core {a}, emulator {b}"));
        }
        self.compared += 1;
    }
}

fn hex(tx: &Transaction) -> String {
    serialize_hex(tx)
}

fn with_first_output(tx: &Transaction, sats: u64) -> Transaction {
    let mut tx = tx.clone();
    tx.output[0].value = Amount::from_sat(sats);
    tx
}

#[test]
fn emulator_answers_like_bitcoin_core() {
    let node = RegtestNode::start().expect("start regtest bitcoind");
    let mut gen = ChainGenerator::new(ChainParams::small(SEED));
    let mut blocks: Vec<Block> = vec![gen.genesis()];
    for _ in 0..BLOCKS {
        let block = gen.next_block();
        node.submit_block(&block)
            .expect("core accepts the generated block");
        blocks.push(block);
    }
    let emulator =
        Emulator::start(EmulatorConfig::new(ChainSource::Blocks(blocks.clone()))).unwrap();
    let cookie = read_cookie(node.cookie_path()).unwrap();
    let core_addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.rpc_port()));
    let mut p = Pair {
        core: HttpClient::connect(core_addr).unwrap().with_auth(&cookie),
        emu: HttpClient::connect(emulator.rpc_addr())
            .unwrap()
            .with_auth(emulator.credentials()),
        failures: Vec::new(),
        compared: 0,
    };

    // Chain state and every block, at every verbosity.
    for method in [
        "getblockcount",
        "getbestblockhash",
        "getblockchaininfo",
        "getmempoolinfo",
    ] {
        let _ = p.call(method, json!([]));
    }
    let _ = p.call_with(
        "getnetworkinfo",
        json!([]),
        &["localaddresses"],
        Errors::CodeAndMessage,
    );
    let _ = p.call_with("uptime", json!([]), &["result"], Errors::CodeAndMessage);
    // Core builds its txindex in the background: how far it got is no part of the shape.
    for params in [json!([]), json!(["txindex"]), json!(["nosuchindex"])] {
        let _ = p.call_with(
            "getindexinfo",
            params,
            &["synced", "best_block_height"],
            Errors::CodeAndMessage,
        );
    }
    for height in 0..=BLOCKS {
        let hash = p.call("getblockhash", json!([height])).unwrap();
        for verbosity in [
            json!(0),
            json!(1),
            json!(2),
            json!(3),
            json!(false),
            json!(true),
        ] {
            let _ = p.call("getblock", json!([hash, verbosity]));
        }
        let _ = p.call("getblockheader", json!([hash]));
        let _ = p.call("getblockheader", json!([hash, false]));
    }
    // Confirmed transactions, plain and verbose (with prevouts at verbosity 2).
    for block in blocks.iter().skip(BLOCKS as usize - 6) {
        for tx in &block.txdata {
            let txid = tx.compute_txid().to_string();
            for verbosity in [json!(0), json!(1), json!(2), json!(false), json!(true)] {
                let _ = p.call("getrawtransaction", json!([txid, verbosity]));
            }
            let _ = p.call(
                "getrawtransaction",
                json!([txid, 1, block.block_hash().to_string()]),
            );
        }
    }

    // Bad calls: codes and messages.
    let zero = "0".repeat(64);
    let tip = blocks[BLOCKS as usize].block_hash().to_string();
    for (method, params) in [
        ("getblockhash", json!([BLOCKS + 1])),
        ("getblockhash", json!([-1])),
        ("getblockhash", json!(["1"])),
        ("getblock", json!(["00"])),
        ("getblock", json!(["zz".repeat(32)])),
        ("getblock", json!([zero])),
        ("getblock", json!([1])),
        ("getblockheader", json!([zero])),
        ("getrawtransaction", json!([zero])),
        (
            "getrawtransaction",
            json!([blocks[0].txdata[0].compute_txid().to_string()]),
        ),
        ("getrawtransaction", json!([zero, 1, zero])),
        (
            "getrawtransaction",
            json!([blocks[1].txdata[0].compute_txid().to_string(), 1, tip]),
        ),
        ("getmempoolentry", json!([zero])),
        ("getrawmempool", json!([true, true])),
        ("estimatesmartfee", json!([6])),
        ("estimatesmartfee", json!([6, "economical"])),
        ("estimatesmartfee", json!([0])),
        ("estimatesmartfee", json!([2000])),
        ("estimatesmartfee", json!([2, "fast"])),
        ("sendrawtransaction", json!(["00"])),
        ("sendrawtransaction", json!(["zz"])),
        ("testmempoolaccept", json!([[]])),
        ("nosuchmethod", json!([])),
        ("getblockhash", json!({"height": 2})),
        ("getblockhash", json!({"heigth": 2})),
    ] {
        let _ = p.call(method, params);
    }
    for (method, params) in [
        ("getblockhash", json!([])),
        ("getblockcount", json!([1])),
        ("getblock", json!([])),
    ] {
        let _ = p.call_with(method, params, &[], Errors::CodeOnly);
    }

    // JSON-RPC framing and HTTP status codes.
    for body in [
        r#"{"id":1,"method":"getblockhash","params":[100000]}"#,
        r#"{"id":1,"method":"nosuch"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"nosuch"}"#,
        r#"{"jsonrpc":"2.0","id":"a","method":"getblockcount"}"#,
        r#"{"jsonrpc":"2.0","method":"getblockcount"}"#,
        r#"{"jsonrpc":"3.0","id":1,"method":"getblockcount"}"#,
        r#"{"id":1,"params":[]}"#,
        r#"{"id":1,"method":7}"#,
        r#"{"id":1,"method":"getblockcount","params":7}"#,
        r#"not json"#,
        r#"7"#,
        r#"[]"#,
        r#"[{"id":1,"method":"getblockcount"},{"id":2,"method":"nosuch"},{"jsonrpc":"2.0","method":"getblockcount"},3]"#,
        r#"[{"jsonrpc":"2.0","method":"getblockcount"}]"#,
    ] {
        p.http("POST", "/", body, true);
    }
    p.http("GET", "/", "", false);
    // Wrong credentials, and none at all.
    for auth in [Some("__cookie__:wrong"), None] {
        let connect = |addr| {
            let c = HttpClient::connect(addr).unwrap();
            match auth {
                Some(a) => c.with_auth(a),
                None => c,
            }
        };
        let (mut a, mut b) = (connect(core_addr), connect(emulator.rpc_addr()));
        let body = br#"{"id":1,"method":"getblockcount"}"#;
        let (ra, rb) = (
            a.request("POST", "/", body).unwrap(),
            b.request("POST", "/", body).unwrap(),
        );
        p.compare_http(&format!("auth {auth:?}"), &ra, &rb, false);
        if ra.header("www-authenticate") != rb.header("www-authenticate") {
            p.failures
                .push(format!("auth {auth:?}: WWW-Authenticate differs"));
        }
    }

    // REST: bytes for blocks, headers and hashes; Core's errors.
    let mid = blocks[50].block_hash().to_string();
    for path in [
        format!("/rest/block/{mid}.bin"),
        format!("/rest/block/{mid}.hex"),
        format!("/rest/block/{mid}.json"),
        format!("/rest/block/{tip}.json"),
        format!("/rest/block/notxdetails/{mid}.json"),
        format!("/rest/block/{mid}"),
        format!("/rest/block/{mid}.foo"),
        format!("/rest/block/{zero}.bin"),
        "/rest/block/xyz.bin".to_string(),
        format!("/rest/headers/{mid}.bin?count=20"),
        format!("/rest/headers/{mid}.hex?count=2000"),
        format!("/rest/headers/{mid}.json?count=3"),
        format!("/rest/headers/{mid}.hex"),
        format!("/rest/headers/7/{mid}.hex"),
        format!("/rest/headers/{mid}.hex?count=0"),
        format!("/rest/headers/{mid}.hex?count=2001"),
        format!("/rest/headers/{mid}.hex?count=x"),
        format!("/rest/headers/{zero}.bin?count=1"),
        format!("/rest/headers/{mid}?count=1"),
        "/rest/headers/xyz.bin".to_string(),
        "/rest/blockhashbyheight/50.bin".to_string(),
        "/rest/blockhashbyheight/50.hex".to_string(),
        "/rest/blockhashbyheight/50.json".to_string(),
        "/rest/blockhashbyheight/50".to_string(),
        "/rest/blockhashbyheight/100000.bin".to_string(),
        "/rest/blockhashbyheight/-1.bin".to_string(),
        "/rest/blockhashbyheight/abc.hex".to_string(),
        "/rest/chaininfo.json".to_string(),
        "/rest/chaininfo.bin".to_string(),
        format!("/rest/tx/{}.hex", blocks[104].txdata[0].compute_txid()),
        format!(
            "/rest/tx/{}.json",
            blocks[105].txdata.last().unwrap().compute_txid()
        ),
        format!("/rest/tx/{zero}.hex"),
        "/rest/nosuch".to_string(),
    ] {
        p.get(&path);
    }

    // Mempool: transactions made by a generator in the same state as the chain's.
    let mut twin = ChainGenerator::new(ChainParams::small(SEED));
    for _ in 0..BLOCKS {
        twin.next_block();
    }
    let txs: Vec<Transaction> = (0..5).map(|_| twin.mempool_tx()).collect();
    for tx in &txs[..2] {
        let _ = p.call("testmempoolaccept", json!([[hex(tx)]]));
        let _ = p.call("sendrawtransaction", json!([hex(tx)]));
        let _ = p.call("sendrawtransaction", json!([hex(tx)]));
        let _ = p.call("testmempoolaccept", json!([[hex(tx)]]));
    }
    let _ = p.call("submitpackage", json!([[hex(&txs[2])]]));
    p.same_mempool();
    let entry_volatile = &["time", "usage"];
    let _ = p.call_with(
        "getrawmempool",
        json!([true]),
        entry_volatile,
        Errors::CodeAndMessage,
    );
    // Mining-score order and Core's sequence numbers.
    let _ = p.call("getrawmempool", json!([false, true]));
    let _ = p.call("getrawmempool", json!([]));
    let _ = p.call("getmempoolinfo", json!([]));
    for tx in &txs[..3] {
        let txid = tx.compute_txid().to_string();
        let _ = p.call_with(
            "getmempoolentry",
            json!([txid]),
            entry_volatile,
            Errors::CodeAndMessage,
        );
        let _ = p.call("getrawtransaction", json!([txid]));
        let _ = p.call("getrawtransaction", json!([txid, true]));
        let _ = p.call("getrawtransaction", json!([txid, 2]));
        p.get(&format!("/rest/tx/{txid}.hex"));
    }
    for path in [
        "/rest/mempool/info.json",
        "/rest/mempool/contents.json?verbose=false&mempool_sequence=true",
        "/rest/mempool/contents.json?verbose=true&mempool_sequence=true",
        "/rest/mempool/contents.json?verbose=maybe",
        "/rest/mempool/contents.bin",
        "/rest/mempool/other.json",
    ] {
        p.get(path);
    }

    // Rejections (all caught before any signature check, so the altered copies still tell).
    let spendable: u64 = txs[3].output[0].value.to_sat();
    let conflicting = with_first_output(&txs[0], txs[0].output[0].value.to_sat() + 1);
    let mut orphan = txs[3].clone();
    orphan.input[0].previous_output.txid =
        <bitcoin::Txid as bitcoin::hashes::Hash>::from_byte_array([7; 32]);
    let immature = {
        let mut tx = txs[3].clone();
        tx.input.truncate(1);
        tx.input[0].previous_output =
            bitcoin::OutPoint::new(blocks[BLOCKS as usize].txdata[0].compute_txid(), 0);
        tx
    };
    let below_out = with_first_output(&txs[3], spendable + 21_000_000 * 100_000_000 / 2);
    let confirmed = blocks[105].txdata.last().unwrap().clone();
    let too_large = with_first_output(&txs[3], 21_000_001 * 100_000_000);
    let total_too_large = {
        let mut tx = with_first_output(&txs[3], 15_000_000 * 100_000_000);
        tx.output.push(tx.output[0].clone());
        tx
    };
    let duplicate_input = {
        let mut tx = txs[3].clone();
        tx.input.push(tx.input[0].clone());
        tx
    };
    for tx in [
        &conflicting,
        &orphan,
        &immature,
        &below_out,
        &confirmed,
        &too_large,
        &total_too_large,
        &duplicate_input,
    ] {
        let _ = p.call("testmempoolaccept", json!([[hex(tx)]]));
        let _ = p.call("sendrawtransaction", json!([hex(tx)]));
    }
    p.same_mempool();

    // Mining: the emulator makes the block, Core must accept it; then both agree on it.
    let mined = emulator.mine(1).unwrap()[0];
    let block_hex = p
        .emu
        .call("getblock", json!([mined.to_string(), 0]))
        .unwrap()
        .unwrap();
    let accepted = p
        .core
        .call("submitblock", json!([block_hex]))
        .unwrap()
        .unwrap();
    assert_eq!(accepted, Value::Null, "core accepts the emulator's block");
    let _ = p.call("getbestblockhash", json!([]));
    let _ = p.call("getblock", json!([mined.to_string(), 2]));
    let _ = p.call(
        "getrawtransaction",
        json!([txs[0].compute_txid().to_string(), 1]),
    );
    p.same_mempool();
    let _ = p.call("sendrawtransaction", json!([hex(&txs[1])]));

    // A reorg: the emulator replaces its tip with two own blocks; Core follows the longer branch.
    for tx in &txs[3..5] {
        let _ = p.call("sendrawtransaction", json!([hex(tx)]));
    }
    let branch = emulator.reorg(1, 2, 5).unwrap();
    for hash in &branch {
        let raw = p
            .emu
            .call("getblock", json!([hash.to_string(), 0]))
            .unwrap()
            .unwrap();
        // A branch block not (yet) heavier than the tip is stored as "inconclusive".
        let accepted = p.core.call("submitblock", json!([raw])).unwrap().unwrap();
        assert!(
            accepted.is_null() || accepted == "inconclusive",
            "core takes the branch: {accepted}"
        );
    }
    let _ = p.call("getbestblockhash", json!([]));
    let _ = p.call("getblockheader", json!([mined.to_string()]));
    let _ = p.call("getblock", json!([mined.to_string(), 1]));
    let _ = p.call("getblockchaininfo", json!([]));
    p.same_mempool();
    let _ = p.call(
        "getrawtransaction",
        json!([txs[0].compute_txid().to_string(), 1]),
    );

    eprintln!(
        "conformance: {} comparisons, {} differences",
        p.compared,
        p.failures.len()
    );
    assert!(
        p.failures.is_empty(),
        "the emulator differs from Core:\n{}",
        p.failures.join("\n")
    );
}
