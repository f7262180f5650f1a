//! Deterministic generator of valid regtest chains: blocks with real signatures over every
//! common output type, Zipf-skewed address reuse, and chains of unconfirmed transactions.

mod coins;
mod ladder;
mod mempool;
mod params;
mod rng;
mod txbuild;
mod wallet;

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::hashes::Hash;
use bitcoin::locktime::absolute::LockTime;
use bitcoin::script::Builder;
use bitcoin::transaction::Version;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, Network, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxMerkleNode, TxOut, Txid, Witness,
};

use coins::{Coin, Coins};
use mempool::Mempool;
pub use params::ChainParams;
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
