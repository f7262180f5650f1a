//! Mempool end to end: the real `ferrum` binary follows the node emulator's mempool while the
//! test drives it (broadcasts, `emu_addmempool`, `emu_evict`, full-RBF replacements,
//! `emu_mine`, `emu_reorg`), and a TCP wallet checks exact statuses, notifications (one per
//! changed script, carrying its final status), histories with fees, `get_mempool`,
//! `listunspent`, `get_balance` and the fee histogram against answers computed here from the
//! node's chain and mempool.

mod mempool_support;

use std::collections::BTreeMap;
use std::time::Duration;

use bitcoin::{Block, OutPoint, ScriptBuf, Transaction, Txid};
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use ferrum_tools::emulator::{ChainSource, Emulator, EmulatorConfig};
use mempool_support::*;
use serde_json::{json, Value};

const SEED: u64 = 11;
const BLOCKS: u32 = 120;
/// How long to listen for stray notifications after the expected ones: ten mempool polls.
const QUIET: Duration = Duration::from_secs(1);

/// The generated chain's blocks, genesis first.
fn chain_blocks() -> Vec<Block> {
    let mut gen = ChainGenerator::new(ChainParams::small(SEED));
    let mut blocks = vec![gen.genesis()];
    blocks.extend((0..BLOCKS).map(|_| gen.next_block()));
    blocks
}

/// An emulator serving `source` and ferrum on it, polling the mempool every 100 ms.
fn start(source: ChainSource) -> (Emulator, Ferrum) {
    start_polling(source, "100")
}

/// The same, polling the mempool every `interval_ms`.
fn start_polling(source: ChainSource, interval_ms: &str) -> (Emulator, Ferrum) {
    let emu = Emulator::start(EmulatorConfig::new(source)).unwrap();
    let server = Ferrum::start(
        emu.rpc_addr().port(),
        emu.cookie_path().unwrap(),
        &[("DAEMON_POLL_INTERVAL_MEMPOOL", interval_ms)],
    );
    (emu, server)
}

/// A node without a generator: its transactions are only the test's, and it mines blocks of
/// its own holding the whole mempool.
fn start_plain() -> (Emulator, Ferrum) {
    start(ChainSource::Blocks(chain_blocks()))
}

/// After a change on the node: every subscribed script whose status changed is notified once
/// with its new status, nothing else is, and every answer matches. Returns the new state, its
/// statuses and the header notifications seen.
async fn settle(
    w: &mut Wallet,
    emu: &Emulator,
    scripts: &[&ScriptBuf],
    before: &BTreeMap<String, Value>,
    what: &str,
) -> (Expected, BTreeMap<String, Value>, Vec<Value>) {
    let now = node_state(emu);
    let statuses = now.statuses(scripts);
    let notified = w
        .expect_statuses(&changed(before, &statuses), QUIET, what)
        .await;
    assert_answers(w, &now, scripts, what).await;
    (now, statuses, notified.headers)
}

async fn broadcast(w: &mut Wallet, tx: &Transaction) {
    assert_eq!(
        w.call("blockchain.transaction.broadcast", json!([raw_hex(tx)]))
            .await,
        json!(tx.compute_txid().to_string())
    );
}

fn header(e: &Expected) -> Value {
    let tip = e.chain.tip();
    json!({"hex": e.chain.header_hex(tip), "height": tip})
}

