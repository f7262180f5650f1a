//! The emulated node's block store: raw blocks in memory keyed by hash and height, a
//! transaction index and the spent-output map that stands in for Core's UTXO set.

use std::collections::HashMap;
use std::sync::Arc;

use bitcoin::block::Header;
use bitcoin::consensus::Decodable;
use bitcoin::pow::Work;
use bitcoin::{BlockHash, OutPoint, Transaction, Txid};

use super::txjson::Prevout;

/// One block as served: its raw bytes plus what Core keeps in its block index.
pub struct BlockEntry {
    pub hash: BlockHash,
    pub header: Header,
    pub height: u32,
    pub raw: Arc<Vec<u8>>,
    pub chainwork: Work,
    pub median_time: u32,
    pub txids: Vec<Txid>,
    /// Byte range of each transaction inside `raw`.
    pub tx_spans: Vec<(u32, u32)>,
    pub stripped_size: usize,
    pub weight: u64,
}

impl BlockEntry {
    pub fn tx(&self, index: usize) -> Option<Transaction> {
        let (start, end) = *self.tx_spans.get(index)?;
        bitcoin::consensus::deserialize(&self.raw[start as usize..end as usize]).ok()
    }

    pub fn txs(&self) -> Vec<Transaction> {
        (0..self.tx_spans.len())
            .filter_map(|i| self.tx(i))
            .collect()
    }
}

/// Why a block could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainError {
    Decode(String),
    NotOnTip { block: BlockHash, prev: BlockHash },
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::Decode(e) => write!(f, "block does not decode: {e}"),
            ChainError::NotOnTip { block, prev } => {
                write!(f, "block {block} builds on {prev}, which is not the tip")
            }
        }
    }
}

impl std::error::Error for ChainError {}

/// Where a confirmed transaction lives.
#[derive(Clone, Copy)]
struct TxLoc {
    height: u32,
    index: u32,
}

/// The active chain plus every block ever seen (stale branches stay readable, as in Core).
#[derive(Default)]
pub struct Chain {
    active: Vec<Arc<BlockEntry>>,
    by_hash: HashMap<BlockHash, Arc<BlockEntry>>,
    txindex: HashMap<Txid, TxLoc>,
    /// Confirmed outputs spent by the active chain, with their spender.
    spent: HashMap<OutPoint, Txid>,
}

impl Chain {
    pub fn height(&self) -> Option<u32> {
        self.active.len().checked_sub(1).map(|h| h as u32)
    }

    pub fn tip(&self) -> Option<&Arc<BlockEntry>> {
        self.active.last()
    }

    pub fn at(&self, height: u32) -> Option<&Arc<BlockEntry>> {
        self.active.get(height as usize)
    }

    pub fn by_hash(&self, hash: &BlockHash) -> Option<&Arc<BlockEntry>> {
        self.by_hash.get(hash)
    }

    pub fn is_active(&self, entry: &BlockEntry) -> bool {
        self.at(entry.height).is_some_and(|b| b.hash == entry.hash)
    }

    /// Core's confirmations: depth in the active chain, or -1 for a stale block.
    pub fn confirmations(&self, entry: &BlockEntry) -> i64 {
        match (self.is_active(entry), self.height()) {
            (true, Some(tip)) => tip as i64 - entry.height as i64 + 1,
            _ => -1,
        }
    }

    pub fn next_hash(&self, entry: &BlockEntry) -> Option<BlockHash> {
        if !self.is_active(entry) {
            return None;
        }
        self.at(entry.height + 1).map(|b| b.hash)
    }

    /// Total bytes of raw blocks on the active chain (Core's `size_on_disk` stand-in).
    pub fn size_on_disk(&self) -> u64 {
        self.active.iter().map(|b| b.raw.len() as u64 + 8).sum()
    }

    /// Appends a raw block on the tip (or as genesis when empty).
    pub fn push(&mut self, raw: Vec<u8>) -> Result<Arc<BlockEntry>, ChainError> {
        let (entry, spends) = self.index_block(raw)?;
        let entry = Arc::new(entry);
        let genesis = self.active.is_empty();
        for (i, txid) in entry.txids.iter().enumerate() {
            // Core indexes neither the genesis coinbase nor its output.
            if genesis {
                break;
            }
            self.txindex.insert(
                *txid,
                TxLoc {
                    height: entry.height,
                    index: i as u32,
                },
            );
        }
        if !genesis {
            self.spent.extend(spends);
        }
        self.by_hash.insert(entry.hash, entry.clone());
        self.active.push(entry.clone());
        Ok(entry)
    }

