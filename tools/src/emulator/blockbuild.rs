//! Blocks the emulator makes itself: coinbase-only or mempool blocks on any tip (chains loaded
//! from files, reorg branches without a generator), and generated blocks extended with
//! transactions submitted over RPC. Witness commitment, merkle root and regtest work are redone.

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::hashes::Hash;
use bitcoin::locktime::absolute::LockTime;
use bitcoin::script::Builder;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Witness,
};

use crate::chaingen::subsidy;

const COMMITMENT_PREFIX: [u8; 6] = [0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];

/// A block on `prev` at `height` paying subsidy plus `fees` to `OP_TRUE`; `tag` makes the
/// coinbase (and so the block) unique per branch.
pub fn build(
    prev: BlockHash,
    height: u32,
    time: u32,
    txs: Vec<Transaction>,
    fees: u64,
    tag: u64,
) -> Block {
    let coinbase = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: Builder::new()
                .push_int(height as i64)
                .push_slice(tag.to_le_bytes())
                .into_script(),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[[0u8; 32]]),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(subsidy(height) + fees),
            script_pubkey: ScriptBuf::from_bytes(vec![0x51]),
        }],
    };
    let mut block = Block {
        header: Header {
            version: BlockVersion::from_consensus(0x2000_0000),
            prev_blockhash: prev,
            merkle_root: TxMerkleNode::all_zeros(),
            time,
            bits: CompactTarget::from_consensus(0x207f_ffff),
            nonce: 0,
        },
        txdata: vec![coinbase],
    };
    block.txdata.extend(txs);
    seal(&mut block);
    block
}

/// Appends transactions to a block, adding `fees` to the coinbase's first output.
pub fn extend(mut block: Block, txs: Vec<Transaction>, fees: u64) -> Block {
    if txs.is_empty() {
        return block;
    }
    block.txdata.extend(txs);
    if let Some(out) = block.txdata[0].output.first_mut() {
        out.value = Amount::from_sat(out.value.to_sat() + fees);
    }
    seal(&mut block);
    block
}

/// Rewrites the witness commitment (as the coinbase's last output), merkle root and nonce.
fn seal(block: &mut Block) {
    let coinbase = &mut block.txdata[0];
    coinbase
        .output
        .retain(|o| !o.script_pubkey.as_bytes().starts_with(&COMMITMENT_PREFIX));
    if coinbase.input[0].witness.is_empty() {
        coinbase.input[0].witness = Witness::from_slice(&[[0u8; 32]]);
    }
    if let Some(root) = block.witness_root() {
        let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
        let mut script = COMMITMENT_PREFIX.to_vec();
        script.extend_from_slice(commitment.as_byte_array());
        block.txdata[0].output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(script),
        });
    }
    if let Some(root) = block.compute_merkle_root() {
        block.header.merkle_root = root;
    }
    let target = block.header.target();
    block.header.nonce = 0;
    while block.header.validate_pow(target).is_err() {
        block.header.nonce = block.header.nonce.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::blockdata::constants::genesis_block;
    use bitcoin::Network;

    #[test]
    fn built_blocks_are_sealed() {
        let genesis = genesis_block(Network::Regtest);
        let block = build(
            genesis.block_hash(),
            1,
            genesis.header.time + 600,
            Vec::new(),
            0,
            7,
        );
        assert!(block.check_merkle_root());
        assert!(block.check_witness_commitment());
        assert!(block.header.validate_pow(block.header.target()).is_ok());
        let other = build(
            genesis.block_hash(),
            1,
            genesis.header.time + 600,
            Vec::new(),
            0,
            8,
        );
        assert_ne!(block.block_hash(), other.block_hash());
    }
}
