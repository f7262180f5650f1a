//! Unit tests of the chain generator: determinism and the block rules checkable locally.

use std::collections::HashMap;

use bitcoin::{Block, OutPoint, TxOut};

use super::*;

/// Checks what consensus checks without scripts: structure, commitments, PoW, BIP34, time,
/// coinbase value and maturity, and that every input spends a live output. Returns the
/// UTXO set (outpoint -> (output, height, is_coinbase)) updated, and the kinds of the scripts
/// spent.
fn check_block(
    block: &Block,
    height: u32,
    prev: &Block,
    utxos: &mut HashMap<OutPoint, (TxOut, u32, bool)>,
) -> Vec<&'static str> {
    let mut spent_kinds = Vec::new();
    assert_eq!(block.header.prev_blockhash, prev.block_hash());
    assert!(block.check_merkle_root(), "merkle root at {height}");
    assert!(
        block.check_witness_commitment(),
        "witness commitment at {height}"
    );
    let target = block.header.target();
    assert!(block.header.validate_pow(target).is_ok(), "pow at {height}");
    assert_eq!(block.header.bits.to_consensus(), 0x207f_ffff);
    // BIP34 as Core checks it: the scriptSig starts with `CScript() << height` (OP_1..OP_16 for
    // small heights, which the bitcoin crate's own BIP34 parser does not accept).
    let expect = bitcoin::script::Builder::new()
        .push_int(height as i64)
        .into_script();
    let script_sig = block.txdata[0].input[0].script_sig.as_bytes();
    assert!(
        script_sig.starts_with(expect.as_bytes()),
        "BIP34 height at {height}"
    );
    assert!((2..=100).contains(&script_sig.len()));
    assert!(block.header.time > prev.header.time);
    assert!(block.weight().to_wu() <= 4_000_000);
    let coinbase = &block.txdata[0];
    assert!(coinbase.is_coinbase());
    assert!(block.txdata[1..].iter().all(|tx| !tx.is_coinbase()));
    let mut fees = 0;
    for tx in &block.txdata[1..] {
        let mut value_in = 0;
        for input in &tx.input {
            let (out, created, is_coinbase) = utxos
                .remove(&input.previous_output)
                .expect("input spends a live output");
            if is_coinbase {
                assert!(
                    height - created >= 100,
                    "immature coinbase spent at {height}"
                );
            }
            value_in += out.value.to_sat();
            spent_kinds.push(script_kind(&out.script_pubkey));
        }
        let value_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        assert!(value_out < value_in, "fee paid");
        fees += value_in - value_out;
        assert!(
            tx.vsize() as u64 <= value_in - value_out,
            "at least 1 sat/vB"
        );
        add_outputs(tx, height, false, utxos);
    }
    let coinbase_out: u64 = coinbase.output.iter().map(|o| o.value.to_sat()).sum();
    assert_eq!(coinbase_out, subsidy(height) + fees);
    add_outputs(coinbase, height, true, utxos);
    spent_kinds
}

fn add_outputs(
    tx: &Transaction,
    height: u32,
    coinbase: bool,
    utxos: &mut HashMap<OutPoint, (TxOut, u32, bool)>,
) {
    let txid = tx.compute_txid();
    for (vout, out) in tx.output.iter().enumerate() {
        if !out.script_pubkey.is_op_return() {
            utxos.insert(
                OutPoint::new(txid, vout as u32),
                (out.clone(), height, coinbase),
            );
        }
    }
}

fn chain(params: ChainParams, blocks: u32) -> Vec<Block> {
    let mut generator = ChainGenerator::new(params);
    let mut chain = vec![generator.genesis()];
    for _ in 0..blocks {
        chain.push(generator.next_block());
    }
    chain
}

#[test]
fn same_seed_gives_identical_blocks_and_other_seeds_differ() {
    let a = chain(ChainParams::small(42), 130);
    let b = chain(ChainParams::small(42), 130);
    let c = chain(ChainParams::small(43), 130);
    let bytes = |c: &[Block]| {
        c.iter()
            .map(bitcoin::consensus::serialize)
            .collect::<Vec<_>>()
    };
    assert_eq!(bytes(&a), bytes(&b));
    assert_ne!(
        a.last().unwrap().block_hash(),
        c.last().unwrap().block_hash()
    );
}

