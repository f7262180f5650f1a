//! The emulator's control port: mining, mempool fill and eviction, reorgs, warm-up, going
//! offline and back, held-back blocks and chains without a generator.

use std::net::TcpStream;
use std::time::Duration;

use bitcoin::Block;
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use ferrum_tools::emulator::client::HttpClient;
use ferrum_tools::emulator::{ChainSource, Emulator, EmulatorConfig};
use serde_json::{json, Value};

fn start(blocks: u32) -> Emulator {
    Emulator::start(EmulatorConfig::generated(5, blocks)).expect("emulator starts")
}

fn rpc(emu: &Emulator) -> HttpClient {
    HttpClient::connect(emu.rpc_addr())
        .unwrap()
        .with_auth(emu.credentials())
}

fn control(emu: &Emulator) -> HttpClient {
    HttpClient::connect(emu.control_addr()).unwrap()
}

fn ok(c: &mut HttpClient, method: &str, params: Value) -> Value {
    c.call(method, params)
        .unwrap()
        .unwrap_or_else(|e| panic!("{method}: {e:?}"))
}

#[test]
fn mining_confirms_the_mempool() {
    let emu = start(102);
    let (mut c, mut ctl) = (rpc(&emu), control(&emu));
    let added = ok(&mut ctl, "emu_addmempool", json!([3]));
    assert_eq!(added.as_array().unwrap().len(), 3);
    // Listed by mining score (fee rate), not arrival: compare as sets.
    let sorted = |v: Value| {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        sorted(ok(&mut c, "getrawmempool", json!([]))),
        sorted(added.clone())
    );
    let hashes = ok(&mut ctl, "emu_mine", json!([2]));
    assert_eq!(hashes.as_array().unwrap().len(), 2);
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(104));
    assert_eq!(ok(&mut c, "getbestblockhash", json!([])), hashes[1]);
    assert_eq!(ok(&mut c, "getrawmempool", json!([])), json!([]));
    let tx = ok(&mut c, "getrawtransaction", json!([added[0], true]));
    assert_eq!(tx["blockhash"], hashes[0]);
    assert_eq!(tx["confirmations"], json!(2));
}

#[test]
fn submitted_transactions_are_mined_too() {
    let emu = start(102);
    let mut c = rpc(&emu);
    let mut twin = ChainGenerator::new(ChainParams::small(5));
    for _ in 0..102 {
        twin.next_block();
    }
    let tx = twin.mempool_tx();
    let txid = emu.submit(tx).unwrap();
    let hash = emu.mine(1).unwrap()[0];
    let block = ok(&mut c, "getblock", json!([hash.to_string(), 1]));
    assert!(block["tx"]
        .as_array()
        .unwrap()
        .contains(&json!(txid.to_string())));
    assert_eq!(ok(&mut c, "getrawmempool", json!([])), json!([]));
}

#[test]
fn eviction_removes_descendants() {
    let emu = start(102);
    let (mut c, mut ctl) = (rpc(&emu), control(&emu));
    let added = ok(&mut ctl, "emu_addmempool", json!([6]));
    let first = added[0].clone();
    let removed = ok(&mut ctl, "emu_evict", json!([first]));
    assert!(removed.as_array().unwrap().contains(&first));
    let left = ok(&mut c, "getrawmempool", json!([]));
    assert_eq!(
        left.as_array().unwrap().len(),
        6 - removed.as_array().unwrap().len()
    );
    assert_eq!(
        c.call("getmempoolentry", json!([first]))
            .unwrap()
            .unwrap_err()
            .code,
        -5
    );
    // The generator forgot it too: mining confirms only what is left.
    let hash = ok(&mut ctl, "emu_mine", json!([]))[0].clone();
    let mined = ok(&mut c, "getblock", json!([hash, 1]))["tx"].clone();
    assert!(!mined.as_array().unwrap().contains(&first));
    assert!(left
        .as_array()
        .unwrap()
        .iter()
        .all(|t| mined.as_array().unwrap().contains(t)));
}

#[test]
fn reorg_replaces_the_tip_blocks() {
    let emu = start(30);
    let (mut c, mut ctl) = (rpc(&emu), control(&emu));
    let old_tip = ok(&mut c, "getblockhash", json!([30]));
    let old_parent = ok(&mut c, "getblockhash", json!([29]));
    let kept = ok(&mut c, "getblockhash", json!([27]));
    let new = ok(&mut ctl, "emu_reorg", json!([3]));
    assert_eq!(
        new.as_array().unwrap().len(),
        4,
        "the new branch is one block longer"
    );
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(31));
    assert_eq!(ok(&mut c, "getblockhash", json!([27])), kept);
    assert_ne!(ok(&mut c, "getblockhash", json!([29])), old_parent);
    assert_eq!(ok(&mut c, "getblockhash", json!([28])), new[0]);
    let stale = ok(&mut c, "getblockheader", json!([old_tip]));
    assert_eq!(stale["confirmations"], json!(-1));
    assert!(stale.get("nextblockhash").is_none());
    let first_new = ok(&mut c, "getblockheader", json!([new[0]]));
    assert_eq!(first_new["previousblockhash"], kept);
    // The stale block is still served, as Core keeps it.
    let bin = c
        .get(&format!("/rest/block/{}.bin", old_tip.as_str().unwrap()))
        .unwrap();
    assert_eq!(bin.status, 200);
    // A second reorg with another salt makes yet another branch; too deep is an error.
    let again = ok(&mut ctl, "emu_reorg", json!([2, 2, 9]));
    assert_ne!(again[0], new[1]);
    let e = ctl.call("emu_reorg", json!([50])).unwrap().unwrap_err();
    assert_eq!(e.code, -1);
}

