//! The emulated node's state and everything that changes it: connecting blocks, mining from
//! the generator (or the emulator's own blocks), mempool submission and eviction, reorgs, and
//! the warm-up status.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bitcoin::{BlockHash, OutPoint, Transaction, Txid};

use super::blockbuild;
use super::chain::{Chain, ChainError};
use super::mempool::{Admission, Mempool, Rejection};
use crate::chaingen::ChainGenerator;

pub struct Node {
    pub chain: Chain,
    pub mempool: Mempool,
    /// Fee rate estimatesmartfee reports, in sat/kvB (None: Core's "Insufficient data").
    pub fee_rate: Option<u64>,
    pub started: Instant,
    /// What `getzmqnotifications` reports for `pubhashblock`.
    pub zmq_pubhashblock: Option<String>,
    warmup: Option<(String, Option<Instant>)>,
    /// Blocks of a loaded chain not served yet (`initial_height`); mined first.
    pending: VecDeque<Vec<u8>>,
    generator: Option<ChainGenerator>,
    /// Generator state right after each of the last blocks, for reorgs.
    history: VecDeque<(u32, ChainGenerator)>,
    history_len: usize,
    /// Mempool transactions the generator made (it mines them itself).
    generated: HashSet<Txid>,
    /// Distinguishes the emulator's own blocks on different branches.
    next_tag: u64,
}

impl Node {
    pub fn new(generator: Option<ChainGenerator>, history_len: usize) -> Self {
        Node {
            chain: Chain::default(),
            mempool: Mempool::default(),
            fee_rate: None,
            started: Instant::now(),
            zmq_pubhashblock: None,
            warmup: None,
            pending: VecDeque::new(),
            generator,
            history: VecDeque::new(),
            history_len,
            generated: HashSet::new(),
            next_tag: 0,
        }
    }

    /// Blocks kept back from a loaded chain, served by the next `mine` calls.
    pub fn hold_back(&mut self, raw: Vec<u8>) {
        self.pending.push_back(raw);
    }

