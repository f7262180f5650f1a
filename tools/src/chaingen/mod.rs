//! Deterministic generator of valid regtest chains: blocks with real signatures over every
//! common output type, Zipf-skewed address reuse, and chains of unconfirmed transactions.

mod coins;
mod mempool;
mod rng;
mod wallet;

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::hashes::Hash;
use bitcoin::locktime::absolute::LockTime;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, Network, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxMerkleNode, TxOut, Txid, Witness,
};

use coins::{Coin, Coins};
use mempool::Mempool;
use rng::Rng;
pub use wallet::OutputKind;
use wallet::Wallet;

/// Smallest value the generator puts in a spendable output: far above every dust limit.
pub const MIN_OUTPUT_VALUE: u64 = 10_000;
/// Regtest halves the subsidy every 150 blocks.
pub const REGTEST_HALVING_INTERVAL: u32 = 150;
/// Block `h` gets timestamp `genesis time + h * BLOCK_INTERVAL`: strictly increasing, so
/// above the median-time-past, and far in the past, so never too far in the future.
pub const BLOCK_INTERVAL: u32 = 600;
const MAX_BLOCK_WEIGHT: u64 = 4_000_000;
const MAX_BLOCK_SIGOPS_COST: u64 = 80_000;
/// Room kept for the coinbase in a block's weight and sigop budgets.
const COINBASE_WEIGHT_RESERVE: u64 = 4_000;
const COINBASE_SIGOPS_RESERVE: u64 = 400;
/// OP_RETURN payloads are 0..=this many bytes: one small output is standard on every Core.
const MAX_OP_RETURN_DATA: u64 = 40;

/// What the generated chain looks like. Two generators with equal params produce
/// byte-identical chains.
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

/// Generates a regtest chain block by block, plus unconfirmed transactions on top of its tip.
/// Memory is proportional to the live UTXO set and the pending transactions, not the chain.
#[derive(Clone)]
pub struct ChainGenerator {
    params: ChainParams,
    rng: Rng,
    wallet: Wallet,
    coins: Coins,
    mempool: Mempool,
    genesis: Block,
    tip: BlockHash,
    height: u32,
    next_script: u64,
    tx_count: u64,
}

/// A transaction's inputs while it is built: coins and, for unconfirmed ones, their cluster.
type Inputs = Vec<(Coin, Option<u32>)>;

impl ChainGenerator {
    /// A generator whose tip is the regtest genesis block.
    pub fn new(params: ChainParams) -> Self {
        let genesis = genesis_block(Network::Regtest);
        Self {
            rng: Rng::new(params.seed),
            wallet: Wallet::new(params.seed, params.output_mix.clone()),
            coins: Coins::default(),
            mempool: Mempool::default(),
            tip: genesis.block_hash(),
            genesis,
            height: 0,
            next_script: 0,
            tx_count: 1,
            params,
        }
    }

    pub fn params(&self) -> &ChainParams {
        &self.params
    }

    pub fn genesis(&self) -> Block {
        self.genesis.clone()
    }

    /// Height of the tip (genesis = 0).
    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn tip_hash(&self) -> BlockHash {
        self.tip
    }

    /// Confirmed transactions so far, the genesis coinbase included.
    pub fn tx_count(&self) -> u64 {
        self.tx_count
    }

    /// Wallet outputs in the chain (spendable or maturing) plus unconfirmed ones.
    pub fn utxo_count(&self) -> usize {
        self.coins.len() + self.mempool.coin_count()
    }

    /// Unconfirmed transactions, in an order where parents come before children.
    pub fn pending(&self) -> impl Iterator<Item = &Transaction> {
        self.mempool.txs().iter().map(|p| &p.tx)
    }

    /// A new unconfirmed transaction on top of the tip; it may spend outputs of earlier
    /// pending ones (clusters stay within Core's mempool limits) and will be mined by the next
    /// `next_block`. Panics if nothing is spendable yet: mine 101 blocks first.
    pub fn mempool_tx(&mut self) -> Transaction {
        self.try_mempool_tx()
            .expect("no spendable output: coinbases mature after 100 blocks, mine at least 101")
    }

    /// Like `mempool_tx`, but None when nothing is spendable.
    pub fn try_mempool_tx(&mut self) -> Option<Transaction> {
        self.coins.mature_for(self.height + 1);
        for _ in 0..4 {
            if self.make_tx(true) {
                return self.mempool.txs().last().map(|p| p.tx.clone());
            }
        }
        None
    }