#[test]
fn warmup_answers_minus_28_until_told_or_timed_out() {
    let emu = start(5);
    let (mut c, mut ctl) = (rpc(&emu), control(&emu));
    ok(&mut ctl, "emu_warmup", json!(["Verifying blocks…"]));
    let e = c.call("getblockcount", json!([])).unwrap().unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (-28, "Verifying blocks…"));
    let r = c
        .request("POST", "/", br#"{"id":1,"method":"getblockcount"}"#)
        .unwrap();
    assert_eq!(r.status, 500);
    let rest = c.get("/rest/chaininfo.json").unwrap();
    assert_eq!(
        (rest.status, rest.body),
        (
            503,
            "Service temporarily unavailable: Verifying blocks…\r\n".into()
        )
    );
    ok(&mut ctl, "emu_warmup", json!([false]));
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(5));
    ok(&mut ctl, "emu_warmup", json!([null, 0.3]));
    let e = c.call("getblockcount", json!([])).unwrap().unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (-28, "Loading block index…"));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(5));
}

#[test]
fn offline_refuses_connections_until_online() {
    let emu = start(5);
    let (mut c, mut ctl) = (rpc(&emu), control(&emu));
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(5));
    ok(&mut ctl, "emu_offline", json!([]));
    assert!(
        c.call("getblockcount", json!([])).is_err(),
        "open connections are closed"
    );
    assert!(
        TcpStream::connect(emu.rpc_addr()).is_err(),
        "new connections are refused"
    );
    assert_eq!(ok(&mut ctl, "emu_info", json!([]))["online"], json!(false));
    ok(&mut ctl, "emu_online", json!([]));
    let mut again = rpc(&emu);
    assert_eq!(ok(&mut again, "getblockcount", json!([])), json!(5));
}

#[test]
fn fee_estimate_can_be_set() {
    let emu = start(5);
    let (mut c, mut ctl) = (rpc(&emu), control(&emu));
    let none = ok(&mut c, "estimatesmartfee", json!([6]));
    assert_eq!(
        none,
        json!({"errors": ["Insufficient data or no feerate found"], "blocks": 0})
    );
    ok(&mut ctl, "emu_setfeerate", json!([0.0002]));
    let some = ok(&mut c, "estimatesmartfee", json!([6, "conservative"]));
    assert_eq!(some, json!({"feerate": 0.0002, "blocks": 6}));
}

fn generated_blocks(count: u32) -> Vec<Block> {
    let mut gen = ChainGenerator::new(ChainParams::small(8));
    let mut blocks = vec![gen.genesis()];
    blocks.extend((0..count).map(|_| gen.next_block()));
    blocks
}

#[test]
fn held_back_blocks_come_first_then_own_blocks() {
    let blocks = generated_blocks(20);
    let mut config = EmulatorConfig::new(ChainSource::Blocks(blocks.clone()));
    config.initial_height = Some(10);
    let emu = Emulator::start(config).unwrap();
    assert_eq!(emu.height(), 10);
    let mined = emu.mine(12).unwrap();
    for (i, hash) in mined.iter().take(10).enumerate() {
        assert_eq!(*hash, blocks[11 + i].block_hash());
    }
    assert_eq!(emu.height(), 22);
    // Without a generator, mining and reorgs use the emulator's own blocks.
    let mut c = rpc(&emu);
    let own = ok(&mut c, "getblock", json!([mined[11].to_string(), 2]));
    assert_eq!(own["height"], json!(22));
    assert_eq!(own["tx"][0]["vout"][0]["scriptPubKey"]["hex"], "51");
    let branch = emu.reorg(2, 3, 1).unwrap();
    assert_eq!(emu.height(), 23);
    assert_eq!(emu.best_hash(), branch[2]);
}

#[test]
fn chain_files_load_streaming() {
    let blocks = generated_blocks(15);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.frm");
    let mut writer = ferrum_tools::chainfile::ChainWriter::create(&path).unwrap();
    for b in &blocks {
        writer.write_block(b).unwrap();
    }
    writer.finish().unwrap();
    let emu = Emulator::start(EmulatorConfig::new(ChainSource::File(path))).unwrap();
    assert_eq!(emu.height(), 15);
    assert_eq!(emu.best_hash(), blocks[15].block_hash());
}

#[tokio::test]
async fn works_from_async_tests() {
    let emu = start(3);
    let mut c = rpc(&emu);
    assert_eq!(ok(&mut c, "getblockcount", json!([])), json!(3));
    emu.set_online(false).unwrap();
    assert!(TcpStream::connect(emu.rpc_addr()).is_err());
    emu.set_online(true).unwrap();
    assert_eq!(ok(&mut rpc(&emu), "getblockcount", json!([])), json!(3));
    drop(emu);
}

#[test]
fn curl_style_expect_continue_is_answered() {
    use std::io::{BufRead, BufReader, Write};
    let emu = start(3);
    let mut stream = TcpStream::connect(emu.rpc_addr()).unwrap();
    let body = format!(
        r#"{{"id":1,"method":"getblockcount","params":[],"pad":"{}"}}"#,
        "x".repeat(2000)
    );
    let auth = ferrum_tools::emulator::client::basic_auth(emu.credentials());
    let head = format!(
        "POST / HTTP/1.1\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    reader.read_line(&mut line).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
}
