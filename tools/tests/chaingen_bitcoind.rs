//! A generated chain and its mempool transactions, fed to a real regtest Bitcoin Core: every
//! block must be accepted by `submitblock` and every mempool tx by `sendrawtransaction`.
//! Needs the cached bitcoind (`tools/bitcoind.sh path` builds it the first time).

use std::collections::{HashMap, HashSet};

use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{OutPoint, ScriptBuf};
use ferrum_tools::chaingen::{ChainGenerator, ChainParams};
use ferrum_tools::regtest::RegtestNode;
use serde_json::{json, Value};

fn kind(script: &ScriptBuf) -> &'static str {
    if script.is_p2pk() {
        "p2pk"
    } else if script.is_p2pkh() {
        "p2pkh"
    } else if script.is_p2sh() {
        "p2sh-p2wpkh"
    } else if script.is_p2wpkh() {
        "p2wpkh"
    } else if script.is_p2wsh() {
        "p2wsh"
    } else if script.is_p2tr() {
        "p2tr"
    } else if script.is_multisig() {
        "bare-multisig"
    } else if script.is_op_return() {
        "op_return"
    } else {
        "other"
    }
}

fn best_hash(node: &RegtestNode) -> String {
    node.rpc("getbestblockhash", json!([]))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn bitcoind_accepts_generated_blocks_and_mempool_txs() {
    let node = RegtestNode::start().expect("start regtest bitcoind");
    let params = ChainParams {
        txs_per_block: (5, 25),
        max_inputs: 10,
        ..ChainParams::small(2024)
    };
    let mut generator = ChainGenerator::new(params);
    assert_eq!(
        node.rpc("getblockhash", json!([0])).unwrap(),
        json!(generator.genesis().block_hash().to_string())
    );

    // Confirmed chain: every block accepted whole.
    let mut scripts: HashMap<OutPoint, ScriptBuf> = HashMap::new();
    let mut created = HashSet::new();
    let mut spent = HashSet::new();
    let mut max_inputs = 0;
    let mut max_outputs = 0;
    for _ in 0..320 {
        let block = generator.next_block();
        for tx in &block.txdata {
            let txid = tx.compute_txid();
            max_inputs = max_inputs.max(tx.input.len());
            max_outputs = max_outputs.max(tx.output.len());
            for input in tx.input.iter().filter(|_| !tx.is_coinbase()) {
                spent.insert(kind(
                    &scripts
                        .remove(&input.previous_output)
                        .expect("known output"),
                ));
            }
            for (vout, output) in tx.output.iter().enumerate() {
                created.insert(kind(&output.script_pubkey));
                scripts.insert(
                    OutPoint::new(txid, vout as u32),
                    output.script_pubkey.clone(),
                );
            }
        }
        if let Err(e) = node.submit_block(&block) {
            panic!("block {} rejected: {e}", generator.height());
        }
    }
    assert_eq!(best_hash(&node), generator.tip_hash().to_string());
    let info = node.rpc("getblockchaininfo", json!([])).unwrap();
    assert_eq!(info["blocks"], json!(320));
    for k in [
        "p2pk",
        "p2pkh",
        "p2sh-p2wpkh",
        "p2wpkh",
        "p2wsh",
        "p2tr",
        "bare-multisig",
    ] {
        assert!(
            created.contains(k) && spent.contains(k),
            "{k}: created {created:?} spent {spent:?}"
        );
    }
    assert!(created.contains("op_return"));
    assert!(
        max_inputs >= 5 && max_outputs >= 5,
        "{max_inputs} inputs, {max_outputs} outputs"
    );

    // Mempool: chains of unconfirmed txs pass policy, in creation order.
    let txs: Vec<_> = (0..150).map(|_| generator.mempool_tx()).collect();
    let ids: HashSet<_> = txs.iter().map(|tx| tx.compute_txid()).collect();
    let chained = txs
        .iter()
        .filter(|tx| {
            tx.input
                .iter()
                .any(|i| ids.contains(&i.previous_output.txid))
        })
        .count();
    assert!(chained > 0, "some mempool txs spend unconfirmed outputs");
    let (mut created, mut spent) = (HashSet::new(), HashSet::new());
    for tx in &txs {
        let txid = tx.compute_txid();
        for input in &tx.input {
            spent.insert(kind(
                &scripts
                    .remove(&input.previous_output)
                    .expect("known output"),
            ));
        }
        for (vout, output) in tx.output.iter().enumerate() {
            created.insert(kind(&output.script_pubkey));
            scripts.insert(
                OutPoint::new(txid, vout as u32),
                output.script_pubkey.clone(),
            );
        }
    }
    for k in [
        "p2pk",
        "p2pkh",
        "p2sh-p2wpkh",
        "p2wpkh",
        "p2wsh",
        "p2tr",
        "bare-multisig",
    ] {
        assert!(
            created.contains(k) && spent.contains(k),
            "mempool {k}: created {created:?} spent {spent:?}"
        );
    }
    let first = serialize_hex(&txs[0]);
    let check = node.rpc("testmempoolaccept", json!([[first]])).unwrap();
    assert_eq!(check[0]["allowed"], json!(true), "{check}");
    for tx in &txs {
        let sent = node.rpc("sendrawtransaction", json!([serialize_hex(tx)]));
        assert_eq!(sent, Ok(json!(tx.compute_txid().to_string())), "{tx:?}");
    }
    assert_eq!(
        node.rpc("getmempoolinfo", json!([])).unwrap()["size"],
        json!(150)
    );

    // Evicting one (as a wallet would abandon it) and mining the rest keeps the node in step.
    // The generator may re-spend the evicted tx's inputs at once: the node then drops it as
    // a conflict of the block.
    let victim = txs.last().unwrap();
    let victim_id = victim.compute_txid();
    assert!(generator.evict(&victim_id));
    let block = generator.next_block();
    node.submit_block(&block)
        .expect("block with mempool txs accepted");
    assert_eq!(best_hash(&node), generator.tip_hash().to_string());
    let mined: HashSet<_> = block.txdata.iter().map(|tx| tx.compute_txid()).collect();
    let sent_and_mined = txs
        .iter()
        .filter(|tx| mined.contains(&tx.compute_txid()))
        .count();
    assert_eq!(
        sent_and_mined, 149,
        "every sent tx but the evicted one is mined"
    );
    let conflicted = block.txdata.iter().flat_map(|tx| &tx.input).any(|input| {
        victim
            .input
            .iter()
            .any(|v| v.previous_output == input.previous_output)
    });
    let expected = if conflicted {
        json!([])
    } else {
        json!([victim_id.to_string()])
    };
    let left = node.rpc("getrawmempool", json!([])).unwrap();
    assert_eq!(
        left, expected,
        "only the evicted tx may stay in the node's mempool"
    );

    // Blocks after that still spend only what the node considers unspent.
    for _ in 0..5 {
        let block = generator.next_block();
        let answer = node.rpc("submitblock", json!([serialize_hex(&block)]));
        assert_eq!(answer, Ok(Value::Null));
    }
    assert_eq!(best_hash(&node), generator.tip_hash().to_string());
}

#[test]
fn bitcoind_follows_a_reorg_between_forks() {
    let node = RegtestNode::start().expect("start regtest bitcoind");
    let mut generator = ChainGenerator::new(ChainParams::small(99));
    for _ in 0..110 {
        node.submit_block(&generator.next_block()).unwrap();
    }
    let mut branch = generator.fork(1);
    for _ in 0..2 {
        node.submit_block(&generator.next_block()).unwrap();
    }
    assert_eq!(best_hash(&node), generator.tip_hash().to_string());
    // A longer competing branch from the fork point wins.
    for _ in 0..3 {
        let block = branch.next_block();
        let answer = node
            .rpc("submitblock", json!([serialize_hex(&block)]))
            .unwrap();
        assert!(
            answer.is_null() || answer == json!("inconclusive"),
            "{answer}"
        );
    }
    assert_eq!(best_hash(&node), branch.tip_hash().to_string());
}

/// The `large` preset (≈450 txs a block, up to 12 inputs and 30 outputs) at benchmark scale:
/// `FERRUM_CHAINGEN_BLOCKS` blocks (default 250, ≈65k txs). Slow in debug builds, so run with
/// `cargo test --release -p ferrum-tools --test chaingen_bitcoind -- --ignored`.
#[test]
#[ignore]
fn bitcoind_accepts_a_large_preset_chain() {
    let blocks: u32 = std::env::var("FERRUM_CHAINGEN_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let node = RegtestNode::start().expect("start regtest bitcoind");
    let mut generator = ChainGenerator::new(ChainParams::large(7));
    for _ in 0..blocks {
        let block = generator.next_block();
        if let Err(e) = node.submit_block(&block) {
            panic!("block {} rejected: {e}", generator.height());
        }
    }
    assert_eq!(best_hash(&node), generator.tip_hash().to_string());
    let txs = node.rpc("getchaintxstats", json!([])).unwrap()["txcount"].clone();
    assert_eq!(txs, json!(generator.tx_count()));
    let mempool: Vec<_> = (0..50).map(|_| generator.mempool_tx()).collect();
    for tx in &mempool {
        let sent = node.rpc("sendrawtransaction", json!([serialize_hex(tx)]));
        assert_eq!(sent, Ok(json!(tx.compute_txid().to_string())));
    }
}