/// A payment, its unconfirmed child, eviction of the child, the child again, a replacement of
/// the parent that takes the child with it, and mining the replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mempool_changes_are_notified_with_exact_statuses() {
    let (emu, server) = start_plain();
    let coin = spendable_coins(&chain_blocks())[0].clone();
    // Carol has a confirmed history; Alice and Bob are new.
    let (alice, bob, carol) = (fresh_script(0xa1), fresh_script(0xb0), coin.script.clone());
    let scripts = [&alice, &bob, &carol];
    let mut w = Wallet::connect(server.tcp, "1.4").await;
    let start = node_state(&emu);
    let statuses = start.statuses(&scripts);
    assert_eq!(
        w.subscribe(&scripts).await,
        scripts.map(|s| start.status(s))
    );
    assert_eq!(statuses[&script_hash(&alice)], Value::Null);
    assert_ne!(statuses[&script_hash(&carol)], Value::Null);
    assert_answers(&mut w, &start, &scripts, "start").await;

    // Carol pays Alice, through ferrum.
    let pay = coin.value / 4;
    let fee1 = 1_500;
    let tx1 = spend(
        &[coin.outpoint],
        vec![
            (alice.clone(), pay),
            (carol.clone(), coin.value - pay - fee1),
        ],
    );
    let txid1 = tx1.compute_txid();
    broadcast(&mut w, &tx1).await;
    let (now, statuses, _) = settle(&mut w, &emu, &scripts, &statuses, "payment").await;
    assert_eq!(now.mempool_entries(&alice), vec![(txid1, 0, fee1)]);
    let after_payment = statuses.clone();
    // Carol's confirmed balance keeps the coin her mempool transaction spends.
    assert_eq!(
        now.balance(&carol)["confirmed"],
        start.balance(&carol)["confirmed"]
    );
    assert_eq!(
        now.balance(&carol)["unconfirmed"],
        json!(-((pay + fee1) as i64))
    );
    assert_eq!(
        w.call(
            "blockchain.scripthash.get_balance",
            json!([script_hash(&alice)])
        )
        .await,
        json!({"confirmed": 0, "unconfirmed": pay})
    );

    // Alice passes the unconfirmed output on to Bob: height -1.
    let fee2 = 1_000;
    let tx2 = spend(&[OutPoint::new(txid1, 0)], vec![(bob.clone(), pay - fee2)]);
    let txid2 = tx2.compute_txid();
    broadcast(&mut w, &tx2).await;
    let (now, statuses, _) = settle(&mut w, &emu, &scripts, &statuses, "child").await;
    assert_eq!(now.mempool_entries(&bob), vec![(txid2, -1, fee2)]);
    assert_eq!(
        w.call(
            "blockchain.scripthash.listunspent",
            json!([script_hash(&alice)])
        )
        .await,
        json!([]),
        "an output spent in the mempool is left out"
    );
    assert_eq!(
        now.balance(&alice),
        json!({"confirmed": 0, "unconfirmed": 0})
    );
    let after_child = statuses.clone();

    // Evicting the child brings the earlier statuses back.
    assert_eq!(emu.evict(&txid2), [txid2]);
    let (_, statuses, _) = settle(&mut w, &emu, &scripts, &statuses, "eviction").await;
    assert_eq!(statuses, after_payment);

    broadcast(&mut w, &tx2).await;
    let (_, statuses, _) = settle(&mut w, &emu, &scripts, &statuses, "child again").await;
    assert_eq!(statuses, after_child);

    // Carol replaces her payment (paying Bob instead) with enough fee to evict both.
    let fee3 = fee1 + fee2 + 1_000;
    let tx3 = spend(
        &[coin.outpoint],
        vec![(bob.clone(), pay), (carol.clone(), coin.value - pay - fee3)],
    );
    let txid3 = tx3.compute_txid();
    node_call(&emu, "sendrawtransaction", json!([raw_hex(&tx3)]));
    let (now, statuses, _) = settle(&mut w, &emu, &scripts, &statuses, "replacement").await;
    assert_eq!(now.mempool_txids(), vec![txid3]);
    assert_eq!(statuses[&script_hash(&alice)], Value::Null);
    assert_eq!(now.mempool_entries(&bob), vec![(txid3, 0, fee3)]);

    // Mining it: one notification per script, with the confirmed status, and the new header.
    assert_eq!(
        w.call("blockchain.headers.subscribe", json!([])).await,
        header(&now)
    );
    emu.mine(1).unwrap();
    let (now, statuses, headers) = settle(&mut w, &emu, &scripts, &statuses, "mined").await;
    assert_eq!(headers, vec![header(&now)]);
    let height = i64::from(now.chain.tip());
    assert_eq!(statuses[&script_hash(&bob)], status_of(&[(txid3, height)]));
    assert!(now.mempool_txids().is_empty());
    server.stop();
}

