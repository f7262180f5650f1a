//! Parameters of a generated chain: sizes, transaction shapes, address reuse, output kinds,
//! and the presets tests and benchmarks start from.

use super::OutputKind;

/// What the generated chain looks like. Two generators with equal params produce
/// byte-identical chains (on one platform: the Zipf draw goes through `f64::powf`).
#[derive(Clone, Debug)]
pub struct ChainParams {
    pub seed: u64,
    /// Transactions `next_block` creates for each block, drawn uniformly in this range (before
    /// coinbase maturity, blocks hold only their coinbase). Pending mempool txs come on top.
    pub txs_per_block: (u32, u32),
    /// Largest input count of a transaction (consolidations reach it).
    pub max_inputs: usize,
    /// Largest output count of a transaction (batch payouts reach it), OP_RETURN excluded.
    pub max_outputs: usize,
    /// Chance that an output pays an existing script rather than a fresh one.
    pub reuse_probability: f64,
    /// Exponent of the Zipf law picking which existing script is reused (rank 0 is the
    /// first script ever made); around 1 gives a few scripts very long histories.
    pub zipf_exponent: f64,
    /// Relative weights of the spendable output kinds (a script id keeps its kind for life).
    pub output_mix: Vec<(OutputKind, u32)>,
    /// Chance that a transaction carries one OP_RETURN output.
    pub op_return_probability: f64,
    /// Chance that an input spends an unconfirmed output (mempool chains, and chains inside a
    /// block) rather than a confirmed one.
    pub unconfirmed_spend_probability: f64,
    /// Fee rate range in sat/vB (at least 1, so every transaction meets the relay fee).
    pub feerate: (u64, u64),
    /// Dummy signature bytes instead of real ones: many times faster, but the chain only
    /// suits the emulator (a real node rejects it). Sizes equal real ones' upper bounds.
    pub placeholder_signatures: bool,
}

impl ChainParams {
    fn base(seed: u64) -> Self {
        Self {
            seed,
            txs_per_block: (1, 12),
            max_inputs: 6,
            max_outputs: 6,
            reuse_probability: 0.5,
            zipf_exponent: 1.0,
            output_mix: vec![
                (OutputKind::P2pk, 1),
                (OutputKind::P2pkh, 4),
                (OutputKind::P2shP2wpkh, 2),
                (OutputKind::P2wpkh, 6),
                (OutputKind::P2wsh, 2),
                (OutputKind::P2tr, 4),
                (OutputKind::BareMultisig, 1),
            ],
            op_return_probability: 0.05,
            unconfirmed_spend_probability: 0.2,
            feerate: (1, 20),
            placeholder_signatures: false,
        }
    }

    /// Tiny blocks (1–12 txs): quick tests over a few hundred blocks.
    pub fn small(seed: u64) -> Self {
        Self::base(seed)
    }

    /// About 60 txs a block: tens of thousands of transactions in a few hundred blocks.
    pub fn medium(seed: u64) -> Self {
        Self {
            txs_per_block: (40, 80),
            max_inputs: 12,
            max_outputs: 16,
            ..Self::base(seed)
        }
    }

    /// About 450 txs a block, like the 200k-tx / 451-block benchmark chain of the design
    /// brief; the heaviest scripts reach histories of tens of thousands of entries.
    pub fn large(seed: u64) -> Self {
        Self {
            txs_per_block: (400, 500),
            max_inputs: 12,
            max_outputs: 30,
            reuse_probability: 0.7,
            ..Self::base(seed)
        }
    }
}
