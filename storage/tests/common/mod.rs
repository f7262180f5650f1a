//! Shared by the store-level tests: a deterministic block generator, an in-memory model of
//! what the store must answer, and a comparison of every query against it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use ferrum_storage::{BlockData, Error, Hash32, HashX, Snapshot, TxData, Utxo, HASHX_LEN};

/// splitmix64: small, deterministic, good enough to shape test chains.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A small pool of keys, so histories and UTXO lists grow long.
pub fn key(k: u64) -> HashX {
    let mut h = [0u8; HASHX_LEN];
    h[0] = k as u8;
    h[HASHX_LEN - 1] = 0xa5;
    h
}
pub const KEYS: u64 = 6;

/// Everything the store should answer, kept the obvious way.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct Model {
    pub headers: Vec<[u8; 80]>,
    pub counts: Vec<u64>,
    pub txids: Vec<Hash32>,
    pub utxos: BTreeMap<(u64, u32), (HashX, u64)>,
    pub history: BTreeMap<HashX, Vec<u64>>,
    pub meta: BTreeMap<String, Vec<u8>>,
}

impl Model {
    pub fn height(&self) -> Option<u32> {
        (self.headers.len() as u32).checked_sub(1)
    }

    pub fn find_tx(&self, txid: &Hash32) -> Option<u64> {
        self.txids.iter().rposition(|t| t == txid).map(|n| n as u64)
    }

    /// The unspent output `txid:vout` of the latest tx with that txid.
    pub fn unspent(&self, txid: &Hash32, vout: u32) -> Option<(HashX, Utxo)> {
        let txnum = self.find_tx(txid)?;
        let &(hashx, value) = self.utxos.get(&(txnum, vout))?;
        Some((hashx, Utxo { txnum, vout, value }))
    }

    /// Applies a block known to be valid.
    pub fn apply(&mut self, block: &BlockData) {
        for tx in &block.txs {
            let txnum = self.txids.len() as u64;
            let mut touched = BTreeSet::new();
            for (prev, vout) in &tx.spends {
                let prev = self.find_tx(prev).expect("valid block");
                let (hashx, _) = self.utxos.remove(&(prev, *vout)).expect("valid block");
                touched.insert(hashx);
            }
            for (vout, out) in tx.outputs.iter().enumerate() {
                if let Some((hashx, value)) = out {
                    self.utxos.insert((txnum, vout as u32), (*hashx, *value));
                    touched.insert(*hashx);
                }
            }
            for hashx in touched {
                self.history.entry(hashx).or_default().push(txnum);
            }
            self.txids.push(tx.txid);
        }
        self.headers.push(block.header);
        self.counts.push(self.txids.len() as u64);
    }

    /// A valid block on top of this state, shaped by `seed`: a coinbase, then txs spending
    /// random UTXOs (and sometimes outputs of earlier txs in the block); some txids share a
    /// 4-byte prefix with older ones to exercise collision handling in the txid index.
    pub fn gen_block(&self, seed: u64) -> BlockData {
        let mut rng = Rng(seed);
        let height = self.headers.len() as u64;
        let mut header = [0u8; 80];
        for chunk in header.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        header[..8].copy_from_slice(&height.to_le_bytes());
        let mut spendable: Vec<(Hash32, u32)> = Vec::new();
        let mut taken = BTreeSet::new();
        for _ in 0..rng.below(4) {
            if self.utxos.is_empty() {
                break;
            }
            let n = rng.below(self.utxos.len() as u64) as usize;
            let (&(txnum, vout), _) = self.utxos.iter().nth(n).expect("in range");
            if taken.insert((txnum, vout)) {
                spendable.push((self.txids[txnum as usize], vout));
            }
        }
        let mut txs = Vec::new();
        let n_txs = 1 + rng.below(4);
        let mut seen: BTreeSet<Hash32> = self.txids.iter().copied().collect();
        for i in 0..n_txs {
            let mut txid = [0u8; 32];
            for chunk in txid.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
            if !self.txids.is_empty() && rng.below(4) == 0 {
                let other = self.txids[rng.below(self.txids.len() as u64) as usize];
                txid[..4].copy_from_slice(&other[..4]);
            }
            if !seen.insert(txid) {
                txid[31] ^= 0xff;
                seen.insert(txid);
            }
            let spends = if i == 0 {
                Vec::new()
            } else {
                let k = (rng.below(3) as usize).min(spendable.len());
                spendable.drain(..k).collect()
            };
            let outputs: Vec<Option<(HashX, u64)>> = (0..1 + rng.below(3))
                .map(|_| {
                    (rng.below(5) != 0).then(|| (key(rng.below(KEYS)), 1 + rng.below(1 << 40)))
                })
                .collect();
            for (vout, out) in outputs.iter().enumerate() {
                if out.is_some() && rng.below(3) == 0 {
                    spendable.push((txid, vout as u32));
                }
            }
            txs.push(TxData {
                txid,
                spends,
                outputs,
            });
        }
        BlockData { header, txs }
    }
}