    pub fn has_held_back(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The generator that mines from the tip on (its state must match the chain's tip).
    pub fn attach_generator(&mut self, generator: ChainGenerator) {
        self.generator = Some(generator);
    }

    /// Connects a generated block, remembering the generator state right after it.
    pub fn connect_with_state(
        &mut self,
        raw: Vec<u8>,
        state: ChainGenerator,
    ) -> Result<BlockHash, ChainError> {
        let hash = self.connect(raw)?;
        self.push_history(state);
        Ok(hash)
    }

    pub fn has_generator(&self) -> bool {
        self.generator.is_some()
    }

    /// The warm-up message while warming up (clearing it once its time is over).
    pub fn warmup(&mut self) -> Option<String> {
        if let Some((_, Some(until))) = &self.warmup {
            if Instant::now() >= *until {
                self.warmup = None;
            }
        }
        self.warmup.as_ref().map(|(m, _)| m.clone())
    }

    /// Same as `warmup` without clearing (for read-only paths).
    pub fn warmup_peek(&self) -> Option<String> {
        match &self.warmup {
            Some((_, Some(until))) if Instant::now() >= *until => None,
            other => other.as_ref().map(|(m, _)| m.clone()),
        }
    }

    pub fn set_warmup(&mut self, message: Option<String>, duration: Option<Duration>) {
        self.warmup = message.map(|m| (m, duration.map(|d| Instant::now() + d)));
    }

    /// Connects a raw block on the tip and drops what it confirms from the mempool.
    pub fn connect(&mut self, raw: Vec<u8>) -> Result<BlockHash, ChainError> {
        let entry = self.chain.push(raw)?;
        if entry.height > 0 {
            self.mempool.remove_for_block(&entry.txs());
            let mempool = &self.mempool;
            self.generated.retain(|t| mempool.get(t).is_some());
        }
        Ok(entry.hash)
    }

    /// Connects a block the generator made and remembers the generator state after it.
    pub fn connect_generated(&mut self, raw: Vec<u8>) -> Result<BlockHash, ChainError> {
        let hash = self.connect(raw)?;
        self.remember_generator();
        Ok(hash)
    }

    fn remember_generator(&mut self) {
        if let Some(gen) = &self.generator {
            let state = gen.clone();
            self.push_history(state);
        }
    }

    /// Remembers the generator state right after the tip (a reorg of up to `history_len`
    /// blocks needs the state `history_len` blocks back, hence one more entry).
    pub fn push_history(&mut self, state: ChainGenerator) {
        if let (Some(height), true) = (self.chain.height(), self.history_len > 0) {
            self.history.push_back((height, state));
            while self.history.len() > self.history_len + 1 {
                self.history.pop_front();
            }
        }
    }

    /// Mines `count` blocks: held-back blocks first, then generated (or own) blocks that also
    /// carry the mempool transactions submitted over RPC.
    pub fn mine(&mut self, count: u32) -> Result<Vec<BlockHash>, String> {
        (0..count).map(|_| self.mine_one(true)).collect()
    }

    fn mine_one(&mut self, with_mempool: bool) -> Result<BlockHash, String> {
        if let Some(raw) = self.pending.pop_front() {
            return self.connect(raw).map_err(|e| e.to_string());
        }
        let tip = self.chain.tip().ok_or("the chain is empty")?.clone();
        let external: Vec<(Transaction, u64)> = if with_mempool {
            self.mempool
                .entries()
                .filter(|e| !self.generated.contains(&e.txid))
                .map(|e| (e.tx.clone(), e.fee))
                .collect()
        } else {
            Vec::new()
        };
        let block = match &mut self.generator {
            Some(gen) => {
                let block = gen.next_block();
                let in_block: HashSet<Txid> =
                    block.txdata.iter().map(|t| t.compute_txid()).collect();
                let spent: HashSet<OutPoint> = block
                    .txdata
                    .iter()
                    .skip(1)
                    .flat_map(|t| t.input.iter().map(|i| i.previous_output))
                    .collect();
                let mut dropped: HashSet<Txid> = HashSet::new();
                let mut extra = Vec::new();
                let mut fees = 0;
                for (tx, fee) in external {
                    let txid = tx.compute_txid();
                    let conflicts = tx.input.iter().any(|i| {
                        spent.contains(&i.previous_output)
                            || dropped.contains(&i.previous_output.txid)
                    });
                    if in_block.contains(&txid) || conflicts {
                        dropped.insert(txid);
                    } else {
                        fees += fee;
                        extra.push(tx);
                    }
                }
                blockbuild::extend(block, extra, fees)
            }
            None => {
                self.next_tag += 1;
                let fees = external.iter().map(|(_, f)| f).sum();
                let txs = external.into_iter().map(|(t, _)| t).collect();
                blockbuild::build(
                    tip.hash,
                    tip.height + 1,
                    tip.header.time + 600,
                    txs,
                    fees,
                    self.next_tag,
                )
            }
        };
        let raw = bitcoin::consensus::serialize(&block);
        self.connect_generated(raw).map_err(|e| e.to_string())
    }

    /// Runs Core's checks and adds the transaction; returns the admission (fee, size, replaced).
    pub fn submit(
        &mut self,
        tx: Transaction,
        max_fee_rate: Option<u64>,
        rpc: bool,
    ) -> Result<Admission, Rejection> {
        let admission = self.mempool.check(&tx, &self.chain, max_fee_rate)?;
        let txid = tx.compute_txid();
        // A transaction made by a generator twin in the same state (what tests do) is the one
        // this generator would make next: take it as generated, so that the generator mines
        // it rather than spending its inputs again.
        let recognized = self.generator.as_ref().and_then(|gen| {
            let mut next = gen.clone();
            let made = next.try_mempool_tx()?;
            (made.compute_txid() == txid).then_some(next)
        });
        let height = self.chain.height().unwrap_or(0);
        self.mempool.insert(tx, &admission, height, rpc);
        self.forget_generated(&admission.replaced);
        if let Some(next) = recognized {
            self.generator = Some(next);
            self.generated.insert(txid);
        }
        Ok(admission)
    }

    /// Adds `count` generated transactions to the mempool.
    pub fn add_generated(&mut self, count: u32) -> Result<Vec<Txid>, String> {
        let mut added = Vec::new();
        for _ in 0..count {
            let gen = self
                .generator
                .as_mut()
                .ok_or("no generator: the chain was loaded from a file")?;
            let tx = gen
                .try_mempool_tx()
                .ok_or("the generator has no spendable output yet (mine 101 blocks)")?;
            let txid = tx.compute_txid();
            match self.mempool.check(&tx, &self.chain, None) {
                Ok(admission) => {
                    let height = self.chain.height().unwrap_or(0);
                    self.mempool.insert(tx, &admission, height, false);
                    self.generated.insert(txid);
                    self.forget_generated(&admission.replaced);
                    added.push(txid);
                }
                Err(rejection) => {
                    gen.evict(&txid);
                    return Err(format!(
                        "generated transaction {txid} rejected: {}",
                        rejection.state_string()
                    ));
                }
            }
        }
        Ok(added)
    }

    /// Removes a mempool transaction and its descendants; returns the removed txids.
    pub fn evict(&mut self, txid: &Txid) -> Vec<Txid> {
        let removed = self.mempool.evict(txid);
        self.forget_generated(&removed);
        removed
    }

    fn forget_generated(&mut self, txids: &[Txid]) {
        for txid in txids {
            if self.generated.remove(txid) {
                if let Some(gen) = &mut self.generator {
                    gen.evict(txid);
                }
            }
        }
    }

    /// Replaces the last `depth` blocks with `count` new ones (a fork of the generator kept from
    /// `depth` blocks back, or the emulator's own blocks); transactions of the disconnected
    /// blocks go back to the mempool when still valid, as in Core.
    pub fn reorg(&mut self, depth: u32, count: u32, salt: u64) -> Result<Vec<BlockHash>, String> {
        let tip = self.chain.height().ok_or("the chain is empty")?;
        if depth == 0 || depth > tip {
            return Err(format!(
                "reorg depth must be between 1 and the tip height {tip}"
            ));
        }
        let fork_height = tip - depth;
        if self.generator.is_some() {
            let kept = self
                .history
                .iter()
                .find(|(h, _)| *h == fork_height)
                .map(|(_, g)| g.fork(salt));
            let fork = kept.ok_or_else(|| {
                format!(
                    "no generator state kept {depth} blocks back (it keeps {})",
                    self.history_len
                )
            })?;
            self.generator = Some(fork);
            self.history.retain(|(h, _)| *h <= fork_height);
        }
        self.pending.clear();
        let mut disconnected = Vec::new();
        for _ in 0..depth {
            if let Some(entry) = self.chain.pop() {
                disconnected.push(entry.txs());
            }
        }
        // Mempool transactions may spend outputs of the old branch: empty the mempool and
        // resubmit them after the disconnected blocks' transactions, keeping what is valid.
        // The new generator never made them, so they are all submitted transactions now.
        self.generated.clear();
        let stale: Vec<Transaction> = self.mempool.entries().map(|e| e.tx.clone()).collect();
        for tx in &stale {
            self.mempool.evict(&tx.compute_txid());
        }
        self.next_tag += salt;
        let mut hashes = Vec::new();
        for _ in 0..count {
            hashes.push(self.mine_one(false)?);
        }
        for tx in disconnected
            .into_iter()
            .rev()
            .flat_map(|txs| txs.into_iter().skip(1))
            .chain(stale)
        {
            let _ = self.submit(tx, None, false);
        }
        Ok(hashes)
    }
}