#[test]
fn blocks_pass_local_consensus_checks_and_spend_every_kind() {
    let mut generator = ChainGenerator::new(ChainParams::small(7));
    let mut utxos: HashMap<OutPoint, (TxOut, u32, bool)> = HashMap::new();
    let mut prev = generator.genesis();
    let mut spent_kinds = std::collections::HashSet::new();
    let mut max_inputs = 0;
    for height in 1..=260 {
        let block = generator.next_block();
        for tx in &block.txdata[1..] {
            max_inputs = max_inputs.max(tx.input.len());
        }
        spent_kinds.extend(check_block(&block, height, &prev, &mut utxos));
        prev = block;
    }
    assert_eq!(generator.height(), 260);
    assert_eq!(generator.tip_hash(), prev.block_hash());
    assert!(max_inputs >= 3, "multi-input transactions");
    for kind in [
        "p2pk", "p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr", "multisig",
    ] {
        assert!(
            spent_kinds.contains(kind),
            "no spend of {kind}: {spent_kinds:?}"
        );
    }
}

fn script_kind(spk: &bitcoin::Script) -> &'static str {
    if spk.is_p2pk() {
        "p2pk"
    } else if spk.is_p2pkh() {
        "p2pkh"
    } else if spk.is_p2sh() {
        "p2sh"
    } else if spk.is_p2wpkh() {
        "p2wpkh"
    } else if spk.is_p2wsh() {
        "p2wsh"
    } else if spk.is_p2tr() {
        "p2tr"
    } else if spk.is_multisig() {
        "multisig"
    } else {
        "other"
    }
}

#[test]
fn mempool_chains_are_mined_in_order_and_eviction_frees_inputs() {
    let mut generator = ChainGenerator::new(ChainParams::small(3));
    for _ in 0..110 {
        generator.next_block();
    }
    let txs: Vec<Transaction> = (0..30).map(|_| generator.mempool_tx()).collect();
    let ids: Vec<Txid> = txs.iter().map(|tx| tx.compute_txid()).collect();
    let chained = txs.iter().filter(|tx| {
        tx.input
            .iter()
            .any(|i| ids.contains(&i.previous_output.txid))
    });
    assert!(
        chained.count() > 0,
        "some mempool txs spend unconfirmed outputs"
    );
    assert_eq!(generator.pending().count(), 30);

    // Evicting a parent also evicts its descendants.
    let parent = txs
        .iter()
        .position(|tx| {
            txs.iter().any(|c| {
                c.input
                    .iter()
                    .any(|i| i.previous_output.txid == tx.compute_txid())
            })
        })
        .expect("a parent");
    assert!(generator.evict(&ids[parent]));
    assert!(!generator.evict(&ids[parent]));
    let left: Vec<Txid> = generator.pending().map(|tx| tx.compute_txid()).collect();
    assert!(left.len() < 29);
    assert!(!left.contains(&ids[parent]));
    for tx in generator.pending() {
        assert!(tx
            .input
            .iter()
            .all(|i| i.previous_output.txid != ids[parent]));
    }

    let block = generator.next_block();
    let mined: Vec<Txid> = block.txdata.iter().map(|tx| tx.compute_txid()).collect();
    assert_eq!(
        &mined[1..=left.len()],
        &left[..],
        "pending txs are mined first, in order"
    );
    assert_eq!(generator.pending().count(), 0);
    // The evicted parent's inputs are spendable again: nothing is double spent later.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        for tx in generator.next_block().txdata.iter().skip(1) {
            for input in &tx.input {
                assert!(seen.insert(input.previous_output), "double spend");
            }
        }
    }
}

#[test]
fn forks_share_the_past_and_differ_from_here_on() {
    let mut main = ChainGenerator::new(ChainParams::small(11));
    for _ in 0..105 {
        main.next_block();
    }
    let mut branch = main.fork(1);
    let mut same = main.fork(1);
    let (a, b, c) = (main.next_block(), branch.next_block(), same.next_block());
    assert_eq!(a.header.prev_blockhash, b.header.prev_blockhash);
    assert_ne!(a.block_hash(), b.block_hash());
    assert_eq!(b, c, "a fork is deterministic in its salt");
}

#[test]
fn placeholder_signatures_keep_sizes_and_shape() {
    let real = chain(ChainParams::small(5), 140);
    let fake = chain(
        ChainParams {
            placeholder_signatures: true,
            ..ChainParams::small(5)
        },
        140,
    );
    assert_eq!(real.len(), fake.len());
    let mut utxos = HashMap::new();
    for (height, pair) in fake.windows(2).enumerate() {
        check_block(&pair[1], height as u32 + 1, &pair[0], &mut utxos);
    }
    let count = |c: &[Block]| c.iter().map(|b| b.txdata.len()).sum::<usize>();
    assert!(count(&fake) > 200);
    assert_eq!(
        count(&real),
        count(&fake),
        "same shapes: signatures don't touch randomness"
    );
}

#[test]
fn subsidy_halves_every_150_blocks() {
    assert_eq!(subsidy(0), 5_000_000_000);
    assert_eq!(subsidy(149), 5_000_000_000);
    assert_eq!(subsidy(150), 2_500_000_000);
    assert_eq!(subsidy(150 * 64), 0);
}