/// The deterministic chain the crash and corruption tests use: block `h` depends only on
/// `seed`, `h` and the blocks before it.
pub struct Chain {
    pub seed: u64,
    pub blocks: Vec<BlockData>,
    /// Model after each prefix: `states[n]` = state after `n` blocks.
    pub states: Vec<Model>,
}

impl Chain {
    pub fn new(seed: u64) -> Chain {
        Chain {
            seed,
            blocks: Vec::new(),
            states: vec![Model::default()],
        }
    }

    pub fn block(&mut self, height: u32) -> &BlockData {
        while self.blocks.len() <= height as usize {
            let state = self.states.last().expect("genesis state");
            let block = state.gen_block(self.seed ^ (self.blocks.len() as u64 * 0x1000_0001));
            let mut next = state.clone();
            next.apply(&block);
            self.blocks.push(block);
            self.states.push(next);
        }
        &self.blocks[height as usize]
    }

    /// What `Store::rollback` is given to roll back from `blocks` blocks by `n`: a lean
    /// store, each rolled-back block's spent txids, newest first; a full store, nothing.
    pub fn rollback_txids(&mut self, blocks: u32, n: u32, lean: bool) -> Vec<Vec<Hash32>> {
        if !lean {
            return Vec::new();
        }
        (blocks.saturating_sub(n)..blocks)
            .rev()
            .map(|h| self.block(h).spent_txids())
            .collect()
    }

    /// Model after `blocks` blocks.
    pub fn state(&mut self, blocks: usize) -> &Model {
        if blocks > 0 {
            self.block(blocks as u32 - 1);
        }
        &self.states[blocks]
    }
}

/// What a lean store answers when asked for txids.
pub const LEAN_TXID_ERROR: &str = "txids are not stored (lean index)";

/// `snap.txids(txnums)`, or in a lean store the model's txids once the store has refused with
/// the exact error.
fn txids_or_lean_error(
    snap: &Snapshot,
    model: &Model,
    txnums: &[u64],
) -> ferrum_storage::Result<Vec<Hash32>> {
    if snap.stores_txids() {
        return snap.txids(txnums);
    }
    let err = snap.txids(txnums).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert_eq!(err.to_string(), LEAN_TXID_ERROR);
    Ok(txnums.iter().map(|&n| model.txids[n as usize]).collect())
}