    /// Disconnects the tip; the block stays readable by hash as a stale block.
    pub fn pop(&mut self) -> Option<Arc<BlockEntry>> {
        if self.active.len() <= 1 {
            return None;
        }
        let entry = self.active.pop()?;
        for tx in entry.txs().iter().skip(1) {
            for input in &tx.input {
                self.spent.remove(&input.previous_output);
            }
        }
        for txid in &entry.txids {
            self.txindex.remove(txid);
        }
        Some(entry)
    }

    /// Indexes a block that extends the tip; also returns the outputs its transactions spend.
    fn index_block(&self, raw: Vec<u8>) -> Result<(BlockEntry, Vec<(OutPoint, Txid)>), ChainError> {
        let decode = |e: bitcoin::consensus::encode::Error| ChainError::Decode(e.to_string());
        let mut cursor: &[u8] = &raw;
        let header = Header::consensus_decode(&mut cursor).map_err(decode)?;
        let count = bitcoin::VarInt::consensus_decode(&mut cursor)
            .map_err(decode)?
            .0;
        let mut txids = Vec::new();
        let mut tx_spans = Vec::new();
        let mut spends = Vec::new();
        let mut stripped_size = raw.len() - cursor.len();
        let mut weight = stripped_size as u64 * 4;
        for _ in 0..count {
            let start = raw.len() - cursor.len();
            let tx = Transaction::consensus_decode(&mut cursor).map_err(decode)?;
            let end = raw.len() - cursor.len();
            let txid = tx.compute_txid();
            if !txids.is_empty() {
                spends.extend(tx.input.iter().map(|i| (i.previous_output, txid)));
            }
            txids.push(txid);
            tx_spans.push((start as u32, end as u32));
            stripped_size += tx.base_size();
            weight += tx.weight().to_wu();
        }
        if !cursor.is_empty() {
            return Err(ChainError::Decode(format!(
                "{} bytes after the last transaction",
                cursor.len()
            )));
        }
        if txids.is_empty() {
            return Err(ChainError::Decode("block has no transactions".into()));
        }
        let hash = header.block_hash();
        let (height, chainwork) = match self.tip() {
            None => (0, header.work()),
            Some(tip) if tip.hash == header.prev_blockhash => {
                (tip.height + 1, tip.chainwork + header.work())
            }
            Some(_) => {
                return Err(ChainError::NotOnTip {
                    block: hash,
                    prev: header.prev_blockhash,
                })
            }
        };
        let mut times: Vec<u32> = self
            .active
            .iter()
            .rev()
            .take(10)
            .map(|b| b.header.time)
            .collect();
        times.push(header.time);
        times.sort_unstable();
        let median_time = times[times.len() / 2];
        let entry = BlockEntry {
            hash,
            header,
            height,
            raw: Arc::new(raw),
            chainwork,
            median_time,
            txids,
            tx_spans,
            stripped_size,
            weight,
        };
        Ok((entry, spends))
    }

    /// A confirmed transaction on the active chain and the block holding it.
    pub fn tx(&self, txid: &Txid) -> Option<(Transaction, Arc<BlockEntry>)> {
        let loc = self.txindex.get(txid)?;
        let block = self.at(loc.height)?;
        Some((block.tx(loc.index as usize)?, block.clone()))
    }

    /// A confirmed output, spent or not (what undo data records).
    pub fn output(&self, outpoint: &OutPoint) -> Option<Prevout> {
        let loc = self.txindex.get(&outpoint.txid)?;
        let block = self.at(loc.height)?;
        let tx = block.tx(loc.index as usize)?;
        let txout = tx.output.get(outpoint.vout as usize)?.clone();
        Some(Prevout {
            txout,
            height: loc.height,
            coinbase: loc.index == 0,
        })
    }

    /// An output of the active chain that no confirmed transaction spends.
    pub fn unspent(&self, outpoint: &OutPoint) -> Option<Prevout> {
        if self.spent.contains_key(outpoint) {
            return None;
        }
        self.output(outpoint)
    }

    /// Whether some output of `txid` is confirmed and unspent (Core's "already in utxo set").
    pub fn has_unspent_output(&self, tx: &Transaction) -> bool {
        let txid = tx.compute_txid();
        self.txindex.contains_key(&txid)
            && (0..tx.output.len() as u32)
                .any(|vout| !self.spent.contains_key(&OutPoint { txid, vout }))
    }

    /// The coins each input of a confirmed transaction spent.
    pub fn prevouts(&self, tx: &Transaction) -> Option<Vec<Prevout>> {
        if tx.is_coinbase() {
            return None;
        }
        tx.input
            .iter()
            .map(|i| self.output(&i.previous_output))
            .collect()
    }
}
