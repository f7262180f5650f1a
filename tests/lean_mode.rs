//! The lean index mode end to end: the real binary indexes one emulated chain in full mode
//! and in lean mode (no txids stored, blocks fetched from the node, through a proxy that can
//! tamper with them); over TCP both give the same answers, and the answers computed from the
//! blocks alone, for histories, unspent outputs, balances, statuses (read whole, and kept
//! subscribed across new blocks), merkle proofs and ids by position: after sync, after new
//! blocks, after a node reorg (which revives outputs that the next block spends again) and
//! after the admin `reorg`. A block whose
//! transactions do not match its merkle root is an error, never a wrong answer.

mod indexer_support;
mod mempool_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bitcoin::{OutPoint, ScriptBuf, Txid};
use ferrum_tools::chaingen::ChainParams;
use ferrum_tools::emulator::{ChainSource, Emulator, EmulatorConfig};
use indexer_support::{Fault, Proxy};
use mempool_support::{assert_answers, node_state, script_hash, Expected, Ferrum, Wallet};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SEED: u64 = 21;
const BLOCKS: u32 = 120;
/// How long a server may take to reflect the node's new state.
const SETTLE: Duration = Duration::from_secs(60);

/// Scripts to compare: the most reused, others spread over the chain, one never seen.
fn sample_scripts(expected: &Expected) -> Vec<ScriptBuf> {
    let by_reuse = expected.chain.scripts_by_reuse();
    let mut scripts: Vec<ScriptBuf> = by_reuse[..4].to_vec();
    scripts.extend(by_reuse.iter().step_by(by_reuse.len() / 12).cloned());
    scripts.push(ScriptBuf::from_bytes(vec![0x51, 0x52, 0x53]));
    scripts
}

/// Transactions to prove, as (txid, height, position): some of every tenth block and of
/// the last blocks, first and last of their blocks among them.
fn sample_txs(expected: &Expected) -> Vec<(Txid, u32, u32)> {
    let chain = &expected.chain;
    let tip = chain.tip();
    let mut picks = Vec::new();
    for height in (1..=tip).step_by(10).chain(tip - 3..=tip) {
        let txs = &chain.blocks[height as usize].txdata;
        for pos in [0, txs.len() / 2, txs.len() - 1] {
            picks.push((txs[pos].compute_txid(), height, pos as u32));
        }
    }
    picks.dedup();
    picks
}

/// Every answer compared, in order: per script its status, history, unspent outputs and
/// balance; per transaction its merkle proof and its id by position (with the proof).
async fn answers(w: &mut Wallet, scripts: &[ScriptBuf], txs: &[(Txid, u32, u32)]) -> Vec<Value> {
    let mut out = Vec::new();
    for script in scripts {
        let sh = json!([script_hash(script)]);
        for method in [
            "blockchain.scripthash.subscribe",
            "blockchain.scripthash.get_history",
            "blockchain.scripthash.listunspent",
            "blockchain.scripthash.get_balance",
        ] {
            out.push(w.call(method, sh.clone()).await);
        }
    }
    for (txid, height, pos) in txs {
        out.push(
            w.call(
                "blockchain.transaction.get_merkle",
                json!([txid.to_string(), height]),
            )
            .await,
        );
        out.push(
            w.call(
                "blockchain.transaction.id_from_pos",
                json!([height, pos, true]),
            )
            .await,
        );
    }
    out
}

/// The answers the chain and mempool call for, as [`answers`] lists them.
fn expected_answers(
    expected: &Expected,
    scripts: &[ScriptBuf],
    txs: &[(Txid, u32, u32)],
) -> Vec<Value> {
    let mut out = Vec::new();
    for script in scripts {
        out.push(expected.status(script));
        out.push(expected.history(script));
        out.push(expected.listunspent(script));
        out.push(expected.balance(script));
    }
    for (txid, height, pos) in txs {
        let branch = expected.chain.tx_branch(*height, *pos);
        out.push(json!({"block_height": height, "merkle": branch, "pos": pos}));
        out.push(json!({"tx_hash": txid.to_string(), "merkle": branch}));
    }
    out
}