/// Reads everything the snapshot can answer and compares it with the model; `extra_txids`
/// (e.g. txids of rolled-back blocks) must have exactly the unspent outputs the model has.
/// A lean snapshot must refuse txids with the exact error and answer everything else alike.
pub fn check(snap: &Snapshot, model: &Model, extra_txids: &[Hash32]) -> ferrum_storage::Result<()> {
    assert_eq!(snap.height(), model.height(), "height");
    assert_eq!(snap.tx_count(), model.txids.len() as u64, "tx count");
    for (h, header) in model.headers.iter().enumerate() {
        assert_eq!(&snap.header(h as u32)?, header, "header {h}");
        let start = if h == 0 { 0 } else { model.counts[h - 1] };
        assert_eq!(
            snap.block_txs(h as u32)?,
            start..model.counts[h],
            "block {h}"
        );
    }
    assert!(snap.header(model.headers.len() as u32).is_err());
    for (n, txid) in model.txids.iter().enumerate() {
        if snap.stores_txids() {
            assert_eq!(&snap.txid(n as u64)?, txid, "txid {n}");
        } else {
            let err = snap.txid(n as u64).unwrap_err().to_string();
            assert_eq!(err, LEAN_TXID_ERROR, "txid {n}");
        }
        let height = model.counts.iter().position(|&c| c > n as u64).unwrap();
        assert_eq!(snap.tx_height(n as u64)? as usize, height, "tx height {n}");
        for vout in 0..3 {
            let found = snap.unspent(txid, vout)?;
            assert_eq!(found, model.unspent(txid, vout), "unspent {n}:{vout}");
        }
    }
    // The batched reads, in chain order, then sparse and descending (fresh searches).
    let all: Vec<u64> = (0..model.txids.len() as u64).collect();
    let heights: Vec<u32> = all
        .iter()
        .map(|&n| model.counts.iter().position(|&c| c > n).unwrap() as u32)
        .collect();
    assert_eq!(
        txids_or_lean_error(snap, model, &all)?,
        model.txids,
        "txids"
    );
    assert_eq!(snap.tx_heights(&all)?, heights, "tx heights");
    for order in [
        all.iter().step_by(7).copied().collect::<Vec<_>>(),
        all.iter().rev().step_by(3).copied().collect(),
    ] {
        let txids: Vec<Hash32> = order.iter().map(|&n| model.txids[n as usize]).collect();
        let want: Vec<u32> = order.iter().map(|&n| heights[n as usize]).collect();
        assert_eq!(
            txids_or_lean_error(snap, model, &order)?,
            txids,
            "txids of {} txs",
            order.len()
        );
        assert_eq!(
            snap.tx_heights(&order)?,
            want,
            "heights of {} txs",
            order.len()
        );
    }
    assert!(snap.txids(&[snap.tx_count()]).is_err());
    assert!(snap.tx_heights(&[snap.tx_count()]).is_err());
    for txid in extra_txids {
        for vout in 0..3 {
            let found = snap.unspent(txid, vout)?;
            assert_eq!(found, model.unspent(txid, vout), "unspent extra {vout}");
        }
    }
    let mut utxos = Vec::new();
    snap.for_each_utxo(|hashx, u| utxos.push((*hashx, *u)))?;
    let mut want: Vec<(HashX, Utxo)> = model
        .utxos
        .iter()
        .map(|(&(txnum, vout), &(hashx, value))| (hashx, Utxo { txnum, vout, value }))
        .collect();
    want.sort_by_key(|(h, u)| (*h, u.txnum, u.vout));
    assert_eq!(utxos, want, "utxo scan");
    for k in 0..KEYS {
        let hashx = key(k);
        let list: Vec<Utxo> = want
            .iter()
            .filter(|(h, _)| *h == hashx)
            .map(|(_, u)| *u)
            .collect();
        assert_eq!(snap.utxos(&hashx)?, list, "utxos of key {k}");
        let history = model.history.get(&hashx).cloned().unwrap_or_default();
        assert_eq!(snap.history(&hashx)?, history, "history of key {k}");
    }
    for (&(txnum, vout), &out) in &model.utxos {
        assert_eq!(snap.utxo(txnum, vout)?, Some(out), "utxo {txnum}:{vout}");
    }
    for txnum in 0..model.txids.len() as u64 {
        assert_eq!(
            snap.utxo(txnum, 7)?,
            model.utxos.get(&(txnum, 7)).copied(),
            "absent utxo"
        );
    }
    let mut history = BTreeMap::new();
    snap.for_each_history(|hashx, txnums| {
        if !txnums.is_empty() {
            history.insert(*hashx, txnums.to_vec());
        }
    })?;
    let want: BTreeMap<HashX, Vec<u64>> = model
        .history
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    assert_eq!(history, want, "history scan");
    for (k, v) in &model.meta {
        assert_eq!(snap.meta(k).as_ref(), Some(v), "meta {k}");
    }
    Ok(())
}