    /// Forgets a pending transaction and its pending descendants; the outputs they spent
    /// become spendable again. False if `txid` is not pending.
    pub fn evict(&mut self, txid: &Txid) -> bool {
        match self.mempool.evict(txid) {
            Some(confirmed) => {
                confirmed.into_iter().for_each(|coin| self.coins.add(coin));
                true
            }
            None => false,
        }
    }

    /// A copy with the same chain and mempool but its own randomness from here on: the
    /// blocks it mines next differ from this generator's (for reorg branches).
    pub fn fork(&self, salt: u64) -> ChainGenerator {
        let mut fork = self.clone();
        fork.rng = self.rng.forked(salt);
        fork
    }

    /// Mines the next block on the tip: pending transactions first (as many as fit), then
    /// `txs_per_block` new ones, which may spend each other's outputs.
    pub fn next_block(&mut self) -> Block {
        let height = self.height + 1;
        self.coins.mature_for(height);
        let budget = MAX_BLOCK_WEIGHT - COINBASE_WEIGHT_RESERVE;
        let mut weight: u64 = self.mempool.txs().iter().map(|p| p.weight).sum();
        let (lo, hi) = self.params.txs_per_block;
        let wanted = self.rng.range(lo as u64, hi as u64);
        for _ in 0..wanted {
            if weight >= budget || !self.make_tx(false) {
                break;
            }
            weight += self.mempool.txs().last().map_or(0, |p| p.weight);
        }
        let (mut weight, mut sigops, mut count) = (0, 0, 0);
        for pending in self.mempool.txs() {
            if weight + pending.weight > budget
                || sigops + pending.sigop_cost > MAX_BLOCK_SIGOPS_COST - COINBASE_SIGOPS_RESERVE
            {
                break;
            }
            weight += pending.weight;
            sigops += pending.sigop_cost;
            count += 1;
        }
        let (mined, confirmed) = self.mempool.remove_mined(count);
        confirmed.into_iter().for_each(|coin| self.coins.add(coin));
        let fees: u64 = mined.iter().map(|p| p.fee).sum();

        let mut txdata = Vec::with_capacity(mined.len() + 1);
        let (coinbase, script) = self.coinbase(height, fees);
        txdata.push(coinbase);
        txdata.extend(mined.into_iter().map(|p| p.tx));
        let block = self.seal(height, txdata);
        // Only now is the coinbase final (seal adds the commitment output), hence its txid.
        let value = block.txdata[0].output[0].value.to_sat();
        if value >= MIN_OUTPUT_VALUE {
            let outpoint = OutPoint::new(block.txdata[0].compute_txid(), 0);
            self.coins.add_coinbase(
                height,
                Coin {
                    outpoint,
                    value,
                    script,
                },
            );
        }
        self.tip = block.block_hash();
        self.height = height;
        self.tx_count += block.txdata.len() as u64;
        block
    }