/// A confirmed payment with a child in the mempool (height 0), then a reorg that puts the
/// payment back in the mempool (the child goes to height -1), then both mined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_returns_transactions_to_the_mempool() {
    let (emu, server) = start_plain();
    let coin = spendable_coins(&chain_blocks())[1].clone();
    let (alice, bob, carol) = (fresh_script(0xa2), fresh_script(0xb2), coin.script.clone());
    let scripts = [&alice, &bob, &carol];
    let mut w = Wallet::connect(server.tcp, "1.6").await;
    let mut statuses = node_state(&emu).statuses(&scripts);
    w.subscribe(&scripts).await;
    w.call("blockchain.headers.subscribe", json!([])).await;

    let pay = coin.value / 3;
    let tx_a = spend(
        &[coin.outpoint],
        vec![
            (alice.clone(), pay),
            (carol.clone(), coin.value - pay - 2_000),
        ],
    );
    let (txid_a, height_a) = (tx_a.compute_txid(), i64::from(BLOCKS) + 1);
    broadcast(&mut w, &tx_a).await;
    (_, statuses, _) = settle(&mut w, &emu, &scripts, &statuses, "payment").await;
    emu.mine(1).unwrap();
    let (_, mined, headers) = settle(&mut w, &emu, &scripts, &statuses, "mined").await;
    assert_eq!(headers.len(), 1);
    assert_eq!(
        mined[&script_hash(&alice)],
        status_of(&[(txid_a, height_a)])
    );

    let tx_b = spend(&[OutPoint::new(txid_a, 0)], vec![(bob.clone(), pay - 700)]);
    let txid_b = tx_b.compute_txid();
    broadcast(&mut w, &tx_b).await;
    let (now, statuses, _) = settle(&mut w, &emu, &scripts, &mined, "child").await;
    assert_eq!(now.mempool_entries(&bob), vec![(txid_b, 0, 700)]);

    // Two blocks of the node's own replace the payment's: it returns to the mempool and its
    // child now has an unconfirmed input. Only the new tip's header is announced.
    emu.reorg(1, 2, 5).unwrap();
    let (now, statuses, headers) = settle(&mut w, &emu, &scripts, &statuses, "reorg").await;
    assert_eq!(now.chain.tip(), BLOCKS + 2);
    assert_eq!(headers, vec![header(&now)]);
    assert_eq!(
        now.mempool_entries(&alice),
        vec![(txid_a, 0, 2_000), (txid_b, -1, 700)]
    );
    assert_eq!(
        statuses[&script_hash(&alice)],
        status_of(&[(txid_a, 0), (txid_b, -1)])
    );
    assert_eq!(
        w.call(
            "blockchain.scripthash.get_balance",
            json!([script_hash(&bob)])
        )
        .await,
        json!({"confirmed": 0, "unconfirmed": pay - 700})
    );

    // Both mined in one block.
    emu.mine(1).unwrap();
    let (now, statuses, headers) = settle(&mut w, &emu, &scripts, &statuses, "mined both").await;
    assert_eq!(headers, vec![header(&now)]);
    let height = i64::from(now.chain.tip());
    let mut both = [(txid_a, height), (txid_b, height)];
    // Within a block, chain order: the parent first.
    both.sort_by_key(|(t, _)| *t != txid_a);
    assert_eq!(statuses[&script_hash(&alice)], status_of(&both));
    server.stop();
}

/// A transaction broadcast through the server is read from the node's mempool at once: with
/// the mempool polled only hourly, its payee is still notified (within the liveness bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_through_the_server_is_read_at_once() {
    let (emu, server) = start_polling(ChainSource::Blocks(chain_blocks()), "3600000");
    let coin = spendable_coins(&chain_blocks())[3].clone();
    let bob = fresh_script(0xb4);
    let mut w = Wallet::connect(server.tcp, "1.4").await;
    w.subscribe(&[&bob]).await;
    let before = node_state(&emu).statuses(&[&bob]);
    let tx = spend(&[coin.outpoint], vec![(bob.clone(), coin.value - 10_000)]);
    broadcast(&mut w, &tx).await;
    settle(&mut w, &emu, &[&bob], &before, "broadcast payment").await;
    server.stop();
}