/// Polls until the server's answers are the expected ones (it follows the node, then its
/// mempool), then asserts them.
async fn settled(
    server: SocketAddr,
    expected: &Expected,
    scripts: &[ScriptBuf],
    txs: &[(Txid, u32, u32)],
    what: &str,
) -> Vec<Value> {
    let want = expected_answers(expected, scripts, txs);
    let start = Instant::now();
    loop {
        let mut w = Wallet::connect(server, "1.4").await;
        let tip = expected.chain.tip();
        let header = w.request("blockchain.block.header", json!([tip])).await;
        if header == Ok(json!(expected.chain.header_hex(tip))) {
            let got = answers(&mut w, scripts, txs).await;
            if got == want || start.elapsed() > SETTLE {
                let refs: Vec<&ScriptBuf> = scripts.iter().collect();
                assert_answers(&mut w, expected, &refs, what).await;
                assert_eq!(got, want, "{what}");
                return got;
            }
        }
        assert!(
            start.elapsed() < SETTLE,
            "{what}: the server did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the node's chain (not its mempool) has `op` unspent.
fn chain_unspent(expected: &Expected, op: &OutPoint) -> bool {
    let Some(out) = expected.chain.output(op) else {
        return false;
    };
    let listed = expected.chain.listunspent_json(&out.script_pubkey);
    listed
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["tx_hash"] == json!(op.txid.to_string()) && u["tx_pos"] == json!(op.vout))
}

/// How many outputs of confirmed tx `txid` the node's chain has unspent.
fn unspent_outputs(expected: &Expected, txid: &Txid) -> usize {
    let (height, pos) = expected.chain.positions[txid];
    let tx = &expected.chain.blocks[height as usize].txdata[pos as usize];
    (0..tx.output.len() as u32)
        .filter(|&vout| chain_unspent(expected, &OutPoint::new(*txid, vout)))
        .count()
}

/// One local RPC command: its result.
async fn admin(rpc: SocketAddr, method: &str, params: Value) -> Value {
    let stream = tokio::net::TcpStream::connect(rpc).await.unwrap();
    let (read, mut write) = stream.into_split();
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    write
        .write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await.unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    reply
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("{method}: {reply}"))
}

/// Starts the binary (blocking until its wallet port opens) off the async workers.
async fn start(port: u16, emu: &Emulator, extra: &[(&'static str, &'static str)]) -> Ferrum {
    let cookie = emu.cookie_path().unwrap().to_path_buf();
    let extra = extra.to_vec();
    tokio::task::spawn_blocking(move || Ferrum::start(port, &cookie, &extra))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_and_full_servers_answer_alike() {
    let emu = Emulator::start(EmulatorConfig::new(ChainSource::Generated {
        params: ChainParams::medium(SEED),
        blocks: BLOCKS,
    }))
    .unwrap();
    let proxy = Proxy::start(emu.rpc_addr()).await;
    let full = start(emu.rpc_addr().port(), &emu, &[("INDEX_MODE", "full")]).await;
    // No txid cache: every lookup fetches its blocks, so the proxy's faults show at once.
    let lean_env = [("INDEX_MODE", "lean"), ("TXID_CACHE_MB", "0")];
    let lean = start(proxy.port, &emu, &lean_env).await;

    let expected = node_state(&emu);
    let (scripts, txs) = (sample_scripts(&expected), sample_txs(&expected));
    let from_full = settled(full.tcp, &expected, &scripts, &txs, "full").await;
    let from_lean = settled(lean.tcp, &expected, &scripts, &txs, "lean").await;
    assert_eq!(from_full, from_lean);

    // Figures for the report (not asserted; a debug build): the first get_history of a
    // script not asked about before (the history cache then answers), and ids by position
    // (the lean server, with no txid cache, fetches the block each time).
    let fresh = &expected.chain.scripts_by_reuse()[4];
    assert!(!scripts.contains(fresh));
    for (name, server) in [("full", &full), ("lean", &lean)] {
        let mut w = Wallet::connect(server.tcp, "1.4").await;
        let started = Instant::now();
        w.call(
            "blockchain.scripthash.get_history",
            json!([script_hash(fresh)]),
        )
        .await;
        let history = started.elapsed();
        let started = Instant::now();
        for height in 101..=BLOCKS {
            w.call("blockchain.transaction.id_from_pos", json!([height, 0]))
                .await;
        }
        eprintln!(
            "{name}: first get_history of {} entries in {:.1} ms; id_from_pos in {:.2} ms",
            expected.chain.histories[fresh].len(),
            history.as_secs_f64() * 1000.0,
            started.elapsed().as_secs_f64() * 1000.0 / f64::from(BLOCKS - 100)
        );
    }

    // A block whose transactions do not match its header's merkle root is refused.
    let (txid, height, _) = txs[txs.len() / 2];
    let block = &expected.chain.blocks[height as usize];
    let hash = block.block_hash();
    assert!(block.txdata.len() > 1);
    proxy.faults.lock().unwrap().insert(hash, Fault::ReorderTxs);
    let mut w = Wallet::connect(lean.tcp, "1.4").await;
    let refused = json!({"code": 2, "message": format!(
        "daemon error: block {hash} at height {height} from the node: its transactions do not \
         match its merkle root"
    )});
    for (method, params) in [
        (
            "blockchain.transaction.get_merkle",
            json!([txid.to_string(), height]),
        ),
        ("blockchain.transaction.id_from_pos", json!([height, 0])),
    ] {
        assert_eq!(w.request(method, params).await, Err(refused.clone()));
    }
    // A script paid in that block and not asked about yet (no cached history).
    let script = block.txdata[1..]
        .iter()
        .flat_map(|tx| &tx.output)
        .map(|out| out.script_pubkey.clone())
        .find(|s| expected.chain.histories.contains_key(s) && !scripts.contains(s))
        .expect("a fresh script");
    let history = w
        .request(
            "blockchain.scripthash.get_history",
            json!([script_hash(&script)]),
        )
        .await;
    assert_eq!(history.err(), Some(refused));
    proxy.faults.lock().unwrap().clear();
    assert_eq!(
        w.call(
            "blockchain.scripthash.get_history",
            json!([script_hash(&script)])
        )
        .await,
        expected.history(&script)
    );

    // Sessions that stay subscribed keep their scripts' statuses in the status cache: new
    // blocks extend them with their entries only (txids of the new blocks alone).
    let mut watchers = Vec::new();
    for server in [&full, &lean] {
        let mut w = Wallet::connect(server.tcp, "1.4").await;
        w.subscribe(&scripts.iter().collect::<Vec<_>>()).await;
        watchers.push(w);
    }
    let before = node_state(&emu);
    emu.mine(2).unwrap();
    let expected = node_state(&emu);
    let txs = sample_txs(&expected);
    let from_full = settled(full.tcp, &expected, &scripts, &txs, "full after 2 blocks").await;
    let from_lean = settled(lean.tcp, &expected, &scripts, &txs, "lean after 2 blocks").await;
    assert_eq!(from_full, from_lean);
    assert!(
        scripts
            .iter()
            .any(|s| before.status(s) != expected.status(s)),
        "the new blocks touch a watched script"
    );
    for w in &mut watchers {
        let statuses = w.subscribe(&scripts.iter().collect::<Vec<_>>()).await;
        let want: Vec<Value> = scripts.iter().map(|s| expected.status(s)).collect();
        assert_eq!(statuses, want);
    }

    // Outputs that the two blocks about to be replaced spend, each its tx's last unspent one
    // (so a pruning merge may have dropped the tx from the txid index).
    let pre_reorg = node_state(&emu);
    let tip = pre_reorg.chain.tip();
    let last_spent: Vec<OutPoint> = pre_reorg.chain.blocks[tip as usize - 1..]
        .iter()
        .flat_map(|block| block.txdata.iter().skip(1))
        .flat_map(|tx| tx.input.iter().map(|input| input.previous_output))
        .filter(|op| {
            let older = pre_reorg.chain.positions[&op.txid].0 + 1 < tip;
            older && unspent_outputs(&pre_reorg, &op.txid) == 0
        })
        .collect();

    // The node replaces its last two blocks with three others (their transactions go back
    // to its mempool): blocks cached or proven before are not mistaken for the new ones.
    emu.reorg(2, 3, 5).unwrap();
    let expected = node_state(&emu);
    let txs = sample_txs(&expected);
    let from_full = settled(full.tcp, &expected, &scripts, &txs, "full after reorg").await;
    let from_lean = settled(lean.tcp, &expected, &scripts, &txs, "lean after reorg").await;
    assert_eq!(from_full, from_lean);
    for w in &mut watchers {
        let statuses = w.subscribe(&scripts.iter().collect::<Vec<_>>()).await;
        let want: Vec<Value> = scripts.iter().map(|s| expected.status(s)).collect();
        assert_eq!(statuses, want);
    }

    // The rollback revived some of those outputs: both servers count them again, and the
    // node's next block spends them again (their spenders are back in its mempool), which
    // a lean index can apply only if the rollback put their txs back in its txid index.
    let revived: Vec<OutPoint> = last_spent
        .into_iter()
        .filter(|op| chain_unspent(&expected, op))
        .collect();
    assert!(!revived.is_empty(), "the reorg revives no spent output");
    let mut revived_scripts: Vec<ScriptBuf> = revived
        .iter()
        .map(|op| expected.chain.output(op).unwrap().script_pubkey.clone())
        .collect();
    revived_scripts.dedup();
    let what = "revived outputs";
    let from_full = settled(full.tcp, &expected, &revived_scripts, &txs, what).await;
    assert_eq!(
        settled(lean.tcp, &expected, &revived_scripts, &txs, what).await,
        from_full
    );
    emu.mine(1).unwrap();
    let expected = node_state(&emu);
    assert!(
        revived.iter().any(|op| !chain_unspent(&expected, op)),
        "the next block spends a revived output"
    );
    let txs = sample_txs(&expected);
    let what = "revived outputs spent again";
    let from_full = settled(full.tcp, &expected, &revived_scripts, &txs, what).await;
    assert_eq!(
        settled(lean.tcp, &expected, &revived_scripts, &txs, what).await,
        from_full
    );
    let from_full = settled(full.tcp, &expected, &scripts, &txs, "full after a block").await;

    // The lean index rolls back blocks (their spends read from the node's blocks, to put
    // revived txs back in its txid index) and syncs forward again.
    assert_eq!(
        admin(lean.rpc, "reorg", json!([5])).await,
        json!("scheduled a reorg of 5 blocks")
    );
    let again = settled(
        lean.tcp,
        &expected,
        &scripts,
        &txs,
        "lean after admin reorg",
    )
    .await;
    assert_eq!(again, from_full);
    let info = admin(lean.rpc, "getinfo", json!([])).await;
    assert!(
        info["caches"]["txids"]
            .as_str()
            .is_some_and(|line| line.contains(" lookups, ")),
        "{info}"
    );
    full.stop();
    lean.stop();
}

/// `ferrum-db <command> <dir>`, which must succeed: its output.
fn ferrum_db(command: &str, dir: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrum-db"))
        .arg(command)
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{command}: {stdout}");
    stdout
}

#[test]
fn a_lean_index_is_verified_and_kept_in_its_mode() {
    use ferrum::config::IndexMode;
    use ferrum::indexer::{open_store_as, IndexError};

    let emu = indexer_support::emulator(3, 110, 10);
    let chain = indexer_support::node_chain(emu.rpc_addr(), emu.credentials()).unwrap();
    let regtest = indexer_support::regtest();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for (dir, mode) in dirs.iter().zip([IndexMode::Full, IndexMode::Lean]) {
        let mut store = open_store_as(dir.path(), regtest, 10, 100, mode).unwrap();
        for (height, block) in chain.iter().enumerate() {
            let raw = bitcoin::consensus::serialize(block);
            let parsed =
                ferrum::blocks::parse_block(&raw, height as u32, &block.block_hash()).unwrap();
            store.apply_block(&parsed.data).unwrap();
        }
        store.commit().unwrap();
    }
    let [full_dir, lean_dir] = &dirs;

    // Opened in the other mode, each names INDEX_MODE.
    for (dir, built, asked) in [
        (full_dir, IndexMode::Full, IndexMode::Lean),
        (lean_dir, IndexMode::Lean, IndexMode::Full),
    ] {
        match open_store_as(dir.path(), regtest, 10, 100, asked) {
            Err(IndexError::WrongDatabase(m)) => assert_eq!(
                m,
                format!(
                    "DB_DIRECTORY {} holds an index built with INDEX_MODE={built}, not {asked}: \
                     set INDEX_MODE={built}, or delete the directory and resync",
                    dir.path().display()
                )
            ),
            other => panic!("expected WrongDatabase, got {:?}", other.err()),
        }
    }

    // ferrum-db reads either; a lean index's digests are the full one's but for txids.
    let info = ferrum_db("info", lean_dir.path());
    assert!(info.starts_with("height: 110\ntx count: "), "{info}");
    assert!(
        info.contains("index mode: lean (no txids stored)\n"),
        "{info}"
    );
    let (full, lean) = (
        ferrum_db("verify", full_dir.path()),
        ferrum_db("verify", lean_dir.path()),
    );
    let digests = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.contains(" digest: "))
            .map(str::to_string)
            .collect()
    };
    let (full_digests, lean_digests) = (digests(&full), digests(&lean));
    assert!(full_digests[1].starts_with("txids digest: "), "{full}");
    let shared: Vec<&String> = full_digests
        .iter()
        .filter(|l| !l.starts_with("txids ") && !l.starts_with("index "))
        .collect();
    assert_eq!(
        lean_digests[..3].iter().collect::<Vec<_>>(),
        shared,
        "{lean}"
    );
    assert!(lean_digests[3].starts_with("index digest: "), "{lean}");
    assert!(lean.contains("lean index: no txids to digest"), "{lean}");
    assert!(lean.ends_with("ok\n") && !full.contains("lean"), "{lean}");
}

#[test]
fn a_lean_index_needs_an_unpruned_node() {
    use ferrum::config::IndexMode;
    use ferrum::indexer::{open_store_as, Indexer};

    let emu = indexer_support::emulator(4, 20, 10);
    let dir = tempfile::tempdir().unwrap();
    let regtest = indexer_support::regtest();
    indexer_support::runtime().block_on(async {
        let proxy = Proxy::start(emu.rpc_addr()).await;
        *proxy.pruned.lock().unwrap() = Some(0);
        let url = format!("{}@127.0.0.1:{}", emu.credentials(), proxy.port);
        let store = open_store_as(dir.path(), regtest, 10, 100, IndexMode::Lean).unwrap();
        let settings = indexer_support::settings(10);
        let daemon = indexer_support::daemon_for(url);
        let (indexer, _handle) = Indexer::new(store, daemon, regtest, settings).unwrap();
        let e = tokio::time::timeout(indexer_support::WAIT, indexer.run())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "node: INDEX_MODE=lean asks the node for blocks whenever a query needs their \
             txids, but the node is pruned (no blocks below height 0): remove prune= from \
             bitcoin.conf, or use INDEX_MODE=full"
        );
    });
}