    /// The coinbase (without its witness commitment) and the script id it pays.
    fn coinbase(&mut self, height: u32, fees: u64) -> (Transaction, u64) {
        let mut extra = [0u8; 8];
        self.rng.fill(&mut extra);
        let script_sig = Builder::new()
            .push_int(height as i64)
            .push_slice(extra)
            .into_script();
        let script = self.pick_script();
        let keys = self.wallet.keys(script);
        let value = subsidy(height) + fees;
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::null(),
                script_sig,
                sequence: Sequence::MAX,
                witness: Witness::from_slice(&[[0u8; 32]]),
            }],
            output: vec![TxOut {
                value: Amount::from_sat(value),
                script_pubkey: keys.script_pubkey.clone(),
            }],
        };
        (tx, script)
    }

    /// Adds the witness commitment, merkle root and proof of work.
    fn seal(&mut self, height: u32, mut txdata: Vec<Transaction>) -> Block {
        let mut block = Block {
            header: Header {
                version: BlockVersion::from_consensus(0x2000_0000),
                prev_blockhash: self.tip,
                merkle_root: TxMerkleNode::all_zeros(),
                time: self.genesis.header.time + height * BLOCK_INTERVAL,
                bits: CompactTarget::from_consensus(0x207f_ffff),
                nonce: 0,
            },
            txdata: Vec::new(),
        };
        // The witness root hashes the coinbase as zeros, so it can be computed before the
        // commitment output exists; the commitment must then be the coinbase's last output.
        block.txdata = std::mem::take(&mut txdata);
        let witness_root = block.witness_root().expect("a block has a coinbase");
        let commitment = Block::compute_witness_commitment(&witness_root, &[0u8; 32]);
        let mut script = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
        script.extend_from_slice(commitment.as_byte_array());
        block.txdata[0].output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(script),
        });
        block.header.merkle_root = block.compute_merkle_root().expect("a block has a coinbase");
        let target = block.header.target();
        while !target.is_met_by(block.header.block_hash()) {
            block.header.nonce += 1;
        }
        block
    }

    /// A script id to pay: an existing one (Zipf by age rank) or a fresh one.
    fn pick_script(&mut self) -> u64 {
        if self.next_script > 0 && self.rng.chance(self.params.reuse_probability) {
            return self
                .rng
                .zipf_rank(self.next_script, self.params.zipf_exponent);
        }
        self.next_script += 1;
        self.next_script - 1
    }

    /// Input and output counts: mostly payments, some sweeps, merges and batch payouts.
    fn shape(&mut self) -> (usize, usize) {
        let (max_in, max_out) = (
            self.params.max_inputs.max(1),
            self.params.max_outputs.max(1),
        );
        let r = self.rng.unit();
        let (ins, outs) = if r < 0.55 {
            (if self.rng.chance(0.8) { 1 } else { 2 }, 2)
        } else if r < 0.72 {
            (1, 1)
        } else if r < 0.87 {
            (self.rng.range(2, 5) as usize, self.rng.range(1, 2) as usize)
        } else if r < 0.93 {
            (
                self.rng.range((max_in / 2) as u64, max_in as u64) as usize,
                1,
            )
        } else {
            (
                self.rng.range(1, 2) as usize,
                self.rng.range(3, max_out as u64) as usize,
            )
        };
        (ins.clamp(1, max_in), outs.clamp(1, max_out))
    }

    /// Takes one input. `policy`: for a relayable mempool transaction, which may spend at most
    /// one unconfirmed output, from a cluster with room.
    fn take_input(&mut self, policy: bool, inputs: &Inputs) -> Option<(Coin, Option<u32>)> {
        let may_chain = !policy || inputs.iter().all(|(_, cluster)| cluster.is_none());
        if may_chain
            && (self.coins.is_empty() || self.rng.chance(self.params.unconfirmed_spend_probability))
        {
            if let Some((coin, cluster)) = self.mempool.take(&mut self.rng, policy) {
                return Some((coin, Some(cluster)));
            }
        }
        if let Some(coin) = self.coins.take(&mut self.rng) {
            return Some((coin, None));
        }
        None
    }

    fn give_back(&mut self, inputs: Inputs) {
        for (coin, cluster) in inputs {
            match cluster {
                Some(cluster) => self.mempool.untake(coin, cluster),
                None => self.coins.add(coin),
            }
        }
    }

    /// Builds, signs and adds one pending transaction. False when the wallet cannot fund one.
    fn make_tx(&mut self, policy: bool) -> bool {
        let (wanted_inputs, wanted_outputs) = self.shape();
        let mut inputs: Inputs = Vec::with_capacity(wanted_inputs);
        while inputs.len() < wanted_inputs {
            match self.take_input(policy, &inputs) {
                Some(input) => inputs.push(input),
                None => break,
            }
        }
        if inputs.is_empty() {
            return false;
        }
        let scripts: Vec<u64> = (0..wanted_outputs).map(|_| self.pick_script()).collect();
        let op_return = self.rng.chance(self.params.op_return_probability).then(|| {
            let mut data = vec![0u8; self.rng.range(0, MAX_OP_RETURN_DATA) as usize];
            self.rng.fill(&mut data);
            ScriptBuf::new_op_return(PushBytesBuf::try_from(data).expect("small data"))
        });
        let feerate = self
            .rng
            .range(self.params.feerate.0.max(1), self.params.feerate.1);

        let mut outputs = scripts.len();
        loop {
            let (tx, owners, prevouts) = self.unsigned_tx(&inputs, &scripts[..outputs], &op_return);
            let mut sized = tx;
            self.wallet.sign(&mut sized, &prevouts, &owners, true);
            let fee = feerate * sized.vsize() as u64;
            let total_in: u64 = inputs.iter().map(|(c, _)| c.value).sum();
            let available = total_in.saturating_sub(fee);
            if available >= outputs as u64 * MIN_OUTPUT_VALUE {
                self.finish_tx(
                    sized,
                    owners,
                    prevouts,
                    inputs,
                    &scripts[..outputs],
                    available,
                    policy,
                );
                return true;
            }
            if available >= MIN_OUTPUT_VALUE {
                outputs = (available / MIN_OUTPUT_VALUE) as usize;
                continue;
            }
            match (inputs.len() < self.params.max_inputs.max(1))
                .then(|| self.take_input(policy, &inputs))
                .flatten()
            {
                Some(input) => inputs.push(input),
                None => {
                    self.give_back(inputs);
                    return false;
                }
            }
        }
    }

    fn unsigned_tx(
        &mut self,
        inputs: &Inputs,
        scripts: &[u64],
        op_return: &Option<ScriptBuf>,
    ) -> (
        Transaction,
        Vec<std::sync::Arc<wallet::ScriptKeys>>,
        Vec<TxOut>,
    ) {
        let owners: Vec<_> = inputs
            .iter()
            .map(|(c, _)| self.wallet.keys(c.script))
            .collect();
        let prevouts: Vec<TxOut> = inputs
            .iter()
            .zip(&owners)
            .map(|((coin, _), keys)| TxOut {
                value: Amount::from_sat(coin.value),
                script_pubkey: keys.script_pubkey.clone(),
            })
            .collect();
        let mut output: Vec<TxOut> = scripts
            .iter()
            .map(|&id| TxOut {
                value: Amount::ZERO,
                script_pubkey: self.wallet.keys(id).script_pubkey.clone(),
            })
            .collect();
        if let Some(script) = op_return {
            output.push(TxOut {
                value: Amount::ZERO,
                script_pubkey: script.clone(),
            });
        }
        let tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs
                .iter()
                .map(|(coin, _)| TxIn {
                    previous_output: coin.outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output,
        };
        (tx, owners, prevouts)
    }

    /// Splits `available` over the payment outputs, signs, and records the transaction.
    #[allow(clippy::too_many_arguments)]
    fn finish_tx(
        &mut self,
        mut tx: Transaction,
        owners: Vec<std::sync::Arc<wallet::ScriptKeys>>,
        prevouts: Vec<TxOut>,
        inputs: Inputs,
        scripts: &[u64],
        available: u64,
        policy: bool,
    ) {
        let weights: Vec<u64> = scripts.iter().map(|_| self.rng.range(1, 1000)).collect();
        let total_weight: u64 = weights.iter().sum();
        let spare = available - scripts.len() as u64 * MIN_OUTPUT_VALUE;
        let mut left = spare;
        for (index, weight) in weights.iter().enumerate() {
            let share = if index + 1 == weights.len() {
                left
            } else {
                (spare as u128 * *weight as u128 / total_weight as u128) as u64
            };
            left -= share;
            tx.output[index].value = Amount::from_sat(MIN_OUTPUT_VALUE + share);
        }
        if !self.params.placeholder_signatures {
            self.wallet.sign(&mut tx, &prevouts, &owners, false);
        }
        let sigop_cost = tx.total_sigop_cost(|outpoint| {
            tx.input
                .iter()
                .position(|input| input.previous_output == *outpoint)
                .map(|index| prevouts[index].clone())
        }) as u64;
        let txid = tx.compute_txid();
        let coins: Vec<Coin> = scripts
            .iter()
            .enumerate()
            .map(|(index, &script)| Coin {
                outpoint: OutPoint::new(txid, index as u32),
                value: tx.output[index].value.to_sat(),
                script,
            })
            .collect();
        let total_in: u64 = inputs.iter().map(|(c, _)| c.value).sum();
        let total_out: u64 = tx.output.iter().map(|o| o.value.to_sat()).sum();
        let parents: Vec<u32> = inputs.iter().filter_map(|(_, cluster)| *cluster).collect();
        let spent = inputs.into_iter().map(|(coin, _)| coin).collect();
        self.mempool.add(
            tx,
            spent,
            &parents,
            policy,
            total_in - total_out,
            sigop_cost,
            coins,
        );
    }
}

/// Block subsidy at `height` on regtest, in satoshis.
pub fn subsidy(height: u32) -> u64 {
    let halvings = height / REGTEST_HALVING_INTERVAL;
    if halvings >= 64 {
        0
    } else {
        (50 * 100_000_000u64) >> halvings
    }
}

#[cfg(test)]
mod tests;