/// After `unsubscribe`, a script's changes are no longer sent; its neighbours' still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_scripts_are_not_notified() {
    let (emu, server) = start_plain();
    let coin = spendable_coins(&chain_blocks())[2].clone();
    let (alice, bob) = (fresh_script(0xa3), fresh_script(0xb3));
    // `unsubscribe` came with protocol 1.4.2.
    let mut w = Wallet::connect(server.tcp, "1.4.2").await;
    w.subscribe(&[&alice, &bob]).await;
    let unsubscribe = |s: &ScriptBuf| json!([script_hash(s)]);
    assert_eq!(
        w.call("blockchain.scripthash.unsubscribe", unsubscribe(&alice))
            .await,
        json!(true)
    );
    let before = node_state(&emu).statuses(&[&bob]);
    let tx = spend(
        &[coin.outpoint],
        vec![(alice.clone(), 50_000), (bob.clone(), coin.value - 60_000)],
    );
    broadcast(&mut w, &tx).await;
    // Bob alone is notified (a notification for Alice fails the check).
    settle(&mut w, &emu, &[&bob], &before, "payment to both").await;
    assert_eq!(
        w.call("blockchain.scripthash.unsubscribe", unsubscribe(&alice))
            .await,
        json!(false)
    );
    assert_eq!(
        w.call("blockchain.scripthash.unsubscribe", unsubscribe(&bob))
            .await,
        json!(true)
    );
    emu.mine(1).unwrap();
    // Once the server shows the payment confirmed, nobody was told.
    let now = node_state(&emu);
    let deadline = std::time::Instant::now() + WAIT;
    let bob_hash = json!([script_hash(&bob)]);
    while w
        .call("blockchain.scripthash.get_history", bob_hash.clone())
        .await
        != now.history(&bob)
    {
        assert!(std::time::Instant::now() < deadline, "the block never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.assert_quiet(QUIET, "no subscriptions left").await;
    server.stop();
}

/// A transaction of exactly `vsize` vbytes paying `fee` from `coin`: one input, one output
/// back to the coin's script, then zero-value outputs padding it to size (each costs 8 value
/// bytes, 3 length bytes and a script of 253 to 9,000 bytes; no witness, so bytes are vbytes).
fn sized_tx(coin: &Coin, vsize: u64, fee: u64) -> Transaction {
    let mut outputs = vec![(coin.script.clone(), coin.value - fee)];
    let pad = vsize - spend(&[coin.outpoint], outputs.clone()).vsize() as u64;
    let n = pad.div_ceil(9_011);
    let script_bytes = pad - 11 * n;
    for i in 0..n {
        let len = script_bytes / n + u64::from(i < script_bytes % n);
        assert!(
            (253..=9_000).contains(&len),
            "padding script of {len} bytes"
        );
        outputs.push((ScriptBuf::from_bytes(vec![0x51; len as usize]), 0));
    }
    let tx = spend(&[coin.outpoint], outputs);
    assert_eq!(tx.vsize() as u64, vsize);
    tx
}

/// `mempool.get_fee_histogram` of a mempool made to measure, against a histogram worked out
/// by hand with ElectrumX's algorithm (rates rounded down to 0.1 sat/vB, bins from 30,000 vB
/// growing by 1.1, a big lump closing the bin before it, the last partial bin left out).
/// The mempool is in place before the server starts, as the histogram is rebuilt only every
/// couple of minutes (ElectrumX's `MEMPOOL_HISTOGRAM_REFRESH_SECS`) and on the first refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fee_histogram_follows_electrumx() {
    // (vsize, fee): rates 50, 20.07 (shown as 20.0), 20, 15, 10 (a 70,000 vB lump), 5.5, 2, 1.
    let mempool: [(u64, u64); 8] = [
        (20_000, 1_000_000),
        (15_000, 301_050),
        (12_000, 240_000),
        (4_000, 60_000),
        (70_000, 700_000),
        (5_000, 27_500),
        (36_000, 72_000),
        (1_000, 1_000),
    ];
    // Worked by hand: 50.0 (20,000) + 20.0 (27,000) = 47,000 > 30,000: bin (20.0, 47,000),
    // size 33,000. 15.0 (4,000) waits; 10.0's 70,000 > 2 x 33,000 closes (15.0, 4,000), size
    // 36,300, then is a bin of its own (10.0, 70,000), size 39,930. 5.5 (5,000) + 2.0
    // (36,000) = 41,000: bin (2.0, 41,000). 1.0 (1,000) is left over.
    let expected = vec![(20.0, 47_000), (15.0, 4_000), (10.0, 70_000), (2.0, 41_000)];
    let pairs: Vec<(u64, u64)> = mempool.iter().map(|&(v, f)| (f, v)).collect();
    assert_eq!(compact_histogram(&pairs, 30_000.0), expected);

    let blocks = chain_blocks();
    let coins = spendable_coins(&blocks);
    let emu = Emulator::start(EmulatorConfig::new(ChainSource::Blocks(blocks))).unwrap();
    for (coin, &(vsize, fee)) in coins.iter().zip(&mempool) {
        assert!(coin.value > fee, "coin {} too small", coin.value);
        let tx = sized_tx(coin, vsize, fee);
        node_call(&emu, "sendrawtransaction", json!([raw_hex(&tx)]));
    }
    // The node agrees on every size and fee.
    let verbose = node_call(&emu, "getrawmempool", json!([true]));
    let mut node_pairs: Vec<(u64, u64)> = verbose
        .as_object()
        .unwrap()
        .values()
        .map(|e| {
            let fee = (e["fees"]["base"].as_f64().unwrap() * 1e8).round() as u64;
            (fee, e["vsize"].as_u64().unwrap())
        })
        .collect();
    node_pairs.sort();
    let mut sorted = pairs.clone();
    sorted.sort();
    assert_eq!(node_pairs, sorted);

    let server = Ferrum::start(
        emu.rpc_addr().port(),
        emu.cookie_path().unwrap(),
        &[("DAEMON_POLL_INTERVAL_MEMPOOL", "100")],
    );
    let mut w = Wallet::connect(server.tcp, "1.6").await;
    // Until the first mempool refresh the histogram is empty: wait (bounded) for it.
    let want: Value = expected.iter().map(|(r, v)| json!([r, v])).collect();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = w.call("mempool.get_fee_histogram", json!([])).await;
        if got == want {
            break;
        }
        assert!(
            got == json!([]) && std::time::Instant::now() < deadline,
            "fee histogram {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
}

/// The generator's own mempool (`emu_addmempool`: chains of unconfirmed spends, many inputs
/// and outputs, reused scripts), then mining it and a reorg, checked script by script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_mempool_is_mirrored_exactly() {
    const ADDED: u32 = 80;
    let params = ChainParams::small(SEED);
    // A twin of the emulator's generator predicts the transactions it will add.
    let mut twin = ChainGenerator::new(params.clone());
    let mut blocks = vec![twin.genesis()];
    blocks.extend((0..BLOCKS).map(|_| twin.next_block()));
    let predicted: Vec<Transaction> = (0..ADDED).map(|_| twin.mempool_tx()).collect();
    let scripts: Vec<ScriptBuf> = Expected::new(blocks, predicted.clone())
        .mempool_scripts()
        .into_iter()
        .take(200)
        .collect();
    let scripts: Vec<&ScriptBuf> = scripts.iter().collect();

    let (emu, server) = start(ChainSource::Generated {
        params,
        blocks: BLOCKS,
    });
    let mut w = Wallet::connect(server.tcp, "1.5").await;
    let start = node_state(&emu);
    let before = start.statuses(&scripts);
    assert_eq!(
        w.subscribe(&scripts).await,
        scripts.iter().map(|s| start.status(s)).collect::<Vec<_>>()
    );
    let added = emu.add_mempool_txs(ADDED).unwrap();
    let want: Vec<Txid> = predicted.iter().map(|t| t.compute_txid()).collect();
    assert_eq!(added, want, "the twin predicted the mempool");
    let (now, statuses, _) = settle(&mut w, &emu, &scripts, &before, "added").await;
    assert!(
        scripts
            .iter()
            .any(|s| now.mempool_entries(s).iter().any(|e| e.1 == -1)),
        "some transaction has an unconfirmed input"
    );
    assert_eq!(changed(&before, &statuses).len(), scripts.len());

    emu.mine(1).unwrap();
    let (_, statuses, _) = settle(&mut w, &emu, &scripts, &statuses, "mined").await;
    emu.add_mempool_txs(20).unwrap();
    let (_, statuses, _) = settle(&mut w, &emu, &scripts, &statuses, "more added").await;
    emu.reorg(2, 3, 7).unwrap();
    settle(&mut w, &emu, &scripts, &statuses, "reorg").await;
    server.stop();
}
